//! Request bodies on their way to an upstream: whole, as the phases read
//! them, or streamed from the client as they arrive.
//!
//! By default the edge reads a request body whole before it picks an
//! instance (as nginx's `proxy_request_buffering on` does): the firewall
//! and JSON Schema checks need all of it, and a request that failed on one
//! instance can be sent again to another. A route with
//! `stream_request_body = true` (allowed only where no check reads the
//! body) sends the body on as the client sends it instead, so an upload
//! of any size up to the route's limit costs the edge a few frames of
//! memory and starts reaching the service at once.
//!
//! A streamed body is still held to the route's limits: it is cut off
//! (413) once it grows past the body limit, and (408) when the client
//! sends nothing for the body read timeout, as nginx's
//! `client_body_timeout` does. [`Progress`] tells the proxy which of
//! these ended it, how much was read, and when the client last sent, so
//! that the upstream timeout counts from the body's last byte, not from
//! the start of a long upload.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::Reject;

/// The body of a request sent to an upstream.
#[derive(Debug)]
pub enum ForwardBody {
    /// Read whole before the request was sent.
    Whole(Full<Bytes>),
    /// Passed on from the client as it arrives.
    Streamed(Streamed),
}

impl ForwardBody {
    /// A body of `bytes`, sent whole.
    pub fn whole(bytes: Bytes) -> ForwardBody {
        ForwardBody::Whole(Full::new(bytes))
    }
}

/// Why a request body could not be sent on. The reason itself is in the
/// body's [`Progress`]; this only tells hyper that the body failed.
#[derive(Debug)]
pub struct BodyFailed;

impl std::fmt::Display for BodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body ended early")
    }
}

impl std::error::Error for BodyFailed {}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BodyFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailed>>> {
        match self.get_mut() {
            ForwardBody::Whole(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ForwardBody::Streamed(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardBody::Whole(b) => b.is_end_stream(),
            ForwardBody::Streamed(s) => s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ForwardBody::Whole(b) => b.size_hint(),
            ForwardBody::Streamed(s) => s.inner.size_hint(),
        }
    }
}

/// A client's request body passed on as it arrives, within a size limit
/// and a time limit between frames.
pub struct Streamed {
    inner: Incoming,
    limit: u64,
    read: u64,
    frame_timeout: Duration,
    /// When the client must have sent more, while the edge waits for it.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether the edge is waiting for the client (`deadline` is armed).
    waiting: bool,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("limit", &self.limit)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Streamed {
    /// Streams `inner`, cut off past `limit` bytes or when the client sends
    /// nothing for `frame_timeout`.
    pub fn new(inner: Incoming, limit: usize, frame_timeout: Duration) -> Streamed {
        Streamed {
            inner,
            limit: limit as u64,
            read: 0,
            frame_timeout,
            deadline: None,
            waiting: false,
            progress: Arc::new(Progress::new()),
        }
    }

    /// What the proxy learns of this body while and after it is sent.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    fn fail(&self, why: u8) -> Poll<Option<Result<Frame<Bytes>, BodyFailed>>> {
        self.progress.failure.store(why, Ordering::Release);
        Poll::Ready(Some(Err(BodyFailed)))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailed>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                // The clock runs from when the edge began to wait for the
                // client, not from its last frame: an upstream that reads
                // slowly keeps the body unpolled, and that is not the
                // client's time.
                let next = Instant::now() + self.frame_timeout;
                let deadline = match &mut self.deadline {
                    Some(d) => d,
                    None => self
                        .deadline
                        .insert(Box::pin(tokio::time::sleep_until(next))),
                };
                if !self.waiting {
                    deadline.as_mut().reset(next);
                    self.waiting = true;
                }
                if deadline.as_mut().poll(cx).is_ready() {
                    return self.fail(TIMED_OUT);
                }
                Poll::Pending
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(_))) => self.fail(CLIENT_FAILED),
            Poll::Ready(Some(Ok(frame))) => {
                self.waiting = false;
                if let Some(d) = frame.data_ref() {
                    self.read = self.read.saturating_add(d.len() as u64);
                    if self.read > self.limit {
                        return self.fail(TOO_LARGE);
                    }
                    self.progress.bytes.store(self.read, Ordering::Release);
                }
                self.progress.touch();
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }
}

