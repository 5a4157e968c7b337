//! The topology watcher: one monitoring connection per node (tokio-postgres), a check every
//! `check_interval` with its own connect and query timeouts, and one aggregator that applies
//! hysteresis and publishes snapshots.
//!
//! Each probe task owns its connection and only reports observations over a channel; the
//! aggregator owns all decision state, so there is no shared mutable state and no lock.
//! A black-holed node (accepts TCP, never answers) is caught by the query timeout, not by TCP.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use super::health::Hysteresis;
use super::{NodeId, NodeState, Role, Topology, TopologyHandle};

/// The probe every check runs: role and WAL position in one round trip.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END";

/// What the watcher needs to reach the nodes.
#[derive(Debug, Clone)]
pub struct WatcherSettings {
    /// `(host, port)` of each node, in configuration order.
    pub nodes: Vec<(String, u16)>,
    /// Monitoring role.
    pub user: String,
    /// Its password, if the servers ask for one.
    pub password: Option<String>,
    /// Database to connect to.
    pub database: String,
    /// Time between checks.
    pub check_interval: Duration,
    /// Limit for establishing a monitoring connection.
    pub connect_timeout: Duration,
    /// Limit for one probe.
    pub query_timeout: Duration,
    /// Consecutive agreeing checks before health flips.
    pub health_threshold: u32,
}

/// One check's outcome.
#[derive(Debug, Clone)]
struct Observation {
    node: NodeId,
    result: Result<(bool, Option<u64>), String>,
}

/// Starts the probe tasks and the aggregator on `tasks`; they stop when `cancel` fires.
pub fn spawn(
    settings: WatcherSettings,
    topology: Arc<TopologyHandle>,
    tasks: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(64);
    for node in 0..settings.nodes.len() {
        let probe = Probe {
            node,
            settings: settings.clone(),
            client: None,
        };
        tasks.spawn(probe.run(tx.clone(), cancel.clone()));
    }
    drop(tx);
    tasks.spawn(aggregate(settings, topology, rx, cancel));
}

/// A probe task's state: its node and, when connected, its client and prepared probe.
struct Probe {
    node: NodeId,
    settings: WatcherSettings,
    client: Option<(Client, Statement)>,
}

impl Probe {
    async fn run(mut self, tx: mpsc::Sender<Observation>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.check() => r,
            };
            if result.is_err() {
                // Start over with a fresh connection next time.
                self.client = None;
            }
            if tx
                .send(Observation {
                    node: self.node,
                    result,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn check(&mut self) -> Result<(bool, Option<u64>), String> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let Some((client, stmt)) = &self.client else {
            return Err("not connected".into());
        };
        let row = tokio::time::timeout(self.settings.query_timeout, client.query_one(stmt, &[]))
            .await
            .map_err(|_| format!("probe timed out after {:?}", self.settings.query_timeout))?
            .map_err(|e| format!("probe failed: {e}"))?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let lsn: Option<PgLsn> = row.try_get(1).map_err(|e| e.to_string())?;
        Ok((in_recovery, lsn.map(u64::from)))
    }

    async fn connect(&self) -> Result<(Client, Statement), String> {
        let (host, port) = &self.settings.nodes[self.node];
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(*port)
            .user(&self.settings.user)
            .dbname(&self.settings.database)
            .application_name("causeway-monitor")
            .connect_timeout(self.settings.connect_timeout);
        if let Some(p) = &self.settings.password {
            cfg.password(p);
        }
        let connect = async {
            let (client, conn) = cfg.connect(NoTls).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let stmt = client.prepare(PROBE_SQL).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((client, stmt))
        };
        let limit = self.settings.connect_timeout + self.settings.query_timeout;
        tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| format!("connect timed out after {limit:?}"))?
    }
}

/// Per-node decision state kept by the aggregator.
struct Track {
    health: Hysteresis,
    last_error: Option<String>,
}

async fn aggregate(
    settings: WatcherSettings,
    topology: Arc<TopologyHandle>,
    mut rx: mpsc::Receiver<Observation>,
    cancel: CancellationToken,
) {
    let mut tracks: Vec<Track> = settings
        .nodes
        .iter()
        .map(|_| Track {
            health: Hysteresis::new(false, settings.health_threshold),
            last_error: None,
        })
        .collect();
    loop {
        let obs = tokio::select! {
            _ = cancel.cancelled() => return,
            o = rx.recv() => match o { Some(o) => o, None => return },
        };
        let current = topology.load();
        let mut nodes = current.nodes.clone();
        apply(&mut nodes, &mut tracks, obs);
        let primary = Topology::derive_primary(&nodes);
        if primary != current.primary {
            match primary {
                Some(p) => {
                    tracing::info!(node = %nodes[p].addr, "primary is now {}", nodes[p].addr)
                }
                None => tracing::warn!("no primary available"),
            }
        }
        if nodes != current.nodes || primary != current.primary {
            topology.publish(Topology {
                epoch: 0,
                nodes,
                primary,
            });
        }
    }
}

/// Applies one observation to the node list, logging role and health changes once each.
fn apply(nodes: &mut [NodeState], tracks: &mut [Track], obs: Observation) {
    let node = &mut nodes[obs.node];
    let track = &mut tracks[obs.node];
    match obs.result {
        Ok((in_recovery, lsn)) => {
            track.last_error = None;
            let role = if in_recovery {
                Role::Standby
            } else {
                Role::Primary
            };
            // The server's own answer wins at once: a promotion must not wait for hysteresis.
            if role != node.role {
                tracing::info!(
                    node = %node.addr,
                    "node {} is {} (was {})",
                    node.addr,
                    role.as_str(),
                    node.role.as_str()
                );
                node.role = role;
            }
            node.lsn = lsn;
            if track.health.observe(true) {
                tracing::info!(node = %node.addr, "node {} is healthy", node.addr);
            }
        }
        Err(e) => {
            if track.health.observe(false) {
                tracing::warn!(node = %node.addr, error = %e, "node {} is unhealthy: {e}", node.addr);
            } else if track.last_error.as_deref() != Some(e.as_str()) {
                tracing::debug!(node = %node.addr, error = %e, "check failed");
            }
            track.last_error = Some(e);
        }
    }
    node.healthy = track.health.get();
}
