//! A session's server connections over its life: the first one and the client's welcome,
//! getting one for a request (waiting for a primary when there is none), reading parameters
//! back, giving it back to the pool between transactions, and the clean hand-back at the end.

use std::sync::Arc;

use bytes::BytesMut;

use super::{report, Session, SessionError};
use crate::backend::{BackendError, Lease, Pool};
use crate::config::PoolMode;
use crate::protocol::backend::TxStatus;
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::sqlstate::Severity;
use crate::protocol::SqlState;
use crate::router::Target;

impl Session {
    /// Gets the first server connection and sends the client its welcome: ParameterStatus for
    /// every parameter, BackendKeyData, ReadyForQuery.
    pub(super) async fn begin(&mut self) -> Result<(), SessionError> {
        // AuthenticationOk goes out now: a client queued for a server connection knows it got
        // in (as with PostgreSQL, the parameters follow).
        self.client.flush().await?;
        // With transaction pooling the welcome can come from a standby while no primary is
        // known (during a failover new clients still get in and can read), also when the
        // primary is found gone while its connection is being made.
        let acquired = self
            .acquire(Target::Primary, self.mode == PoolMode::Transaction)
            .await;
        let mut lease = acquired.map_err(|e| match e {
            // Errors that would be an ERROR mid-session end the session at startup.
            SessionError::Fatal(mut p) => {
                p.severity = Severity::Fatal;
                SessionError::Fatal(p)
            }
            other => other,
        })?;
        let from_standby = self
            .ctx
            .topology()
            .load()
            .nodes
            .get(lease.pool().key().node)
            .is_some_and(|n| n.role == crate::topology::Role::Standby);
        self.sync_params_now(&mut lease).await?;
        let mut b = BytesMut::with_capacity(512);
        let mut params: Vec<_> = lease.params().reported.iter().collect();
        params.sort();
        for (name, value) in params {
            // The proxy as a whole takes writes, whichever node said hello: a client checking
            // for a read-write server (libpq's target_session_attrs) must not be turned away.
            let value = match name.as_str() {
                "in_hot_standby" | "default_transaction_read_only" if from_standby => "off",
                _ => value.as_str(),
            };
            messages::parameter_status(&mut b, name, value);
        }
        if self.mode == PoolMode::Session {
            // The client keeps this one server connection: it is told its real pid, so that
            // pg_backend_pid(), pg_stat_activity, pg_terminate_backend and notifications agree
            // with its key, as without a proxy. The secret stays the proxy's own, so a cancel
            // still comes here (and reaches that process).
            self.key.pid = lease.cancel_target().key.pid;
            self.cancel.set_pid(self.key.pid);
        }
        messages::backend_key_data(&mut b, self.key);
        messages::ready_for_query(&mut b, TxStatus::Idle);
        self.client.push(b);
        self.server = Some(lease);
        self.catalog = self.ctx.functions(&self.accepted.database);
        self.maybe_release();
        Ok(())
    }

