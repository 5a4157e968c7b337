//! One task per client: startup and authentication, then the request/reply relay, then a clean
//! hand-back of the server connection.
//!
//! ```text
//! run ─▶ startup::handshake ─▶ Session::begin (lifecycle.rs: server, parameters, welcome)
//!     ─▶ Session::relay (relay.rs: the loop)
//!          client bytes ─▶ requests ─▶ dispatch.rs (route.rs, causal.rs, commands.rs)
//!                                        ─▶ backend connection (rewritten, written)
//!          server bytes ─▶ backend::replies events ─▶ replies.rs (guard.rs) ─▶ client
//!     ─▶ Session::finish (lifecycle.rs: roll back / reset / close the server connection)
//! ```

pub mod cancel;
mod causal;
pub mod client;
mod commands;
pub mod context;
mod dispatch;
mod guard;
mod idle;
mod lifecycle;
mod lost;
mod relay;
mod replies;
pub mod route;
pub mod startup;
pub mod state;

use std::net::SocketAddr;

use std::sync::Arc;

use crate::backend::{BackendError, Lease, Pool};
use crate::config::PoolMode;
use crate::net::stream::ClientStream;
use crate::protocol::backend::TxStatus;
use crate::protocol::messages::ProxyError;
use crate::protocol::sqlstate::Severity;
use crate::protocol::startup::CancelKey;
use crate::protocol::{ProtocolError, SqlState};
use crate::topology::Role;
use cancel::Registration;
use client::ClientConn;
use context::{SessionCtx, UserSlot};
use dispatch::Terminator;
use startup::{Accepted, Outcome};
use state::ClientState;

/// One request's frames, up to its Sync or Query, in the bytes they arrived in (see
/// [`crate::protocol::batch`]). An extended-protocol request is usually at most Parse, Bind,
/// Describe, Execute and Sync (libpq's prepared statements send Bind, Describe, Execute, Sync)
/// in one read: one chunk and five frames inline, so the hot path allocates nothing for it.
pub use crate::protocol::Batch;

/// How the next dispatch re-runs a guarded request, if it does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Rerun {
    /// Not a re-run.
    #[default]
    No,
    /// A read a standby refused: to the primary, whatever the router says.
    OnPrimary,
    /// A request whose prepared statement's plan went stale: routed as usual, and not guarded
    /// again (no second re-run).
    StalePlan,
}

/// Where the client is in a COPY FROM STDIN, as the relay sees it.
///
/// A client may send its COPY data right behind the request, without waiting for the
/// server's CopyInResponse (asyncpg's `copy_records_to_table` sends Query, CopyData and
/// CopyDone in one go): PostgreSQL reads them in order. So the relay enters COPY when it sends
/// the request, not when the server answers, and the client's CopyData, CopyDone and CopyFail
/// always go straight to the connection the request went to, behind it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum CopyIn {
    /// No COPY.
    #[default]
    Off,
    /// A request that starts a COPY FROM was sent; the server has not asked for data yet.
    Requested,
    /// The client ended the COPY (CopyDone or CopyFail) before the server asked for data:
    /// the CopyInResponse still to come must not put the session in COPY again.
    EndedEarly,
    /// The server waits for the client's data (CopyInResponse seen), and the client has not
    /// ended it yet.
    Active {
        /// Started through the extended protocol: an error ends it with the server skipping
        /// messages until the client's next Sync, with no ReadyForQuery before it.
        extended: bool,
    },
    /// An extended-protocol COPY failed: the server skips what the client still sends until
    /// its Sync, whose ReadyForQuery ends it. The connection stays the client's until then
    /// (given back now, it would skip the next client's request).
    Failed,
}

/// What a server's FATAL error means for the session.
#[derive(Debug, Default)]
enum ServerFatal {
    /// None seen.
    #[default]
    None,
    /// Forwarded as is: when the server then closes, the client already knows why and the
    /// session ends.
    Forwarded,
    /// The session outlives the server connection (transaction pooling): when the server
    /// closes, the client gets this as an ERROR instead of losing its connection.
    Downgraded(Box<ProxyError>),
}

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

