//! The relay loop: client requests go to the server, replies stream back, in both directions
//! at once. The loop is a list of steps, each in its own file: the client's bytes become
//! requests here, `dispatch` routes and sends them, `replies` applies what the server answers
//! (through the misroute guard, `guard`), `causal` keeps read-your-writes, `commands` answers
//! `causeway.*` statements, and `lifecycle` gets and gives back server connections.
//!
//! One wait (`next_event`, a single poll function) covers four things: bytes from the client,
//! room to write to the client, bytes from the server, room to write to the server. Reading and
//! writing each side concurrently is what keeps a proxy from deadlocking when both peers write
//! more than a socket buffer holds (a large pipelined batch whose replies fill the other
//! direction). Backpressure is explicit: the server is not read while too much waits for the
//! client, the client is not read while too much waits for the server.
//!
//! Every read and write in that wait is cancel-safe (a read or write either completes or does
//! nothing), and partial frames stay in the buffers between iterations.

use std::task::Poll;

use bytes::BytesMut;

use super::cancel::Stop;
use super::dispatch::Terminator;
use super::{idle, CopyIn, Session, SessionError};
use crate::protocol::frontend::{is_known_tag, tag as ftag};
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::{decode_frame, ProtocolError, SqlState};

/// Stop reading the server while this many bytes wait to be written to the client.
const CLIENT_OUT_HIGH: usize = 256 * 1024;
/// Stop reading the client while this many bytes wait to be written to the server.
const SERVER_OUT_HIGH: usize = 256 * 1024;
/// Forward an unfinished extended-protocol batch once it is this large.
const BATCH_FORWARD: usize = 64 * 1024;
/// Forward an unfinished extended-protocol batch (frames without Sync or Flush yet) once the
/// client has sent nothing more for this long. PostgreSQL runs each message as it arrives and
/// flushes its output when it reports an error or a notice, so a client may pipeline without
/// Sync and wait for exactly that. Not at once: a batch whose bytes arrive in several reads
/// (a large write, libpq's pipeline mode flushing every 8 KiB) is routed as a whole when it
/// is complete, where an unfinished one must go to the primary.
/// How long a draining session whose client has sent nothing since its welcome waits for the
/// first request before it ends. Ending it at once would fail a client that connected just
/// as the proxy began to stop, typically while a new process takes over the port: it would
/// get 57P01 for a connection it was never able to use.
const FIRST_REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

const UNFINISHED_BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// What ended one wait of the loop.
enum Event {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    Shutdown,
    /// The shutdown grace period is over.
    Kill,
    /// The client stayed idle for `proxy.client_idle_timeout` (or, in a transaction,
    /// `proxy.idle_transaction_timeout`).
    IdleTimeout(idle::Idle),
    /// The client sent nothing more of an unfinished batch for [`UNFINISHED_BATCH_WAIT`].
    BatchWait,
    /// The client has sent nothing for a while (see `CancelRegistry::trim_idle`).
    Trim,
}

/// How a run of the relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Relayed {
    /// The session is over.
    Done,
    /// The session is idle with nothing held: park it (`Session::park`) until its client
    /// has something to say, then relay again.
    Parked,
}

/// A parked session's wait (see [`Session::park`]).
pub(super) struct Park<'a> {
    session: &'a mut Session,
}

/// A parked session counts in `clients_parked` until its `Park` ends (or is dropped).
impl Drop for Park<'_> {
    fn drop(&mut self) {
        self.session.ctx.metrics().clients_parked.dec();
    }
}

impl std::future::Future for Park<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let session = &mut *self.get_mut().session;
        // A trim request (below `Drain`) does not wake it: it is parked already.
        if session.cancel.slot().poll_stop(cx, Stop::Drain).is_ready()
            || session.client.poll_read_ready(cx).is_ready()
        {
            return Poll::Ready(());
        }
        // Armed anew at every poll (a wake-up of a parked session is rare): the deadline runs
        // from when the idleness began, as in the relay's wait.
        let idle = session.idleness();
        match session.idle_timer.as_deref_mut().and_then(|t| t.arm(idle)) {
            Some(sleep) => std::future::Future::poll(sleep, cx),
            None => Poll::Pending,
        }
    }
}

