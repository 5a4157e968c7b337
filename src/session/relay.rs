//! The relay loop: client batches go to the server, replies stream back, in both directions at
//! once.
//!
//! One wait (`next_event`, a single poll function) covers four things: bytes from the client,
//! room to write to the client, bytes from the server, room to write to the server. Reading and writing each side
//! concurrently is what keeps a proxy from deadlocking when both peers write more than a socket
//! buffer holds (a large pipelined batch whose replies fill the other direction). Backpressure
//! is explicit: the server is not read while too much waits for the client, the client is not
//! read while too much waits for the server.
//!
//! Every read and write in that wait is cancel-safe (a read or write either completes or does
//! nothing), and partial frames stay in the buffers between iterations.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

use super::cancel::Stop;
use super::{idle, request, Session, SessionError};
use crate::backend::connection::{ReplyOwner, ServerConn};
use crate::protocol::backend::{self as be, tag as btag, Step, TxStatus};
use crate::protocol::frontend::{is_known_tag, tag as ftag};
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::sqlstate::Severity;
use crate::protocol::{
    decode_frame, Frame, ProtocolError, SqlState, DEFAULT_MAX_MESSAGE_LEN, HEADER_LEN,
};
use crate::router::Target;

/// The proxy's read-your-writes probe. The insert position is at or past the end of every
/// record already inserted, the session's commit record included, even before it is flushed.
const LSN_SQL: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()";

/// Stop reading the server while this many bytes wait to be written to the client.
const CLIENT_OUT_HIGH: usize = 256 * 1024;
/// Stop reading the client while this many bytes wait to be written to the server.
const SERVER_OUT_HIGH: usize = 256 * 1024;
/// Forward an unfinished extended-protocol batch once it is this large.
const BATCH_FORWARD: usize = 64 * 1024;

/// What ended one wait of the loop.
enum Event {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    Shutdown,
    /// The shutdown grace period is over.
    Kill,
    /// The client stayed idle for `proxy.client_idle_timeout`.
    IdleTimeout,
}

/// How a request (batch of frontend messages) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Terminator {
    /// A simple Query: one ReadyForQuery will follow.
    Query,
    /// Sync: one ReadyForQuery will follow.
    Sync,
    /// Flush: replies so far are wanted, no ReadyForQuery yet.
    Flush,
    /// The batch grew large: send it on, no ReadyForQuery yet.
    Partial,
}

/// A complete request that arrived while the client's server connection was a standby still
/// answering an earlier read: it is routed on its own once that connection is released (a
/// write must not follow a read onto a standby).
#[derive(Debug)]
pub(super) struct HeldRequest {
    frames: super::Batch,
    len: usize,
    term: Terminator,
}

/// A batch on its way to a server: what the classifier and the router said.
pub(super) struct Routed {
    batch_class: super::route::BatchClass,
    /// Where to get a connection; `None` when the session already holds one.
    target: Option<Target>,
    /// Why, when the router decided (counted in the metrics).
    reason: Option<crate::router::Reason>,
    /// The router sent a read to the primary only because no standby is known to have
    /// replayed the session's writes: ask the standbys first.
    ask_causal: bool,
    /// A refusal could be re-run elsewhere (a whole request outside a transaction).
    guardable: bool,
    /// The standby whose refusal would be re-run on the primary.
    guard_target: Option<usize>,
}

/// Whether the relay goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    End,
}