/// Serves one client connection from accept to close; `admission` is its place under the
/// connection limits.
///
/// Startup and login run boxed (boxed here, so that the caller's task holds only the box),
/// and that box is freed once the client is in: the task of a session waiting in `relay`
/// (most of its life, often idle) holds only the boxed session, its slots and the relay's
/// boxed future (issue 17; with the startup phase inline, `run`'s future was 688 bytes in a
/// release build).
pub fn run(
    ctx: SessionCtx,
    stream: ClientStream,
    peer: SocketAddr,
    admission: crate::net::listener::Admission,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let start = Box::pin(start(ctx, stream, peer, admission));
    async move {
        let Some(Started {
            mut session,
            _user_slot,
            _client_slot,
        }) = start.await
        else {
            return;
        };
        // With `?`, no `Result` of `begin` is held across the relay's wait (a `match` on it
        // would keep its space in this future).
        let result = async {
            Box::pin(session.begin()).await?;
            let mut may_park = true;
            // The relay's future is boxed while it runs and freed while the session is parked
            // (see `Session::park`): a parked client holds only its session.
            while Box::pin(session.relay(may_park)).await? == relay::Relayed::Parked {
                session.park().await;
                may_park = false;
            }
            Ok(())
        }
        .await;
        Box::pin(session.finish(result)).await;
    }
}

/// A client that logged in, and the places it holds under the limits until it leaves.
struct Started {
    /// The session, boxed: its phases' futures do not carry its space.
    session: Box<Session>,
    /// The client counted against its user's `max_connections`.
    _user_slot: UserSlot,
    /// The client counted against `max_client_connections` and in `clients_active`.
    _client_slot: crate::net::listener::ClientSlot,
}

/// Startup, authentication and the connection limits; `None` when the connection ended there
/// (refused, a cancel request, or an admin console session, served here).
async fn start(
    ctx: SessionCtx,
    stream: ClientStream,
    peer: SocketAddr,
    admission: crate::net::listener::Admission,
) -> Option<Started> {
    let mut client = ClientConn::new(stream, peer);
    let limit = ctx.settings().config.proxy.startup_timeout;
    // The timer boxed with the handshake: it is not needed once the session runs.
    let outcome = match Box::pin(tokio::time::timeout(
        limit,
        startup::handshake(&ctx, &mut client),
    ))
    .await
    {
        Ok(r) => r,
        Err(_) => Err(SessionError::Fatal(ProxyError::fatal(
            SqlState::CONNECTION_FAILURE,
            format!("startup and authentication did not complete within {limit:?}"),
        ))),
    };
    let accepted = match outcome {
        Ok(Outcome::Session(a)) => a,
        Ok(Outcome::Done) => return None,
        Err(e) => {
            Box::pin(report_and_close(&mut client, e, ctx.metrics())).await;
            return None;
        }
    };
    // As PostgreSQL counts max_connections and a role's CONNECTION LIMIT: after
    // authentication.
    let client_slot = match admission.logged_in() {
        Ok(slot) => slot,
        Err(_active) => {
            let e = SessionError::Fatal(crate::net::listener::too_many_clients());
            Box::pin(report_and_close(&mut client, e, ctx.metrics())).await;
            return None;
        }
    };
    // Once per connection, never per request: the console is a database name.
    if *accepted.database == *crate::admin::console::DATABASE {
        Box::pin(crate::admin::console::serve(ctx, client, accepted)).await;
        return None;
    }
    let Some(user_slot) = ctx.user_slot(&accepted.user) else {
        let e = SessionError::Fatal(ProxyError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!("too many connections for role \"{}\"", accepted.user),
        ));
        Box::pin(report_and_close(&mut client, e, ctx.metrics())).await;
        return None;
    };
    Some(Started {
        session: Box::new(Session::new(ctx, client, accepted)),
        _user_slot: user_slot,
        _client_slot: client_slot,
    })
}

/// Sends the error (if the client can still hear it) and closes.
pub(crate) async fn report_and_close(
    client: &mut ClientConn,
    e: SessionError,
    metrics: &crate::metrics::Metrics,
) {
    if report(client, &e, metrics).await {
        client.linger().await;
    }
}

/// Sends the error to the client if it can still hear it (counted in `metrics`); true if it
/// could.
pub(super) async fn report(
    client: &mut ClientConn,
    e: &SessionError,
    metrics: &crate::metrics::Metrics,
) -> bool {
    let Some(err) = e.to_client() else {
        return false;
    };
    metrics.count_proxy_error(&err);
    tracing::debug!(peer = %client.peer(), error = %err.message, "closing client connection");
    client.push_error(&err);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), client.flush()).await,
        Ok(Ok(()))
    )
}

