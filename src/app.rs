//! The `App` handle: everything a task needs (settings, topology, pools, cancel registry,
//! shutdown), cheap to clone and passed down explicitly. There are no global statics, so several
//! proxies can run in one process (the integration tests do).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::connection::ConnectTarget;
use crate::backend::Pools;
use crate::config::Config;
use crate::session::cancel::{CancelRegistry, Stop};
pub use crate::settings::{Settings, SettingsError, UserEntry};
use crate::topology::{watcher, Topology, TopologyHandle};

/// Errors while building or starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration cannot be turned into settings (a user's password is not usable).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How long [`App::shutdown`] waits for sessions to close once the grace period is over (they
/// tell their client, then cancel or roll back on the server).
const KILL_WAIT: Duration = Duration::from_secs(3);

/// Keeps the pools in shape until shutdown: idle connections past `server_idle_timeout` or
/// `server_lifetime` are closed, and `min_idle` connections are kept open.
async fn maintain_pools(app: App) {
    let every = app.inner.pools.maintenance_interval();
    let shutdown = app.inner.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let nodes: Vec<(u64, bool)> = app
            .inner
            .topology
            .load()
            .nodes
            .iter()
            .map(|n| (n.role_epoch, n.healthy))
            .collect();
        let pass = app
            .inner
            .pools
            .maintain(|node| nodes.get(node).copied().unwrap_or((0, false)));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pass => {}
        }
    }
}

/// Shared state behind [`App`].
struct Inner {
    settings: ArcSwap<Settings>,
    topology: Arc<TopologyHandle>,
    pools: Pools,
    cancels: CancelRegistry,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
    /// Fires when the shutdown grace period is over: sessions still running end at once.
    kill: CancellationToken,
    tasks: TaskTracker,
    /// Random bytes that make mock SCRAM exchanges for unknown users look real.
    mock_secret: [u8; 32],
    /// Next process id handed to a client in BackendKeyData.
    next_pid: AtomicI32,
    /// Lexical analyses of recent statement texts.
    classifier: crate::router::classify::ClassifierCache,
    /// Function volatility per database.
    catalogs: Arc<crate::catalog::Catalogs>,
    /// Statements a standby refused as writes (misroute self-healing), by text hash: they go
    /// straight to the primary from then on.
    learned_writes: parking_lot::Mutex<std::collections::HashSet<u64>>,
    /// Whether `learned_writes` holds anything: the common case (nothing learned) then costs
    /// every request one relaxed load instead of a shared lock.
    any_learned: std::sync::atomic::AtomicBool,
    /// Requests in flight per node, for least-outstanding balancing.
    outstanding: Vec<std::sync::atomic::AtomicUsize>,
    /// Advances on every routing decision (round robin, tie-breaking).
    tick: std::sync::atomic::AtomicUsize,
    /// Keyed hasher for fingerprints of clients' session parameters (random per proxy, so a
    /// client cannot make its parameters look like another's).
    params_hasher: std::collections::hash_map::RandomState,
    /// Client connections per user, for each user's `max_connections`.
    user_sessions: parking_lot::Mutex<HashMap<String, usize>>,
}

