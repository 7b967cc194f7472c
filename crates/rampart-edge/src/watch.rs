//! An I/O stream under hyper whose reads and writes an [`IoHook`] watches
//! or ends: the read side of the smuggling guard
//! ([`crate::framing::Framing`]), and the connection timeouts of
//! `idle.rs` (no request for too long, a client that stops reading).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Watched`] stream does in place of a plain read or write.
pub trait IoHook {
    /// Reads from `inner` into `buf` (or not), and answers for it.
    fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>;

    /// Runs one write-side operation of `inner` (a write, a flush, a
    /// shutdown) and answers for it; by default, passes it through.
    fn poll_write_with<IO: AsyncWrite + Unpin, T>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        op(Pin::new(inner), cx)
    }
}

/// Reads from `inner` into `buf` and shows `seen` the bytes the read added,
/// if it added any: the read side of a hook that only watches.
pub fn read_seen<IO: AsyncRead + Unpin>(
    inner: &mut IO,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    seen: impl FnOnce(&[u8]),
) -> Poll<io::Result<()>> {
    let before = buf.filled().len();
    let r = Pin::new(inner).poll_read(cx, buf);
    if let Poll::Ready(Ok(())) = &r {
        if let Some(new) = buf.filled().get(before..).filter(|n| !n.is_empty()) {
            seen(new);
        }
    }
    r
}

/// `inner`, its reads and writes through an [`IoHook`].
#[derive(Debug)]
pub struct Watched<IO, H> {
    inner: IO,
    hook: H,
}

impl<IO, H> Watched<IO, H> {
    /// `inner` watched by `hook`.
    pub fn new(inner: IO, hook: H) -> Self {
        Watched { inner, hook }
    }
}

impl<IO: AsyncRead + Unpin, H: IoHook + Unpin> AsyncRead for Watched<IO, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.hook.poll_read_from(&mut this.inner, cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin, H: IoHook + Unpin> AsyncWrite for Watched<IO, H> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.hook
            .poll_write_with(&mut this.inner, cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.hook.poll_write_with(&mut this.inner, cx, |io, cx| {
            io.poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.hook
            .poll_write_with(&mut this.inner, cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.hook
            .poll_write_with(&mut this.inner, cx, |io, cx| io.poll_shutdown(cx))
    }
}
