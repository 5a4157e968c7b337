//! What a session is handed: the shared handles it needs (settings, topology, pools, the cancel
//! registry, metrics, the classifier and function catalogs, routing feedback, its shutdown
//! signals), cheap to clone, and nothing of how the proxy starts or stops. The `App` builds one
//! and hands it to the listener, which hands it to every session.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cancel::CancelRegistry;
use crate::backend::connection::{ConnectTarget, ServerAuth};
use crate::backend::Pools;
use crate::catalog::Catalogs;
use crate::metrics::Metrics;
use crate::router::classify::ClassifierCache;
use crate::router::feedback::{Feedback, InFlight};
use crate::router::functions::FunctionCatalog;
use crate::settings::Settings;
use crate::topology::watcher::WatcherSettings;
use crate::topology::{Topology, TopologyHandle, MAX_NODES};

/// The handles shared by every session.
struct Shared {
    /// The settings in force, replaced as a whole on reload.
    settings: Arc<ArcSwap<Settings>>,
    /// The topology snapshot and its change notifications.
    topology: Arc<TopologyHandle>,
    /// Server connection pools.
    pools: Pools,
    /// Registered clients by the key they were given, for CancelRequest and shutdown.
    cancels: CancelRegistry,
    /// Counters and latency histograms.
    metrics: Arc<Metrics>,
    /// Fires when the proxy shuts down.
    shutdown: CancellationToken,
    /// Fires when the shutdown grace period is over: sessions still running end at once.
    kill: CancellationToken,
    /// Tracks the tasks the proxy spawns (sessions, catalog loaders), for shutdown.
    tasks: TaskTracker,
    /// Random bytes that make mock SCRAM exchanges for unknown users look real.
    mock_secret: [u8; 32],
    /// Next process id handed to a client in BackendKeyData.
    next_pid: AtomicI32,
    /// Lexical analyses of recent statement texts.
    classifier: ClassifierCache,
    /// Function volatility per database.
    catalogs: Arc<Catalogs>,
    /// What routing learned: refused writes, requests in flight, the round-robin tick.
    feedback: Arc<Feedback>,
    /// Keyed hasher for fingerprints of clients' session parameters (random per proxy, so a
    /// client cannot make its parameters look like another's).
    params_hasher: std::collections::hash_map::RandomState,
    /// Client connections per user, for each user's `max_connections`.
    user_sessions: Mutex<HashMap<String, usize>>,
    /// The topology watcher's settings, updated by a reload.
    watcher_settings: watch::Sender<WatcherSettings>,
    /// The file the settings were loaded from, when there is one (what a reload reads).
    config_path: Mutex<Option<PathBuf>>,
    /// Fires when the admin console asks the proxy to stop (`SHUTDOWN`); whoever runs the
    /// proxy then stops it as for SIGTERM.
    stop_requested: CancellationToken,
    /// Installs a new `proxy.log_level` (set by whoever installed the log subscriber: the
    /// binary; a proxy inside tests has none).
    log_level: Mutex<Option<LogLevelHook>>,
}

/// Puts a `proxy.log_level` value in force.
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Cheap-to-clone handle to what sessions share.
#[derive(Clone)]
pub struct SessionCtx {
    shared: Arc<Shared>,
}

/// A client counted against its user's `max_connections`, until dropped.
pub struct UserSlot {
    ctx: SessionCtx,
    user: Arc<str>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = self.ctx.shared.user_sessions.lock();
        if let Some(n) = m.get_mut(&*self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&*self.user);
            }
        }
    }
}

impl SessionCtx {
    /// Builds the shared state for `settings` (nothing starts).
    pub fn new(settings: Settings) -> SessionCtx {
        let cfg = &settings.config;
        let nodes = settings.node_specs();
        let pools = Pools::new(settings.pool_settings(), cfg.pool.max_server_connections);
        let catalogs = Arc::new(Catalogs::new(settings.catalog_settings()));
        // One counter per slot the watcher may ever hand out: the request path indexes it.
        let feedback = Arc::new(Feedback::new(nodes.len().max(MAX_NODES)));
        let watcher_settings = watch::channel(settings.watcher_settings()).0;
        let mut mock_secret = [0u8; 32];
        rand::fill(&mut mock_secret);
        SessionCtx {
            shared: Arc::new(Shared {
                topology: Arc::new(TopologyHandle::new(Topology::of(&nodes))),
                settings: Arc::new(ArcSwap::from_pointee(settings)),
                pools,
                cancels: CancelRegistry::default(),
                metrics: Arc::new(Metrics::new()),
                shutdown: CancellationToken::new(),
                kill: CancellationToken::new(),
                tasks: TaskTracker::new(),
                mock_secret,
                next_pid: AtomicI32::new(rand::random::<i32>().rem_euclid(1 << 20) + 1),
                classifier: ClassifierCache::default(),
                catalogs,
                feedback,
                user_sessions: Mutex::new(HashMap::new()),
                watcher_settings,
                config_path: Mutex::new(None),
                stop_requested: CancellationToken::new(),
                log_level: Mutex::new(None),
                params_hasher: std::collections::hash_map::RandomState::new(),
            }),
        }
    }

