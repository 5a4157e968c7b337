//! One task per client: startup and authentication, then the request/reply relay, then a clean
//! hand-back of the server connection.
//!
//! ```text
//! run ─▶ startup::handshake ─▶ Session::begin (server, parameters, welcome)
//!     ─▶ Session::relay (relay.rs: client batches ─▶ server, replies ─▶ client)
//!     ─▶ Session::finish (roll back / reset / close the server connection)
//! ```

pub mod cancel;
pub mod client;
mod idle;
mod relay;
pub mod request;
pub mod route;
pub mod startup;
pub mod state;

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::app::App;
use crate::backend::{BackendError, Lease, Pool};
use crate::config::PoolMode;
use crate::protocol::backend::TxStatus;
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::sqlstate::Severity;
use crate::protocol::startup::CancelKey;
use crate::protocol::{Frame, ProtocolError, SqlState};
use crate::router::Target;
use cancel::Registration;
use client::ClientConn;
use startup::{Accepted, Outcome};
use state::ClientState;

/// One request's frames, up to its Sync or Query. An extended-protocol request is at most
/// Parse, Bind, Describe, Execute and Sync (libpq's prepared statements send Bind, Describe,
/// Execute, Sync): inline, so the hot path allocates nothing for it.
pub type Batch = smallvec::SmallVec<[Frame; 5]>;

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client broke the protocol: FATAL 08P01 (or 0A000 for a version).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The client's socket failed; nothing can be sent.
    #[error("client connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// Send this error to the client, then close.
    #[error("{}", .0.message)]
    Fatal(ProxyError),
    /// The server side failed in a way that ends the session.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The client went away.
    #[error("client closed the connection")]
    Closed,
}

impl SessionError {
    /// What the client is told before the connection closes, if it can still be told anything.
    fn to_client(&self) -> Option<ProxyError> {
        match self {
            SessionError::Protocol(e) => Some(ProxyError::fatal(e.sqlstate(), e.to_string())),
            SessionError::Fatal(e) => Some(e.clone()),
            SessionError::Backend(e) => Some(match e.server_fields() {
                Some(fields) => ProxyError::from_server(fields, Severity::Fatal),
                None => ProxyError::fatal(e.sqlstate(), e.to_string()),
            }),
            SessionError::Io(_) | SessionError::Closed => None,
        }
    }
}

/// Serves one client connection from accept to close.
pub async fn run(app: App, stream: TcpStream, peer: SocketAddr) {
    let mut client = ClientConn::new(stream, peer);
    let limit = app.settings().config.proxy.startup_timeout;
    let outcome =
        match tokio::time::timeout(limit, Box::pin(startup::handshake(&app, &mut client))).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::CONNECTION_FAILURE,
                format!("startup and authentication did not complete within {limit:?}"),
            ))),
        };
    let accepted = match outcome {
        Ok(Outcome::Session(a)) => a,
        Ok(Outcome::Done) => return,
        Err(e) => return Box::pin(report_and_close(&mut client, e)).await,
    };
    // As PostgreSQL does for a role's CONNECTION LIMIT: after authentication.
    let Some(_slot) = app.user_slot(&accepted.user) else {
        let e = SessionError::Fatal(ProxyError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!("too many connections for role \"{}\"", accepted.user),
        ));
        return Box::pin(report_and_close(&mut client, e)).await;
    };
    let mut session = Session::new(app, client, accepted);
    // The phases are boxed so that a session waiting in `relay` (most of its life, often
    // idle) does not carry the space of the others' futures.
    let result = match Box::pin(session.begin()).await {
        Ok(()) => Box::pin(session.relay()).await,
        Err(e) => Err(e),
    };
    Box::pin(session.finish(result)).await;
}

/// Sends the error (if the client can still hear it) and closes.
async fn report_and_close(client: &mut ClientConn, e: SessionError) {
    if report(client, &e).await {
        client.linger().await;
    }
}

