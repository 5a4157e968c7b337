//! Pools of server connections, one per (node, database, user).
//!
//! A [`Lease`] is a checked-out connection. It holds a permit of its pool (so at most
//! `pool_size` connections of a pool are in use) and of its node (so at most
//! `max_server_connections` connections to a node exist). Giving it back with
//! [`Pool::checkin`] keeps the connection for the next client if it is clean; dropping a lease
//! without checking it in closes the connection, which is the safe default for every error path.
//!
//! Idle connections sit in a LIFO stack behind a `parking_lot::Mutex`: the lock is held for a
//! push or a pop only, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::connection::{ConnectTarget, ServerAuth, ServerConn};
use super::BackendError;

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The node's slot in the topology.
    pub node: usize,
    /// Database name on the server.
    pub database: String,
    /// Role name on the server.
    pub user: String,
}

/// Limits and timeouts of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections of this pool in use at once.
    pub pool_size: usize,
    /// How long a checkout may wait for a free connection; `None` waits forever.
    pub pool_timeout: Option<Duration>,
    /// Limit for connecting and authenticating a new server connection.
    pub connect_timeout: Duration,
    /// Idle connections older than this (since last use) are closed.
    pub idle_timeout: Option<Duration>,
    /// Connections older than this (since creation) are closed instead of reused.
    pub lifetime: Option<Duration>,
    /// Query that resets a connection before another client gets it (session mode).
    pub reset_query: Option<String>,
    /// Limit for the proxy's own short queries (reset, rollback, parameter sync).
    pub internal_timeout: Duration,
    /// Idle connections each pool keeps open in advance (`min_idle`).
    pub min_idle: usize,
}

/// A checked-out server connection.
pub struct Lease {
    /// The connection, boxed: a lease moves between the pool and the session on every
    /// request, and a `ServerConn` is large.
    conn: Box<ServerConn>,
    /// Pool permit: released when the lease ends.
    _active: OwnedSemaphorePermit,
    /// Node permit: travels with the connection into the idle stack and back.
    node_permit: OwnedSemaphorePermit,
    /// The pool it came from.
    pool: Arc<Pool>,
}

impl std::ops::Deref for Lease {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        &self.conn
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.conn
    }
}

impl Lease {
    /// Hands the connection back after its client is done with it: the proxy's own replies
    /// still owed are read, an abandoned COPY is ended, a request still running is cancelled
    /// and the connection closed, an open transaction is rolled back; with `reset` the pool's
    /// reset query runs before the connection serves anyone else. Nothing is left `idle in
    /// transaction` on a pooled connection.
    pub async fn release(mut self, reset: bool, timeout: std::time::Duration) {
        if self.finish_proxy_replies(timeout).await.is_err() {
            self.mark_broken();
        }
        if self.track.copy_in.is_some()
            && !self.is_broken()
            && self.pending.is_empty()
            && self.scanner.at_boundary()
        {
            // The server waits for COPY data that will never come.
            if self.abort_copy(timeout).await.is_err() {
                self.mark_broken();
            }
        }
        if !self.pending.is_empty() || !self.scanner.at_boundary() || self.track.unsynced {
            // A request is still running: stop it so it does not hold locks, then close.
            super::cancel::send_cancel(&self.cancel_target(), timeout).await;
            self.mark_broken();
        } else if self.status().is_in_transaction() && !self.is_broken() {
            // Idle in a transaction: roll it back so nothing stays open on a pooled connection.
            match self.run_internal("ROLLBACK", timeout).await {
                Ok(Ok(())) => {}
                _ => self.mark_broken(),
            }
        }
        let pool = self.pool().clone();
        if reset {
            pool.reset_and_checkin(self).await;
        } else {
            pool.checkin(self);
        }
    }

    /// Tells the pool of statements this connection found stale (DDL), so its other
    /// connections prepare them again before their clients hit the same stale plan.
    pub fn sync_stale_statements(&mut self) {
        if !self.conn.statements.newly_stale.is_empty() {
            self.pool.clone().sync_statements(&mut self.conn);
        }
    }

