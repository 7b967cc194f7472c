//! Connection timeouts hyper does not have: closing connections that carry
//! no request, and connections whose client stops reading its responses.
//!
//! **No request.** hyper closes an HTTP/1 keep-alive connection that sends
//! no request head within the header-read timeout, but nothing closes a
//! connection that sends nothing at all after its TLS handshake
//! (hyper-util's protocol detection waits for the first bytes without a
//! timer), nor an HTTP/2 connection with no stream open (hyper has no idle
//! timeout for HTTP/2, and a client that answers pings, or sends its own,
//! keeps one for ever). Each costs a descriptor and memory for as long as
//! the client likes, so one host could open enough of them to stop the
//! edge accepting. Once a connection has had no request in flight (from
//! the moment the handler takes one until its response body has been sent
//! or dropped, marked by an [`InFlight`] from [`Activity::begin`]) for its
//! timeout, its reads end as if the client had closed, and hyper closes
//! the connection. The timeout is the first-request one (the header-read
//! timeout) until a request has come, then the keep-alive one (nginx's
//! `keepalive_timeout`). Bytes that arrive carry no weight: a request
//! counts once hyper hands it over.
//!
//! **A slow HTTP/1 head.** hyper's own header-read timer runs from the
//! moment it waits for a head, idle time included, so it would cap the
//! keep-alive time as well; the edge gives hyper the longer of the two and
//! times heads here instead: on an HTTP/1 connection, bytes that arrive
//! with no request in flight start a head, which must be whole (handed
//! over as a request) within the header-read timeout.
//!
//! **A client that stops reading** (nginx's `send_timeout`). A response
//! the client does not take holds its upstream connection, the response's
//! buffers and the request's place for as long as the client likes. Two
//! ways to stop reading, two watches, one timeout:
//! - the socket: a write to the client that makes no progress for the
//!   send timeout fails, and hyper drops the connection (HTTP/1 and
//!   HTTP/2 alike);
//! - an HTTP/2 stream: a client can keep reading the socket yet never
//!   open its flow-control window, so the edge has nothing it may send and
//!   the socket never blocks. A response body of an HTTP/2 request
//!   ([`InFlight::watch_sends`]) notes when it has handed hyper a frame and
//!   hyper has not asked for the next; one that waits so for the send
//!   timeout ends the connection's reads, and hyper closes it. A body
//!   waiting on its upstream does not count: that is not the client's
//!   doing.
//!
//! [`Idle`], the hook of a [`Watched`](crate::watch::Watched) stream under
//! hyper, carries out both.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::watch::{read_seen, IoHook};

/// A connection's requests in flight and when the last one ended.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    start: Instant,
    in_flight: AtomicUsize,
    /// Whether a request has begun on the connection.
    served: AtomicBool,
    /// When the last request ended (or the connection began), in
    /// milliseconds after `start`.
    last_ms: AtomicU64,
    /// When the first bytes arrived with no request in flight (the start
    /// of the next HTTP/1 head), in milliseconds after `start`; `NONE` if
    /// none have.
    head_ms: AtomicU64,
    /// Watched response bodies waiting for hyper to ask for their next
    /// frame: (body number, since when in milliseconds after `start`).
    waiting: Mutex<Vec<(u64, u64)>>,
    /// How many entries `waiting` has, read without the lock.
    waiting_count: AtomicUsize,
    /// Numbers for watched bodies.
    next_body: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Inner {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            head_ms: AtomicU64::new(NONE),
            waiting: Mutex::new(Vec::new()),
            waiting_count: AtomicUsize::new(0),
            next_body: AtomicU64::new(0),
        }))
    }
}