/// Whether the relay goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    End,
    /// Park the session (an idle one asked to trim).
    Park,
}

impl Session {
    /// Relays until the client terminates, the proxy shuts down, or an error ends the session
    /// (`Done`), or, when `may_park`, until the session can be parked (`Parked`: the welcome
    /// is out and the client has sent nothing yet). After a park it relays at least one event
    /// before parking again (`may_park` false), so a client whose socket woke the park is
    /// read.
    pub(super) async fn relay(&mut self, mut may_park: bool) -> Result<Relayed, SessionError> {
        if !may_park {
            // Back from a park: a trim request that came meanwhile is done.
            self.cancel.slot().clear_trim();
        }
        // Bytes the client sent before the welcome was complete (read while waiting for a
        // server connection).
        if !self.client.rbuf.is_empty() {
            self.awaiting_first_request = false;
            if self.on_client_bytes().await? == Flow::End {
                return Ok(Relayed::Done);
            }
        }
        loop {
            self.write_now();
            if self.awaiting_first_request && may_park && self.parkable() {
                return Ok(Relayed::Parked);
            }
            may_park = true;
            let event = self.next_event().await;
            match self.on_event(event).await? {
                Flow::Continue => {}
                Flow::End => return Ok(Relayed::Done),
                Flow::Park => return Ok(Relayed::Parked),
            }
            if self.between_events().await? == Flow::End {
                return Ok(Relayed::Done);
            }
        }
    }

    /// Whether the session holds nothing the relay's wait would have to watch besides the
    /// client's socket, the stop signal and the idle timer: no server connection, nothing
    /// to write or read, no request in any stage, not draining; and a plain TCP client
    /// (TLS may hold decrypted bytes the socket's readiness does not show).
    fn parkable(&self) -> bool {
        self.server.is_none()
            && self.client.out_len() == 0
            && self.client.rbuf.is_empty()
            && !self.client.is_tls()
            && self.is_quiet()
            && !self.skip_until_sync
            && !self.draining
            && !self.params_dirty
            && self.deferred.is_empty()
            && self.violation.is_none()
            && self.retry_now.is_none()
    }