const TOO_LARGE: u8 = 1;
const TIMED_OUT: u8 = 2;
const CLIENT_FAILED: u8 = 3;

/// What is known of a streamed body: bytes read, when the client last
/// sent, and why it was cut off, if it was.
#[derive(Debug)]
pub struct Progress {
    bytes: AtomicU64,
    start: Instant,
    /// Nanoseconds from `start` to the last frame.
    last: AtomicU64,
    failure: AtomicU8,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            bytes: AtomicU64::new(0),
            start: Instant::now(),
            last: AtomicU64::new(0),
            failure: AtomicU8::new(0),
        }
    }

    fn touch(&self) {
        let since = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Release);
    }

    /// Bytes of the body read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// When the client last sent part of the body (or when the body was
    /// taken, before its first part).
    pub fn last_activity(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Acquire))
    }

    /// The refusal owed to the client when the body was cut off.
    pub fn failure(&self) -> Option<Reject> {
        match self.failure.load(Ordering::Acquire) {
            TOO_LARGE => Some(Reject::BodyTooLarge),
            TIMED_OUT => Some(Reject::BodyTimeout),
            CLIENT_FAILED => Some(Reject::BadBody),
            _ => None,
        }
    }
}

/// Waits for `fut` until `timeout` has passed with neither an answer nor,
/// when `progress` is given, a frame of the request body: the upstream's
/// time to answer counts from the last byte the client sent. `None` when
/// the time ran out.
///
/// A future of its own rather than an `async fn`: an `async fn` keeps its
/// future argument beside the copy it awaits, which doubled the size of
/// every request's state and the bytes moved to start it.
pub fn answered_within<F: Future>(
    timeout: Duration,
    fut: F,
    progress: Option<&Progress>,
) -> AnsweredWithin<'_, F> {
    let from = progress.map(Progress::last_activity);
    AnsweredWithin {
        fut,
        timer: tokio::time::sleep_until(from.unwrap_or_else(Instant::now) + timeout),
        timeout,
        progress,
        from,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`answered_within`]: the awaited future and one timer,
    /// pushed back while the client's body keeps arriving.
    pub struct AnsweredWithin<'a, F> {
        #[pin]
        fut: F,
        #[pin]
        timer: Sleep,
        timeout: Duration,
        progress: Option<&'a Progress>,
        // The body's last activity when the timer was set.
        from: Option<Instant>,
    }
}

impl<F: Future> Future for AnsweredWithin<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The time ran out, unless the body moved since the timer was set.
            let (Some(p), Some(from)) = (*this.progress, *this.from) else {
                return Poll::Ready(None);
            };
            let last = p.last_activity();
            if last == from {
                return Poll::Ready(None);
            }
            *this.from = Some(last);
            this.timer.as_mut().reset(last + *this.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_in_time_is_given() {
        let out = answered_within(Duration::from_secs(5), async { 7 }, None).await;
        assert_eq!(out, Some(7));
    }

    #[tokio::test]
    async fn no_answer_within_the_timeout_is_none() {
        let started = Instant::now();
        let out = answered_within(
            Duration::from_millis(30),
            std::future::pending::<()>(),
            None,
        );
        assert_eq!(out.await, None);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_body_still_arriving_pushes_the_deadline_back() {
        let progress = Arc::new(Progress::new());
        let feeder = {
            let p = Arc::clone(&progress);
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    p.touch();
                }
            })
        };
        // The answer comes 170 ms in: well past the 80 ms timeout counted
        // from the start, within it counted from the body's last frame
        // (about 150 ms in).
        let slow = async {
            tokio::time::sleep(Duration::from_millis(170)).await;
            1
        };
        let out = answered_within(Duration::from_millis(80), slow, Some(&progress)).await;
        assert_eq!(out, Some(1));
        feeder.await.ok();
        // Once the body is done, the timeout runs from its last frame.
        let started = Instant::now();
        let out = answered_within(
            Duration::from_millis(30),
            std::future::pending::<()>(),
            Some(&progress),
        );
        assert_eq!(out.await, None);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
