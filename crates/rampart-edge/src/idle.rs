//! Closing connections that carry no request.
//!
//! hyper closes an HTTP/1 keep-alive connection that sends no request head
//! within the header-read timeout, but nothing closes a connection that
//! sends nothing at all after its TLS handshake (hyper-util's protocol
//! detection waits for the first bytes without a timer), nor an HTTP/2
//! connection with no stream open (hyper has no idle timeout for HTTP/2,
//! and a client that answers pings, or sends its own, keeps one for ever).
//! Each costs a descriptor and memory for as long as the client likes, so
//! one host could open enough of them to stop the edge accepting.
//!
//! [`Idle`], in a [`ReadWatch`](crate::watch::ReadWatch), sits under hyper. Once its connection has had no request
//! in flight (from the moment the handler takes one until its response
//! body has been sent or dropped, marked by an [`InFlight`] from
//! [`Activity::begin`]) for the timeout, its reads end as if the client had
//! closed, and hyper closes the connection. Bytes that arrive carry no
//! weight: a request counts once hyper hands it over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::watch::ReadHook;

/// A connection's requests in flight and when the last one ended.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    start: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection began), in
    /// milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Inner {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }))
    }
}

impl Activity {
    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.0.clone())
    }

    /// When the connection may be closed as idle: `None` while a request
    /// is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.0.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.0.last_ms.load(Ordering::Acquire));
        Some(self.0.start + last + timeout)
    }
}

/// A request in flight on its connection; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it ends or is
/// dropped.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// `inner`, with `in_flight` held as long as it lives.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The read side of a connection's idle close (see the module doc): under
/// a [`ReadWatch`](crate::watch::ReadWatch), its reads end once the connection has carried no
/// request for `timeout`.
#[derive(Debug)]
pub struct Idle {
    activity: Activity,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    closed: bool,
}

impl Idle {
    /// Watches a connection whose requests `activity` marks.
    pub fn new(activity: Activity, timeout: Duration) -> Self {
        Idle {
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            closed: false,
        }
    }

    /// Whether the connection has been idle too long; otherwise arms the
    /// timer for the next time it could be.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let now = Instant::now();
            let deadline = match self.activity.idle_deadline(self.timeout) {
                Some(d) => d,
                // While a request is in flight, look again when the timer
                // is due (a timeout later if it is past): left armed, it is
                // not moved on every read.
                None if self.timer.deadline() > now => self.timer.deadline(),
                None => now + self.timeout,
            };
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self
                .activity
                .idle_deadline(self.timeout)
                .is_some_and(|d| d <= now)
            {
                return true;
            }
        }
    }
}

impl ReadHook for Idle {
    fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(inner).poll_read(cx, buf) {
            Poll::Pending if self.expired(cx) => {
                // Read as the end of the stream: hyper closes the connection.
                tracing::debug!("closing a connection that carries no request");
                self.closed = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