/// A client's session after authentication.
pub struct Session {
    /// What sessions share: settings, topology, pools, metrics, routing feedback.
    ctx: SessionCtx,
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
    /// The role of the held server connection's node when it was checked out.
    server_role: Role,
    /// Counts the held server connection's node as busy (least-outstanding balancing).
    in_flight: Option<crate::router::feedback::InFlight>,
    /// Function volatility of the client's database.
    catalog: Arc<arc_swap::ArcSwap<crate::router::functions::FunctionCatalog>>,
    /// Routing state (`causeway.*` settings and configured defaults).
    route: route::RouteState,
    /// The request in flight that may have to run again, held back until the server clearly
    /// answers it.
    guard: guard::GuardSlot,
    /// A refused request to re-run.
    retry_now: Option<Box<guard::MisrouteGuard>>,
    /// A request waiting for the standby connection ahead of it to be released.
    held: Option<Box<dispatch::HeldRequest>>,
    /// Whether the next dispatch is a re-run.
    rerun: Rerun,
    /// Read-your-writes bookkeeping.
    causal: causal::CausalState,
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
    /// When an unfinished `batch` goes to the server if the client sends nothing more
    /// (meaningful only while `batch` is not empty; see `relay::UNFINISHED_BATCH_WAIT`).
    batch_deadline: Option<tokio::time::Instant>,
    /// Transaction status as last reported to the client.
    tx_status: TxStatus,
    /// COPY FROM STDIN: where the client is in it (its CopyData, CopyDone and CopyFail go
    /// straight to the server connection, see [`CopyIn`]).
    copy_in: CopyIn,
    /// An error was reported in the middle of an extended-protocol batch: drop messages up to
    /// the next Sync, then answer it with ReadyForQuery (what PostgreSQL does).
    skip_until_sync: bool,
    /// Shutdown was requested: end the session at the next point where it is idle.
    draining: bool,
    /// The client has sent nothing since its welcome. A draining session does not end at
    /// that point right away: a client that connects for one transaction (pgbench -C, a
    /// restart that hands the port to a new process) sends it next (see `relay::FIRST_REQUEST_WAIT`).
    awaiting_first_request: bool,
    /// Until when a draining session that is `awaiting_first_request` waits for it.
    drain_deadline: Option<tokio::time::Instant>,
    /// The server connection died while the client had a transaction open (and no request
    /// in flight): the session answers as a failed transaction block until the client ends
    /// it (see `lost`).
    lost: Option<Box<lost::LostTransaction>>,
    /// A request in flight ends the client's transaction (`COMMIT`, `ROLLBACK`): if the server
    /// connection dies under it, the client's transaction is over, not a failed block.
    ends_in_flight: bool,
    /// What a server's FATAL error means when the server closes.
    server_fatal: ServerFatal,
    /// The client broke the protocol after earlier requests that are still being answered:
    /// those replies go out first, then this error ends the session (PostgreSQL reads one
    /// message at a time, so it answers everything before the bad message too).
    /// (Boxed: rare, and 40 bytes inline.)
    violation: Option<Box<ProtocolError>>,
    /// Largest frontend message accepted.
    max_message: usize,
    /// The current request's clock reading (see `Session::clock`).
    now: Option<tokio::time::Instant>,
    /// The timer of `proxy.client_idle_timeout` and `proxy.idle_transaction_timeout`; `None`
    /// when both keys are off (see `idle`).
    idle_timer: Option<Box<idle::IdleTimer>>,
}

