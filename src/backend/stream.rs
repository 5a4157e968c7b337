//! The byte stream of one server connection: plain TCP, or TLS over it (`[server_tls]`).
//!
//! A `match` per call, as on the client side ([`crate::net::stream::ClientStream`]): a
//! plaintext server connection pays one predictable branch and runs the code it ran before
//! TLS existed; the TLS session is boxed so that the enum stays the size of a socket.
//!
//! The relay's promise is the client side's: bytes `try_write` or `poll_write` report written
//! need no further call (the relay never flushes). The TLS variant keeps it simply: its
//! `try_write` always answers `WouldBlock`, so every write goes through `poll_write`, which
//! reports bytes only once their records are on the socket.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A server connection's stream.
#[derive(Debug)]
pub enum ServerStream {
    /// Plaintext (`server_tls.mode = "disable"`, or `prefer` and the server answered 'N').
    Tcp(TcpStream),
    /// A TLS session with the server.
    Tls(Box<TlsServerStream>),
}

/// A TLS session with a server, after its handshake.
pub struct TlsServerStream {
    /// The session over the socket.
    inner: tokio_rustls::client::TlsStream<TcpStream>,
    /// Plaintext bytes rustls took whose records are not all on the socket yet; reported
    /// written once they are.
    accepted: usize,
}

impl std::fmt::Debug for TlsServerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServerStream")
            .field("socket", self.inner.get_ref().0)
            .finish_non_exhaustive()
    }
}

impl ServerStream {
    /// Wraps a completed handshake.
    pub fn tls(inner: tokio_rustls::client::TlsStream<TcpStream>) -> ServerStream {
        ServerStream::Tls(Box::new(TlsServerStream { inner, accepted: 0 }))
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    /// Writes without waiting if the socket takes it now; `WouldBlock` otherwise, and always
    /// through TLS (see the module doc).
    #[inline]
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_write(buf),
            ServerStream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Whether an idle connection has nothing to read and is not closed, without waiting.
    pub fn idle_and_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            ServerStream::Tcp(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            ServerStream::Tls(s) => {
                // One poll that registers no one: records that carry no data (a session
                // ticket) are consumed, anything else means the server spoke or closed.
                let mut cx = Context::from_waker(Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(&mut s.inner)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

impl AsyncRead for ServerStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(&mut s.inner).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => {
                if s.accepted == 0 {
                    let n = ready!(Pin::new(&mut s.inner).poll_write(cx, buf))?;
                    if !s.inner.get_ref().1.wants_write() {
                        return Poll::Ready(Ok(n));
                    }
                    s.accepted = n;
                }
                ready!(Pin::new(&mut s.inner).poll_flush(cx))?;
                Poll::Ready(Ok(std::mem::take(&mut s.accepted)))
            }
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(&mut s.inner).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(&mut s.inner).poll_shutdown(cx),
        }
    }
}
