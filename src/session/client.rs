//! The client side of a session: stream, read buffer, and the queue of bytes to send.
//!
//! The session reads and writes its client only through [`ClientConn`]'s methods, and
//! `ClientConn` only through [`ClientStream`], so a TLS client changes that stream type and
//! nothing here or in the relay.
//!
//! Outgoing bytes are kept as a queue of chunks (most of them zero-copy slices of a server's
//! read buffer; slices that follow each other in that buffer are merged back into one) and
//! written with one (vectored) write for everything queued.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};

use crate::net::stream::{ClientStream, LINGER};
use crate::protocol::messages::ProxyError;

/// The read buffer a read takes when the client holds none.
const FIRST_READ: usize = 1024;

/// Most chunks handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// A connected client.
pub struct ClientConn {
    /// The client's stream (TCP, or later TLS); read and written only through the methods
    /// below.
    stream: ClientStream,
    /// Bytes read and not consumed yet (at most one incomplete frame after processing).
    pub(crate) rbuf: BytesMut,
    /// Chunks waiting to be written, oldest first.
    pub(crate) out: VecDeque<BytesMut>,
    /// Total bytes in `out`.
    out_len: usize,
    /// The client's address.
    peer: SocketAddr,
}

impl ClientConn {
    /// Wraps an accepted client stream.
    pub fn new(stream: ClientStream, peer: SocketAddr) -> ClientConn {
        ClientConn {
            stream,
            rbuf: BytesMut::new(),
            out: VecDeque::new(),
            out_len: 0,
            peer,
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// The client stream (TLS details for the startup phase).
    pub fn stream(&self) -> &ClientStream {
        &self.stream
    }

    /// See [`ClientStream::peek_first_byte`].
    pub async fn peek_first_byte(&mut self) -> std::io::Result<Option<u8>> {
        self.stream.peek_first_byte().await
    }

    /// See [`ClientStream::start_tls`].
    pub async fn start_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        self.stream.start_tls(config).await
    }

    /// Queues bytes for the client. A chunk that continues the last one queued in the same
    /// buffer (the next frames of a server's reply, split off one by one) is merged into it:
    /// fewer chunks to track, and usually a plain `send` instead of a vectored write.
    #[inline]
    pub fn push(&mut self, bytes: BytesMut) {
        if bytes.is_empty() {
            return;
        }
        self.out_len += bytes.len();
        if let Some(last) = self.out.back_mut() {
            // `unsplit` is O(1) exactly when the two are adjacent parts of one buffer (it
            // checks that too); adjacent memory is a cheap first test.
            if last.as_ptr().wrapping_add(last.len()) == bytes.as_ptr() {
                last.unsplit(bytes);
                return;
            }
        }
        self.out.push_back(bytes);
    }

    /// Queues bytes that are not part of a larger buffer (a message the proxy built).
    pub fn push_bytes(&mut self, bytes: Bytes) {
        // Sole owner: converting takes the allocation over without copying.
        self.push(BytesMut::from(bytes));
    }

    /// Queues an ErrorResponse or NoticeResponse.
    pub fn push_error(&mut self, e: &ProxyError) {
        self.push_bytes(e.to_bytes());
    }

    /// Bytes queued for the client.
    #[inline]
    pub fn out_len(&self) -> usize {
        self.out_len
    }

    /// Makes room in the read buffer before a read (reads in chunks, not 64 bytes at a time).
    ///
    /// A client that holds no read buffer (see [`ClientConn::release_read_buffer`]) gets
    /// none here: the read takes one once the socket is readable.
    #[inline]
    pub fn prepare_read(&mut self) {
        if self.rbuf.capacity() == 0 {
            return;
        }
        // A large message grows the buffer, and a buffer left large and empty after one is
        // given back.
        if self.rbuf.is_empty() && self.rbuf.capacity() > 64 * 1024 {
            self.rbuf = BytesMut::new();
            return;
        }
        if self.rbuf.capacity() - self.rbuf.len() < 512 {
            // A buffer that filled up grows by 4 KiB at a time (and doubles when it
            // reallocates).
            self.rbuf.reserve(4096);
        }
    }

    /// Gives back an empty read buffer (plain TCP): a client that waits, perhaps for hours,
    /// holds none until its socket is readable (issue 17). A TLS client keeps its buffer:
    /// rustls may hold decrypted bytes while the socket has nothing new, so a read is always
    /// tried at once (see [`ClientStream::poll_read_ready`]).
    pub fn release_read_buffer(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 && !self.stream.is_tls() {
            self.rbuf = BytesMut::new();
        }
    }

    /// Gives back both buffers when they are empty: the read buffer (see
    /// [`ClientConn::release_read_buffer`]) and the write queue's slots.
    pub fn release_buffers(&mut self) {
        self.release_read_buffer();
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
    }

    /// Ready once the socket is readable (or failed): a parked session's wait, which reads
    /// nothing (see `Session::park`).
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    /// Reads once into the read buffer after making room (used during startup).
    pub async fn read_some(&mut self) -> std::io::Result<usize> {
        self.prepare_read();
        self.read_into_buf().await
    }

    /// Reads once into the read buffer as it is (the caller made room with
    /// [`ClientConn::prepare_read`]); 0 at EOF. Cancel-safe: a read either completes or
    /// leaves nothing behind.
    pub(crate) async fn read_into_buf(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_into_buf(cx)).await
    }

