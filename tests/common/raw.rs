//! Raw wire-protocol helpers for tests that must send what no well-behaved driver sends
//! (garbage, oversized frames, odd protocol versions) or look at bytes a driver hides
//! (NegotiateProtocolVersion, the SSL answer, BackendKeyData).
//!
//! Every read has a deadline, so a proxy that hangs makes the test fail instead of hang.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use causeway::protocol::backend::{error_fields, ErrorFields};
use causeway::protocol::decode_frame;
use causeway::protocol::startup::StartupMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a raw read waits before the test fails.
pub const READ_LIMIT: Duration = Duration::from_secs(10);

/// SSLRequest packet.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// GSSENCRequest packet.
pub const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// One backend message.
#[derive(Clone)]
pub struct Msg {
    /// Type byte.
    pub tag: u8,
    /// Body after the length field.
    pub body: Bytes,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tag == b'E' || self.tag == b'N' {
            write!(f, "Msg({:?}, {:?})", self.tag as char, self.error())
        } else {
            write!(f, "Msg({:?}, {} bytes)", self.tag as char, self.body.len())
        }
    }
}

impl Msg {
    /// The fields of an ErrorResponse / NoticeResponse.
    pub fn error(&self) -> ErrorFields {
        assert!(
            self.tag == b'E' || self.tag == b'N',
            "not an error or notice: {:?}",
            self.tag as char
        );
        error_fields(&self.body).expect("well-formed ErrorResponse")
    }

    /// The SQLSTATE of an ErrorResponse, or `None` for any other message.
    pub fn sqlstate(&self) -> Option<String> {
        (self.tag == b'E').then(|| self.error().code)
    }

    /// The int32 at the start of the body (authentication request codes).
    pub fn int32(&self) -> i32 {
        (&self.body[..]).get_i32()
    }

    /// The text columns of a DataRow (`None` for NULL).
    pub fn data_row(&self) -> Vec<Option<String>> {
        assert_eq!(self.tag, b'D', "not a DataRow");
        let mut b = &self.body[..];
        let n = b.get_i16();
        (0..n)
            .map(|_| {
                let len = b.get_i32();
                if len < 0 {
                    None
                } else {
                    let v = String::from_utf8(b[..len as usize].to_vec()).unwrap();
                    b.advance(len as usize);
                    Some(v)
                }
            })
            .collect()
    }
}

/// A StartupMessage for protocol 3.0.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    StartupMessage::encode(params.iter().copied()).to_vec()
}

/// A StartupMessage with an arbitrary protocol version.
pub fn startup_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = startup(params);
    let version = ((major as u32) << 16) | minor as u32;
    b[4..8].copy_from_slice(&version.to_be_bytes());
    b
}

/// A tagged frontend message.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(body.len() + 5);
    b.put_u8(tag);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(body);
    b.to_vec()
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

/// A CancelRequest packet.
pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&16i32.to_be_bytes());
    b.extend_from_slice(&80_877_102i32.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&secret.to_be_bytes());
    b
}

/// How a read ended when the peer did not send a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// EOF or connection reset.
    Closed,
    /// Nothing within the limit.
    TimedOut,
}

/// A raw client socket (or its read half) with a read buffer.
pub struct RawConn<S = TcpStream> {
    /// The socket.
    pub stream: S,
    buf: BytesMut,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        RawConn::from_stream(stream)
    }

    /// Wraps a connected socket.
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::with_capacity(8192),
        }
    }

    /// Splits into a reader (keeping the bytes already read) and the write half.
    pub fn split(self) -> (RawConn<OwnedReadHalf>, OwnedWriteHalf) {
        let (r, w) = self.stream.into_split();
        (
            RawConn {
                stream: r,
                buf: self.buf,
            },
            w,
        )
    }

    /// Makes dropping the socket send a TCP reset (SO_LINGER 0), like a client process that
    /// crashes with unread data or a middlebox that kills the connection.
    pub fn reset_on_drop(&self) {
        // Deprecated because a non-zero linger blocks the thread on drop; zero never blocks.
        #[allow(deprecated)]
        self.stream
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
    }

    /// Sends a simple query and returns every message up to ReadyForQuery.
    pub async fn simple_query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query(sql)).await;
        self.recv_until(b'Z').await
    }
}

impl<S> RawConn<S> {
    /// Wraps any connected stream (a TLS client session, say).
    pub fn wrap(stream: S) -> RawConn<S> {
        RawConn {
            stream,
            buf: BytesMut::with_capacity(8192),
        }
    }
}

impl<S: AsyncWrite + Unpin> RawConn<S> {
    /// Writes all of `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    /// Writes all of `bytes`, tolerating a peer that already closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }
}