/// A client counted against its user's `max_connections`, until dropped.
pub struct UserSlot {
    app: App,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = self.app.inner.user_sessions.lock();
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// Most statements remembered as writes; beyond it the set starts over (they are learned
/// again by the next misroute).
const MAX_LEARNED_WRITES: usize = 10_000;

/// Counts a request in flight on a node until dropped.
pub struct InFlight {
    app: App,
    node: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.app.inner.outstanding[self.node].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Cheap-to-clone handle to the running proxy.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

impl App {
    /// Builds the proxy from a configuration without starting anything.
    pub fn new(config: Config) -> Result<App, AppError> {
        let settings = Settings::new(config)?;
        let cfg = &settings.config;
        let addrs = settings.node_addresses();
        let pools = Pools::new(
            settings.pool_settings(),
            cfg.nodes.len(),
            cfg.pool.max_server_connections,
        );
        let catalogs = Arc::new(crate::catalog::Catalogs::new(settings.catalog_settings()));
        let outstanding = cfg
            .nodes
            .iter()
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect();
        let mut mock_secret = [0u8; 32];
        rand::fill(&mut mock_secret);
        Ok(App {
            inner: Arc::new(Inner {
                topology: Arc::new(TopologyHandle::new(Topology::initial(&addrs))),
                settings: ArcSwap::from_pointee(settings),
                pools,
                cancels: CancelRegistry::default(),
                metrics: Arc::new(crate::metrics::Metrics::new()),
                shutdown: CancellationToken::new(),
                kill: CancellationToken::new(),
                tasks: TaskTracker::new(),
                mock_secret,
                next_pid: AtomicI32::new(rand::random::<i32>().rem_euclid(1 << 20) + 1),
                classifier: crate::router::classify::ClassifierCache::default(),
                catalogs,
                learned_writes: parking_lot::Mutex::new(std::collections::HashSet::new()),
                any_learned: std::sync::atomic::AtomicBool::new(false),
                user_sessions: parking_lot::Mutex::new(HashMap::new()),
                outstanding,
                tick: std::sync::atomic::AtomicUsize::new(0),
                params_hasher: std::collections::hash_map::RandomState::new(),
            }),
        })
    }

    /// Starts the topology watcher and the listener; returns the address actually bound (the
    /// configuration may ask for port 0).
    pub async fn start(&self) -> Result<SocketAddr, AppError> {
        let settings = self.settings_full();
        let cfg = &settings.config;
        let listener = TcpListener::bind(cfg.proxy.listen)
            .await
            .map_err(|source| AppError::Listen {
                addr: cfg.proxy.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| AppError::Listen {
            addr: cfg.proxy.listen,
            source,
        })?;
        watcher::spawn(
            settings.watcher_settings(),
            self.inner.topology.clone(),
            &self.inner.tasks,
            self.inner.shutdown.clone(),
        );
        if let Some(http) = cfg.proxy.http_listen {
            let l = TcpListener::bind(http)
                .await
                .map_err(|source| AppError::Listen { addr: http, source })?;
            tracing::info!(addr = %http, "HTTP endpoints listening");
            self.inner
                .tasks
                .spawn(crate::admin::http::run(self.clone(), l));
        }
        let app = self.clone();
        self.inner.tasks.spawn(maintain_pools(app));
        let app = self.clone();
        self.inner
            .tasks
            .spawn(crate::net::listener::run(app, listener));
        tracing::info!(%local, "causeway listening");
        Ok(local)
    }

    /// Asks every task to stop and waits up to `grace` for sessions to finish. Sessions still
    /// relaying after that are ended (FATAL 57P01 to the client; the running request cancelled
    /// or the open transaction rolled back on the server, as when a client leaves), and waited
    /// for a little longer.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.cancels.signal_all(Stop::Drain);
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing remaining connections");
            self.inner.kill.cancel();
            self.inner.cancels.signal_all(Stop::Kill);
            if tokio::time::timeout(KILL_WAIT, self.inner.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("some connections did not close within {KILL_WAIT:?}");
            }
        }
        self.inner.pools.close_idle().await;
    }

    // === accessors ===

    /// The current settings: a cheap guard (no reference count is touched), to be dropped
    /// before an `.await`.
    pub fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.inner.settings.load()
    }

    /// The current settings as an `Arc`, to keep across an `.await`.
    pub fn settings_full(&self) -> Arc<Settings> {
        self.inner.settings.load_full()
    }

    /// The topology handle.
    pub fn topology(&self) -> &Arc<TopologyHandle> {
        &self.inner.topology
    }