    /// The pool this lease belongs to.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

/// An idle connection as the admin console shows it.
#[derive(Debug, Clone, Copy)]
pub struct IdleServer {
    /// The server process id.
    pub pid: i32,
    /// Since the connection was made.
    pub age: Duration,
    /// Since it was last used.
    pub idle: Duration,
}

/// An idle connection with the node permit it keeps.
struct Idle {
    conn: Box<ServerConn>,
    node_permit: OwnedSemaphorePermit,
}

/// A pool of connections to one node as one user to one database.
pub struct Pool {
    key: PoolKey,
    target: ConnectTarget,
    settings: PoolSettings,
    /// Connections of this pool in use (pool_size permits).
    active: Arc<Semaphore>,
    /// Connections to the node, all pools together (max_server_connections permits).
    node_permits: Arc<Semaphore>,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Parameters a fresh connection reports (server defaults), captured from the first one.
    defaults: Mutex<Option<Arc<HashMap<String, String>>>>,
    /// Statements found stale (DDL changed their result type) on some connection of this
    /// pool: (generation, definition hash), oldest first, at most [`MAX_STALE`].
    stale: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Generation of the newest entry of `stale` (0: none yet).
    stale_generation: AtomicU64,
    /// A reload changed the pool settings: this pool is no longer handed out, and its
    /// connections are closed as they come back instead of kept.
    retired: AtomicBool,
    /// Checkouts waiting for a free connection now (a full or paused pool).
    waiting: AtomicUsize,
}

/// Runs `f` when dropped: undoes a count however the future holding it ends.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Most stale-statement entries a pool remembers; a connection further behind forgets all of
/// its statements instead.
const MAX_STALE: usize = 256;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name()).finish()
    }
}

impl Pool {
    /// `user@database on host:port`, for messages.
    pub fn name(&self) -> String {
        format!(
            "{}@{} on {}",
            self.key.user,
            self.key.database,
            self.target.addr()
        )
    }

    /// The key of this pool.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Connections of this pool checked out now.
    pub fn in_use(&self) -> usize {
        self.settings
            .pool_size
            .saturating_sub(self.active.available_permits())
    }

    /// Checkouts waiting for a free connection of this pool now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The pool's `pool_size`.
    pub fn pool_size(&self) -> usize {
        self.settings.pool_size
    }

    /// What the pool's connections log in with.
    pub fn server_auth(&self) -> &ServerAuth {
        &self.target.auth
    }

    /// `host:port` of the pool's node.
    pub fn addr(&self) -> String {
        self.target.addr()
    }

    /// Each idle connection's server process id and how long ago it was made and last used
    /// (for the admin console's `SHOW SERVERS`).
    pub fn idle_servers(&self, now: Instant) -> Vec<IdleServer> {
        self.idle
            .lock()
            .iter()
            .map(|i| IdleServer {
                pid: i.conn.cancel_key().pid,
                age: now.saturating_duration_since(i.conn.created()),
                idle: now.saturating_duration_since(i.conn.last_used),
            })
            .collect()
    }

    /// Parameters a fresh connection of this pool reports, once one has been made.
    pub fn server_defaults(&self) -> Option<Arc<HashMap<String, String>>> {
        self.defaults.lock().clone()
    }