impl<S: AsyncRead + Unpin> RawConn<S> {
    /// Reads more bytes; `Ok(false)` on EOF or reset.
    async fn fill(&mut self, deadline: Instant) -> Result<bool, Closed> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(Closed::TimedOut),
            Ok(Ok(0)) | Ok(Err(_)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
        }
    }

    /// Reads one untagged byte (the answer to SSLRequest / GSSENCRequest).
    pub async fn recv_byte(&mut self) -> u8 {
        let deadline = Instant::now() + READ_LIMIT;
        while self.buf.is_empty() {
            match self.fill(deadline).await {
                Ok(true) => {}
                other => panic!("expected one byte, got {other:?}"),
            }
        }
        self.buf.get_u8()
    }

    /// The next message, or why there is none, within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Msg, Closed> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 1 << 30).expect("well-formed frame") {
                return Ok(Msg {
                    tag: f.tag(),
                    body: f.into_raw().slice(5..),
                });
            }
            if !self.fill(deadline).await? {
                return Err(Closed::Closed);
            }
        }
    }

    /// The next message; panics if the connection closes or nothing comes within
    /// [`READ_LIMIT`].
    pub async fn recv(&mut self) -> Msg {
        match self.recv_within(READ_LIMIT).await {
            Ok(m) => m,
            Err(e) => panic!("expected a message, got {e:?}"),
        }
    }

    /// Every message up to and including the first with tag `tag`.
    pub async fn recv_until(&mut self, tag: u8) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            let done = m.tag == tag;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Reads (and collects) messages until the peer closes; fails if it is still open after
    /// `limit`.
    pub async fn recv_until_closed(&mut self, limit: Duration) -> Result<Vec<Msg>, Vec<Msg>> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            match self
                .recv_within(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(m) => out.push(m),
                Err(Closed::Closed) => return Ok(out),
                Err(Closed::TimedOut) => return Err(out),
            }
        }
    }
}

/// The client's BackendKeyData.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Process id as the proxy announced it.
    pub pid: i32,
    /// Secret.
    pub secret: i32,
}

/// Completes a startup as a trust user on an already-open raw connection: sends the
/// StartupMessage and reads up to ReadyForQuery. Returns the BackendKeyData and every message
/// received.
pub async fn startup_trust(conn: &mut RawConn, user: &str, db: &str) -> (Key, Vec<Msg>) {
    conn.send(&startup(&[("user", user), ("database", db)]))
        .await;
    let msgs = conn.recv_until(b'Z').await;
    (key_of(&msgs), msgs)
}

/// The BackendKeyData among `msgs`; panics (showing the messages) if there is none.
pub fn key_of(msgs: &[Msg]) -> Key {
    let k = msgs
        .iter()
        .find(|m| m.tag == b'K')
        .unwrap_or_else(|| panic!("no BackendKeyData in {msgs:?}"));
    let mut b = &k.body[..];
    Key {
        pid: b.get_i32(),
        secret: b.get_i32(),
    }
}

/// Connects and logs in as a trust user.
pub async fn login_trust(addr: SocketAddr, user: &str, db: &str) -> (RawConn, Key) {
    let mut c = RawConn::connect(addr).await;
    let (key, msgs) = startup_trust(&mut c, user, db).await;
    assert!(
        msgs.iter().any(|m| m.tag == b'R' && m.int32() == 0),
        "no AuthenticationOk in {msgs:?}"
    );
    (c, key)
}

/// The first ErrorResponse among `msgs`.
pub fn first_error(msgs: &[Msg]) -> Option<ErrorFields> {
    msgs.iter().find(|m| m.tag == b'E').map(Msg::error)
}

/// Extended-protocol messages built by hand.
pub mod ext {
    use super::frame;

    fn cstr(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    /// Parse with parameter type OIDs (0: let the server infer).
    pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in types {
            b.extend_from_slice(&t.to_be_bytes());
        }
        frame(b'P', &b)
    }

    /// Bind of the unnamed portal with text parameters, text results.
    pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, "");
        cstr(&mut b, stmt);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            b.extend_from_slice(&(p.len() as i32).to_be_bytes());
            b.extend_from_slice(p.as_bytes());
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        frame(b'B', &b)
    }

    /// Describe of a prepared statement.
    pub fn describe_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        cstr(&mut b, name);
        frame(b'D', &b)
    }

    /// Describe of the unnamed portal.
    pub fn describe_portal() -> Vec<u8> {
        frame(b'D', b"P\0")
    }

    /// Execute of the unnamed portal, no row limit.
    pub fn execute() -> Vec<u8> {
        frame(b'E', b"\0\0\0\0\0")
    }

    /// Flush.
    pub fn flush() -> Vec<u8> {
        frame(b'H', b"")
    }

    /// Sync.
    pub fn sync() -> Vec<u8> {
        frame(b'S', b"")
    }
}
