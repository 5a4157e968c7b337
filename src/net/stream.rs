//! The client's byte stream: the one type a session reads and writes its client through.
//!
//! A client is a plain TCP socket or a TLS session over one (rustls through tokio-rustls,
//! [`super::tls`]); the session, which only knows this type, does not change. This is the seam
//! pingora keeps in `protocols/l4/stream.rs`.
//!
//! Dispatch is a `match` per call, not a `Box<dyn>`: every request and every reply goes
//! through here, so there is no allocation and no indirect call; a plain client pays one
//! predictable branch on the variant and runs the same code as before TLS existed.

use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::tls::TlsClientStream;

/// How long a closing connection keeps draining what the client still sends (see
/// [`ClientStream::linger`]).
pub const LINGER: Duration = Duration::from_secs(1);

/// A connected client's stream.
#[derive(Debug)]
pub enum ClientStream {
    /// A plain TCP connection (an SSLRequest, if the client sent one, was answered 'N').
    Tcp(TcpStream),
    /// A TLS session. Boxed: a TLS session takes kilobytes and an enum is as large as its
    /// largest variant, which every plain (often idle) client would otherwise carry.
    Tls(Box<TlsClientStream>),
    /// No stream any more: a TLS handshake failed and took the socket with it. Every call
    /// fails with `NotConnected`.
    Gone,
}

impl From<TcpStream> for ClientStream {
    fn from(stream: TcpStream) -> ClientStream {
        ClientStream::Tcp(stream)
    }
}

impl ClientStream {
    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            ClientStream::Tcp(s) => s.peer_addr(),
            ClientStream::Tls(s) => s.socket().peer_addr(),
            ClientStream::Gone => Err(gone()),
        }
    }

    /// Sets `TCP_NODELAY` on the underlying socket (a TLS variant sets it on the socket under
    /// the session).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.set_nodelay(nodelay),
            ClientStream::Tls(s) => s.socket().set_nodelay(nodelay),
            ClientStream::Gone => Err(gone()),
        }
    }

    /// Writes `buf` without waiting, if the socket takes it now; `WouldBlock` otherwise.
    ///
    /// `Ok(n)` means those `n` bytes are on their way with no further call: the caller does
    /// not flush after it. Takes `&mut self` although a TCP socket would not need it, because
    /// a TLS variant encrypts into its session's buffer and then sends from it; such a variant
    /// answers `WouldBlock` whenever it cannot keep that promise without polling (its socket
    /// is full, or records from an earlier write are still buffered), and the bytes then go
    /// through [`AsyncWrite::poll_write`], which can wait.
    #[inline]
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.try_write(buf),
            ClientStream::Tls(s) => s.try_write_with(|w| w.write(buf)),
            ClientStream::Gone => Err(gone()),
        }
    }

    /// Vectored [`ClientStream::try_write`]: one `writev` for several chunks, same contract.
    #[inline]
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.try_write_vectored(bufs),
            ClientStream::Tls(s) => s.try_write_with(|w| w.write_vectored(bufs)),
            ClientStream::Gone => Err(gone()),
        }
    }

    /// Ready once a read would find something (data, EOF or an error): lets a caller wait
    /// for a request without holding a buffer for it. A TLS stream is ready at once, as
    /// rustls may hold decrypted bytes while its socket has nothing new.
    #[inline]
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Tcp(s) => s.poll_read_ready(cx),
            ClientStream::Tls(_) => Poll::Ready(Ok(())),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    /// Whether the client's connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The ALPN protocol the TLS handshake agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Tls(s) => s.alpn_protocol(),
            _ => None,
        }
    }

    /// The client's TLS certificate (its leaf), if it presented one.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Tls(s) => s.peer_certificate(),
            _ => None,
        }
    }

    /// The first byte the client sends, left unread (`None` at EOF): tells a TLS ClientHello
    /// (direct TLS) from a startup packet without consuming either.
    pub async fn peek_first_byte(&mut self) -> io::Result<Option<u8>> {
        let ClientStream::Tcp(s) = self else {
            return Ok(None);
        };
        let mut b = [0u8; 1];
        Ok((s.peek(&mut b).await? == 1).then_some(b[0]))
    }

    /// Runs a TLS handshake over the plain socket and becomes the TLS variant. The caller has
    /// checked that nothing the client sent is left unread in clear text. A failed handshake
    /// leaves [`ClientStream::Gone`].
    pub async fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let ClientStream::Tcp(tcp) = std::mem::replace(self, ClientStream::Gone) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS was already negotiated",
            ));
        };
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        *self = ClientStream::Tls(Box::new(TlsClientStream::new(tls)));
        Ok(())
    }

    /// Closes the sending side (FIN) and reads and discards whatever the client still sends
    /// until it closes too, for at most `limit`.
    ///
    /// Closing a socket that has unread bytes makes the kernel send a TCP reset instead of a
    /// FIN, and the reset throws away everything the socket has not delivered yet: the last
    /// replies and the FATAL error the proxy just "flushed" may never reach the client, which
    /// then sees "connection reset" instead of the reason. That is exactly the case when the
    /// proxy ends a connection on its own initiative while the client is still sending (an
    /// oversized message, a request racing a shutdown, a client over the connection limit).
    /// Through TLS the shutdown also sends the session's close_notify.
    pub async fn linger(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.shutdown()).await;
        let deadline = tokio::time::Instant::now() + limit;
        // On the heap: a 4 KiB array here would sit in the future of every session (it is the
        // last thing a session awaits), idle or not.
        let mut sink = vec![0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// The error of a stream whose TLS handshake failed.
fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

// === impl AsyncRead, AsyncWrite ===
//
// Every method forwards to the variant's own, vectored writes included: the default
// `poll_write_vectored` would send only the first chunk.

impl AsyncRead for ClientStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for ClientStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::Gone => false,
        }
    }

    /// A TCP socket has nothing to flush, and the relay never calls this between writes: the
    /// TLS variant reports no write as done while its records are still buffered (see
    /// [`super::tls`]), so nothing waits for a flush that never comes.
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair: the proxy's side as a `ClientStream`, the client's as a socket.
    async fn pair() -> (ClientStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (ClientStream::from(accepted), client)
    }

    #[tokio::test]
    async fn reads_and_writes_go_through_to_the_socket() {
        let (mut stream, mut client) = pair().await;
        assert_eq!(
            stream.peer_addr().unwrap(),
            client.local_addr().unwrap(),
            "peer_addr is the client's end"
        );
        stream.set_nodelay(true).unwrap();
        assert!(stream.is_write_vectored());

        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        // An empty socket buffer takes a small write at once.
        assert_eq!(stream.try_write(b"a").unwrap(), 1);
        let bufs = [IoSlice::new(b"bc"), IoSlice::new(b"de")];
        assert_eq!(stream.try_write_vectored(&bufs).unwrap(), 4);
        stream.write_all_buf(&mut &b"f"[..]).await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdef");
    }

    #[tokio::test]
    async fn linger_closes_after_draining_what_the_client_sends() {
        let (mut stream, mut client) = pair().await;
        client.write_all(b"unread").await.unwrap();
        let lingering = tokio::spawn(async move { stream.linger(LINGER).await });
        // The proxy's side sent its FIN: the client sees EOF, not a reset.
        let mut buf = [0u8; 16];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        drop(client);
        tokio::time::timeout(LINGER, lingering)
            .await
            .expect("linger ends when the client closes")
            .unwrap();
    }
}
