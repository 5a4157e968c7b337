//! Server → client: what the server connection reports of its replies ([`Reply`] events,
//! read by `backend::replies`), applied to the client's session, and what happens when the
//! connection is lost.
//!
//! The connection does its own bookkeeping (status, reply owners, Parses, parameters); this
//! step decides what the client gets (through the misroute guard, see `guard.rs`) and keeps
//! the client's state: transaction status, latency, prepared statements, pinning, the
//! read-your-writes position, and how a server's FATAL error reaches the client.

use bytes::BytesMut;

use super::guard::GuardSlot;
use super::relay::Flow;
use super::{CopyIn, ServerFatal, Session, SessionError};
use crate::backend::replies::{Disposition, Reply, ReplySink, Watch};
use crate::config::PoolMode;
use crate::protocol::backend::{ErrorFields, TxStatus};
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::sqlstate::Severity;
use crate::protocol::SqlState;

/// Where the connection hands out bytes: the client's go to its write queue, the bytes a guard
/// holds back to the guard.
pub(super) struct Sink<'a> {
    /// The client connection.
    pub client: &'a mut super::client::ClientConn,
    /// The misroute guard, if a request is guarded.
    pub guard: &'a mut GuardSlot,
}

impl ReplySink for Sink<'_> {
    #[inline]
    fn client(&mut self, bytes: BytesMut) {
        self.client.push(bytes);
    }

    fn held(&mut self, bytes: BytesMut) {
        if let Some(g) = self.guard.as_mut() {
            g.held.push(bytes);
        }
    }

    fn answered(&mut self) {
        // The standby answers the guarded read: what the guard held from earlier reads goes
        // out, and the guard ends (in place: not moved out to be dropped).
        if let Some(g) = self.guard.as_mut() {
            for b in g.held.drain(..) {
                self.client.push(b);
            }
        }
        self.guard.end();
    }
}

/// Borrows the session's server connection and a [`Sink`] over its client and guard at once.
macro_rules! conn_and_sink {
    ($s:expr) => {{
        let Session {
            server,
            client,
            guard,
            ..
        } = $s;
        (server.as_deref_mut(), Sink { client, guard })
    }};
}
pub(super) use conn_and_sink;

impl Session {
    /// Handles every byte the server has sent: the client's replies are queued for it without
    /// decoding, and what the session must act on is applied on the way.
    pub(super) fn on_server_bytes(&mut self) -> Result<Flow, SessionError> {
        loop {
            let watch = match self.guard.as_ref() {
                None => Watch::Replies,
                Some(g) if g.standby && !g.discarding => Watch::HoldUntilAnswered,
                Some(g) if g.standby => Watch::EveryFrame,
                Some(_) => Watch::GuardedFrames,
            };
            let (Some(conn), mut sink) = conn_and_sink!(self) else {
                return Ok(Flow::Continue);
            };
            let Some(reply) = conn.next_reply(watch, &mut sink)? else {
                conn.settle(&mut sink);
                self.bound_guard();
                return Ok(Flow::Continue);
            };
            let d = self.on_reply(reply)?;
            if let (Some(conn), mut sink) = conn_and_sink!(self) {
                conn.dispose(d, &mut sink);
            }
        }
    }