/// Sends the error to the client if it can still hear it; true if it could.
async fn report(client: &mut ClientConn, e: &SessionError) -> bool {
    let Some(err) = e.to_client() else {
        return false;
    };
    tracing::debug!(peer = %client.peer(), error = %err.message, "closing client connection");
    client.push_error(&err);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), client.flush()).await,
        Ok(Ok(()))
    )
}

/// A client's session after authentication.
pub struct Session {
    /// The proxy.
    app: App,
    /// The client connection.
    client: ClientConn,
    /// Who the client is and the parameters it asked for at startup.
    accepted: Accepted,
    /// Parameters and prepared statements the client expects.
    state: ClientState,
    /// When a server connection goes back to the pool.
    mode: PoolMode,
    /// Why the client keeps its server connection until it disconnects (LISTEN, SQL PREPARE,
    /// ...), if it does.
    pinned: Option<&'static str>,
    /// The last request changed session parameters: read them back before the connection is
    /// released.
    params_dirty: bool,
    /// Pools already looked up, by node.
    pools: Vec<Option<Arc<Pool>>>,
    /// Whether the held server connection is on the primary or a standby (for metrics).
    server_kind: crate::metrics::RouteKind,
    /// Counts the held server connection's node as busy (least-outstanding balancing).
    in_flight: Option<crate::app::InFlight>,
    /// Function volatility of the client's database.
    catalog: Arc<arc_swap::ArcSwap<crate::router::functions::FunctionCatalog>>,
    /// Routing state (`causeway.*` settings and configured defaults).
    route: route::RouteState,
    /// The request in flight on a standby, held back for a possible retry.
    guard: Option<route::MisrouteGuard>,
    /// A refused request to re-run on the primary.
    retry_now: Option<Box<route::MisrouteGuard>>,
    /// A request waiting for the standby connection ahead of it to be released.
    held: Option<Box<relay::HeldRequest>>,
    /// The next dispatch goes to the primary whatever the router says (a retry).
    force_primary: bool,
    /// The next dispatch re-runs a request after a stale cached plan: no second re-run.
    retrying: bool,
    /// A request that may have written ran on the primary since the last captured WAL
    /// position (read-your-writes).
    wrote_in_transaction: bool,
    /// Send the read-your-writes probe once the current request's ReadyForQuery is in (the
    /// request was a COPY FROM, behind which nothing may be queued).
    lsn_probe_after_reply: bool,
    /// `causeway.*` batches that arrived while a server still owed earlier replies: they are
    /// answered (and their values read) once it has answered everything, so that
    /// `SHOW causeway.min_lsn` sees the position of the write just before it.
    deferred: Vec<Batch>,
    /// The key the client got in BackendKeyData.
    key: CancelKey,
    /// The client's entry in the cancel registry.
    cancel: Registration,
    /// The server connection serving the client, if any.
    server: Option<Lease>,
    /// Frontend messages of the current request, not yet sent (extended protocol, up to
    /// Sync/Flush).
    batch: Batch,
    /// Bytes in `batch`.
    batch_len: usize,
    /// Transaction status as last reported to the client.
    tx_status: TxStatus,
    /// The server is in COPY IN: client CopyData/CopyDone/CopyFail go straight through.
    copy_in: bool,
    /// An error was reported in the middle of an extended-protocol batch: drop messages up to
    /// the next Sync, then answer it with ReadyForQuery (what PostgreSQL does).
    skip_until_sync: bool,
    /// Shutdown was requested: end the session at the next point where it is idle.
    draining: bool,
    /// The server connection died while the client had a transaction open (and no request
    /// in flight): the client's next request fails with this error.
    lost_transaction: Option<ProxyError>,
    /// Set while `begin` gets the connection for the welcome: with transaction pooling it may
    /// come from a standby when no primary is known, also if the primary is found gone while
    /// waiting for it.
    welcome_from_any: bool,
    /// The server's FATAL error was forwarded as is: when the server then closes, the client
    /// already knows why and the session ends.
    server_fatal: bool,
    /// The server ended with a FATAL error while the session can outlive it: when the server
    /// closes, the client gets this as an ERROR instead of losing its connection.
    server_fatal_downgraded: Option<ProxyError>,
    /// The client broke the protocol after earlier requests that are still being answered:
    /// those replies go out first, then this error ends the session (PostgreSQL reads one
    /// message at a time, so it answers everything before the bad message too).
    violation: Option<ProtocolError>,
    /// Largest frontend message accepted.
    max_message: usize,
    /// The current request's clock reading (see `Session::clock`).
    now: Option<tokio::time::Instant>,
    /// `proxy.client_idle_timeout`'s timer; `None` when the key is off (see `idle`).
    idle_timer: Option<Box<idle::IdleTimer>>,
}

