//! What the proxy learns from the primary's catalog: function volatility, per database.
//!
//! `pg_proc` is per database, so each database a client uses gets its own catalog, loaded on
//! first use in the background (until then unknown functions count as writes, which is safe)
//! and refreshed every `volatility_refresh`. Readers get an `Arc` snapshot without locking for
//! longer than a map lookup.
//!
//! Database names come from clients, so what they make is bounded: a session asks for its
//! catalog only once a server accepted its database (a name that does not exist gets nothing),
//! a catalog no session uses is dropped at its next refresh (its task ends), one whose database
//! was dropped is forgotten at once, and at most [`MAX_CATALOGS`] exist (beyond that a
//! database goes without: its unknown functions count as writes, which is safe).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::net::server_tls::ServerTls;
use crate::router::functions::FunctionCatalog;
use crate::topology::TopologyHandle;

/// The query that reads volatility; a few thousand rows.
const VOLATILITY_SQL: &str = "SELECT n.nspname::text, p.proname::text, p.provolatile::text \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

/// Most databases with a catalog at once.
pub const MAX_CATALOGS: usize = 64;

/// A snapshot slot shared by the registry, the loading task and the sessions using it.
type Slot = Arc<ArcSwap<FunctionCatalog>>;

/// References to a slot held by the registry and its loading task: more means a session uses it.
const UNUSED_REFS: usize = 2;

/// Why a load failed.
enum LoadError {
    /// The database no longer exists: stop trying.
    Gone,
    /// Anything else (no primary, a timeout...): try again later.
    Other(String),
}

/// How to reach the primary for catalog queries.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// Role used to read the catalog (the monitoring role).
    pub user: String,
    /// Its password.
    pub password: Option<String>,
    /// Limit for connecting and loading.
    pub timeout: Duration,
    /// Reload period; `None` loads once.
    pub refresh: Option<Duration>,
    /// TLS towards the nodes (`[server_tls]`, as for the pools).
    pub tls: Arc<ServerTls>,
}

/// Catalog snapshots by database.
pub struct Catalogs {
    settings: CatalogSettings,
    /// Catalogs by database name (at most [`MAX_CATALOGS`]).
    by_db: Mutex<HashMap<String, Slot>>,
}

impl Catalogs {
    /// An empty registry.
    pub fn new(settings: CatalogSettings) -> Catalogs {
        Catalogs {
            settings,
            by_db: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog of `database`, which a server just accepted a connection to. The first call
    /// starts loading it in the background (on `tasks`) and returns the empty catalog
    /// meanwhile; with [`MAX_CATALOGS`] databases in use already, an empty catalog of its own.
    pub fn get(
        self: &Arc<Self>,
        database: &str,
        topology: &Arc<TopologyHandle>,
        tasks: &tokio_util::task::TaskTracker,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Slot {
        let mut map = self.by_db.lock();
        if let Some(c) = map.get(database) {
            return c.clone();
        }
        let slot = Arc::new(ArcSwap::from_pointee(FunctionCatalog::default()));
        if map.len() >= MAX_CATALOGS {
            // Loaded once (no refresh task) and no longer used: only the map holds it.
            map.retain(|_, c| Arc::strong_count(c) > 1);
            if map.len() >= MAX_CATALOGS {
                tracing::debug!(database, "too many databases in use; no function catalog");
                return slot;
            }
        }
        map.insert(database.to_owned(), slot.clone());
        drop(map);
        let me = self.clone();
        let db = database.to_owned();
        let slot2 = slot.clone();
        let topology = topology.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = me.keep_loaded(&db, &slot2, &topology) => {}
            }
        });
        slot
    }

    /// Databases whose catalog is loaded or being loaded.
    pub fn databases(&self) -> Vec<String> {
        self.by_db.lock().keys().cloned().collect()
    }

    /// Loads `db`'s catalog and refreshes it until it is unused or its database is gone; then
    /// removes it from the registry.
    async fn keep_loaded(&self, db: &str, slot: &Slot, topology: &TopologyHandle) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.load(db, topology).await {
                Ok(cat) => {
                    tracing::debug!(
                        database = db,
                        functions = cat.len(),
                        "function catalog loaded"
                    );
                    slot.store(Arc::new(cat));
                    match self.settings.refresh {
                        Some(r) => tokio::time::sleep(r).await,
                        // The registry drops it when it is unused and room is needed.
                        None => return,
                    }
                    delay = Duration::from_millis(200);
                }
                Err(LoadError::Gone) => {
                    tracing::debug!(database = db, "database gone; function catalog dropped");
                    self.forget(db, slot);
                    return;
                }
                Err(LoadError::Other(e)) => {
                    tracing::debug!(database = db, error = %e, "function catalog not loaded yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
            if Arc::strong_count(slot) <= UNUSED_REFS {
                tracing::debug!(database = db, "function catalog unused; dropped");
                self.forget(db, slot);
                return;
            }
        }
    }

    /// Removes `db`'s entry if it is still `slot`.
    fn forget(&self, db: &str, slot: &Slot) {
        let mut map = self.by_db.lock();
        if map.get(db).is_some_and(|c| Arc::ptr_eq(c, slot)) {
            map.remove(db);
        }
    }

    async fn load(
        &self,
        db: &str,
        topology: &TopologyHandle,
    ) -> Result<FunctionCatalog, LoadError> {
        let primary = topology
            .wait_for_primary(self.settings.timeout)
            .await
            .ok_or_else(|| LoadError::Other("no primary".to_owned()))?;
        // The primary's address as the snapshot names it (it may be a node added at run time).
        let (host, port) = match topology.load().nodes.get(primary) {
            Some(n) => (n.host.clone(), n.port),
            None => return Err(LoadError::Other("no primary".to_owned())),
        };
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&host)
            .port(port)
            .user(&self.settings.user)
            .dbname(db)
            .application_name("causeway-catalog")
            .connect_timeout(self.settings.timeout);
        if let Some(p) = &self.settings.password {
            cfg.password(p);
        }
        let work = async {
            let (client, driver) =
                self.settings
                    .tls
                    .connect_monitor(&mut cfg)
                    .await
                    .map_err(|e| {
                        if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
                        {
                            LoadError::Gone
                        } else {
                            LoadError::Other(e.to_string())
                        }
                    })?;
            let rows = client
                .query(VOLATILITY_SQL, &[])
                .await
                .map_err(|e| LoadError::Other(e.to_string()))?;
            drop(client);
            let _ = driver.await;
            let owned: Vec<(String, String, String)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            Ok::<_, LoadError>(FunctionCatalog::from_rows(owned.iter().map(|(s, n, v)| {
                (s.as_str(), n.as_str(), v.chars().next().unwrap_or('v'))
            })))
        };
        tokio::time::timeout(self.settings.timeout * 3, work)
            .await
            .map_err(|_| LoadError::Other("timed out".to_owned()))?
    }
}
