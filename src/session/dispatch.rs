//! Client → server: a complete request (a simple Query, or an extended-protocol batch up to
//! Sync or Flush) is classified and routed as a whole, gets a server connection (synchronously
//! when its pool has one idle, the common case), and is written to that connection rewritten
//! for it, behind whatever the connection must receive first (parameters, deallocations).

use super::route::BatchClass;
use super::{Rerun, Session, SessionError};
use crate::protocol::backend::TxStatus;
use crate::protocol::frontend::tag as ftag;
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::sqlstate::Severity;
use crate::protocol::SqlState;
use crate::router::Target;
use crate::topology::Role;

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

impl Terminator {
    /// Whether a ReadyForQuery will answer the request.
    pub(super) fn is_complete(self) -> bool {
        matches!(self, Terminator::Query | Terminator::Sync)
    }
}

/// A complete request that arrived while the client's server connection was a standby still
/// answering an earlier read: it is routed on its own once that connection is released (a
/// write must not follow a read onto a standby).
#[derive(Debug)]
pub(super) struct HeldRequest {
    /// Its frames.
    pub frames: super::Batch,
    /// Their bytes.
    pub len: usize,
    /// How it ended.
    pub term: Terminator,
}

/// A batch on its way to a server: what the classifier and the router said.
pub(super) struct Routed {
    batch_class: BatchClass,
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

impl Session {
    /// Sends the batch to the server serving this client, getting one if needed.
    ///
    /// Three steps: [`Self::dispatch_begin`] decides (synchronously) what the batch needs;
    /// a connection is taken from its pool without waiting when one is idle (the common case),
    /// else by the boxed [`Self::dispatch_acquire`] (connect, queue, ask standbys their
    /// position); [`Self::dispatch_send`] writes the batch. Only the slow path pays for a large
    /// future.
    pub(super) async fn dispatch(&mut self, term: Terminator) -> Result<(), SessionError> {
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
                    let role = self.server_role;
                    if let Some(reason) = routed.reason {
                        self.ctx.metrics().count_request(role, reason);
                    }
                    routed.guard_target =
                        (routed.guardable && role == Role::Standby).then_some(node);
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
        // A connection fresh from the pool may carry another client's parameters. Rare (the
        // fingerprint usually matches): the sync is sent and answered before the request, so
        // that a failed sync never lets the request run with someone else's settings.
        let sync = match self.server.as_deref_mut() {
            Some(conn) if !conn.owes_replies() => {
                conn.param_sync_query(&self.state.params, self.state.params_id())
            }
            _ => None,
        };
        if let Some(sql) = sync {
            if !Box::pin(self.sync_params_first(&sql, term)).await? {
                return Ok(());
            }
        }
        self.dispatch_send(routed, term)
    }

    /// Applies the client's parameters to the connection just taken and waits for the answer.
    /// False when it failed: the connection (which may hold another client's search_path,
    /// role or timeouts) is closed, never pooled, and the request fails with the sync's error
    /// without running anywhere; the next request gets another connection.
    async fn sync_params_first(
        &mut self,
        sql: &str,
        term: Terminator,
    ) -> Result<bool, SessionError> {
        let timeout = self.ctx.settings().config.pool.server_connect_timeout;
        let Some(lease) = self.server.as_mut() else {
            return Ok(true);
        };
        let e = match lease.run_internal(sql, timeout).await {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(fields)) => ProxyError::from_server(&fields, Severity::Error),
            Err(e) => ProxyError::error(e.sqlstate(), e.to_string()),
        };
        tracing::warn!(server = %lease.addr(), error = %e.message, "applying the client's parameters failed; the server connection will be closed");
        lease.mark_broken();
        self.server = None;
        self.in_flight = None;
        self.cancel.slot().set(None);
        self.rerun = Rerun::No;
        if self.pinned.is_some() || self.mode == crate::config::PoolMode::Session {
            // The session's state lived on that connection.
            return Err(SessionError::Fatal(ProxyError {
                severity: Severity::Fatal,
                ..e
            }));
        }
        self.fail_request(&e, term);
        Ok(false)
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
            Target::Node(n) if guardable && self.ctx.topology().load().primary != Some(n) => {
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
        // The transaction this request belongs to died with its server: answered as a failed
        // transaction block until the client ends it (`lost.rs`). A Close + Sync is answered
        // below without running anything: the error waits for a request that runs
        // something. (A driver that pipelines sends the Close + Sync of a statement it dropped
        // in front of its next statement and ignores its reply, as tokio-postgres does: the
        // error must not be spent on it, or that statement, the transaction's COMMIT say,
        // would run outside any transaction and succeed.)
        if self.lost.is_some() && !self.closes_only(term) {
            self.answer_lost_transaction(term);
            return Ok(None);
        }
        if let Some(e) = self.statements_over_limit() {
            self.fail_request(&e, term);
            return Ok(None);
        }
        // One settings snapshot for the whole decision.
        let settings = self.ctx.settings();
        let batch_class = self.classify_batch(&settings);
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
        if self.closes_only(term) {
            // Close + Sync (a driver dropping a prepared statement) runs nothing: answered
            // here rather than routed like a read, which would take a standby connection (and
            // queue the client's next request behind it there) or fail for want of one.
            self.answer_proxy_batch();
            return Ok(None);
        }
        let guardable = term.is_complete() && !self.tx_status.is_in_transaction();
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
        let forced = self.rerun == Rerun::OnPrimary;
        if forced {
            self.rerun = Rerun::No;
        }
        if forced || !term.is_complete() {
            // A retry goes to the primary; and the rest of an unfinished batch will follow on
            // the same connection and may write: only the primary is safe.
            routed.target = Some(Target::Primary);
            return Ok(Some(routed));
        }
        let (decision, reason) = self.plan(&routed.batch_class, &[], false, &settings);
        let Some(target) = decision.target() else {
            self.fail_request(&no_standby(), term);
            return Ok(None);
        };
        routed.target = Some(target);
        routed.reason = Some(reason);
        routed.ask_causal = crate::router::asks_standbys_first(decision, reason);
        Ok(Some(routed))
    }