    /// Checks out a connection: an idle one if available, else a new one, waiting at most
    /// `pool_timeout` for room. Idle connections made before the node's role last changed
    /// (`role_epoch`) are closed instead of reused.
    pub async fn checkout(self: &Arc<Self>, role_epoch: u64) -> Result<Lease, BackendError> {
        let started = Instant::now();
        let active = match self.active.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Counted while it waits (`SHOW POOLS`' cl_waiting), also if cancelled.
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let _waiting = scopeguard(|| {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                });
                self.acquire(&self.active, started).await?
            }
        };
        while let Some(mut idle) = self.pop_idle() {
            if !self.usable(&mut idle.conn, role_epoch, Instant::now()) {
                tokio::spawn(idle.conn.close());
                continue;
            }
            return Ok(self.lease(idle.conn, active, idle.node_permit));
        }
        let node_permit = self.acquire(&self.node_permits, started).await?;
        let conn = Box::new(self.connect(role_epoch).await?);
        Ok(self.lease(conn, active, node_permit))
    }

    /// Whether an idle connection may serve a checkout: within its lifetime and idle limits,
    /// made since the node's role last changed, and not closed by the server.
    fn usable(&self, conn: &mut ServerConn, role_epoch: u64, now: Instant) -> bool {
        !self.is_expired_at(conn, now) && conn.role_epoch >= role_epoch && conn.is_alive()
    }

    fn lease(
        self: &Arc<Self>,
        conn: Box<ServerConn>,
        active: OwnedSemaphorePermit,
        node_permit: OwnedSemaphorePermit,
    ) -> Lease {
        Lease {
            conn,
            _active: active,
            node_permit,
            pool: self.clone(),
        }
    }

    /// Checks out an idle connection without waiting, if the pool has room and one is idle
    /// and usable (see [`Pool::checkout`]); `None` otherwise (use `checkout`).
    pub fn try_checkout(self: &Arc<Self>, role_epoch: u64, now: Instant) -> Option<Lease> {
        let active = self.active.clone().try_acquire_owned().ok()?;
        let idle = {
            let mut idle = self.idle.lock();
            let usable = idle
                .last_mut()
                .is_some_and(|i| self.usable(&mut i.conn, role_epoch, now));
            // Closing an unusable one is `checkout`'s job.
            if usable {
                idle.pop()
            } else {
                None
            }
        }?;
        Some(self.lease(idle.conn, active, idle.node_permit))
    }

    /// Opens a new connection of this pool.
    async fn connect(&self, role_epoch: u64) -> Result<ServerConn, BackendError> {
        let mut conn = ServerConn::connect(&self.target, self.settings.connect_timeout).await?;
        conn.role_epoch = role_epoch;
        let created = conn.created();
        self.mark_used(&mut conn, created);
        // Nothing prepared yet: nothing stale either.
        conn.statements.seen_generation = self.stale_generation.load(Ordering::Acquire);
        {
            let mut defaults = self.defaults.lock();
            if defaults.is_none() {
                *defaults = Some(Arc::new(conn.params().reported.clone()));
            }
        }
        tracing::debug!(pool = %self.name(), pid = conn.cancel_key().pid, "new server connection");
        Ok(conn)
    }

    /// One maintenance pass: closes idle connections past `server_lifetime`, made before the
    /// node's role last changed (`role_epoch`), or dead; closes those idle past
    /// `server_idle_timeout` beyond the `min_idle` most recently used; then opens connections
    /// until `min_idle` are idle, as long as the pool (in use + idle) stays within `pool_size`
    /// and the node within `max_server_connections` (only when `healthy`: no connection
    /// attempts to a node known to be down).
    pub async fn maintain(&self, role_epoch: u64, healthy: bool) {
        let now = Instant::now();
        let mut closing = Vec::new();
        {
            let mut idle = self.idle.lock();
            // Most recently used last: keep the newest `min_idle` from the idle timeout.
            let n = idle.len();
            let mut kept = Vec::with_capacity(n);
            for (i, mut c) in idle.drain(..).enumerate() {
                let protected = n - i <= self.settings.min_idle;
                let old = self
                    .settings
                    .lifetime
                    .is_some_and(|l| now.duration_since(c.conn.created()) >= l);
                let idle_too_long = !protected
                    && self
                        .settings
                        .idle_timeout
                        .is_some_and(|t| now.duration_since(c.conn.last_used) >= t);
                if old || idle_too_long || c.conn.role_epoch < role_epoch || !c.conn.is_alive() {
                    closing.push(c);
                } else {
                    kept.push(c);
                }
            }
            *idle = kept;
        }
        for c in closing {
            tracing::debug!(pool = %self.name(), conn = ?c.conn, "closing idle server connection");
            c.conn.close().await;
        }
        if self.settings.min_idle == 0 || !healthy {
            return;
        }
        loop {
            let idle = self.idle_count();
            let in_use = self.settings.pool_size - self.active.available_permits();
            if idle >= self.settings.min_idle || idle + in_use >= self.settings.pool_size {
                return;
            }
            let Ok(node_permit) = self.node_permits.clone().try_acquire_owned() else {
                return;
            };
            match self.connect(role_epoch).await {
                Ok(mut conn) => {
                    self.mark_used(&mut conn, Instant::now());
                    self.idle.lock().insert(
                        0,
                        Idle {
                            conn: Box::new(conn),
                            node_permit,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(pool = %self.name(), error = %e, "could not open an idle server connection");
                    return;
                }
            }
        }
    }

    /// Closes every idle connection (at shutdown).
    pub async fn close_idle(&self) {
        let idle: Vec<Idle> = std::mem::take(&mut *self.idle.lock());
        for c in idle {
            c.conn.close().await;
        }
    }

    /// Gives a connection back for the next client as it is: its parameters and prepared
    /// statements are tracked, so the next session adjusts them (transaction pooling). A
    /// connection that is not idle (mid-reply, in a transaction, broken) or has outlived its
    /// limits is closed instead.
    pub fn checkin(&self, mut lease: Lease) {
        self.sync_statements(&mut lease.conn);
        let now = Instant::now();
        if !self.is_reusable(&lease.conn, now) {
            tracing::debug!(pool = %self.name(), conn = ?lease.conn, "closing server connection");
            tokio::spawn(lease.conn.close());
            return;
        }
        self.push_idle(lease, now);
    }

    /// Runs the reset query (`DISCARD ALL`), then gives the connection back; any failure closes
    /// it. Used when a client leaves state the proxy does not track (session pooling, or a
    /// pinned session).
    pub async fn reset_and_checkin(&self, mut lease: Lease) {
        let now = Instant::now();
        if !self.is_reusable(&lease.conn, now) {
            tracing::debug!(pool = %self.name(), conn = ?lease.conn, "closing server connection");
            lease.conn.close().await;
            return;
        }
        if let Some(q) = &self.settings.reset_query {
            match lease
                .conn
                .run_internal(q, self.settings.internal_timeout)
                .await
            {
                Ok(Ok(())) => {
                    lease.conn.params.applied.clear();
                    lease.conn.params.synced = 0;
                    lease.conn.statements.clear();
                }
                _ => {
                    lease.conn.close().await;
                    return;
                }
            }
        }
        self.push_idle(lease, now);
    }

    /// No longer handed out (a reload replaced it, or its node was removed): idle connections
    /// are closed now, those in use when they come back.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let idle: Vec<Idle> = std::mem::take(&mut *self.idle.lock());
        for c in idle {
            tokio::spawn(c.conn.close());
        }
    }

    /// Whether a reload replaced this pool (sessions that kept it look the pool up again).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn is_reusable(&self, conn: &ServerConn, now: Instant) -> bool {
        // A cancel still on its way would stop the next client's query: such a connection is
        // closed instead.
        !self.is_retired()
            && conn.is_idle()
            && !conn.cancel_in_flight()
            && !self.is_expired_at(conn, now)
            && conn.statements.pending_close_len() <= super::statements::MAX_PENDING_CLOSE
    }

    /// Shares what `conn` learned about stale statements with the pool, and forgets the
    /// statements other connections of the pool found stale since `conn` last looked, so that
    /// after DDL each statement fails (at most) once per pool rather than once per connection.
    pub fn sync_statements(&self, conn: &mut ServerConn) {
        let current = self.stale_generation.load(Ordering::Acquire);
        if conn.statements.newly_stale.is_empty() && conn.statements.seen_generation == current {
            return;
        }
        let mut stale = self.stale.lock();
        for hash in std::mem::take(&mut conn.statements.newly_stale) {
            let generation = self.stale_generation.fetch_add(1, Ordering::AcqRel) + 1;
            stale.push_back((generation, hash));
            if stale.len() > MAX_STALE {
                stale.pop_front();
            }
        }
        let seen = conn.statements.seen_generation;
        if stale.front().is_some_and(|(g, _)| *g > seen + 1) {
            // Entries this connection never saw were dropped: forget everything.
            conn.statements.invalidate_all();
        } else {
            for (_, hash) in stale.iter().filter(|(g, _)| *g > seen) {
                conn.statements.invalidate(*hash);
            }
        }
        conn.statements.seen_generation = self.stale_generation.load(Ordering::Acquire);
    }

    fn push_idle(&self, lease: Lease, now: Instant) {
        let Lease {
            mut conn,
            node_permit,
            _active,
            ..
        } = lease;
        self.mark_used(&mut conn, now);
        self.idle.lock().push(Idle { conn, node_permit });
        // Only now may a waiting checkout proceed: it must find this connection idle rather
        // than open a new one.
        drop(_active);
    }

    fn pop_idle(&self) -> Option<Idle> {
        self.idle.lock().pop()
    }

    fn is_expired_at(&self, conn: &ServerConn, now: Instant) -> bool {
        conn.expires.is_some_and(|e| now >= e)
    }

    /// Records that `conn` was last used at `now`, and when it will have lived or idled too
    /// long: checkouts then compare one instant instead of computing two durations.
    fn mark_used(&self, conn: &mut ServerConn, now: Instant) {
        conn.last_used = now;
        let by_lifetime = self
            .settings
            .lifetime
            .and_then(|l| conn.created().checked_add(l));
        let by_idle = self.settings.idle_timeout.and_then(|t| now.checked_add(t));
        conn.expires = match (by_lifetime, by_idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    async fn acquire(
        &self,
        sem: &Arc<Semaphore>,
        started: Instant,
    ) -> Result<OwnedSemaphorePermit, BackendError> {
        let timeout_err = || BackendError::PoolTimeout {
            pool: self.name(),
            waited_ms: started.elapsed().as_millis(),
        };
        let fut = sem.clone().acquire_owned();
        let permit = match self.settings.pool_timeout {
            Some(limit) => {
                let left = limit.saturating_sub(started.elapsed());
                tokio::time::timeout(left, fut)
                    .await
                    .map_err(|_| timeout_err())?
            }
            None => fut.await,
        };
        // The semaphores are never closed.
        permit.map_err(|_| timeout_err())
    }
}

/// All pools, created on first use.
pub struct Pools {
    /// What new pools are made with; replaced by a reload.
    settings: Mutex<PoolSettings>,
    /// One semaphore per node slot, shared by that node's pools; grown when a pool of a node
    /// added at run time is first made (off the request path: only pool creation reads it).
    node_permits: Mutex<Vec<Arc<Semaphore>>>,
    /// `max_server_connections`: permits of each node's semaphore.
    max_server_connections: usize,
    /// Pools by key; removed when unused and empty (see [`Pools::maintain`]).
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// The admin console's `PAUSE`, while in force.
    pause: Mutex<Option<Pause>>,
}

/// A `PAUSE` in force: every permit of each paused pool is held, so no checkout proceeds
/// (checkouts wait, as for a full pool, up to `pool_timeout`) and no connection is in use once
/// the pause is complete. The hot path pays nothing: a paused pool just has no free permit.
struct Pause {
    /// The database paused; `None`: all.
    database: Option<String>,
    /// The permits held.
    held: Vec<OwnedSemaphorePermit>,
}

impl Pause {
    fn covers(&self, database: &str) -> bool {
        self.database.as_deref().is_none_or(|d| d == database)
    }
}

/// Why a `PAUSE` or `RESUME` cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// A pause is already in force.
    #[error("already paused{}", .0.as_ref().map(|d| format!(" (database {d})")).unwrap_or_default())]
    AlreadyPaused(Option<String>),
    /// Nothing is paused (or not that database).
    #[error("not paused")]
    NotPaused,
}

