//! An I/O stream under hyper whose reads a [`ReadHook`] watches or ends,
//! with every write passed straight through: the read side of the
//! smuggling guard ([`crate::framing::Framing`]) and of the close of
//! connections that carry no request (`idle.rs`), around one write side.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`ReadWatch`] does in place of a plain read.
pub trait ReadHook {
    /// Reads from `inner` into `buf` (or not), and answers for it.
    fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>;
}

/// `inner`, its reads through a [`ReadHook`], its writes untouched.
#[derive(Debug)]
pub struct ReadWatch<IO, H> {
    inner: IO,
    hook: H,
}

impl<IO, H> ReadWatch<IO, H> {
    /// `inner` read through `hook`.
    pub fn new(inner: IO, hook: H) -> Self {
        ReadWatch { inner, hook }
    }
}

impl<IO: AsyncRead + Unpin, H: ReadHook + Unpin> AsyncRead for ReadWatch<IO, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.hook.poll_read_from(&mut this.inner, cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin, H: Unpin> AsyncWrite for ReadWatch<IO, H> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