impl Activity {
    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        self.0.served.store(true, Ordering::Release);
        self.0.head_ms.store(NONE, Ordering::Release);
        InFlight {
            inner: self.0.clone(),
            body: None,
        }
    }

    /// When the connection must be closed if nothing changes: no first
    /// request within `t.first_request`, no request in flight for
    /// `t.keepalive` since the last ended, or a watched body waiting for
    /// `t.send` ([`None`] while requests are in flight and none waits).
    fn deadline(&self, t: &ConnTimeouts) -> Option<(Instant, Closed)> {
        if self.0.in_flight.load(Ordering::Acquire) == 0 {
            if !self.0.served.load(Ordering::Acquire) {
                return Some((self.0.start + t.first_request, Closed::Idle));
            }
            let last = Duration::from_millis(self.0.last_ms.load(Ordering::Acquire));
            let idle = (self.0.start + last + t.keepalive, Closed::Idle);
            let head = self.0.head_ms.load(Ordering::Acquire);
            return Some(match t.head {
                Some(h) if head != NONE => {
                    let slow = self.0.start + Duration::from_millis(head) + h;
                    if slow < idle.0 {
                        (slow, Closed::SlowHead)
                    } else {
                        idle
                    }
                }
                _ => idle,
            });
        }
        if self.0.waiting_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let waiting = self.0.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let since = waiting.iter().map(|&(_, since)| since).min()?;
        Some((
            self.0.start + Duration::from_millis(since) + t.send,
            Closed::NotReading,
        ))
    }
}

/// No time noted.
const NONE: u64 = u64::MAX;

impl Inner {
    /// Notes bytes arriving: with no request in flight, the start of a
    /// head.
    fn arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_ms.load(Ordering::Acquire) == NONE
        {
            let now = self.now_ms();
            // A request that began meanwhile reset it; its head is in.
            let _ = self
                .head_ms
                .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn wait(&self, body: u64) {
        let since = self.now_ms();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.push((body, since));
        self.waiting_count.store(waiting.len(), Ordering::Release);
    }

    fn stop_waiting(&self, body: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|&(b, _)| b != body);
        self.waiting_count.store(waiting.len(), Ordering::Release);
    }
}

/// A request in flight on its connection; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight {
    inner: Arc<Inner>,
    /// The number of its response body, when the body's sends are watched.
    body: Option<u64>,
}

