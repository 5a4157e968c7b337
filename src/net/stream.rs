//! The client's byte stream: the one type a session reads and writes its client through.
//!
//! A client is a plain TCP socket today. TLS (rustls through tokio-rustls) will be one more
//! variant of [`ClientStream`] and one more arm in each method here; the session, which only
//! knows this type, does not change. This is the seam pingora keeps in
//! `protocols/l4/stream.rs`, put in before the feature rather than during it.
//!
//! Dispatch is a `match` per call, not a `Box<dyn>`: every request and every reply goes
//! through here, so there is no allocation and no indirect call, and with one variant the match
//! compiles away.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long a closing connection keeps draining what the client still sends (see
/// [`ClientStream::linger`]).
pub const LINGER: Duration = Duration::from_secs(1);

/// A connected client's stream.
///
/// `Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>)` goes beside `Tcp`: boxed, because a
/// TLS session takes kilobytes and an enum is as large as its largest variant, which every
/// plain (often idle) client would otherwise carry.
#[derive(Debug)]
pub enum ClientStream {
    /// A plain TCP connection (an SSLRequest, if the client sent one, was answered 'N').
    Tcp(TcpStream),
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
        }
    }

    /// Sets `TCP_NODELAY` on the underlying socket (a TLS variant sets it on the socket under
    /// the session).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.set_nodelay(nodelay),
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
        }
    }

    /// Vectored [`ClientStream::try_write`]: one `writev` for several chunks, same contract.
    #[inline]
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.try_write_vectored(bufs),
        }
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
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
        }
    }

    /// A TCP socket has nothing to flush, and the relay never calls this between writes: a
    /// TLS variant that can keep records buffered after a write it reported as done must make
    /// the session flush it (see [`ClientStream::try_write`]).
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
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