    /// Checks out a server connection for `target` and applies the client's parameters to it.
    ///
    /// For the primary this waits up to `primary_wait`: for one to be known, and also when the
    /// known one cannot be reached (it just died and the watcher has not noticed yet, or it is
    /// shutting down): then it retries once the topology changes or a check interval passed.
    /// Only when the wait is over does the client get 57P03.
    ///
    /// `welcome`: the connection greets a new client; with transaction pooling a standby will
    /// do while no primary is known (see `begin`).
    pub(super) async fn acquire(
        &mut self,
        target: Target,
        welcome: bool,
    ) -> Result<Lease, SessionError> {
        let settings = self.ctx.settings();
        let wait = settings.config.routing.primary_wait;
        let retry = settings.config.routing.check_interval;
        drop(settings);
        let deadline = tokio::time::Instant::now() + wait;
        let no_primary = |why: String| {
            SessionError::Fatal(ProxyError::error(
                SqlState::CANNOT_CONNECT_NOW,
                format!("no primary server is available (waited {wait:?}){why}"),
            ))
        };
        loop {
            // The primary this attempt was based on.
            let mut seen_primary = None;
            let node = match target {
                Target::Primary => {
                    let topology = self.ctx.topology().clone();
                    let current = topology.load();
                    seen_primary = current.primary;
                    // The welcome may come from a standby (see `begin`).
                    let now_known = crate::router::welcome_node(&current, welcome);
                    // A snapshot guard is not kept across the wait below.
                    drop(current);
                    match now_known {
                        Some(p) => p,
                        None => topology
                            .wait_for_primary(
                                deadline.saturating_duration_since(tokio::time::Instant::now()),
                            )
                            .await
                            .ok_or_else(|| no_primary(String::new()))?,
                    }
                }
                Target::Node(n) => n,
            };
            match self.acquire_on(node).await {
                Err(SessionError::Backend(e))
                    if target == Target::Primary && is_unreachable(&e) =>
                {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(no_primary(format!("; last error: {e}")));
                    }
                    tracing::debug!(error = %e, "primary unreachable; waiting for the topology to change");
                    // Until the snapshot changes its mind about the primary or about this node
                    // (never a busy loop: at most a check interval per attempt).
                    let topology = self.ctx.topology().clone();
                    topology
                        .wait_until(retry.min(left), |t| {
                            t.primary != seen_primary
                                || t.nodes.get(node).is_none_or(|n| !n.healthy)
                        })
                        .await;
                }
                other => return other,
            }
        }
    }

    /// [`acquire`](Self::acquire) on a known node.
    async fn acquire_on(&mut self, node: usize) -> Result<Lease, SessionError> {
        self.in_flight = Some(self.ctx.in_flight(node));
        self.server_role = if self.ctx.topology().load().primary == Some(node) {
            crate::topology::Role::Primary
        } else {
            crate::topology::Role::Standby
        };
        if node >= self.pools.len() {
            // A node added at run time (a reload, the cluster manager) after this session
            // started.
            self.pools.resize(node + 1, None);
        }
        let pool = match &self.pools[node] {
            // A pool a reload replaced is looked up again (off the hot path: its idle
            // connections are gone, so `try_checkout` failed before this).
            Some(p) if !p.is_retired() => p.clone(),
            _ => {
                let target = self.ctx.connect_target(
                    node,
                    &self.accepted.database,
                    &self.accepted.user,
                    self.accepted.server_auth.as_ref(),
                );
                let p = self.ctx.pools().get(&target);
                self.pools[node] = Some(p.clone());
                p
            }
        };
        let role_epoch = self
            .ctx
            .topology()
            .load()
            .nodes
            .get(node)
            .map_or(0, |n| n.role_epoch);
        let lease = match self.checkout_watching_client(&pool, role_epoch).await {
            Ok(l) => l,
            Err(e) => {
                // Nothing runs on the node: it must not look busy to the balancer.
                self.in_flight = None;
                return Err(e);
            }
        };
        self.cancel.slot().set(Some(lease.cancel_target()));
        Ok(lease)
    }

    /// Waits for a server connection while still reading the client, so that a client that
    /// gives up and disconnects while queued (a full pool) is noticed and leaves the queue.
    /// Bytes it sends meanwhile are kept for later (up to a bound, then reading pauses).
    async fn checkout_watching_client(
        &mut self,
        pool: &Arc<Pool>,
        role_epoch: u64,
    ) -> Result<Lease, SessionError> {
        let checkout = pool.checkout(role_epoch);
        tokio::pin!(checkout);
        loop {
            let room = self.client.rbuf.len() < self.max_message.min(1 << 20);
            self.client.prepare_read();
            let client = &mut self.client;
            tokio::select! {
                r = &mut checkout => return Ok(r?),
                r = client.read_into_buf(), if room => {
                    match r {
                        Ok(0) | Err(_) => return Err(SessionError::Closed),
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    /// Counts a routing decision.
    pub(super) fn count_route(&self, target: Target, reason: crate::router::Reason) {
        let primary = self.ctx.topology().load().primary;
        let kind = match target {
            Target::Node(n) if Some(n) != primary => crate::topology::Role::Standby,
            _ => crate::topology::Role::Primary,
        };
        self.ctx.metrics().count_request(kind, reason);
    }

    /// Applies the client's parameters to a connection now, waiting for the result (used at
    /// startup, where a bad parameter must fail the connection like PostgreSQL would).
    async fn sync_params_now(&self, lease: &mut Lease) -> Result<(), SessionError> {
        let timeout = self.ctx.settings().config.pool.server_connect_timeout;
        match lease
            .sync_params_now(&self.state.params, self.state.params_id(), timeout)
            .await?
        {
            Ok(()) => Ok(()),
            Err(fields) => Err(SessionError::Fatal(ProxyError::from_server(
                &fields,
                Severity::Fatal,
            ))),
        }
    }

    /// After a request changed session parameters (`SET`, `RESET`, `DISCARD`), and once the
    /// connection is between transactions, reads the session-level settings back from the
    /// server: they become the client's parameters (what any other connection is made to
    /// match) and the connection's known state. The client's reply is sent first, so this
    /// costs the client nothing; nothing else runs on the connection meanwhile.
    pub(super) async fn refresh_params(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_deref_mut() else {
            self.params_dirty = false;
            return Ok(());
        };
        if !server.is_idle() {
            return Ok(());
        }
        self.params_dirty = false;
        self.client.flush().await?;
        let timeout = self.ctx.settings().config.pool.server_connect_timeout;
        if let Some(rows) = server.read_back_params(timeout).await? {
            self.state.refresh_params(rows, self.ctx.params_hasher());
        }
        Ok(())
    }

    /// Gives the server connection back if the pool mode allows it now: transaction pooling,
    /// not pinned, nothing in flight, no transaction open.
    pub(super) fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction || self.pinned.is_some() || !self.is_idle() {
            return;
        }
        let Some(lease) = self.server.take() else {
            return;
        };
        if !lease.is_idle() {
            if lease.is_broken()
                && lease.replies_done()
                && !lease.status().is_in_transaction()
                && matches!(self.server_fatal, super::ServerFatal::None)
            {
                // Done with, but not fit for anyone (a failed parameter sync; a server's FATAL
                // is left to `server_lost`): closed, and the next request gets another one.
                self.in_flight = None;
                self.cancel.slot().set(None);
                drop(lease);
                return;
            }
            self.server = Some(lease);
            return;
        }
        self.in_flight = None;
        self.cancel.slot().set(None);
        lease.pool().clone().checkin(lease);
    }

    /// Ends the session: tells the client why (if it can hear it), and returns the server
    /// connection clean or closes it. A transaction the client left open is rolled back; a
    /// request still running is cancelled and its connection closed.
    pub(super) async fn finish(mut self, result: Result<(), SessionError>) {
        let client_can_hear = match &result {
            Err(e) => {
                tracing::debug!(peer = %self.client.peer(), error = %e, "session ended with an error");
                report(&mut self.client, e, self.ctx.metrics()).await
            }
            Ok(()) => matches!(
                tokio::time::timeout(std::time::Duration::from_secs(1), self.client.flush()).await,
                Ok(Ok(()))
            ),
        };
        self.cancel.slot().set(None);
        self.in_flight = None;
        if let Some(lease) = self.server.take() {
            // Session pooling and pinned sessions leave state the proxy does not track: reset.
            let reset = self.mode == PoolMode::Session || self.pinned.is_some();
            let timeout = self.ctx.settings().config.pool.server_connect_timeout;
            lease.release(reset, timeout).await;
        }
        // After the server connection is back: closing gracefully may take a moment.
        if client_can_hear {
            self.client.linger().await;
        }
    }
}

/// Whether a failed checkout means the node cannot be reached (down, restarting, shutting
/// down) rather than that the request itself is wrong.
fn is_unreachable(e: &BackendError) -> bool {
    match e {
        BackendError::Connect { .. }
        | BackendError::Timeout { .. }
        | BackendError::Io { .. }
        | BackendError::Closed { .. } => true,
        BackendError::Server { fields, .. } => fields.has_code(&[
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]),
        _ => false,
    }
}