    /// One reply event: the guard decides first for the guarded request's own frames, then the
    /// client's state follows.
    #[inline]
    fn on_reply(&mut self, reply: Reply) -> Result<Disposition, SessionError> {
        if let Reply::Ready { .. } = reply {
            self.forget_rolled_back_statements();
        }
        if let Some(d) = self.guard_reply(&reply) {
            return Ok(d);
        }
        Ok(match reply {
            Reply::Rows | Reply::Other(_) | Reply::Async => Disposition::Forward,
            Reply::Ready { status, sent } => {
                self.reply_done(status, sent);
                Disposition::Forward
            }
            Reply::LsnCaptured(lsn) => {
                self.lsn_captured(lsn);
                Disposition::Forward
            }
            Reply::CommandComplete {
                changes_params,
                drops_statements,
                pins,
            } => {
                self.command_complete(changes_params, drops_statements, pins);
                Disposition::Forward
            }
            Reply::ParseComplete { for_proxy: true } => Disposition::Drop,
            Reply::ParseComplete { for_proxy: false } => Disposition::Forward,
            Reply::Error { fields, .. } => self.server_error(&fields),
            Reply::CopyIn => {
                self.copy_in_started();
                Disposition::Forward
            }
            Reply::CopyBoth => {
                return Err(SessionError::Fatal(ProxyError::fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "COPY BOTH (replication protocol) is not supported by causeway",
                )))
            }
        })
    }

    /// Client statements whose Parse an error skipped do not exist for the client either (if
    /// its name still means the same statement).
    fn forget_rolled_back_statements(&mut self) {
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        for (name, def) in conn.take_rolled_back() {
            if self.state.statements.get(&name) == Some(&def) {
                self.state.statements.remove(&name);
            }
        }
    }

    /// A ReadyForQuery that ends a client's request.
    pub(super) fn reply_done(&mut self, status: TxStatus, sent: tokio::time::Instant) {
        self.ctx
            .metrics()
            .record_latency(self.server_role, sent.elapsed());
        self.tx_status = status;
        if self.ends_in_flight
            && !self
                .server
                .as_deref()
                .is_some_and(|s| s.owes_client_reply())
        {
            self.ends_in_flight = false;
        }
        if matches!(
            self.copy_in,
            CopyIn::Requested | CopyIn::EndedEarly | CopyIn::Failed
        ) && !self
            .server
            .as_deref()
            .is_some_and(|s| s.owes_client_reply())
        {
            // The request that was to start a COPY is over without one (it failed, or only
            // prepared the statement), or the Sync after a failed COPY is answered.
            self.copy_in = CopyIn::Off;
        }
        self.probe_after_reply(status);
    }

    /// The server asks for the client's COPY data (CopyInResponse). A client that already
    /// sent all of it, CopyDone included, behind its request is not in COPY any more.
    fn copy_in_started(&mut self) {
        if self.copy_in == CopyIn::EndedEarly {
            self.copy_in = CopyIn::Off;
            if let Some(s) = self.server.as_deref_mut() {
                s.copy_in_done();
            }
        } else {
            let extended = self
                .server
                .as_deref()
                .is_some_and(|s| s.is_copy_in_extended());
            self.copy_in = CopyIn::Active { extended };
        }
    }

    /// A CommandComplete of the client's: what its tag means for the session (the connection
    /// already forgot its own statements after `DISCARD ALL`).
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
        }
        if let Some(why) = pins {
            self.pin(why);
        }
    }

    /// Keeps the client on its server connection until it disconnects.
    pub(super) fn pin(&mut self, why: &'static str) {
        if self.pinned.is_none() {
            tracing::debug!(reason = why, "client pinned to its server connection");
            self.ctx.metrics().count_pin(why);
            self.pinned = Some(why);
        }
    }

    /// An ErrorResponse for the client (the connection already marked itself broken if it
    /// was FATAL). A FATAL error the session outlives (transaction pooling, not pinned) reaches
    /// the client as an ERROR when the server closes (see [`Self::server_lost`]).
    fn server_error(&mut self, fields: &ErrorFields) -> Disposition {
        // An error ends COPY IN on the server side; through the extended protocol the server
        // then waits for the client's Sync. A COPY requested but not started yet stays so
        // until its reply is over (the error may be an earlier request's).
        match self.copy_in {
            CopyIn::Active { extended: true } => self.copy_in = CopyIn::Failed,
            CopyIn::Active { extended: false } => self.copy_in = CopyIn::Off,
            _ => {}
        }
        if fields.is_fatal() {
            if self.mode == PoolMode::Transaction && self.pinned.is_none() {
                self.server_fatal = ServerFatal::Downgraded(Box::new(ProxyError::from_server(
                    fields,
                    Severity::Error,
                )));
                return Disposition::Drop;
            }
            self.server_fatal = ServerFatal::Forwarded;
        }
        self.ctx
            .metrics()
            .count_error(crate::metrics::ErrorSource::Server, &fields.code);
        Disposition::Forward
    }

    /// The server connection failed (the node died, a FATAL, a reset). The connection is
    /// dropped. A pinned session cannot go on without it (its LISTEN, temp tables... are gone):
    /// FATAL. Otherwise the session survives, as with PgBouncer's transaction pooling: every
    /// request in flight (one or several pipelined) fails with 08006, or with the server's own
    /// reason such as 57P01 (and its transaction with it), a transaction that was open fails
    /// at the client's next request, and later requests get a new connection, on the new
    /// primary after a failover.
    pub(super) fn server_lost(&mut self, why: &str) -> Result<Flow, SessionError> {
        let Some(mut lease) = self.server.take() else {
            return Ok(Flow::Continue);
        };
        self.in_flight = None;
        lease.mark_broken();
        self.cancel.slot().set(None);
        if let Some(g) = self.guard.take() {
            // The rule for re-running a request whose connection dropped: only if it cannot
            // have committed anything. A read on a standby cannot (and nothing of it reached
            // the client yet: the guard holds its replies until the server answers), so
            // whether the standby refused it and went away (57P01 at its shutdown) or the
            // connection just dropped, it runs again on the primary. Any other guarded request
            // (a named statement watched for a stale plan, on the primary) may have committed
            // before the connection dropped (a server goes on after its client is gone, and
            // a commit waiting for synchronous replication is already durable locally): the
            // client gets 08006, as for any request in flight, and decides. (One the server
            // already refused, a stale plan being discarded, committed nothing either.)
            // Only when it is the one request in flight: the others would go unanswered.
            let alone = lease.client_replies_owed() <= 1 && !lease.is_unsynced();
            if (g.standby || g.discarding) && alone {
                self.retry_now = Some(Box::new(g));
                return Ok(Flow::Continue);
            }
        }
        let downgraded = match std::mem::take(&mut self.server_fatal) {
            ServerFatal::Forwarded => return Ok(Flow::End),
            ServerFatal::Downgraded(e) => Some(*e),
            ServerFatal::None => None,
        };
        let addr = lease.addr().to_owned();
        tracing::warn!(server = %addr, "server connection lost: {why}");
        let message = format!("server connection to {addr} was lost: {why}");
        // Every request in flight gets its answer: a client may have pipelined several on
        // this connection (tokio-postgres sends the Close + Sync of a statement it dropped
        // right in front of its next request), and each waits for its own ReadyForQuery. A
        // COPY or frames sent without Sync get one.
        let answers = match lease.client_replies_owed() {
            0 if lease.owes_client_reply() || self.copy_in != CopyIn::Off => 1,
            n => n,
        };
        let was_in_transaction = self.tx_status.is_in_transaction();
        drop(lease);
        if self.pinned.is_some() || self.mode == PoolMode::Session {
            // The session's state (temp tables, LISTEN, everything in session pooling) lived
            // on that connection.
            return Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::CONNECTION_FAILURE,
                message,
            )));
        }
        // The server's own reason (say 57P01 at a shutdown) when it gave one.
        let e =
            downgraded.unwrap_or_else(|| ProxyError::error(SqlState::CONNECTION_FAILURE, message));
        self.copy_in = CopyIn::Off;
        if answers > 0 {
            // Requests in flight in a transaction fail; unless one of them ended it (the
            // COMMIT itself, say), the client is left in a failed transaction block, as after
            // any error in a transaction: nothing it sends runs until its ROLLBACK (`lost.rs`).
            self.tx_status = if was_in_transaction && !self.ends_in_flight {
                self.lost = Some(Box::new(super::lost::LostTransaction::reported()));
                TxStatus::Failed
            } else {
                TxStatus::Idle
            };
            for _ in 0..answers {
                self.ctx.metrics().count_proxy_error(&e);
                self.client.push_error(&e);
                let mut b = BytesMut::with_capacity(6);
                messages::ready_for_query(&mut b, self.tx_status);
                self.client.push(b);
            }
        } else if was_in_transaction {
            // The client believes a transaction is open; the next request must fail, not run
            // outside it.
            self.lost = Some(Box::new(super::lost::LostTransaction::new(e)));
        }
        self.ends_in_flight = false;
        self.answer_deferred();
        Ok(Flow::Continue)
    }

    /// Whether the held server connection is on a node that was fenced or whose role changed
    /// after the connection was made.
    pub(super) fn server_node_stale(&self) -> bool {
        let Some(server) = self.server.as_deref() else {
            return false;
        };
        self.ctx
            .topology()
            .load()
            .nodes
            .get(server.node())
            .is_some_and(|n| n.fenced || n.role_epoch > server.role_epoch())
    }
}