    /// Polls one read into the read buffer as it is (the relay's client-readable event); 0 at
    /// EOF.
    #[inline]
    pub(crate) fn poll_read_into_buf(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if self.rbuf.capacity() == 0 {
            // No buffer held: wait until there is something to read, then take one; 1 KiB
            // holds any ordinary request.
            std::task::ready!(self.stream.poll_read_ready(cx))?;
            self.rbuf.reserve(FIRST_READ);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while self.out_len > 0 {
            let n = std::future::poll_fn(|cx| self.poll_write_queued(cx)).await?;
            self.advance(n)?;
        }
        Ok(())
    }

    /// Ends the connection gracefully after the last flush: see [`ClientStream::linger`].
    pub async fn linger(&mut self) {
        self.stream.linger(LINGER).await;
    }

    /// One write of what is queued (one `send`, or a vectored write for several chunks), when
    /// the socket takes it; the caller advances the queue. Cancel-safe: nothing is written
    /// unless it completes.
    pub(crate) fn poll_write_queued(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let stream = Pin::new(&mut self.stream);
        if self.out.len() == 1 {
            return tokio::io::AsyncWrite::poll_write(stream, cx, &self.out[0]);
        }
        let (slices, n) = io_slices(&self.out);
        tokio::io::AsyncWrite::poll_write_vectored(stream, cx, &slices[..n])
    }

    /// Writes what is queued without waiting (one `send` or vectored write), if the socket
    /// takes it now; `WouldBlock` otherwise. The caller advances the queue.
    pub(crate) fn try_write_queued(&mut self) -> std::io::Result<usize> {
        if self.out.len() == 1 {
            return self.stream.try_write(&self.out[0]);
        }
        let (slices, n) = io_slices(&self.out);
        self.stream.try_write_vectored(&slices[..n])
    }

    /// Removes `n` written bytes from the front of the queue.
    pub(crate) fn advance(&mut self, mut n: usize) -> std::io::Result<()> {
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.out_len -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        Ok(())
    }
}

/// The first [`MAX_IOVECS`] queued chunks as slices for a vectored write, and how many.
fn io_slices(out: &VecDeque<BytesMut>) -> ([IoSlice<'_>; MAX_IOVECS], usize) {
    let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
    let mut n = 0;
    for (slot, chunk) in slices.iter_mut().zip(out.iter()) {
        *slot = IoSlice::new(chunk);
        n += 1;
    }
    (slices, n)
}