    /// The current settings: a cheap guard (no reference count is touched), to be dropped
    /// before an `.await`.
    pub fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.shared.settings.load()
    }

    /// Puts new settings in force in one store: new sessions, logins and checkouts see them
    /// (see `reload`, which also tells the pools and the watcher).
    pub fn store_settings(&self, settings: Arc<Settings>) {
        self.shared.settings.store(settings);
    }

    /// The topology watcher's settings and their updates.
    pub fn watcher_settings(&self) -> watch::Receiver<WatcherSettings> {
        self.shared.watcher_settings.subscribe()
    }

    /// Hands the watcher new settings (a reload).
    pub fn publish_watcher_settings(&self, settings: WatcherSettings) {
        self.shared.watcher_settings.send_replace(settings);
    }

    /// The configuration file a reload reads, if the proxy was loaded from one.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.shared.config_path.lock().clone()
    }

    /// Names the configuration file a reload reads.
    pub fn set_config_path(&self, path: PathBuf) {
        *self.shared.config_path.lock() = Some(path);
    }

    /// Names how a reload puts a new `proxy.log_level` in force.
    pub fn set_log_level_hook(&self, hook: LogLevelHook) {
        *self.shared.log_level.lock() = Some(hook);
    }

    /// Puts a new `proxy.log_level` in force, if logging can change (see
    /// [`SessionCtx::set_log_level_hook`]).
    pub fn set_log_level(&self, level: &str) -> Result<(), String> {
        match &*self.shared.log_level.lock() {
            Some(hook) => hook(level),
            None => Ok(()),
        }
    }

    /// Asks whoever runs the proxy to stop it gracefully (the console's `SHUTDOWN`).
    pub fn request_stop(&self) {
        self.shared.stop_requested.cancel();
    }

    /// Fires when a graceful stop was asked for from inside (the console's `SHUTDOWN`).
    pub fn stop_requested(&self) -> &CancellationToken {
        &self.shared.stop_requested
    }

    /// The current settings as an `Arc`, to keep across an `.await`.
    pub fn settings_full(&self) -> Arc<Settings> {
        self.shared.settings.load_full()
    }

    /// The topology handle.
    pub fn topology(&self) -> &Arc<TopologyHandle> {
        &self.shared.topology
    }

    /// The pools.
    pub fn pools(&self) -> &Pools {
        &self.shared.pools
    }

    /// The classifier cache.
    pub fn classifier(&self) -> &ClassifierCache {
        &self.shared.classifier
    }

    /// Databases that have a function catalog (loaded, or being loaded).
    pub fn catalog_databases(&self) -> Vec<String> {
        self.shared.catalogs.databases()
    }

    /// The function catalog of `database`, which a server accepted (loading starts on first
    /// use).
    pub fn functions(&self, database: &str) -> Arc<ArcSwap<FunctionCatalog>> {
        let s = &self.shared;
        s.catalogs.get(database, &s.topology, &s.tasks, &s.shutdown)
    }

    /// Routing feedback: learned writes, requests in flight, the round-robin tick.
    pub fn feedback(&self) -> &Arc<Feedback> {
        &self.shared.feedback
    }

    /// Whether a statement text was learned to be a write.
    pub fn is_learned_write(&self, key: u64) -> bool {
        self.shared.feedback.is_learned_write(key)
    }

    /// Remembers a statement text as a write.
    pub fn learn_write(&self, key: u64) {
        self.shared.feedback.learn_write(key);
    }

    /// Counts a request in flight on `node` until the guard is dropped.
    pub fn in_flight(&self, node: usize) -> InFlight {
        self.shared.feedback.in_flight(node)
    }

    /// Counts an authenticated client against its user's `max_connections`; `None` when the
    /// user already has that many.
    pub fn user_slot(&self, user: &Arc<str>) -> Option<UserSlot> {
        let limit = self
            .settings()
            .users
            .get(&**user)
            .and_then(|u| u.config.max_connections);
        let mut m = self.shared.user_sessions.lock();
        let n = m.entry(user.to_string()).or_insert(0);
        // Limits are at least 1, so a refused user never leaves a zero entry behind.
        if limit.is_some_and(|l| *n >= l) {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            ctx: self.clone(),
            user: user.clone(),
        })
    }

    /// The keyed hasher of clients' session-parameter fingerprints (see `ClientState`).
    pub fn params_hasher(&self) -> &std::collections::hash_map::RandomState {
        &self.shared.params_hasher
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// What `/metrics` answers now (the Prometheus text exposition).
    pub fn metrics_text(&self) -> String {
        self.shared
            .metrics
            .render(self.topology(), &self.shared.feedback)
    }

    /// The cancel registry.
    pub fn cancels(&self) -> &CancelRegistry {
        &self.shared.cancels
    }

    /// Fires when the proxy shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Fires when the shutdown grace period is over.
    pub fn kill_token(&self) -> &CancellationToken {
        &self.shared.kill
    }

    /// Tracks every task the proxy spawns, for shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.shared.tasks
    }

    /// Secret for mock authentication of unknown users.
    pub fn mock_secret(&self) -> &[u8; 32] {
        &self.shared.mock_secret
    }

    /// A fresh process id for a client's BackendKeyData.
    pub fn next_client_pid(&self) -> i32 {
        // Wraps around after 2^31 sessions; keep it positive like a real pid.
        self.shared.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
    }

    /// Where a pool for `user` on `database` at node `node` connects (the node's address
    /// from the topology snapshot: nodes come and go at run time); `login` is what the
    /// client's authentication gave for pass-through.
    pub fn connect_target(
        &self,
        node: usize,
        database: &str,
        user: &str,
        login: Option<&ServerAuth>,
    ) -> ConnectTarget {
        let topology = self.topology().load();
        let (host, port) = topology
            .nodes
            .get(node)
            .map_or(("", 0), |n| (n.host.as_str(), n.port));
        self.settings()
            .connect_target((node, host, port), database, user, login)
    }
}