impl Pools {
    /// Holds new transactions (of `database`, or all) and waits until the ones running end:
    /// every permit of each matching pool is taken, so checkouts wait and, once this returns,
    /// no server connection of those pools is in use. Pools made later are paused at birth.
    pub async fn pause(&self, database: Option<&str>) -> Result<(), PauseError> {
        {
            let mut pause = self.pause.lock();
            if let Some(p) = &*pause {
                return Err(PauseError::AlreadyPaused(p.database.clone()));
            }
            *pause = Some(Pause {
                database: database.map(str::to_owned),
                held: Vec::new(),
            });
        }
        let pools: Vec<Arc<Pool>> = self
            .all()
            .into_iter()
            .filter(|p| database.is_none_or(|d| p.key.database == d))
            .collect();
        for pool in pools {
            let n = u32::try_from(pool.settings.pool_size).unwrap_or(u32::MAX);
            // The semaphore is fair: from now on, releases go to this waiter first.
            let Ok(permit) = pool.active.clone().acquire_many_owned(n).await else {
                continue;
            };
            match &mut *self.pause.lock() {
                Some(p) => p.held.push(permit),
                // RESUME came while waiting.
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Ends a `PAUSE` (of `database` if named): held checkouts proceed.
    pub fn resume(&self, database: Option<&str>) -> Result<(), PauseError> {
        let mut pause = self.pause.lock();
        match &*pause {
            Some(p) if database.is_none() || p.database.as_deref() == database => {
                *pause = None;
                Ok(())
            }
            _ => Err(PauseError::NotPaused),
        }
    }

    /// Whether `database` is paused.
    pub fn is_paused(&self, database: &str) -> bool {
        self.pause
            .lock()
            .as_ref()
            .is_some_and(|p| p.covers(database))
    }
    /// Creates the pool registry (pools are made on first use, for any node slot).
    pub fn new(settings: PoolSettings, max_server_connections: usize) -> Pools {
        Pools {
            settings: Mutex::new(settings),
            pause: Mutex::new(None),
            node_permits: Mutex::new(Vec::new()),
            max_server_connections,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The semaphore of node slot `node`, made (with the slots before it) on first use.
    fn node_permits(&self, node: usize) -> Arc<Semaphore> {
        let mut permits = self.node_permits.lock();
        while permits.len() <= node {
            permits.push(Arc::new(Semaphore::new(self.max_server_connections)));
        }
        permits[node].clone()
    }

    /// The pool for `target`, created if needed.
    ///
    /// A pool whose pass-through secret an older login taught it is replaced when `target`
    /// carries a different, newer one (the password was changed on the server, and the client
    /// behind `target` proved the new one): the old pool is retired, as by a reload.
    pub fn get(&self, target: &ConnectTarget) -> Arc<Pool> {
        let key = PoolKey {
            node: target.node,
            database: target.database.clone(),
            user: target.user.clone(),
        };
        let settings = self.settings.lock().clone();
        let mut pools = self.pools.lock();
        let superseded = pools
            .get(&key)
            .is_some_and(|p| p.target.auth.is_superseded_by(&target.auth));
        if superseded {
            if let Some(old) = pools.remove(&key) {
                old.retire();
            }
        }
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                let pool = Arc::new(Pool {
                    key,
                    target: target.clone(),
                    active: Arc::new(Semaphore::new(settings.pool_size)),
                    settings,
                    node_permits: self.node_permits(target.node),
                    idle: Mutex::new(Vec::new()),
                    defaults: Mutex::new(None),
                    stale: Mutex::new(std::collections::VecDeque::new()),
                    stale_generation: AtomicU64::new(0),
                    retired: AtomicBool::new(false),
                    waiting: AtomicUsize::new(0),
                });
                if let Some(pause) = &mut *self.pause.lock() {
                    if pause.covers(&pool.key.database) {
                        let n = u32::try_from(pool.settings.pool_size).unwrap_or(u32::MAX);
                        // A new pool has every permit free.
                        if let Ok(p) = pool.active.clone().try_acquire_many_owned(n) {
                            pause.held.push(p);
                        }
                    }
                }
                pool
            })
            .clone()
    }

    /// Every pool's maintenance pass (see [`Pool::maintain`]); `node_state(node)` is the
    /// node's current role epoch and whether it is healthy. Pools no session holds and with no
    /// connection are removed first: database and user names come from clients, and a pool
    /// for a database that does not exist must not stay (nor, with `min_idle`, keep trying to
    /// connect).
    pub async fn maintain(&self, node_state: impl Fn(usize) -> (u64, bool)) {
        self.remove_unused();
        for pool in self.all() {
            let (epoch, healthy) = node_state(pool.key.node);
            pool.maintain(epoch, healthy).await;
        }
    }

    /// Puts new pool settings in force (a reload): pools made with other settings are
    /// retired (no longer handed out; their idle connections closed now, those in use when
    /// they come back), and the next checkout for their database and user makes a new pool.
    /// Connections in use are never cut. Pools `keep` refuses (a user removed, a server
    /// password changed) are retired too. Returns how many pools were retired.
    pub fn reconfigure(&self, settings: PoolSettings, keep: impl Fn(&Pool) -> bool) -> usize {
        *self.settings.lock() = settings.clone();
        let retired: Vec<Arc<Pool>> = {
            let mut pools = self.pools.lock();
            let old: Vec<PoolKey> = pools
                .iter()
                .filter(|(_, p)| p.settings != settings || !keep(p))
                .map(|(k, _)| k.clone())
                .collect();
            old.iter().filter_map(|k| pools.remove(k)).collect()
        };
        for pool in &retired {
            pool.retire();
        }
        retired.len()
    }

    /// Retires every pool of the nodes `removed` names (nodes no longer in the cluster: a
    /// reload took them out of `[[nodes]]`, or they left Patroni's member list), as
    /// [`Pools::reconfigure`] does: no longer handed out, idle connections closed now, those
    /// in use closed when they come back, so a running transaction is never cut. Returns how
    /// many pools were retired.
    pub fn retire_nodes(&self, removed: impl Fn(usize) -> bool) -> usize {
        let retired: Vec<Arc<Pool>> = {
            let mut pools = self.pools.lock();
            let gone: Vec<PoolKey> = pools.keys().filter(|k| removed(k.node)).cloned().collect();
            gone.iter().filter_map(|k| pools.remove(k)).collect()
        };
        for pool in &retired {
            pool.retire();
        }
        retired.len()
    }

    /// Removes pools that only the registry holds and that have no connection, idle or in use.
    fn remove_unused(&self) {
        let size = self.settings.lock().pool_size;
        self.pools.lock().retain(|_, p| {
            Arc::strong_count(p) > 1
                || p.active.available_permits() < size
                || !p.idle.lock().is_empty()
        });
    }

    /// How often [`Pools::maintain`] should run for these settings.
    pub fn maintenance_interval(&self) -> Duration {
        let settings = self.settings.lock().clone();
        let mut every = Duration::from_secs(1);
        for t in [settings.idle_timeout, settings.lifetime]
            .into_iter()
            .flatten()
        {
            every = every.min(t / 4);
        }
        every.max(Duration::from_millis(50))
    }

    /// Closes every pool's idle connections (at shutdown).
    pub async fn close_idle(&self) {
        for pool in self.all() {
            pool.close_idle().await;
        }
    }

    /// Every pool (for admin views and maintenance).
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::server_tls::ServerTls;

    fn target(node: usize) -> ConnectTarget {
        ConnectTarget {
            node,
            host: "127.0.0.1".into(),
            port: 5432 + node as u16,
            user: "app".into(),
            database: "db".into(),
            auth: ServerAuth::None,
            nodelay: true,
            keepalive: None,
            tls: Arc::new(ServerTls::disabled()),
        }
    }

    fn settings() -> PoolSettings {
        PoolSettings {
            pool_size: 2,
            pool_timeout: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: None,
            lifetime: None,
            reset_query: None,
            internal_timeout: Duration::from_secs(1),
            min_idle: 0,
        }
    }

    #[test]
    fn pools_of_a_removed_node_are_retired_and_a_node_added_later_gets_its_own() {
        let pools = Pools::new(settings(), 10);
        let kept = pools.get(&target(0));
        let removed = pools.get(&target(1));
        // A node slot far beyond the first ones (added at run time) gets a pool and permits.
        let added = pools.get(&target(7));
        assert_eq!(pools.node_permits.lock().len(), 8);
        assert_eq!(added.node_permits.available_permits(), 10);
        assert_eq!(pools.retire_nodes(|n| n == 1), 1);
        assert!(removed.is_retired());
        assert!(!kept.is_retired() && !added.is_retired());
        // Looked up again (the node came back): a new pool.
        assert!(!Arc::ptr_eq(&pools.get(&target(1)), &removed));
        assert_eq!(pools.retire_nodes(|_| false), 0);
    }
}