impl Session {
    fn new(app: App, client: ClientConn, accepted: Accepted) -> Session {
        let key = CancelKey {
            pid: app.next_client_pid(),
            secret: rand::random(),
        };
        let cancel = app.cancels().register(key);
        // Shutdown signals every registered session after cancelling its tokens: a session
        // registered too late for that sees the tokens.
        if app.kill_token().is_cancelled() {
            cancel.slot().signal(cancel::Stop::Kill);
        } else if app.shutdown_token().is_cancelled() {
            cancel.slot().signal(cancel::Stop::Drain);
        }
        let settings = app.settings();
        let max_message = settings.config.proxy.max_message_size;
        let idle_timer = idle::IdleTimer::new(settings.config.proxy.client_idle_timeout);
        let mode = settings
            .users
            .get(&accepted.user)
            .and_then(|u| u.config.pool_mode)
            .unwrap_or(settings.config.proxy.pool_mode);
        let nodes = settings.config.nodes.len();
        let mut accepted = accepted;
        let user_cfg = settings.users.get(&accepted.user).map(|u| &u.config);
        // `<db>_ro`: the client's database is `<db>`, and it reads from standbys only.
        let readonly_alias = match &settings.config.routing.readonly_database_suffix {
            Some(sfx)
                if accepted.database.len() > sfx.len()
                    && accepted.database.ends_with(sfx.as_str()) =>
            {
                let base = accepted.database[..accepted.database.len() - sfx.len()].to_owned();
                accepted.database = base;
                true
            }
            _ => false,
        };
        let db_cfg = settings.config.database(&accepted.database);
        let route = route::RouteState {
            default_route: if readonly_alias {
                Some(crate::config::Route::Standby)
            } else {
                user_cfg
                    .and_then(|u| u.default_route)
                    .or(db_cfg.and_then(|d| d.default_route))
            },
            default_consistency: user_cfg
                .and_then(|u| u.consistency)
                .or(db_cfg.and_then(|d| d.consistency))
                .unwrap_or(settings.config.routing.consistency),
            route: None,
            max_lag: None,
            min_lsn: None,
            consistency: None,
        };
        drop(settings);
        let catalog = app.functions(&accepted.database);
        let state = ClientState::new(&accepted.params, app.params_hasher().clone());
        Session {
            app,
            client,
            state,
            accepted,
            mode,
            pinned: None,
            params_dirty: false,
            pools: vec![None; nodes],
            server_kind: crate::metrics::RouteKind::Primary,
            in_flight: None,
            catalog,
            route,
            guard: None,
            retry_now: None,
            held: None,
            force_primary: false,
            retrying: false,
            wrote_in_transaction: false,
            lsn_probe_after_reply: false,
            deferred: Vec::new(),
            key,
            cancel,
            server: None,
            batch: Batch::new(),
            batch_len: 0,
            tx_status: TxStatus::Idle,
            copy_in: false,
            skip_until_sync: false,
            draining: false,
            lost_transaction: None,
            welcome_from_any: false,
            server_fatal: false,
            server_fatal_downgraded: None,
            violation: None,
            max_message,
            now: None,
            idle_timer,
        }
    }