impl Session {
    /// Relays until the client terminates, the proxy shuts down, or an error ends the session.
    pub(super) async fn relay(&mut self) -> Result<(), SessionError> {
        // Bytes the client sent before the welcome was complete (read while waiting for a
        // server connection).
        if !self.client.rbuf.is_empty() && self.on_client_bytes().await? == Flow::End {
            return Ok(());
        }
        loop {
            self.write_now();
            let flow = match self.next_event().await {
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
                Event::ServerRead(Err(e)) => self.server_lost(&e.to_string())?,
                Event::ServerWrote(Ok(n)) => {
                    if let Some(s) = self.server.as_deref_mut() {
                        s.wbuf.advance(n);
                    }
                    Flow::Continue
                }
                Event::ServerWrote(Err(e)) => self.server_lost(&e.to_string())?,
                Event::Shutdown => {
                    self.draining = true;
                    Flow::Continue
                }
                Event::Kill => {
                    return Err(SessionError::Fatal(ProxyError::fatal(
                        SqlState::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    )))
                }
                Event::IdleTimeout => return Err(SessionError::Fatal(idle::timeout_error())),
            };
            if flow == Flow::End {
                return Ok(());
            }
            if self.violation.is_some() && self.replies_done() {
                if let Some(e) = self.violation.take() {
                    return Err(e.into());
                }
            }
            if let Some(lease) = self.server.as_mut() {
                if !lease.statements.newly_stale.is_empty() {
                    // Tell the pool now, so other connections re-prepare before their clients
                    // hit the same stale plan.
                    lease.pool().clone().sync_statements(lease);
                }
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
                return Ok(());
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
                        return Ok(());
                    }
                }
            }
            if self.draining && self.is_idle() && self.held.is_none() {
                self.client.push_error(&ProxyError::fatal(
                    SqlState::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                ));
                return Ok(());
            }
        }
    }

    /// Writes what is queued for either side right away when the socket takes it, without
    /// going through the wait in `next_event` (which would find it writable, write, and wake
    /// up once more): a request goes to the server, and a reply to the client, in the same turn
    /// as it was read. Errors and full sockets are left to that wait, which sees them again.
    fn write_now(&mut self) {
        if let Some(s) = self.server.as_deref_mut() {
            if !s.wbuf.is_empty() {
                if let Ok(n) = s.stream.try_write(&s.wbuf) {
                    s.wbuf.advance(n);
                }
            }
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
        self.client.prepare_read();
        let stalled = self.client_stalled();
        let hold_limit = if self.held.is_some() {
            self.max_message.min(1 << 20)
        } else {
            usize::MAX
        };
        // client_idle_timeout: when it is off, no timer, no idleness check, no clock read. The
        // client's own view of its transaction counts too (one whose server died mid-transaction
        // still has it open until its next request fails).
        let idle = self.idle_timer.is_some()
            && self.is_idle()
            && self.held.is_none()
            && !self.tx_status.is_in_transaction();
        let Session {
            client,
            server,
            cancel,
            draining,
            idle_timer,
            ..
        } = self;
        let mut idle_sleep = idle_timer.as_deref_mut().and_then(|t| t.arm(idle));
        let client_out_len = client.out_len();
        let server_out_len = match server.as_deref_mut() {
            Some(s) => {
                if s.rbuf.capacity() - s.rbuf.len() < 4096 {
                    s.rbuf.reserve(16 * 1024);
                }
                s.wbuf.len()
            }
            None => 0,
        };
        let read_server = server.is_some() && client_out_len < CLIENT_OUT_HIGH;
        // While a request is held back, what follows it waits in the read buffer: bounded.
        let read_client =
            server_out_len < SERVER_OUT_HIGH && !stalled && client.rbuf.len() < hold_limit;
        let slot = &**cancel.slot();
        // One poll for both levels: while running it waits for a drain, while draining for
        // the kill.
        let stop_at = if *draining { Stop::Kill } else { Stop::Drain };
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
                    _ => Event::Shutdown,
                });
            }
            if client_out_len > 0 {
                if let Poll::Ready(r) = client.poll_write_queued(cx) {
                    return Poll::Ready(Event::ClientWrote(r));
                }
            }
            if let Some(s) = server.as_deref_mut() {
                if server_out_len > 0 {
                    if let Poll::Ready(r) = Pin::new(&mut s.stream).poll_write(cx, &s.wbuf) {
                        return Poll::Ready(Event::ServerWrote(r));
                    }
                }
                if read_server {
                    if let Poll::Ready(r) =
                        tokio_util::io::poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.rbuf)
                    {
                        return Poll::Ready(Event::ServerRead(r));
                    }
                }
            }
            if read_client {
                if let Poll::Ready(r) = tokio_util::io::poll_read_buf(
                    Pin::new(&mut client.stream),
                    cx,
                    &mut client.rbuf,
                ) {
                    return Poll::Ready(Event::ClientRead(r));
                }
            }
            // Last: a request that arrives as the time runs out is served.
            if let Some(sleep) = idle_sleep.as_mut() {
                if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                    return Poll::Ready(Event::IdleTimeout);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Whether every request already sent to the server has been answered in full, or cannot
    /// be (a COPY IN waits for data that will not come).
    fn replies_done(&self) -> bool {
        self.copy_in
            || match self.server.as_deref() {
                None => true,
                Some(s) => s.pending.is_empty() && s.scanner.at_boundary(),
            }
    }

    /// Whether nothing is in flight: no request, no transaction, no partial batch, no COPY.
    pub(super) fn is_idle(&self) -> bool {
        self.batch.is_empty()
            && !self.copy_in
            && !self.skip_until_sync
            && match self.server.as_deref() {
                None => true,
                Some(s) => {
                    s.pending.is_empty() && s.scanner.at_boundary() && !s.status.is_in_transaction()
                }
            }
    }

    // === client → server ===

    /// Handles every complete frame the client has sent.
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
            && !self.copy_in
            && self.server.as_deref().is_some_and(|s| {
                !s.pending.is_empty()
                    && !s.track.unsynced
                    && s.pending
                        .iter()
                        .all(|o| !matches!(o, ReplyOwner::Client { .. }))
            })
    }

    /// [`Self::on_client_bytes`], turning a protocol violation into a pending error (answered
    /// once earlier replies are out).
    async fn client_bytes_or_violation(&mut self) -> Result<Flow, SessionError> {
        match self.on_client_bytes().await {
            Err(SessionError::Protocol(e)) => {
                self.client.rbuf.clear();
                self.violation = Some(e);
                Ok(Flow::Continue)
            }
            other => other,
        }
    }

    /// Handles the client's complete frames. Stops (leaving the rest buffered) while a
    /// `causeway.*` answer waits for earlier replies, so replies keep the requests' order.
    async fn on_client_bytes(&mut self) -> Result<Flow, SessionError> {
        while !self.client_stalled() {
            if self.held.is_some() {
                // Everything after a held request waits for it.
                break;
            }
            let Some(frame) = decode_frame(&mut self.client.rbuf, self.max_message)? else {
                break;
            };
            let tag = frame.tag();
            if self.copy_in && matches!(tag, ftag::COPY_DATA | ftag::COPY_DONE | ftag::COPY_FAIL) {
                let done = tag != ftag::COPY_DATA;
                if done {
                    self.copy_in = false;
                }
                if let Some(s) = self.server.as_deref_mut() {
                    s.wbuf.extend_from_slice(frame.raw());
                    if done {
                        s.track.copy_in = None;
                    }
                }
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
                ftag::QUERY => self.add_and_dispatch(frame, Terminator::Query).await?,
                ftag::SYNC => self.add_and_dispatch(frame, Terminator::Sync).await?,
                ftag::FLUSH => self.add_and_dispatch(frame, Terminator::Flush).await?,
                t if is_known_tag(t) => {
                    self.batch_len += frame.len();
                    self.batch.push(frame);
                    if self.batch_len > BATCH_FORWARD {
                        Box::pin(self.dispatch(Terminator::Partial)).await?;
                    }
                }
                t => {
                    return Err(ProtocolError::Unexpected {
                        tag: t as char,
                        context: "(invalid frontend message type)",
                    }
                    .into())
                }
            }
        }
        Ok(Flow::Continue)
    }

    async fn add_and_dispatch(
        &mut self,
        frame: Frame,
        term: Terminator,
    ) -> Result<(), SessionError> {
        self.batch_len += frame.len();
        self.batch.push(frame);
        // Not boxed: `dispatch` keeps its large slow path (checkout, connecting,
        // read-your-writes asks) in a boxed future of its own.
        self.dispatch(term).await
    }

    /// Sends the batch to the server serving this client, getting one if needed.
    ///
    /// Three steps: [`Self::dispatch_begin`] decides (synchronously) what the batch needs;
    /// a connection is taken from its pool without waiting when one is idle (the common case),
    /// else by the boxed [`Self::dispatch_acquire`] (connect, queue, ask standbys their
    /// position); [`Self::dispatch_send`] writes the batch. Only the slow path pays for a large
    /// future.
    async fn dispatch(&mut self, term: Terminator) -> Result<(), SessionError> {
        self.now = None;
        let Some(mut routed) = self.dispatch_begin(term)? else {
            return Ok(());
        };
        if self.server.is_none() {
            let now = match routed.target {
                Some(target) if !routed.ask_causal => self.try_acquire_now(target),
                _ => None,
            };
            match now {
                Some((lease, node)) => {
                    let kind = self.server_kind;
                    if let Some(reason) = routed.reason {
                        self.count_route_kind(kind, reason);
                    }
                    routed.guard_target = (routed.guardable
                        && kind == crate::metrics::RouteKind::Standby)
                        .then_some(node);
                    self.server = Some(lease);
                }
                None => {
                    if !Box::pin(self.dispatch_acquire(&mut routed, term)).await? {
                        return Ok(());
                    }
                    // The request is sent now: its latency starts here, not before the wait.
                    self.now = None;
                }
            }
        }
        self.dispatch_send(routed, term)
    }

    /// The time, read at most once per request: checkout and the request's send time share
    /// one clock reading.
    fn clock(&mut self) -> tokio::time::Instant {
        *self.now.get_or_insert_with(tokio::time::Instant::now)
    }

    /// The standby a guarded request goes to (`None` for the primary, or when the request
    /// cannot be guarded).
    fn standby_of(&self, t: Target, guardable: bool) -> Option<usize> {
        match t {
            Target::Node(n) if guardable && self.app.topology().load().primary != Some(n) => {
                Some(n)
            }
            _ => None,
        }
    }

    /// What must happen before the batch can be sent: answered here (`None`), or routed.
    fn dispatch_begin(&mut self, term: Terminator) -> Result<Option<Routed>, SessionError> {
        if self.server_node_stale() {
            // Its node was fenced (a former primary after a split brain) or changed role since
            // the connection was made: nothing more may run there. The session goes on as if
            // the connection had died (an open transaction is lost, a session that needs its
            // connection's state ends).
            self.server_lost("its node was fenced or changed role")?;
        }
        if let Some(e) = self.lost_transaction.take() {
            // The transaction this request belongs to died with its server.
            self.tx_status = TxStatus::Idle;
            self.fail_request(&e, term);
            return Ok(None);
        }
        let batch_class = self.classify_batch();
        if batch_class.any_proxy {
            // `causeway.*` statements are the proxy's own, never a server's.
            if batch_class.all_proxy && matches!(term, Terminator::Query | Terminator::Sync) {
                self.answer_proxy_batch();
            } else {
                self.fail_request(
                    &ProxyError::error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "causeway.* settings must be sent in a request of their own",
                    ),
                    term,
                );
            }
            return Ok(None);
        }
        if self.behind_standby_read() {
            self.held = Some(Box::new(HeldRequest {
                frames: std::mem::take(&mut self.batch),
                len: std::mem::take(&mut self.batch_len),
                term,
            }));
            return Ok(None);
        }
        if term == Terminator::Sync && self.server.is_none() && self.batch_only_closes() {
            // Close + Sync (a driver dropping a prepared statement) runs nothing: answered
            // here rather than routed like a read, which would take a standby connection (and
            // queue the client's next request behind it there) or fail for want of one.
            self.answer_proxy_batch();
            return Ok(None);
        }
        let guardable = matches!(term, Terminator::Query | Terminator::Sync)
            && !self.tx_status.is_in_transaction();
        let mut routed = Routed {
            batch_class,
            target: None,
            reason: None,
            ask_causal: false,
            guardable,
            guard_target: None,
        };
        if self.server.is_some() {
            return Ok(Some(routed));
        }
        if std::mem::take(&mut self.force_primary)
            || matches!(term, Terminator::Flush | Terminator::Partial)
        {
            // A retry goes to the primary; and the rest of an unfinished batch will follow on
            // the same connection and may write: only the primary is safe.
            routed.target = Some(Target::Primary);
            return Ok(Some(routed));
        }
        match self.plan(&routed.batch_class) {
            super::route::Plan::Go { target, reason } => {
                routed.target = Some(target);
                routed.reason = Some(reason);
                routed.ask_causal = target == Target::Primary
                    && reason == crate::router::Reason::Causal
                    && self.route.min_lsn.is_some();
            }
            super::route::Plan::NoStandby => {
                self.fail_request(&no_standby(), term);
                return Ok(None);
            }
        }
        Ok(Some(routed))
    }

    /// Checks out a connection for `target` if its pool has one idle right now; with its
    /// node (`server_kind` tells whether that is the primary).
    fn try_acquire_now(&mut self, target: Target) -> Option<(crate::backend::Lease, usize)> {
        let topology = self.app.topology().load();
        let node = match target {
            Target::Primary => topology.primary?,
            Target::Node(n) => n,
        };
        let role_epoch = topology.nodes.get(node)?.role_epoch;
        let on_primary = topology.primary == Some(node);
        drop(topology);
        let now = self.clock();
        let pool = self.pools.get(node)?.as_ref()?;
        let lease = pool.try_checkout(role_epoch, now)?;
        self.in_flight = Some(self.app.in_flight(node));
        self.server_kind = if on_primary {
            crate::metrics::RouteKind::Primary
        } else {
            crate::metrics::RouteKind::Standby
        };
        self.cancel.slot().set(Some(lease.cancel_target()));
        Some((lease, node))
    }

    /// The slow way to a connection: asks standbys their replay position (read-your-writes),
    /// waits for the pool or connects, and routes a read elsewhere when its standby cannot
    /// give a connection. False when the request was answered with an error instead.
    async fn dispatch_acquire(
        &mut self,
        routed: &mut Routed,
        term: Terminator,
    ) -> Result<bool, SessionError> {
        let Some(mut target) = routed.target else {
            return Ok(true);
        };
        if routed.ask_causal {
            if let Some((n, lease)) = self.ask_causal_standby(&routed.batch_class).await {
                self.server = Some(lease);
                target = Target::Node(n);
            }
        }
        if let Some(reason) = routed.reason {
            self.count_route(target, reason);
        }
        let mut guard_target = self.standby_of(target, routed.guardable);
        let mut unreachable = Vec::new();
        let acquired = match self.server.take() {
            // A standby already checked out (read-your-writes asked it its position).
            Some(lease) => Ok(lease),
            None => loop {
                let r = self.acquire(target).await;
                match (r, guard_target) {
                    // A standby that cannot give a connection right now (down, refusing,
                    // starting up, pool exhausted) before the watcher noticed: the read goes
                    // where it would go without that standby.
                    (Err(SessionError::Backend(e)), Some(n))
                        if unreachable.len() < self.pools.len() =>
                    {
                        tracing::debug!(node = n, error = %e, "standby unavailable at checkout; routing the read elsewhere");
                        unreachable.push(n);
                        match self.plan_excluding(&routed.batch_class, &unreachable) {
                            super::route::Plan::Go { target: t, .. } => {
                                target = t;
                                guard_target = self.standby_of(t, routed.guardable);
                            }
                            super::route::Plan::NoStandby => {
                                self.fail_request(&no_standby(), term);
                                return Ok(false);
                            }
                        }
                    }
                    (r, _) => break r,
                }
            },
        };
        routed.guard_target = guard_target;
        match acquired {
            Ok(lease) => {
                self.server = Some(lease);
                Ok(true)
            }
            Err(SessionError::Fatal(e)) if e.severity == Severity::Error => {
                self.fail_request(&e, term);
                Ok(false)
            }
            Err(SessionError::Backend(e)) if e.server_fields().is_none() => {
                if matches!(e, crate::backend::BackendError::PoolTimeout { .. }) {
                    self.app.metrics().pool_timeouts.inc();
                }
                self.fail_request(&ProxyError::error(e.sqlstate(), e.to_string()), term);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the routed batch to the connection now held.
    fn dispatch_send(&mut self, routed: Routed, term: Terminator) -> Result<(), SessionError> {
        let Routed {
            batch_class,
            guard_target,
            ..
        } = routed;
        let retrying = std::mem::take(&mut self.retrying);
        let sent = self.clock();
        let Some(lease) = self.server.as_mut() else {
            return Ok(());
        };
        // Statements another connection of the pool found stale (DDL) are prepared again here
        // too.
        lease.pool().clone().sync_statements(lease);
        let server = &mut **lease;
        let quiet = !server.track.unsynced && server.pending.is_empty();
        // A request that binds prepared statements, alone on an idle connection outside a
        // transaction, is guarded: if DDL changed a statement's result type since it was
        // prepared here, it is prepared again and the request re-run, unseen by the client.
        let stale_guard = guard_target.is_none()
            && !retrying
            && quiet
            && term == Terminator::Sync
            && !self.tx_status.is_in_transaction()
            && server.status == TxStatus::Idle
            && binds_named_statement(&self.batch, &self.state);
        if quiet {
            // Statements evicted from the connection's cache or found stale are deallocated
            // while nothing else runs on it.
            if server.status == TxStatus::Idle && server.statements.pending_close_len() > 0 {
                let names = server.statements.take_pending_close();
                request::close_statements(&mut server.wbuf, &names);
                server.pending.push_back(ReplyOwner::Proxy);
            }
            // A connection fresh from the pool may carry another client's parameters: bring
            // them in line first, in the same write (its reply is swallowed).
            if let Some(sql) = request::param_sync_sql(
                &self.state.params,
                self.state.params_id(),
                &mut server.params,
            ) {
                messages::query(&mut server.wbuf, &sql);
                server.pending.push_back(ReplyOwner::Proxy);
            }
        }
        let seq = server.track.next_seq;
        request::write_batch(&self.batch, &mut self.state, server, seq)?;
        if guard_target.is_some() || stale_guard {
            // The guard keeps the frames for a re-run (they are sent; the batch starts over).
            self.guard = Some(super::route::MisrouteGuard {
                frames: std::mem::take(&mut self.batch),
                term_is_sync: term == Terminator::Sync,
                learn_key: batch_class.learn_key,
                held: smallvec::SmallVec::new(),
                discarding: false,
                code: String::new(),
                standby: guard_target.is_some(),
                error: None,
            });
        }
        if batch_class.params_may_change {
            self.params_dirty = true;
        }
        if let Some(why) = batch_class.pin {
            if self.pinned.is_none() {
                tracing::debug!(reason = why, "client pinned to its server connection");
                self.app.metrics().count_pin(why);
                self.pinned = Some(why);
            }
        }
        self.batch.clear();
        self.batch_len = 0;
        match term {
            Terminator::Query | Terminator::Sync => {
                server.pending.push_back(ReplyOwner::Client {
                    sync: term == Terminator::Sync,
                    seq,
                    sent,
                });
                server.track.next_seq += 1;
                server.track.unsynced = false;
                // Read-your-writes: right behind a request that may have written and may end
                // outside a transaction, ask for the primary's WAL position on the same
                // connection, in the same write; the reply is swallowed and the position kept
                // if the request did end outside a transaction.
                let on_primary = self.server_kind == crate::metrics::RouteKind::Primary;
                let wrote = batch_class.class == Some(crate::router::Class::Write);
                if wrote && on_primary {
                    self.wrote_in_transaction = true;
                }
                let may_end = !self.tx_status.is_in_transaction() || batch_class.commits;
                // A session whose reads all go to the primary anyway needs no position.
                let reads_on_primary = self.route.route.or(self.route.default_route)
                    == Some(crate::config::Route::Primary);
                if on_primary
                    && self.wrote_in_transaction
                    && may_end
                    && !reads_on_primary
                    && self.route.consistency() == crate::config::Consistency::Session
                {
                    if batch_class.copies_in {
                        // A COPY FROM makes the server wait for data: anything sent behind it
                        // would break the protocol. Probe once its ReadyForQuery is in.
                        self.lsn_probe_after_reply = true;
                    } else {
                        messages::query(&mut server.wbuf, LSN_SQL);
                        server.pending.push_back(ReplyOwner::Lsn);
                        server.track.captured_lsn = None;
                    }
                }
            }
            Terminator::Flush | Terminator::Partial => server.track.unsynced = true,
        }
        Ok(())
    }

    /// Whether the client's server connection is a standby's serving an autocommit read: a
    /// new request may not simply follow it there, it must be routed by itself.
    fn behind_standby_read(&self) -> bool {
        self.server.is_some()
            && self.server_kind == crate::metrics::RouteKind::Standby
            && !self.tx_status.is_in_transaction()
            // A pinned connection is never released: waiting for it would wait forever.
            && self.pinned.is_none()
    }

    /// Read-your-writes, fresh: the watcher (which looks every `check_interval`) has not seen
    /// any standby replay the session's writes yet, but one usually has by now. Ask the
    /// standby the router would pick without the position, on the very connection the read
    /// would use: if its replay position has reached `min_lsn`, the read goes there (replay
    /// only moves forward, so the read sees the writes). Costs one round trip to the standby,
    /// only for reads that would otherwise go to the primary because of causality. With
    /// `causal_wait` above zero, a standby still behind is asked again (every 2 ms) until it
    /// catches up or the wait is over, then the read goes to the primary.
    async fn ask_causal_standby(
        &mut self,
        batch_class: &super::route::BatchClass,
    ) -> Option<(usize, crate::backend::Lease)> {
        let min = self.route.min_lsn?;
        // The standby the balancer would pick without the position first, then the others,
        // most replayed first; at most two are asked.
        let saved = self.route.min_lsn.take();
        let plan = self.plan(batch_class);
        self.route.min_lsn = saved;
        let mut order = self.causal_candidates(batch_class);
        if let super::route::Plan::Go {
            target: Target::Node(n),
            ..
        } = plan
        {
            if let Some(i) = order.iter().position(|&c| c == n) {
                order.remove(i);
                order.insert(0, n);
            }
        }
        order.truncate(2);
        let settings = self.app.settings();
        let timeout = settings.config.monitor.query_timeout;
        let causal_wait = settings.config.routing.causal_wait;
        drop(settings);
        let started = tokio::time::Instant::now();
        let deadline = started + causal_wait;
        // The most replayed standby asked so far, kept for polling while `causal_wait` lasts.
        let mut best: Option<(u64, usize, crate::backend::Lease)> = None;
        for n in order {
            self.app.metrics().causal_asks.inc();
            let Ok(mut lease) = self.acquire(Target::Node(n)).await else {
                continue;
            };
            match ask_replay(&mut lease, timeout).await {
                Some(r) if r >= min => {
                    if let Some((_, _, other)) = best.take() {
                        other.pool().clone().checkin(other);
                    }
                    self.app.metrics().causal_ask_hits.inc();
                    return Some((n, lease));
                }
                Some(r) if best.as_ref().is_none_or(|b| r > b.0) => {
                    if let Some((_, _, other)) = best.replace((r, n, lease)) {
                        other.pool().clone().checkin(other);
                    }
                }
                _ => lease.pool().clone().checkin(lease),
            }
        }
        let found = match best {
            Some((_, n, mut lease)) if !causal_wait.is_zero() => {
                self.app.metrics().causal_waits.inc();
                let mut found = None;
                while tokio::time::Instant::now() < deadline {
                    let left = deadline - tokio::time::Instant::now();
                    tokio::time::sleep(left.min(Duration::from_millis(2))).await;
                    match ask_replay(&mut lease, timeout).await {
                        Some(r) if r >= min => {
                            found = Some(n);
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                self.app
                    .metrics()
                    .causal_wait_micros
                    .inc_by(started.elapsed().as_micros() as u64);
                match found {
                    Some(n) => {
                        self.app.metrics().causal_ask_hits.inc();
                        // `acquire` of another candidate may have moved the in-flight count.
                        self.in_flight = Some(self.app.in_flight(n));
                        self.server_kind = crate::metrics::RouteKind::Standby;
                        self.cancel.slot().set(Some(lease.cancel_target()));
                        return Some((n, lease));
                    }
                    None => {
                        lease.pool().clone().checkin(lease);
                        None
                    }
                }
            }
            Some((_, _, lease)) => {
                lease.pool().clone().checkin(lease);
                None
            }
            None => None,
        };
        self.in_flight = None;
        self.cancel.slot().set(None);
        found
    }

    /// Re-runs a request a standby refused, on the primary. After a read-only refusal (the
    /// classifier took a write for a read, say a function created after the catalog was
    /// loaded) the text is remembered, so it goes to the primary directly from then on.
    async fn retry_on_primary(
        &mut self,
        g: super::route::MisrouteGuard,
    ) -> Result<(), SessionError> {
        let stale = !g.standby;
        if stale {
            tracing::debug!("prepared statement's result type changed; re-running the request");
            self.retrying = true;
        } else {
            self.app.metrics().misroute_retries.inc();
        }
        if g.code == "25006" {
            self.app.learn_write(g.learn_key);
        }
        // The standby's connection is done with this request.
        self.maybe_release();
        if self.server.is_some() && !stale {
            // Still held (should not happen outside a transaction): fail rather than guess.
            self.fail_request(
                &ProxyError::error(
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                    "request refused by a standby",
                ),
                if g.term_is_sync {
                    Terminator::Sync
                } else {
                    Terminator::Query
                },
            );
            return Ok(());
        }
        // Frames of a following request may already be waiting in the batch: they go after.
        let later = std::mem::replace(&mut self.batch, g.frames);
        let later_len =
            std::mem::replace(&mut self.batch_len, self.batch.iter().map(Frame::len).sum());
        // A misroute goes to the primary; a stale plan where the router sends it (or on the
        // connection still held).
        self.force_primary = !stale;
        let r = self
            .dispatch(if g.term_is_sync {
                Terminator::Sync
            } else {
                Terminator::Query
            })
            .await;
        self.batch = later;
        self.batch_len = later_len;
        r
    }

    /// Answers a request the proxy could not run with an error, keeping the protocol in step.
    fn fail_request(&mut self, e: &ProxyError, term: Terminator) {
        self.batch.clear();
        self.batch_len = 0;
        self.client.push_error(e);
        match term {
            Terminator::Query | Terminator::Sync => {
                let mut b = BytesMut::with_capacity(6);
                messages::ready_for_query(&mut b, self.tx_status);
                self.client.push(b);
            }
            Terminator::Flush | Terminator::Partial => self.skip_until_sync = true,
        }
    }

    // === server → client ===

    /// Handles every byte the server has sent: passthrough runs are queued for the client
    /// without decoding; the messages the proxy must understand are read on the way.
    fn on_server_bytes(&mut self) -> Result<Flow, SessionError> {
        // Frames are left in the server's read buffer while they are looked at, and split off
        // once per reply instead of one by one.
        let mut cur = InPlace::default();
        let flow = self.scan_server_bytes(&mut cur);
        self.settle(&mut cur);
        flow
    }

    /// Splits off what [`InPlace`] counted: the client's bytes go to the client, the bytes a
    /// standby read's guard holds back go into the guard.
    fn settle(&mut self, cur: &mut InPlace) {
        let Some(server) = self.server.as_deref_mut() else {
            return;
        };
        flush_to_client(&mut self.client, &mut server.rbuf, &mut cur.fwd);
        if cur.held > 0 {
            let held = server.rbuf.split_to(std::mem::take(&mut cur.held));
            if let Some(g) = self.guard.as_mut() {
                g.held.push(held);
            }
        }
    }

    /// Does the work of [`Self::on_server_bytes`], leaving what [`InPlace`] counts in the buffer.
    fn scan_server_bytes(&mut self, cur: &mut InPlace) -> Result<Flow, SessionError> {
        // `max_message_size` limits what clients send. The server's messages the proxy reads
        // whole get the server-side limit (as in `ServerConn::read_frame`), never a smaller one:
        // a long error message or parameter value is not a reason to kill the session.
        let max_inspect = self.max_message.max(DEFAULT_MAX_MESSAGE_LEN);
        loop {
            let Some(server) = self.server.as_deref_mut() else {
                return Ok(Flow::Continue);
            };
            let owner = server.pending.front().copied();
            let want_parse_complete = !server.track.parses.is_empty();
            // A standby read's guard reads every message; a prepared statement's guard only
            // those it holds back or decides on (a large first row streams as usual and ends
            // the guard, see `Step::Passthrough`).
            let guarded = self.guard.as_ref().is_some_and(|g| g.standby);
            let guarded_some = self.guard.is_some();
            let capture_lsn = owner == Some(ReplyOwner::Lsn);
            // A notification that arrives while the proxy's own reply is being read is still
            // the client's.
            let proxy_reply = matches!(owner, Some(ReplyOwner::Proxy | ReplyOwner::Lsn));
            let step = server
                .scanner
                .step(&server.rbuf[cur.fwd + cur.held..], max_inspect, |t| {
                    guarded
                        || (guarded_some
                            && matches!(
                                t,
                                btag::BIND_COMPLETE
                                    | btag::CLOSE_COMPLETE
                                    | btag::PARAMETER_DESCRIPTION
                                    | btag::NO_DATA
                                    | btag::NOTICE_RESPONSE
                                    | btag::PARSE_COMPLETE
                            ))
                        || matches!(
                            t,
                            btag::READY_FOR_QUERY
                                | btag::PARAMETER_STATUS
                                | btag::ERROR_RESPONSE
                                | btag::COMMAND_COMPLETE
                                | btag::COPY_IN_RESPONSE
                                | btag::COPY_BOTH_RESPONSE
                        )
                        || (t == btag::PARSE_COMPLETE && want_parse_complete)
                        || (t == btag::DATA_ROW && capture_lsn)
                        || (t == btag::NOTIFICATION_RESPONSE && proxy_reply)
                })
                .map_err(|e| server.proto(e))?;
            // Replies with no owner are asynchronous (NOTIFY, notices): they are the client's.
            let for_client = matches!(owner, None | Some(ReplyOwner::Client { .. }));
            match step {
                Step::NeedMore => return Ok(Flow::Continue),
                Step::Passthrough(n) => {
                    // Held bytes exist only under a standby read's guard, which inspects
                    // every frame: none are pending here.
                    debug_assert_eq!(cur.held, 0);
                    if for_client && matches!(owner, Some(ReplyOwner::Client { .. })) {
                        // The request answers (rows, a result): a prepared statement's guard
                        // lets what it held go first and ends.
                        if let Some(g) = self.guard.take_if(|g| !g.standby && !g.discarding) {
                            flush_to_client(&mut self.client, &mut server.rbuf, &mut cur.fwd);
                            for b in g.held {
                                self.client.push(b);
                            }
                        }
                    }
                    if for_client {
                        cur.fwd += n;
                    } else {
                        self.settle(cur);
                        if let Some(server) = self.server.as_deref_mut() {
                            server.rbuf.advance(n);
                        }
                    }
                }
                Step::Inspect(h) => {
                    if !self.inspected_in_place(h, owner, for_client, cur)? {
                        self.settle(cur);
                        self.inspected(h, owner, capture_lsn)?;
                    }
                }
            }
        }
    }

    /// The common frames of a reply, looked at where they are in the server's read buffer:
    /// a standby read's guard holds back BindComplete, RowDescription and the like by counting
    /// them, the first row or result releases them, and CommandComplete and ReadyForQuery are
    /// read and counted as the client's. False: the frame needs [`Self::inspected`].
    fn inspected_in_place(
        &mut self,
        h: crate::protocol::codec::Header,
        owner: Option<ReplyOwner>,
        for_client: bool,
        cur: &mut InPlace,
    ) -> Result<bool, SessionError> {
        let Some(ReplyOwner::Client { seq, sent, .. }) = owner else {
            return Ok(false);
        };
        let Some(server) = self.server.as_deref_mut() else {
            return Ok(false);
        };
        if let Some(g) = self.guard.as_mut() {
            if !g.standby || g.discarding {
                return Ok(false);
            }
            match h.tag {
                t if guard_holds(t) => {
                    cur.held += h.frame_len;
                    return Ok(true);
                }
                btag::DATA_ROW | btag::COMMAND_COMPLETE | btag::READY_FOR_QUERY => {
                    // The standby answers: what was held goes out first (what was held in
                    // earlier reads, then what is held in the buffer).
                    flush_to_client(&mut self.client, &mut server.rbuf, &mut cur.fwd);
                    for b in g.held.drain(..) {
                        self.client.push(b);
                    }
                    cur.fwd = std::mem::take(&mut cur.held);
                    self.guard = None;
                }
                _ => return Ok(false),
            }
        }
        debug_assert_eq!(cur.held, 0);
        if !for_client {
            return Ok(false);
        }
        let start = cur.fwd;
        let body = &server.rbuf[start + HEADER_LEN..start + h.frame_len];
        match h.tag {
            btag::READY_FOR_QUERY => {
                let status = be::ready_for_query(body).map_err(|e| server.proto(e))?;
                cur.fwd += h.frame_len;
                self.reply_done(status, seq, sent);
            }
            btag::COMMAND_COMPLETE => {
                let changes_params = request::tag_changes_params(body);
                let drops_statements = request::tag_drops_statements(body);
                let pins = request::tag_pins(body);
                cur.fwd += h.frame_len;
                self.command_complete(changes_params, drops_statements, pins);
            }
            btag::DATA_ROW => cur.fwd += h.frame_len,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A ReadyForQuery that ends a client's request.
    fn reply_done(&mut self, status: TxStatus, seq: u64, sent: tokio::time::Instant) {
        let Some(server) = self.server.as_deref_mut() else {
            return;
        };
        server.status = status;
        server.pending.pop_front();
        self.app
            .metrics()
            .record_latency(self.server_kind, sent.elapsed());
        rollback_unanswered_parses(server, &mut self.state, seq);
        self.tx_status = status;
        if std::mem::take(&mut self.lsn_probe_after_reply)
            && status == TxStatus::Idle
            && server.pending.is_empty()
        {
            messages::query(&mut server.wbuf, LSN_SQL);
            server.pending.push_back(ReplyOwner::Lsn);
            server.track.captured_lsn = None;
        }
    }

    /// A CommandComplete of the client's: what its tag means for the session.
    fn command_complete(
        &mut self,
        changes_params: bool,
        drops_statements: bool,
        pins: Option<&'static str>,
    ) {
        if changes_params {
            self.params_dirty = true;
        }
        if drops_statements {
            self.state.statements.clear();
            if let Some(server) = self.server.as_deref_mut() {
                server.statements.clear();
                server.track.parses.clear();
            }
        }
        if let Some(why) = pins {
            if self.pinned.is_none() {
                tracing::debug!(reason = why, "client pinned to its server connection");
                self.app.metrics().count_pin(why);
                self.pinned = Some(why);
            }
        }
    }

    /// An inspected frame at the front of the server's read buffer, split off and handled.
    fn inspected(
        &mut self,
        h: crate::protocol::codec::Header,
        owner: Option<ReplyOwner>,
        capture_lsn: bool,
    ) -> Result<(), SessionError> {
        let for_client = matches!(owner, None | Some(ReplyOwner::Client { .. }));
        let Some(server) = self.server.as_deref_mut() else {
            return Ok(());
        };
        let frame = server.rbuf.split_to(h.frame_len);
        let body = &frame[HEADER_LEN..];
        if let (Some(g), Some(ReplyOwner::Client { seq, .. })) = (self.guard.as_mut(), owner) {
            // Misroute guard: a read sent to a standby is held back until it is
            // clear the standby will answer it (a row, a result, a non-retryable
            // error), so a refusal can be re-run on the primary unseen.
            // A stale plan is re-run only if nothing was sent behind it.
            let rerun_ok = g.standby
                || (!server.track.unsynced
                    && server
                        .pending
                        .iter()
                        .skip(1)
                        .all(|o| !matches!(o, ReplyOwner::Client { .. })));
            if g.discarding && h.tag == btag::READY_FOR_QUERY && !rerun_ok {
                // Give up the re-run: the client gets the reply as it was.
                for b in g.held.drain(..) {
                    self.client.push(b);
                }
                if let Some(e) = g.error.take() {
                    self.client.push(e);
                }
                self.guard = None;
            } else if g.discarding {
                match h.tag {
                    btag::READY_FOR_QUERY => {
                        server.status = be::ready_for_query(body).map_err(|e| server.proto(e))?;
                        server.pending.pop_front();
                        rollback_unanswered_parses(server, &mut self.state, seq);
                        self.retry_now = self.guard.take().map(Box::new);
                    }
                    btag::PARSE_COMPLETE => {
                        server.track.parses.pop_front();
                    }
                    btag::PARAMETER_STATUS => server.record_parameter(body)?,
                    btag::ERROR_RESPONSE => {
                        let fields = be::error_fields(body).map_err(|e| server.proto(e))?;
                        if fields.is_fatal() {
                            server.broken = true;
                        }
                    }
                    // Not part of the discarded reply.
                    btag::NOTIFICATION_RESPONSE => self.client.push(frame),
                    _ => {}
                }
                return Ok(());
            }
        }
        if let (Some(g), Some(ReplyOwner::Client { seq, .. })) = (self.guard.as_mut(), owner) {
            match h.tag {
                btag::PARSE_COMPLETE => {
                    if !server.track.parse_completed_for_proxy() {
                        g.held.push(frame);
                    }
                    return Ok(());
                }
                btag::PARAMETER_STATUS => {
                    server.record_parameter(body)?;
                    g.held.push(frame);
                    return Ok(());
                }
                t if guard_holds(t) => {
                    g.held.push(frame);
                    return Ok(());
                }
                btag::ERROR_RESPONSE => {
                    let fields = be::error_fields(body).map_err(|e| server.proto(e))?;
                    let stale = is_stale_plan(&fields, server, seq);
                    if stale {
                        invalidate_bound_statements(server, seq);
                    }
                    if (g.standby && is_misroute(&fields)) || stale {
                        if stale {
                            tracing::debug!(
                                "a prepared statement's result type changed; preparing it again"
                            );
                        } else {
                            tracing::debug!(code = %fields.code, "standby refused a read; retrying on the primary");
                        }
                        g.discarding = true;
                        g.code = fields.code.clone();
                        if g.standby {
                            g.held.clear();
                        } else {
                            g.error = Some(frame);
                        }
                        if fields.is_fatal() {
                            server.broken = true;
                        }
                        return Ok(());
                    }
                }
                _ => {}
            }
            // The standby answers: what was held goes out first.
            for b in g.held.drain(..) {
                self.client.push(b);
            }
            self.guard = None;
        }
        match h.tag {
            btag::READY_FOR_QUERY => {
                let status = be::ready_for_query(body).map_err(|e| server.proto(e))?;
                if let Some(ReplyOwner::Client { seq, sent, .. }) = owner {
                    self.reply_done(status, seq, sent);
                    self.client.push(frame);
                    return Ok(());
                }
                server.status = status;
                server.pending.pop_front();
                match owner {
                    Some(ReplyOwner::Client { .. } | ReplyOwner::Proxy) => {}
                    Some(ReplyOwner::Lsn) => {
                        if let Some(lsn) = server.track.captured_lsn.take() {
                            if !self.tx_status.is_in_transaction() {
                                self.wrote_in_transaction = false;
                                self.app.metrics().lsn_captures.inc();
                                self.route.min_lsn =
                                    Some(self.route.min_lsn.map_or(lsn, |m| m.max(lsn)));
                            }
                        }
                    }
                    // A ReadyForQuery nobody asked for: the protocol is broken.
                    None => {
                        return Err(server
                            .proto(ProtocolError::Unexpected {
                                tag: 'Z',
                                context: "without a pending request",
                            })
                            .into())
                    }
                }
            }
            btag::PARSE_COMPLETE => {
                let added_by_proxy = server.track.parse_completed_for_proxy();
                if for_client && !added_by_proxy {
                    self.client.push(frame);
                }
            }
            btag::COMMAND_COMPLETE => {
                if for_client {
                    self.command_complete(
                        request::tag_changes_params(body),
                        request::tag_drops_statements(body),
                        request::tag_pins(body),
                    );
                    self.client.push(frame);
                }
            }
            btag::DATA_ROW if capture_lsn => {
                server.track.captured_lsn = parse_lsn_row(body);
            }
            btag::NOTIFICATION_RESPONSE => self.client.push(frame),
            btag::PARAMETER_STATUS => {
                server.record_parameter(body)?;
                if for_client {
                    self.client.push(frame);
                }
            }
            btag::ERROR_RESPONSE => {
                let fields = be::error_fields(body).map_err(|e| server.proto(e))?;
                if let Some(ReplyOwner::Client { seq, .. }) = owner {
                    if is_stale_plan(&fields, server, seq) {
                        // The client sees this error once; the statement is
                        // prepared again at its next use.
                        invalidate_bound_statements(server, seq);
                    }
                }
                // An error ends COPY IN on the server side.
                self.copy_in = false;
                server.track.copy_in = None;
                if fields.is_fatal() {
                    server.broken = true;
                    if for_client
                        && self.mode == crate::config::PoolMode::Transaction
                        && self.pinned.is_none()
                    {
                        // The session outlives this server connection: the
                        // client hears the error as an ERROR when the server
                        // closes (see `server_lost`), not as the end of its
                        // connection.
                        self.server_fatal_downgraded =
                            Some(ProxyError::from_server(&fields, Severity::Error));
                        return Ok(());
                    }
                    self.server_fatal |= for_client;
                }
                if for_client {
                    self.client.push(frame);
                } else {
                    tracing::debug!(server = %server.addr(), error = %fields.message, "internal query failed");
                }
            }
            btag::COPY_IN_RESPONSE => {
                self.copy_in = true;
                // In the extended protocol the Sync that followed Execute is
                // ignored by the server during COPY; the client sends another one
                // after CopyDone, which is the one that gets a ReadyForQuery.
                let extended = matches!(owner, Some(ReplyOwner::Client { sync: true, .. }));
                if extended {
                    server.pending.pop_front();
                }
                server.track.copy_in = Some(extended);
                self.client.push(frame);
            }
            btag::COPY_BOTH_RESPONSE => {
                return Err(SessionError::Fatal(ProxyError::fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "COPY BOTH (replication protocol) is not supported by causeway",
                )))
            }
            _ => {
                if for_client {
                    self.client.push(frame);
                }
            }
        }
        Ok(())
    }

    /// Whether the held server connection is on a node that was fenced or whose role changed
    /// after the connection was made.
    fn server_node_stale(&self) -> bool {
        let Some(server) = self.server.as_deref() else {
            return false;
        };
        self.app
            .topology()
            .load()
            .nodes
            .get(server.node())
            .is_some_and(|n| n.fenced || n.role_epoch > server.role_epoch)
    }

    /// The server connection failed (the node died, a FATAL, a reset). The connection is
    /// dropped. A pinned session cannot go on without it (its LISTEN, temp tables... are gone):
    /// FATAL. Otherwise the session survives, as with PgBouncer's transaction pooling: a
    /// request in flight fails with 08006 (and its transaction with it), a transaction that was
    /// open fails at the client's next request, and later requests get a new connection,
    /// on the new primary after a failover.
    fn server_lost(&mut self, why: &str) -> Result<Flow, SessionError> {
        let Some(mut lease) = self.server.take() else {
            return Ok(Flow::Continue);
        };
        self.in_flight = None;
        lease.mark_broken();
        if self.guard.is_some() {
            // Nothing of the guarded read reached the client yet (the guard holds its replies
            // until the standby answers): whether the standby refused it and went away (57P01
            // at its shutdown) or the connection just dropped, re-run it.
            self.in_flight = None;
            self.retry_now = self.guard.take().map(Box::new);
            self.cancel.slot().set(None);
            return Ok(Flow::Continue);
        }
        self.guard = None;
        if self.server_fatal {
            return Ok(Flow::End);
        }
        let addr = lease.addr().to_owned();
        tracing::warn!(server = %addr, "server connection lost: {why}");
        let message = format!("server connection to {addr} was lost: {why}");
        let in_flight = lease
            .pending
            .iter()
            .any(|o| matches!(o, ReplyOwner::Client { .. }))
            || lease.track.unsynced
            || self.copy_in;
        let was_in_transaction = self.tx_status.is_in_transaction();
        self.cancel.slot().set(None);
        drop(lease);
        if self.pinned.is_some() || self.mode == crate::config::PoolMode::Session {
            // The session's state (temp tables, LISTEN, everything in session pooling) lived
            // on that connection.
            return Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::CONNECTION_FAILURE,
                message,
            )));
        }
        // The server's own reason (say 57P01 at a shutdown) when it gave one.
        let e = self
            .server_fatal_downgraded
            .take()
            .unwrap_or_else(|| ProxyError::error(SqlState::CONNECTION_FAILURE, message));
        self.copy_in = false;
        if in_flight {
            self.client.push_error(&e);
            self.tx_status = TxStatus::Idle;
            let mut b = BytesMut::with_capacity(6);
            messages::ready_for_query(&mut b, self.tx_status);
            self.client.push(b);
        } else if was_in_transaction {
            // The client believes a transaction is open; the next request must fail, not run
            // outside it.
            self.lost_transaction = Some(e);
        }
        self.answer_deferred();
        Ok(Flow::Continue)
    }
}

/// Parses of request `seq` (and earlier) still unanswered at its ReadyForQuery were skipped
/// after an error: they do not exist on the server, nor for the client.
///
/// Also forgets the statements bound by those requests (see `RequestTrack::binds`).
/// Replies a misroute guard holds back until it knows the server will answer the request:
/// they say nothing yet about whether it can run there.
fn guard_holds(tag: u8) -> bool {
    matches!(
        tag,
        btag::BIND_COMPLETE
            | btag::ROW_DESCRIPTION
            | btag::CLOSE_COMPLETE
            | btag::PARAMETER_DESCRIPTION
            | btag::NO_DATA
            | btag::NOTICE_RESPONSE
    )
}

/// What `on_server_bytes` has looked at but left at the front of the server's read buffer: the
/// first `fwd` bytes are the client's, the `held` bytes after them a standby read's guard holds
/// back.
#[derive(Debug, Default)]
struct InPlace {
    fwd: usize,
    held: usize,
}

/// Hands the first `*fwd` bytes of the server's read buffer to the client in one piece.
fn flush_to_client(client: &mut super::client::ClientConn, rbuf: &mut BytesMut, fwd: &mut usize) {
    if *fwd > 0 {
        client.push(rbuf.split_to(*fwd));
        *fwd = 0;
    }
}

fn rollback_unanswered_parses(
    server: &mut ServerConn,
    state: &mut super::state::ClientState,
    seq: u64,
) {
    while server.track.binds.front().is_some_and(|(s, _)| *s <= seq) {
        server.track.binds.pop_front();
    }
    while server.track.parses.front().is_some_and(|p| p.seq <= seq) {
        if let Some(p) = server.track.parses.pop_front() {
            server.statements.remove(&p.def, &p.server_name);
            if let Some(name) = p.client_name {
                if state.statements.get(&name) == Some(&p.def) {
                    state.statements.remove(&name);
                }
            }
        }
    }
}

/// Whether an error is PostgreSQL's "cached plan must not change result type" (0A000) for a
/// request `seq` that bound statements the proxy prepared: DDL changed a statement's result
/// type after it was prepared on this connection. The code alone is checked (the message may
/// be translated); another 0A000 for such a request costs one needless re-prepare.
fn is_stale_plan(e: &be::ErrorFields, server: &ServerConn, seq: u64) -> bool {
    e.code == "0A000" && server.track.binds.iter().any(|(s, _)| *s == seq)
}

/// Forgets (and queues for deallocation) the statements request `seq` bound, so their next
/// use prepares them again; the pool hears of it at the next sync.
fn invalidate_bound_statements(server: &mut ServerConn, seq: u64) {
    let hashes: Vec<u64> = server
        .track
        .binds
        .iter()
        .filter(|(s, _)| *s == seq)
        .map(|(_, h)| *h)
        .collect();
    for h in hashes {
        server.statements.invalidate(h);
        server.statements.newly_stale.push(h);
    }
}

/// Whether the batch binds one of the client's named prepared statements.
fn binds_named_statement(batch: &[Frame], state: &super::state::ClientState) -> bool {
    batch.iter().any(|f| {
        f.tag() == ftag::BIND
            && crate::protocol::frontend::bind(f.body()).is_ok_and(|b| {
                !b.statement.is_empty() && state.statements.contains_key(b.statement)
            })
    })
}

/// Whether a standby's error means "this should not have come here" and the request may be
/// re-run elsewhere: a write refused by a read-only server (25006), a recovery conflict
/// (40001 with that wording), or the standby going away (57P01, 57P03).
fn is_misroute(e: &be::ErrorFields) -> bool {
    match e.code.as_str() {
        "25006" | "57P01" | "57P03" => true,
        "40001" => e.message.contains("conflict with recovery"),
        _ => false,
    }
}

/// The WAL position in a one-column text DataRow (`16/B374D848`).
/// The error of a read that must run on a standby when none is eligible.
fn no_standby() -> ProxyError {
    ProxyError::error(
        SqlState::CANNOT_CONNECT_NOW,
        "no standby is available for this read (routing.fallback = \"error\")",
    )
}

/// What [`Session::ask_causal_standby`] asks a standby.
const REPLAY_SQL: &str = "SELECT pg_catalog.pg_last_wal_replay_lsn()";

/// Asks an idle standby connection how far it has replayed.
async fn ask_replay(lease: &mut crate::backend::Lease, timeout: Duration) -> Option<u64> {
    let mut replayed = None;
    match lease
        .query_internal(REPLAY_SQL, timeout, |row| replayed = parse_lsn_row(row))
        .await
    {
        Ok(Ok(())) => replayed,
        _ => None,
    }
}

fn parse_lsn_row(body: &[u8]) -> Option<u64> {
    let (n, rest) = body.split_first_chunk::<2>()?;
    if i16::from_be_bytes(*n) != 1 {
        return None;
    }
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(i32::from_be_bytes(*len)).ok()?;
    let text = std::str::from_utf8(rest.get(..len)?).ok()?;
    crate::admin::http::parse_lsn(text)
}