impl Session {
    fn new(ctx: SessionCtx, client: ClientConn, accepted: Accepted) -> Session {
        let key = CancelKey {
            pid: ctx.next_client_pid(),
            secret: rand::random(),
        };
        let info = cancel::ClientInfo::of(&accepted, client.peer(), false);
        let cancel = ctx.cancels().register(key, info);
        // Shutdown signals every registered session after cancelling its tokens: a session
        // registered too late for that sees the tokens.
        if ctx.kill_token().is_cancelled() {
            cancel.slot().signal(cancel::Stop::Kill);
        } else if ctx.shutdown_token().is_cancelled() {
            cancel.slot().signal(cancel::Stop::Drain);
        }
        let settings = ctx.settings();
        let max_message = settings.config.proxy.max_message_size;
        let idle_timer = idle::IdleTimer::new(
            settings.config.proxy.client_idle_timeout,
            settings.config.proxy.idle_transaction_timeout,
        );
        let mode = settings
            .users
            .get(&*accepted.user)
            .and_then(|u| u.config.pool_mode)
            .unwrap_or(settings.config.proxy.pool_mode);
        // Node slots now (more may come: `acquire_on` grows the pool cache).
        let nodes = ctx.topology().load().nodes.len();
        let mut accepted = accepted;
        let route = route::RouteState::for_client(&settings, &mut accepted);
        drop(settings);
        // The database's catalog once a server accepted it (see `begin`): a name that does
        // not exist must not make the proxy load anything.
        let catalog = Arc::default();
        // The startup parameters move into the client's state (not kept twice).
        let startup = std::mem::take(&mut accepted.params);
        let state = ClientState::new(startup, ctx.params_hasher());
        Session {
            ctx,
            client,
            state,
            accepted,
            mode,
            pinned: None,
            params_dirty: false,
            pools: vec![None; nodes],
            server_role: Role::Primary,
            in_flight: None,
            catalog,
            route,
            guard: guard::GuardSlot::default(),
            retry_now: None,
            held: None,
            rerun: Rerun::No,
            causal: causal::CausalState::default(),
            deferred: Vec::new(),
            key,
            cancel,
            server: None,
            batch: Batch::new(),
            batch_len: 0,
            batch_deadline: None,
            tx_status: TxStatus::Idle,
            copy_in: CopyIn::Off,
            skip_until_sync: false,
            draining: false,
            awaiting_first_request: true,
            drain_deadline: None,
            lost: None,
            ends_in_flight: false,
            server_fatal: ServerFatal::None,
            violation: None,
            max_message,
            now: None,
            idle_timer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The same for a method taking `&mut Session`.
    fn returned_size_mut<'a, R>(_: impl FnOnce(&'a mut Session) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The same for a method taking `&mut Session` and a flag.
    fn returned_size_mut_flag<'a, R>(_: impl FnOnce(&'a mut Session, bool) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A session spends most of its life (often idle) in the future `run` returns, with
    /// the session state and the relay's future boxed under it: an idle client's task stays
    /// small (issue 17; `--nocapture` prints the sizes).
    #[test]
    fn session_futures_stay_small() {
        let run = returned_size(run);
        let relay = returned_size_mut_flag(Session::relay);
        let park = returned_size_mut(Session::park);
        let session = std::mem::size_of::<Session>();
        println!(
            "run future {run} B, relay future {relay} B, park future {park} B, Session {session} B (boxed)"
        );
        // Debug builds lay futures out no tighter than release builds. Before the Session
        // was boxed, `run` held it inline: 2240 bytes; before the startup phase was boxed,
        // 688 (736 in a debug build).
        assert!(run <= 256, "run's future is {run} bytes");
        assert!(relay <= 1024, "relay's future is {relay} bytes");
        // Rare errors are boxed (two ProxyErrors inline took 208 bytes).
        assert!(
            std::mem::size_of::<ServerFatal>() <= 16
                && std::mem::size_of::<Option<Box<ProxyError>>>() == 8
        );
        // The misroute guard (328 bytes) is allocated with the first guarded request.
        assert_eq!(std::mem::size_of::<guard::GuardSlot>(), 8);
    }

    /// What an idle client's session is made of, inline (issue 17; `--nocapture` prints it).
    #[test]
    fn print_session_parts() {
        use std::mem::size_of;
        println!(
            "Session {} = ClientConn {} (ClientStream {}) + Accepted {} + ClientState {} \
             + RouteState {} + Registration {} + Batch {} + pools {} + deferred {}; \
             begin future {}, CancelSlot {}, ClientInfo {}",
            size_of::<Session>(),
            size_of::<ClientConn>(),
            size_of::<ClientStream>(),
            size_of::<Accepted>(),
            size_of::<ClientState>(),
            size_of::<route::RouteState>(),
            size_of::<Registration>(),
            size_of::<Batch>(),
            size_of::<Vec<Option<Arc<Pool>>>>(),
            size_of::<Vec<Batch>>(),
            returned_size_mut(Session::begin),
            size_of::<cancel::CancelSlot>(),
            size_of::<cancel::ClientInfo>(),
        );
        println!(
            "guard {} lease {} causal {} server_fatal {} violation {} copy_in {} key {} \
             in_flight {} idle_timer {} catalog {}",
            size_of::<guard::GuardSlot>(),
            size_of::<Option<Lease>>(),
            size_of::<causal::CausalState>(),
            size_of::<ServerFatal>(),
            size_of::<Option<Box<ProtocolError>>>(),
            size_of::<CopyIn>(),
            size_of::<CancelKey>(),
            size_of::<Option<crate::router::feedback::InFlight>>(),
            size_of::<Option<Box<idle::IdleTimer>>>(),
            size_of::<Arc<arc_swap::ArcSwap<crate::router::functions::FunctionCatalog>>>(),
        );
    }
}