    /// The pools.
    pub fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    /// The classifier cache.
    pub fn classifier(&self) -> &crate::router::classify::ClassifierCache {
        &self.inner.classifier
    }

    /// The function catalog of `database` (loading starts on first use).
    pub fn functions(
        &self,
        database: &str,
    ) -> Arc<arc_swap::ArcSwap<crate::router::functions::FunctionCatalog>> {
        self.inner.catalogs.get(
            database,
            &self.inner.topology,
            &self.inner.tasks,
            &self.inner.shutdown,
        )
    }

    /// Whether a statement text was learned to be a write.
    pub fn is_learned_write(&self, key: u64) -> bool {
        self.inner.any_learned.load(Ordering::Relaxed)
            && self.inner.learned_writes.lock().contains(&key)
    }

    /// Counts an authenticated client against its user's `max_connections`; `None` when the
    /// user already has that many.
    pub fn user_slot(&self, user: &str) -> Option<UserSlot> {
        let limit = self
            .settings()
            .users
            .get(user)
            .and_then(|u| u.config.max_connections);
        let mut m = self.inner.user_sessions.lock();
        let n = m.entry(user.to_owned()).or_insert(0);
        // Limits are at least 1, so a refused user never leaves a zero entry behind.
        if limit.is_some_and(|l| *n >= l) {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            app: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Remembers a statement text as a write.
    pub fn learn_write(&self, key: u64) {
        let mut set = self.inner.learned_writes.lock();
        if set.len() >= MAX_LEARNED_WRITES {
            set.clear();
        }
        set.insert(key);
        self.inner.any_learned.store(true, Ordering::Relaxed);
    }

    /// Requests in flight per node.
    pub fn outstanding(&self) -> smallvec::SmallVec<[usize; 8]> {
        self.inner
            .outstanding
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Counts a request in flight on `node` until the guard is dropped.
    pub fn in_flight(&self, node: usize) -> InFlight {
        self.inner.outstanding[node].fetch_add(1, Ordering::Relaxed);
        InFlight {
            app: self.clone(),
            node,
        }
    }

    /// The keyed hasher of clients' session-parameter fingerprints (see `ClientState`).
    pub fn params_hasher(&self) -> &std::collections::hash_map::RandomState {
        &self.inner.params_hasher
    }

    /// The next routing tick.
    pub fn next_tick(&self) -> usize {
        self.inner.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// The metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The cancel registry.
    pub fn cancels(&self) -> &CancelRegistry {
        &self.inner.cancels
    }

    /// Fires when the proxy shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Fires when the shutdown grace period is over.
    pub fn kill_token(&self) -> &CancellationToken {
        &self.inner.kill
    }

    /// Tracks every task the proxy spawns, for shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Secret for mock authentication of unknown users.
    pub fn mock_secret(&self) -> &[u8; 32] {
        &self.inner.mock_secret
    }

    /// A fresh process id for a client's BackendKeyData.
    pub fn next_client_pid(&self) -> i32 {
        // Wraps around after 2^31 sessions; keep it positive like a real pid.
        self.inner.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
    }

    /// Where a pool for `user` on `database` at node `node` connects.
    pub fn connect_target(&self, node: usize, database: &str, user: &str) -> ConnectTarget {
        self.settings().connect_target(node, database, user)
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); returns true for SIGINT, which asks for a fast stop.
pub async fn wait_for_stop_signal() -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return true;
        }
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping after running transactions finish");
            false
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: stopping now");
            true
        }
    }
}

/// The runtime that runs the proxy (`proxy.worker_threads`): one worker thread per core for 0,
/// a single-threaded event loop for 1 (no work stealing or cross-thread wake-ups: the least CPU
/// per query, at most one core), else that many workers.
pub fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn worker_threads_picks_the_runtime() {
        let flavor = |n| super::build_runtime(n).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
        let rt = super::build_runtime(3).unwrap();
        assert_eq!(rt.metrics().num_workers(), 3);
    }
}