    /// A Close + Sync with no connection held: answered by the proxy (see `dispatch_begin`).
    fn closes_only(&self, term: Terminator) -> bool {
        term == Terminator::Sync && self.server.is_none() && self.batch_only_closes()
    }

    /// Checks out a connection for `target` if its pool has one idle right now; with its
    /// node (`server_role` tells whether that is the primary).
    fn try_acquire_now(&mut self, target: Target) -> Option<(crate::backend::Lease, usize)> {
        let topology = self.ctx.topology().load();
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
        self.in_flight = Some(self.ctx.in_flight(node));
        self.server_role = if on_primary {
            Role::Primary
        } else {
            Role::Standby
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
                let r = self.acquire(target, false).await;
                match (r, guard_target) {
                    // A standby that cannot give a connection right now (down, refusing,
                    // starting up, pool exhausted) before the watcher noticed: the read goes
                    // where it would go without that standby.
                    (Err(SessionError::Backend(e)), Some(n))
                        if unreachable.len() < self.pools.len() =>
                    {
                        tracing::debug!(node = n, error = %e, "standby unavailable at checkout; routing the read elsewhere");
                        unreachable.push(n);
                        let (decision, _) = self.plan(
                            &routed.batch_class,
                            &unreachable,
                            false,
                            &self.ctx.settings(),
                        );
                        let Some(t) = decision.target() else {
                            self.fail_request(&no_standby(), term);
                            return Ok(false);
                        };
                        target = t;
                        guard_target = self.standby_of(t, routed.guardable);
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
                    self.ctx.metrics().pool_timeouts.inc();
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
        let retrying = std::mem::take(&mut self.rerun) == Rerun::StalePlan;
        let sent = self.clock();
        let Some(lease) = self.server.as_mut() else {
            return Ok(());
        };
        // Statements another connection of the pool found stale (DDL) are prepared again here
        // too.
        lease.pool().clone().sync_statements(lease);
        let conn = &mut **lease;
        let quiet = !conn.owes_replies();
        // A request that binds prepared statements, alone on an idle connection outside a
        // transaction, is guarded: if DDL changed a statement's result type since it was
        // prepared here, it is prepared again and the request re-run, unseen by the client.
        let stale_guard = guard_target.is_none()
            && !retrying
            && quiet
            && term == Terminator::Sync
            && !self.tx_status.is_in_transaction()
            && conn.status() == TxStatus::Idle
            && batch_class.binds_named;
        if quiet {
            // Statements evicted from the connection's cache or found stale are deallocated
            // while nothing else runs on it, in front of the request, in the same write (their
            // replies are swallowed). (Parameters were brought in line before: see
            // `sync_params_first`.)
            conn.queue_pending_closes();
        }
        conn.write_batch(
            &self.batch,
            &mut self.state.statements,
            &mut self.state.unnamed,
        )?;
        if batch_class.executes {
            let class = batch_class.class.unwrap_or(crate::router::Class::Write);
            self.ctx.feedback().count_served(conn.node(), class);
        }
        if guard_target.is_some() || stale_guard {
            // The guard keeps the frames for a re-run (they are sent; the batch starts over).
            self.guard.set(super::guard::MisrouteGuard {
                frames: std::mem::take(&mut self.batch),
                term_is_sync: term == Terminator::Sync,
                learn_key: batch_class.learn_key,
                held: smallvec::SmallVec::new(),
                discarding: false,
                code: String::new(),
                learn: false,
                standby: guard_target.is_some(),
                error: None,
            });
        }
        if batch_class.copies_in && self.copy_in == super::CopyIn::Off {
            // The client may send its data before the server asks for it: from now on it
            // goes straight to this connection.
            self.copy_in = super::CopyIn::Requested;
        }
        if batch_class.params_may_change {
            self.params_dirty = true;
        }
        if let Some(why) = batch_class.pin {
            self.pin(why);
        }
        self.batch.clear();
        self.batch_len = 0;
        let Some(conn) = self.server.as_deref_mut() else {
            return Ok(());
        };
        if term.is_complete() {
            conn.expect_client_reply(term == Terminator::Sync, sent);
            self.ends_in_flight |= batch_class.ends_transaction;
            self.probe_after_request(&batch_class);
        } else {
            conn.expect_unsynced();
        }
        Ok(())
    }

    /// Whether the client's server connection is a standby's serving an autocommit read: a
    /// new request may not simply follow it there, it must be routed by itself.
    pub(super) fn behind_standby_read(&self) -> bool {
        self.server.is_some()
            && self.server_role == Role::Standby
            && !self.tx_status.is_in_transaction()
            // A pinned connection is never released: waiting for it would wait forever.
            && self.pinned.is_none()
    }

    /// Answers a request the proxy could not run with an error, keeping the protocol in step.
    pub(super) fn fail_request(&mut self, e: &ProxyError, term: Terminator) {
        self.batch.clear();
        self.batch_len = 0;
        self.ctx.metrics().count_proxy_error(e);
        self.client.push_error(e);
        if term.is_complete() {
            let mut b = bytes::BytesMut::with_capacity(6);
            messages::ready_for_query(&mut b, self.tx_status);
            self.client.push(b);
        } else {
            self.skip_until_sync = true;
        }
    }
}

/// Most named prepared statements one client may have at once.
pub(super) const MAX_CLIENT_STATEMENTS: usize = 10_000;

/// Most bytes of statement definitions (query text and parameter types) one client may have
/// prepared at once, or `max_message_size` if that is larger (one statement always fits).
const MAX_STATEMENT_BYTES: usize = 64 << 20;

impl Session {
    /// The error for a batch that would take the client past [`MAX_CLIENT_STATEMENTS`] named
    /// prepared statements or [`MAX_STATEMENT_BYTES`] of their text; `None` for most batches
    /// (only a Parse of a new name costs a count).
    fn statements_over_limit(&self) -> Option<ProxyError> {
        use crate::protocol::frontend::{describe_or_close, parse, Target};
        let have = &self.state.statements;
        let (mut new, mut new_bytes, mut closed) = (0, 0, 0);
        for f in &self.batch {
            match f.tag() {
                ftag::PARSE => match parse(f.body()) {
                    Ok(p) if !p.name.is_empty() && !have.contains_key(p.name) => {
                        new += 1;
                        new_bytes += f.len();
                    }
                    _ => {}
                },
                // Closed in the same batch, before or after: room either way (a driver
                // replacing statements sends Close and Parse together).
                ftag::CLOSE => {
                    if let Ok(Target::Statement(s)) = describe_or_close(f.body()) {
                        closed += usize::from(have.contains_key(s));
                    }
                }
                _ => {}
            }
        }
        if new == 0 {
            return None;
        }
        let byte_limit = MAX_STATEMENT_BYTES.max(self.max_message);
        let over = if (have.len() + new).saturating_sub(closed) > MAX_CLIENT_STATEMENTS {
            Some(format!("at most {MAX_CLIENT_STATEMENTS}"))
        } else if have.values().map(|d| d.body.len()).sum::<usize>() + new_bytes > byte_limit {
            Some(format!("at most {byte_limit} bytes of them"))
        } else {
            None
        }?;
        Some(ProxyError::error(
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "too many prepared statements: {over} per client connection; \
                 deallocate some (Close or DEALLOCATE) before preparing more"
            ),
        ))
    }
}

/// The error of a read that must run on a standby when none is eligible.
fn no_standby() -> ProxyError {
    ProxyError::error(
        SqlState::CANNOT_CONNECT_NOW,
        "no standby is available for this read (routing.fallback = \"error\")",
    )
}