    /// Gets the first server connection and sends the client its welcome: ParameterStatus for
    /// every parameter, BackendKeyData, ReadyForQuery.
    async fn begin(&mut self) -> Result<(), SessionError> {
        // AuthenticationOk goes out now: a client queued for a server connection knows it got
        // in (as with PostgreSQL, the parameters follow).
        self.client.flush().await?;
        // With transaction pooling the welcome can come from a standby while no primary is
        // known (during a failover new clients still get in and can read), also when the
        // primary is found gone while its connection is being made.
        let target = Target::Primary;
        self.welcome_from_any = self.mode == PoolMode::Transaction;
        let acquired = self.acquire(target).await;
        self.welcome_from_any = false;
        let mut lease = acquired.map_err(|e| match e {
            // Errors that would be an ERROR mid-session end the session at startup.
            SessionError::Fatal(mut p) => {
                p.severity = Severity::Fatal;
                SessionError::Fatal(p)
            }
            other => other,
        })?;
        let from_standby = self
            .app
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
        messages::backend_key_data(&mut b, self.key);
        messages::ready_for_query(&mut b, TxStatus::Idle);
        self.client.push(b);
        self.server = Some(lease);
        self.maybe_release();
        Ok(())
    }

    /// Checks out a server connection for `target` and applies the client's parameters to it.
    ///
    /// For the primary this waits up to `primary_wait`: for one to be known, and also when the
    /// known one cannot be reached (it just died and the watcher has not noticed yet, or it is
    /// shutting down): then it retries once the topology changes or a check interval passed.
    /// Only when the wait is over does the client get 57P03.
    async fn acquire(&mut self, target: Target) -> Result<Lease, SessionError> {
        let settings = self.app.settings();
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
                    let topology = self.app.topology().clone();
                    let current = topology.load();
                    seen_primary = current.primary;
                    // The welcome may come from a standby (see `begin`).
                    let welcome_standby = current
                        .nodes
                        .iter()
                        .find(|n| n.healthy && n.role == crate::topology::Role::Standby)
                        .map(|n| n.id)
                        .filter(|_| self.welcome_from_any);
                    let now_known = current.primary.or(welcome_standby);
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
                    let topology = self.app.topology().clone();
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
        self.in_flight = Some(self.app.in_flight(node));
        self.server_kind = if self.app.topology().load().primary == Some(node) {
            crate::metrics::RouteKind::Primary
        } else {
            crate::metrics::RouteKind::Standby
        };
        let pool = match &self.pools[node] {
            Some(p) => p.clone(),
            None => {
                let target =
                    self.app
                        .connect_target(node, &self.accepted.database, &self.accepted.user);
                let p = self.app.pools().get(&target);
                self.pools[node] = Some(p.clone());
                p
            }
        };
        let role_epoch = self
            .app
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
                r = tokio::io::AsyncReadExt::read_buf(&mut client.stream, &mut client.rbuf), if room => {
                    match r {
                        Ok(0) | Err(_) => return Err(SessionError::Closed),
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    /// Counts a routing decision.
    fn count_route(&self, target: Target, reason: crate::router::Reason) {
        let primary = self.app.topology().load().primary;
        let kind = match target {
            Target::Node(n) if Some(n) != primary => crate::metrics::RouteKind::Standby,
            _ => crate::metrics::RouteKind::Primary,
        };
        self.count_route_kind(kind, reason);
    }

    /// Counts a routing decision whose target kind is known.
    fn count_route_kind(&self, kind: crate::metrics::RouteKind, reason: crate::router::Reason) {
        self.app.metrics().count_request(kind, reason);
    }

    /// Applies the client's parameters to a connection now, waiting for the result (used at
    /// startup, where a bad parameter must fail the connection like PostgreSQL would).
    async fn sync_params_now(&self, lease: &mut Lease) -> Result<(), SessionError> {
        let Some(sql) = request::param_sync_sql(
            &self.state.params,
            self.state.params_id(),
            &mut lease.params,
        ) else {
            return Ok(());
        };
        let timeout = self.app.settings().config.pool.server_connect_timeout;
        match lease.run_internal(&sql, timeout).await? {
            Ok(()) => Ok(()),
            Err(fields) => {
                lease.mark_broken();
                Err(SessionError::Fatal(ProxyError::from_server(
                    &fields,
                    Severity::Fatal,
                )))
            }
        }
    }

    /// After a request changed session parameters (`SET`, `RESET`, `DISCARD`), and once the
    /// connection is between transactions, reads the session-level settings back from the
    /// server: they become the client's parameters (what any other connection is made to
    /// match) and the connection's known state. The client's reply is sent first, so this
    /// costs the client nothing; nothing else runs on the connection meanwhile.
    async fn refresh_params(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_deref_mut() else {
            self.params_dirty = false;
            return Ok(());
        };
        if !server.is_idle() {
            return Ok(());
        }
        self.params_dirty = false;
        self.client.flush().await?;
        let timeout = self.app.settings().config.pool.server_connect_timeout;
        let mut rows = std::collections::BTreeMap::new();
        let result = server
            .query_internal(request::REFRESH_SQL, timeout, |row| {
                if let Some((k, v)) = request::parse_setting_row(row) {
                    rows.insert(k, v);
                }
            })
            .await?;
        match result {
            Ok(()) => {
                server.params.applied = rows.clone();
                server.params.synced = 0;
                self.state.refresh_params(rows);
            }
            Err(fields) => {
                tracing::warn!(error = %fields.message, "could not read session parameters back");
                server.mark_broken();
            }
        }
        Ok(())
    }

    /// Gives the server connection back if the pool mode allows it now: transaction pooling,
    /// not pinned, nothing in flight, no transaction open.
    fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction || self.pinned.is_some() || !self.is_idle() {
            return;
        }
        let Some(lease) = self.server.take() else {
            return;
        };
        if !lease.is_idle() {
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
    async fn finish(mut self, result: Result<(), SessionError>) {
        let client_can_hear = match &result {
            Err(e) => {
                tracing::debug!(peer = %self.client.peer(), error = %e, "session ended with an error");
                report(&mut self.client, e).await
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
            release(lease, &self.app, reset).await;
        }
        // After the server connection is back: closing gracefully may take a moment.
        if client_can_hear {
            self.client.linger().await;
        }
    }
}

/// Hands a server connection back after a client is done with it.
async fn release(mut lease: Lease, app: &App, reset: bool) {
    let timeout = app.settings().config.pool.server_connect_timeout;
    if lease.finish_proxy_replies(timeout).await.is_err() {
        lease.mark_broken();
    }
    if lease.track.copy_in.is_some()
        && !lease.is_broken()
        && lease.pending.is_empty()
        && lease.scanner.at_boundary()
    {
        // The server waits for COPY data that will never come.
        if lease.abort_copy(timeout).await.is_err() {
            lease.mark_broken();
        }
    }
    if !lease.pending.is_empty() || !lease.scanner.at_boundary() || lease.track.unsynced {
        // A request is still running: stop it so it does not hold locks, then close.
        cancel::send_cancel(&lease.cancel_target(), timeout).await;
        lease.mark_broken();
    } else if lease.status().is_in_transaction() && !lease.is_broken() {
        // Idle in a transaction: roll it back so nothing stays open on a pooled connection.
        match lease.run_internal("ROLLBACK", timeout).await {
            Ok(Ok(())) => {}
            _ => lease.mark_broken(),
        }
    }
    let pool = lease.pool().clone();
    if reset {
        pool.reset_and_checkin(lease).await;
    } else {
        pool.checkin(lease);
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
        BackendError::Server { fields, .. } => {
            matches!(fields.code.as_str(), "57P01" | "57P02" | "57P03")
        }
        _ => false,
    }
}