    /// Waits, with the relay's future freed, until the client's socket is readable (or
    /// failed), the proxy begins to stop, or the idle timer fires; the relay then finds out
    /// which. Only a session that is [`Self::parkable`]: an idle client holds its session, its
    /// task and its socket's registration, nothing more (issue 17): no read buffer, write
    /// queue or misroute guard (they come back with its next request). A future of one
    /// pointer: the session task holds it inline.
    pub(super) fn park(&mut self) -> Park<'_> {
        self.client.release_buffers();
        self.guard.release();
        self.ctx.metrics().clients_parked.inc();
        Park { session: self }
    }
    /// The kind of idleness whose limit applies now (`None`: busy, or no limit is set):
    /// `proxy.client_idle_timeout` and `proxy.idle_transaction_timeout`. When both are off,
    /// no check. The client's own view of its transaction counts too (one whose server died
    /// mid-transaction still has it open until its next request fails).
    #[inline]
    fn idleness(&self) -> Option<idle::Idle> {
        match self.idle_timer.is_some() && self.is_quiet() {
            false => None,
            true if self.tx_status.is_in_transaction()
                || self
                    .server
                    .as_deref()
                    .is_some_and(|s| s.status().is_in_transaction()) =>
            {
                Some(idle::Idle::Transaction)
            }
            true => Some(idle::Idle::Session),
        }
    }

    /// One event of the wait.
    async fn on_event(&mut self, event: Event) -> Result<Flow, SessionError> {
        if matches!(event, Event::ClientRead(Ok(n)) if n > 0) {
            self.awaiting_first_request = false;
            self.cancel.slot().touch();
        }
        Ok(match event {
            Event::ClientRead(Ok(0)) => return Err(SessionError::Closed),
            Event::ClientRead(Ok(_)) if self.violation.is_some() => {
                // Keep draining so a client busy writing can still read its replies.
                self.client.rbuf.clear();
                Flow::Continue
            }
            Event::ClientRead(Ok(_)) => self.client_bytes_or_violation().await?,
            Event::ClientRead(Err(e)) | Event::ClientWrote(Err(e)) => return Err(e.into()),
            Event::ClientWrote(Ok(n)) => {
                self.client.advance(n)?;
                Flow::Continue
            }
            Event::ServerRead(Ok(0)) => self.server_lost("closed the connection")?,
            Event::ServerRead(Ok(_)) => {
                let flow = self.on_server_bytes()?;
                self.answer_deferred();
                flow
            }
            Event::ServerRead(Err(e)) | Event::ServerWrote(Err(e)) => {
                self.server_lost(&e.to_string())?
            }
            Event::ServerWrote(Ok(_)) => Flow::Continue,
            Event::Shutdown => {
                self.draining = true;
                if self.awaiting_first_request {
                    self.drain_deadline = Some(tokio::time::Instant::now() + FIRST_REQUEST_WAIT);
                }
                Flow::Continue
            }
            Event::Kill => {
                return Err(SessionError::Fatal(ProxyError::fatal(
                    SqlState::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                )))
            }
            Event::IdleTimeout(kind) => return Err(SessionError::Fatal(idle::timeout_error(kind))),
            Event::Trim => {
                // A client idle after activity keeps no buffers, and an idle session no
                // relay (its buffers and future come back with its next request).
                self.cancel.slot().clear_trim();
                self.client.release_buffers();
                if self.parkable() {
                    return Ok(Flow::Park);
                }
                Flow::Continue
            }
            Event::BatchWait => {
                // What the client sent runs, as it would directly; the rest of the batch
                // follows on the same connection.
                if !self.batch.is_empty() && self.held.is_none() && self.violation.is_none() {
                    Box::pin(self.dispatch(Terminator::Partial)).await?;
                }
                Flow::Continue
            }
        })
    }

    /// What may happen once an event was handled: a broken client's error, the pool hearing
    /// of stale statements, parameters read back, the connection released, requests that
    /// waited go on (bytes in the read buffer, a refused read re-run, a held request), and a
    /// draining session ends once idle.
    async fn between_events(&mut self) -> Result<Flow, SessionError> {
        if self.violation.is_some() && self.replies_done() {
            if let Some(e) = self.violation.take() {
                return Err((*e).into());
            }
        }
        if let Some(lease) = self.server.as_mut() {
            // Tell the pool now, so other connections re-prepare before their clients hit the
            // same stale plan.
            lease.sync_stale_statements();
        }
        if self.params_dirty {
            Box::pin(self.refresh_params()).await?;
        }
        self.maybe_release();
        // Requests that waited behind a held-back `causeway.*` answer or the proxy's own
        // replies go on.
        if !self.client.rbuf.is_empty()
            && !self.client_stalled()
            && self.violation.is_none()
            && self.client_bytes_or_violation().await? == Flow::End
        {
            return Ok(Flow::End);
        }
        self.maybe_release();
        if let Some(g) = self.retry_now.take() {
            Box::pin(self.retry_on_primary(*g)).await?;
        }
        if self.held.is_some() && !self.behind_standby_read() {
            if let Some(h) = self.held.take() {
                self.batch = h.frames;
                self.batch_len = h.len;
                Box::pin(self.dispatch(h.term)).await?;
                // What the client sent behind it waited in the read buffer.
                if self.held.is_none()
                    && !self.client.rbuf.is_empty()
                    && self.on_client_bytes().await? == Flow::End
                {
                    return Ok(Flow::End);
                }
            }
        }
        if self.draining && self.is_idle() && self.held.is_none() && !self.waits_for_first_request()
        {
            let e = ProxyError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            );
            self.ctx.metrics().count_proxy_error(&e);
            self.client.push_error(&e);
            return Ok(Flow::End);
        }
        Ok(Flow::Continue)
    }

    /// A draining session whose client has not yet sent its first request, within
    /// [`FIRST_REQUEST_WAIT`].
    fn waits_for_first_request(&self) -> bool {
        self.awaiting_first_request
            && self
                .drain_deadline
                .is_some_and(|d| tokio::time::Instant::now() < d)
    }

    /// Writes what is queued for either side right away when the socket takes it, without
    /// going through the wait in `next_event` (which would find it writable, write, and wake
    /// up once more): a request goes to the server, and a reply to the client, in the same turn
    /// as it was read. Errors and full sockets are left to that wait, which sees them again.
    fn write_now(&mut self) {
        if let Some(s) = self.server.as_deref_mut() {
            s.try_flush();
        }
        if self.client.out_len() > 0 {
            if let Ok(n) = self.client.try_write_queued() {
                if n > 0 {
                    // `n` never exceeds what is queued.
                    let _ = self.client.advance(n);
                }
            }
        }
    }

    /// Waits for the next I/O event on either side.
    async fn next_event(&mut self) -> Event {
        if self.awaiting_first_request {
            // Logged in and welcomed, and nothing asked yet (many clients of a pool stay so):
            // nothing held for it but its state. Once it has sent something, never again.
            self.client.release_buffers();
        }
        self.client.prepare_read();
        let stalled = self.client_stalled();
        let hold_limit = if self.held.is_some() {
            self.max_message.min(1 << 20)
        } else {
            usize::MAX
        };
        // client_idle_timeout and idle_transaction_timeout: when both are off, no timer, no
        // idleness check, no clock read.
        let idle = self.idleness();
        // The same timer wakes a draining session that waits for its first request.
        let batch_wait = if !self.batch.is_empty() && !stalled && self.held.is_none() {
            self.batch_deadline
        } else if self.draining && self.awaiting_first_request {
            self.drain_deadline
        } else {
            None
        }
        .map(tokio::time::sleep_until);
        let mut batch_wait = std::pin::pin!(batch_wait);
        let Session {
            client,
            server,
            cancel,
            draining,
            idle_timer,
            ..
        } = self;
        // Only read when the sleep fires, which it does only while idle.
        let idle_kind = idle.unwrap_or(idle::Idle::Session);
        let mut idle_sleep = idle_timer.as_deref_mut().and_then(|t| t.arm(idle));
        let client_out_len = client.out_len();
        let server_out_len = match server.as_deref_mut() {
            Some(s) => {
                s.prepare_read();
                s.out_len()
            }
            None => 0,
        };
        let read_server = server.is_some() && client_out_len < CLIENT_OUT_HIGH;
        // While a request is held back, what follows it waits in the read buffer: bounded.
        let read_client =
            server_out_len < SERVER_OUT_HIGH && !stalled && client.rbuf.len() < hold_limit;
        let slot = &**cancel.slot();
        // One poll for all levels: while running it waits for a trim request or a drain,
        // while draining for the kill.
        let stop_at = if *draining { Stop::Kill } else { Stop::Trim };
        // In a fixed order (no random start, which costs a thread-local RNG draw per
        // wake-up): the stop signal, then writes, since they free room; then the server's
        // replies, then the client's requests. Only sides that are ready compete, and each
        // one's action makes it unready before long (a read fills a bounded queue, a write
        // drains it), so none starves another for good. Every poll is cancel-safe: a read or
        // write either completes here or leaves nothing half done.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(stop) = slot.poll_stop(cx, stop_at) {
                return Poll::Ready(match stop {
                    Stop::Kill => Event::Kill,
                    Stop::Drain => Event::Shutdown,
                    _ => Event::Trim,
                });
            }
            if client_out_len > 0 {
                if let Poll::Ready(r) = client.poll_write_queued(cx) {
                    return Poll::Ready(Event::ClientWrote(r));
                }
            }
            if let Some(s) = server.as_deref_mut() {
                if server_out_len > 0 {
                    if let Poll::Ready(r) = s.poll_flush_out(cx) {
                        return Poll::Ready(Event::ServerWrote(r));
                    }
                }
                if read_server {
                    if let Poll::Ready(r) = s.poll_fill(cx) {
                        return Poll::Ready(Event::ServerRead(r));
                    }
                }
            }
            if read_client {
                if let Poll::Ready(r) = client.poll_read_into_buf(cx) {
                    return Poll::Ready(Event::ClientRead(r));
                }
            }
            if let Some(sleep) = batch_wait.as_mut().as_pin_mut() {
                if std::future::Future::poll(sleep, cx).is_ready() {
                    return Poll::Ready(Event::BatchWait);
                }
            }
            // Last: a request that arrives as the time runs out is served.
            if let Some(sleep) = idle_sleep.as_mut() {
                if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                    return Poll::Ready(Event::IdleTimeout(idle_kind));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Whether every request already sent to the server has been answered in full, or cannot
    /// be (a COPY IN waits for data that will not come).
    fn replies_done(&self) -> bool {
        matches!(self.copy_in, CopyIn::Active { .. })
            || self.server.as_deref().is_none_or(|s| s.replies_done())
    }

    /// Whether the client is between requests: nothing in flight, no partial batch, no COPY,
    /// no request held back (a transaction may be open).
    fn is_quiet(&self) -> bool {
        self.batch.is_empty()
            && self.copy_in == CopyIn::Off
            && !self.skip_until_sync
            && self.held.is_none()
            && self.server.as_deref().is_none_or(|s| s.replies_done())
    }

    /// Whether nothing is in flight: no request, no transaction, no partial batch, no COPY.
    pub(super) fn is_idle(&self) -> bool {
        self.batch.is_empty()
            && self.copy_in == CopyIn::Off
            && !self.skip_until_sync
            && self
                .server
                .as_deref()
                .is_none_or(|s| s.replies_done() && !s.status().is_in_transaction())
    }

    // === client → server ===

    /// Whether the client's next request must wait: a `causeway.*` answer is held back behind
    /// earlier replies, or (transaction pooling, between transactions) the server connection
    /// owes only the proxy's own replies, such as the read-your-writes probe sent behind the
    /// last write. Those are already on their way; once they are in, the connection goes back
    /// to the pool and the next request is routed with the session's new position, instead of
    /// following the write to the primary.
    fn client_stalled(&self) -> bool {
        if !self.deferred.is_empty() {
            return true;
        }
        self.mode == crate::config::PoolMode::Transaction
            && self.pinned.is_none()
            && !self.tx_status.is_in_transaction()
            && self.copy_in == CopyIn::Off
            && self
                .server
                .as_deref()
                .is_some_and(|s| s.owes_only_proxy_replies())
    }

    /// A CopyData, CopyDone or CopyFail of the client's that is not part of an unfinished
    /// batch: it goes to the server connection at once, right behind the request that started
    /// the COPY, whether or not the server has asked for data yet (see [`CopyIn`]). Never
    /// into a batch of its own, which would be routed, held or sent after a CopyDone that
    /// went straight through. PostgreSQL ignores these messages outside COPY (a client still
    /// sending after its COPY failed): they do too here, or are dropped when no connection is
    /// held.
    fn copy_frame(&mut self, frame: &crate::protocol::Frame) {
        let ends = frame.tag() != ftag::COPY_DATA;
        if ends {
            self.copy_in = match self.copy_in {
                CopyIn::Requested => CopyIn::EndedEarly,
                CopyIn::Active { .. } => CopyIn::Off,
                other => other,
            };
        }
        if let Some(s) = self.server.as_deref_mut() {
            s.send_raw(frame.raw());
            if ends {
                s.copy_in_done();
            }
        }
    }

    /// [`Self::on_client_bytes`], turning a protocol violation into a pending error (answered
    /// once earlier replies are out).
    async fn client_bytes_or_violation(&mut self) -> Result<Flow, SessionError> {
        match self.on_client_bytes().await {
            Err(SessionError::Protocol(e)) => {
                self.client.rbuf.clear();
                self.violation = Some(Box::new(e));
                Ok(Flow::Continue)
            }
            other => other,
        }
    }

    /// Handles every complete frame the client has sent. Stops (leaving the rest buffered) while a
    /// `causeway.*` answer waits for earlier replies, so replies keep the requests' order.
    async fn on_client_bytes(&mut self) -> Result<Flow, SessionError> {
        // The frames of the batch are left in the read buffer as they are scanned and cut off
        // together (one chunk per request, see `Batch`): `scanned` is how many bytes at its
        // front they hold. Whatever ends the scan cuts them first.
        let mut scanned = 0;
        let r = self.client_frames(&mut scanned).await;
        self.batch.cut(&mut self.client.rbuf, scanned);
        if r? == Flow::End {
            return Ok(Flow::End);
        }
        if !self.batch.is_empty() {
            // An unfinished batch: sent on if the client sends nothing more for a while.
            self.batch_deadline = Some(tokio::time::Instant::now() + UNFINISHED_BATCH_WAIT);
        }
        Ok(Flow::Continue)
    }

    /// The body of [`Self::on_client_bytes`]: handles the frames in the read buffer, the
    /// batch's frames noted in place (`scanned` bytes at its front, cut off before a request
    /// is dispatched).
    async fn client_frames(&mut self, scanned: &mut usize) -> Result<Flow, SessionError> {
        while !self.client_stalled() {
            if self.held.is_some() {
                // Everything after a held request waits for it.
                break;
            }
            // The common case: a complete frame of the batch, noted where it is.
            if let Some((tag, len)) = self.batch_frame_at(*scanned) {
                self.batch.note(*scanned, *scanned + len);
                *scanned += len;
                self.batch_len += len;
                let term = match tag {
                    ftag::QUERY => Terminator::Query,
                    ftag::SYNC => Terminator::Sync,
                    ftag::FLUSH => Terminator::Flush,
                    _ if self.batch_len > BATCH_FORWARD => Terminator::Partial,
                    _ => continue,
                };
                self.batch
                    .cut(&mut self.client.rbuf, std::mem::take(scanned));
                if term == Terminator::Partial {
                    Box::pin(self.dispatch(term)).await?;
                } else {
                    // Not boxed: `dispatch` keeps its large slow path (checkout, connecting,
                    // read-your-writes asks) in a boxed future of its own.
                    self.dispatch(term).await?;
                }
                continue;
            }
            // Anything else (an incomplete frame, COPY data, a Terminate, a frame skipped
            // after an error, a bad one) is decoded on its own, behind the batch's frames.
            self.batch
                .cut(&mut self.client.rbuf, std::mem::take(scanned));
            let Some(frame) = decode_frame(&mut self.client.rbuf, self.max_message)? else {
                break;
            };
            let tag = frame.tag();
            if matches!(tag, ftag::COPY_DATA | ftag::COPY_DONE | ftag::COPY_FAIL)
                && (self.copy_in != CopyIn::Off || (self.batch.is_empty() && !self.skip_until_sync))
            {
                self.copy_frame(&frame);
                continue;
            }
            if self.skip_until_sync {
                match tag {
                    ftag::SYNC => {
                        self.skip_until_sync = false;
                        let mut b = BytesMut::with_capacity(6);
                        messages::ready_for_query(&mut b, self.tx_status);
                        self.client.push(b);
                    }
                    ftag::TERMINATE => return Ok(Flow::End),
                    _ => {}
                }
                continue;
            }
            match tag {
                ftag::TERMINATE => return Ok(Flow::End),
                t => {
                    // `batch_frame_at` takes every other known tag.
                    return Err(ProtocolError::Unexpected {
                        tag: t as char,
                        context: "(invalid frontend message type)",
                    }
                    .into());
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// The tag and length of the frame at `at` in the read buffer when it is complete and
    /// goes into the batch: a known message other than Terminate, not COPY data that goes
    /// straight to the server (see [`Self::copy_frame`]), and not skipped after an error.
    /// `None` leaves the frame to `decode_frame` (which also reports a bad length).
    #[inline]
    fn batch_frame_at(&self, at: usize) -> Option<(u8, usize)> {
        let buf = self.client.rbuf.get(at..)?;
        let header = crate::protocol::peek_header(buf, self.max_message).ok()??;
        if buf.len() < header.frame_len || self.skip_until_sync {
            return None;
        }
        let tag = header.tag;
        let copy_now = matches!(tag, ftag::COPY_DATA | ftag::COPY_DONE | ftag::COPY_FAIL)
            && (self.copy_in != CopyIn::Off || self.batch.is_empty());
        if tag == ftag::TERMINATE || copy_now || !is_known_tag(tag) {
            return None;
        }
        Some((tag, header.frame_len))
    }
}
