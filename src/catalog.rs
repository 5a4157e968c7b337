//! What the proxy learns from the primary's catalog: function volatility, per database.
//!
//! `pg_proc` is per database, so each database a client uses gets its own catalog, loaded on
//! first use in the background (until then unknown functions count as writes, which is safe)
//! and refreshed every `volatility_refresh`. Readers get an `Arc` snapshot without locking for
//! longer than a map lookup.

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

/// How to reach the primary for catalog queries.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// `(host, port)` of each node.
    pub nodes: Vec<(String, u16)>,
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
    by_db: Mutex<HashMap<String, Arc<ArcSwap<FunctionCatalog>>>>,
}

impl Catalogs {
    /// An empty registry.
    pub fn new(settings: CatalogSettings) -> Catalogs {
        Catalogs {
            settings,
            by_db: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog of `database`. The first call starts loading it in the background (on
    /// `tasks`) and returns the empty catalog meanwhile.
    pub fn get(
        self: &Arc<Self>,
        database: &str,
        topology: &Arc<TopologyHandle>,
        tasks: &tokio_util::task::TaskTracker,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Arc<ArcSwap<FunctionCatalog>> {
        let mut map = self.by_db.lock();
        if let Some(c) = map.get(database) {
            return c.clone();
        }
        let slot = Arc::new(ArcSwap::from_pointee(FunctionCatalog::default()));
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

    async fn keep_loaded(
        &self,
        db: &str,
        slot: &ArcSwap<FunctionCatalog>,
        topology: &TopologyHandle,
    ) {
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
                        None => return,
                    }
                    delay = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::debug!(database = db, error = %e, "function catalog not loaded yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn load(&self, db: &str, topology: &TopologyHandle) -> Result<FunctionCatalog, String> {
        let primary = topology
            .wait_for_primary(self.settings.timeout)
            .await
            .ok_or("no primary")?;
        let (host, port) = &self.settings.nodes[primary];
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(*port)
            .user(&self.settings.user)
            .dbname(db)
            .application_name("causeway-catalog")
            .connect_timeout(self.settings.timeout);
        if let Some(p) = &self.settings.password {
            cfg.password(p);
        }
        let work = async {
            let (client, driver) = self
                .settings
                .tls
                .connect_monitor(&mut cfg)
                .await
                .map_err(|e| e.to_string())?;
            let rows = client
                .query(VOLATILITY_SQL, &[])
                .await
                .map_err(|e| e.to_string())?;
            drop(client);
            let _ = driver.await;
            let owned: Vec<(String, String, String)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            Ok::<_, String>(FunctionCatalog::from_rows(owned.iter().map(|(s, n, v)| {
                (s.as_str(), n.as_str(), v.chars().next().unwrap_or('v'))
            })))
        };
        tokio::time::timeout(self.settings.timeout * 3, work)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}