impl InFlight {
    /// Watches the sends of this request's response body (see the module
    /// doc): for HTTP/2 streams, whose stalls the socket does not show.
    pub fn watch_sends(mut self) -> Self {
        self.body = Some(self.inner.next_body.fetch_add(1, Ordering::Relaxed));
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.inner.now_ms();
        self.inner.last_ms.fetch_max(ms, Ordering::AcqRel);
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it ends or is
/// dropped, and, when its sends are watched, marks the time it waits for
/// hyper to take its next frame.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    in_flight: InFlight,
    /// Whether it is marked as waiting.
    waiting: bool,
}

impl<B> Tracked<B> {
    /// `inner`, with `in_flight` held as long as it lives.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            in_flight,
            waiting: false,
        }
    }

    fn stop_waiting(&mut self) {
        if self.waiting {
            self.waiting = false;
            if let Some(body) = self.in_flight.body {
                self.in_flight.inner.stop_waiting(body);
            }
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.stop_waiting();
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(body), Poll::Ready(Some(Ok(f)))) = (self.in_flight.body, &r) {
            if f.is_data() && !self.inner.is_end_stream() {
                self.in_flight.inner.wait(body);
                self.waiting = true;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why [`Idle`] closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request for the first-request or keep-alive timeout.
    Idle,
    /// An HTTP/1 head took longer than the header-read timeout.
    SlowHead,
    /// The client took no response bytes for the send timeout.
    NotReading,
    /// Accepted while the edge held `max_connections` already, and closed
    /// at once.
    OverLimit,
    /// Accepted while its client held `max_connections_per_client`
    /// already, and closed at once.
    ClientOverLimit,
    /// From a balancer in `proxy_protocol_from`, without a valid PROXY
    /// header within the first-request timeout.
    ProxyHeader,
}

/// Connections [`Idle`] closed, by why, and WebSocket tunnels: what
/// `/metrics` reports of them.
#[derive(Debug, Default)]
pub struct ConnCounts {
    idle: AtomicU64,
    slow_head: AtomicU64,
    not_reading: AtomicU64,
    over_limit: AtomicU64,
    client_over_limit: AtomicU64,
    proxy_header: AtomicU64,
    tunnels_open: AtomicU64,
    tunnels: AtomicU64,
}

impl ConnCounts {
    fn counter(&self, why: Closed) -> &AtomicU64 {
        match why {
            Closed::Idle => &self.idle,
            Closed::SlowHead => &self.slow_head,
            Closed::NotReading => &self.not_reading,
            Closed::OverLimit => &self.over_limit,
            Closed::ClientOverLimit => &self.client_over_limit,
            Closed::ProxyHeader => &self.proxy_header,
        }
    }

    pub(crate) fn closed(&self, why: Closed) {
        self.counter(why).fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed for `why` so far.
    pub fn closed_for(&self, why: Closed) -> u64 {
        self.counter(why).load(Ordering::Relaxed)
    }

    /// Counts a tunnel open until the returned guard is dropped.
    pub fn tunnel(self: &Arc<Self>) -> TunnelOpen {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        self.tunnels_open.fetch_add(1, Ordering::Relaxed);
        TunnelOpen(self.clone())
    }

    /// WebSocket tunnels open now, and opened so far.
    pub fn tunnels(&self) -> (u64, u64) {
        (
            self.tunnels_open.load(Ordering::Relaxed),
            self.tunnels.load(Ordering::Relaxed),
        )
    }
}

/// A WebSocket tunnel, counted open while it lives.
#[derive(Debug)]
pub struct TunnelOpen(Arc<ConnCounts>);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.tunnels_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The timeouts [`Idle`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// The longest a connection may wait for its first request.
    pub first_request: Duration,
    /// The longest an HTTP/1 request head may take from its first byte
    /// (`None` for HTTP/2, whose pings and settings are not heads).
    pub head: Option<Duration>,
    /// The longest a connection may carry no request after one has ended.
    pub keepalive: Duration,
    /// The longest a client may take none of the response bytes it is sent.
    pub send: Duration,
}

impl ConnTimeouts {
    /// hyper's own header-read timeout under [`Idle`]: it runs through
    /// idle keep-alive time too, so it can only back `Idle` up, a second
    /// after the longer of the first-request and keep-alive timeouts (so
    /// that `Idle`, which counts what it closes, comes first).
    pub fn backstop(&self) -> Duration {
        self.first_request.max(self.keepalive) + Duration::from_secs(1)
    }
}

/// The hook of a connection's timeouts (see the module doc): under a
/// [`Watched`](crate::watch::Watched) stream, its reads end once the
/// connection has carried no request for its timeout or a watched
/// body has waited for the send timeout, and a write that makes no
/// progress for the send timeout fails.
#[derive(Debug)]
pub struct Idle {
    activity: Activity,
    timeouts: ConnTimeouts,
    timer: Pin<Box<Sleep>>,
    /// The waker `timer` was last polled with while it stayed pending.
    registered: Option<Waker>,
    /// Whether `timer` is due within a quarter of the send timeout of the
    /// last time the clock was read here (so of now, too).
    armed_soon: bool,
    closed: bool,
    /// Armed while a write makes no progress.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    /// Where closes are counted, if anywhere.
    counts: Option<Arc<ConnCounts>>,
}

impl Idle {
    /// Watches a connection whose requests `activity` marks.
    pub fn new(activity: Activity, timeouts: ConnTimeouts) -> Self {
        Idle {
            activity,
            timeouts,
            timer: Box::pin(tokio::time::sleep(timeouts.first_request)),
            registered: None,
            armed_soon: false,
            closed: false,
            stall: None,
            stalled: false,
            counts: None,
        }
    }

    /// Counts the connections it closes in `counts`.
    pub fn counting(mut self, counts: Arc<ConnCounts>) -> Self {
        self.counts = Some(counts);
        self
    }

    /// Whether the connection must close now; otherwise makes sure the
    /// timer will wake the connection's task no later than the next time
    /// it could have to.
    ///
    /// The timer is kept armed at or before that time rather than moved to
    /// it on every read: a deadline that moves later (each request that
    /// ends pushes the keep-alive one back) leaves it where it is, and when
    /// it fires early the deadline is worked out again and the timer moved
    /// on. Nor is it polled again while it is armed, has not fired and was
    /// last polled with a waker that wakes the same task: it holds that
    /// waker already. This spares a timer-wheel update, a waker
    /// registration and a read of the clock on most reads of a busy
    /// connection.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let t = &self.timeouts;
            let deadline = self.activity.deadline(t);
            let armed = self.timer.deadline();
            // Most reads end here, without reading the clock: the timer has
            // not fired, holds this task's waker and is due no later than
            // it must be.
            if !self.timer.is_elapsed()
                && self
                    .registered
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                && match deadline {
                    Some((d, _)) => armed <= d,
                    None => self.armed_soon,
                }
            {
                return false;
            }
            let now = Instant::now();
            let want = match deadline {
                Some((d, _)) => d,
                // While requests are in flight and no body waits, look
                // again a quarter of the send timeout later at most. A
                // body that starts waiting on a silent client is thus
                // seen within a quarter of the send timeout, and its
                // connection closed within 1.25 times it.
                None => now + t.send / 4,
            };
            if (armed > want || armed <= now) && armed != want {
                self.timer.as_mut().reset(want);
            }
            self.armed_soon = self.timer.deadline() <= now + t.send / 4;
            // A poll refused for want of cooperative budget registers no
            // waker with the timer (tokio wakes the task at once instead).
            let registers = tokio::task::coop::has_budget_remaining();
            if self.timer.as_mut().poll(cx).is_pending() {
                self.registered = match self.registered.take() {
                    Some(w) if registers && w.will_wake(cx.waker()) => Some(w),
                    _ if registers => Some(cx.waker().clone()),
                    _ => None,
                };
                return false;
            }
            self.registered = None;
            if let Some((d, why)) = self.activity.deadline(&self.timeouts) {
                if d <= now {
                    if let Some(c) = &self.counts {
                        c.closed(why);
                    }
                    return true;
                }
            }
        }
    }
}

impl IoHook for Idle {
    fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let heads = self.timeouts.head.is_some();
        let activity = &self.activity;
        match read_seen(inner, cx, buf, |_| {
            if heads {
                activity.0.arrived();
            }
        }) {
            Poll::Pending if self.expired(cx) => {
                // Read as the end of the stream: hyper closes the connection.
                tracing::debug!(
                    "closing a connection that is idle or whose client stopped reading"
                );
                self.closed = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_write_with<IO: AsyncWrite + Unpin, T>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(inner), cx) {
            Poll::Pending => {
                let send = self.timeouts.send;
                let timer = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
                if !self.stalled {
                    self.stalled = true;
                    timer.as_mut().reset(Instant::now() + send);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    tracing::debug!("closing a connection whose client stopped reading");
                    if let (false, Some(c)) = (self.closed, &self.counts) {
                        c.closed(Closed::NotReading);
                    }
                    self.closed = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no response bytes for the send timeout",
                    )));
                }
                Poll::Pending
            }
            done => {
                self.stalled = false;
                done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Watched;
    use tokio::io::AsyncReadExt;

    /// A busy connection pushes its keep-alive deadline back with every
    /// request that ends, while its timer stays armed at the earlier time
    /// (the first-request timeout): the timer fires early, is moved on, and
    /// the connection closes one keep-alive timeout after its last request,
    /// neither before nor long after.
    #[tokio::test]
    async fn a_deadline_pushed_back_by_each_request_closes_after_the_last() {
        let keepalive = Duration::from_millis(400);
        let timeouts = ConnTimeouts {
            first_request: Duration::from_millis(100),
            head: None,
            keepalive,
            send: Duration::from_secs(10),
        };
        let activity = Activity::default();
        let (client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, Idle::new(activity.clone(), timeouts));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = watched.read(&mut buf).await;
            (n.ok(), std::time::Instant::now())
        });
        // requests of 10 ms every 50 ms for 1.2 s: three keep-alive
        // timeouts from the start, each within one of the last
        let mut last_end = std::time::Instant::now();
        for _ in 0..24 {
            let req = activity.begin();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(req);
            last_end = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(40)).await;
            assert!(!reader.is_finished(), "closed while busy");
        }
        let (n, closed_at) = tokio::time::timeout(Duration::from_secs(3), reader)
            .await
            .expect("the idle connection was kept open")
            .expect("reader task");
        assert_eq!(n, Some(0), "the read ends as the stream's end");
        let idle = closed_at.duration_since(last_end);
        assert!(
            idle >= keepalive - Duration::from_millis(20),
            "closed after {idle:?}"
        );
        assert!(
            idle < keepalive + Duration::from_millis(400),
            "closed after {idle:?}"
        );
        drop(client);
    }
}
