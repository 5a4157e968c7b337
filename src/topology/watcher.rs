//! The topology watcher: one monitoring connection per node (tokio-postgres), a check every
//! `check_interval` with its own connect and query timeouts, and one aggregator that applies
//! hysteresis and publishes snapshots.
//!
//! Each probe task owns its connection and only reports observations over a channel; the
//! aggregator owns all decision state, so there is no shared mutable state and no lock.
//! A black-holed node (accepts TCP, never answers) is caught by the query timeout, not by TCP.
//!
//! The aggregator also owns the node list: nodes come and go at run time through one
//! mechanism, whether a reload changed `[[nodes]]` or Patroni's member list changed. A new
//! address gets the next node slot (an address that comes back gets its old one) and a probe;
//! it serves reads once its health hysteresis says healthy, as any node. A removed node keeps
//! its slot marked removed (no reads, never the primary), its probe stops, and the pool
//! maintenance retires its pools (connections close as they are given back, none is cut).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use tokio::time::Instant;

use super::health::Hysteresis;
use super::lag::LsnHistory;
use super::patroni::{self, DcsVerdict, Member};
use super::{NodeId, NodeSpec, NodeState, Role, RoleSource, Topology, TopologyHandle, MAX_NODES};
use crate::net::server_tls::ServerTls;
use crate::protocol::Lsn;

/// The probe every check runs, in one round trip: role, WAL position (write position on a
/// primary, replay position on a standby), timeline (of the WAL a primary writes, taken from
/// its current WAL file name, which changes the moment a promotion completes; of the WAL a
/// standby receives) and the cluster's system identifier (new when the cluster is re-created,
/// e.g. restored from a backup).
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
     CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) \
     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
     (SELECT system_identifier FROM pg_control_system())";

/// How the error of a probe that got no answer in time starts.
const PROBE_TIMED_OUT: &str = "probe timed out";

/// What the watcher needs to reach the nodes.
#[derive(Debug, Clone)]
pub struct WatcherSettings {
    /// The configured nodes (`[[nodes]]`), in configuration order; a reload may change them.
    pub nodes: Vec<NodeSpec>,
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
    /// Consecutive agreeing checks before health (and being within the lag limits) flips.
    pub health_threshold: u32,
    /// Standbys further behind than this many bytes get no reads.
    pub max_lag_bytes: Option<u64>,
    /// Standbys further behind than this get no reads.
    pub max_lag: Option<Duration>,
    /// TLS towards the nodes (`[server_tls]`, as for the pools).
    pub tls: Arc<ServerTls>,
    /// Patroni REST URLs: when not empty, roles follow Patroni's `/cluster` (the `patroni`
    /// topology source); empty for the `probe` source.
    pub patroni: Vec<String>,
}

/// What one successful probe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probed {
    /// `pg_is_in_recovery()`: a standby.
    in_recovery: bool,
    /// Replay position on a standby, write position on a primary; `None` on a standby that
    /// has replayed nothing yet.
    lsn: Option<Lsn>,
    /// Timeline of the WAL written (primary) or received (standby); `None` without a WAL
    /// receiver.
    timeline: Option<u32>,
    /// `pg_control_system().system_identifier`: which cluster the node belongs to.
    system_id: Option<i64>,
}

/// What the Patroni poller reports each check: the member list from the first URL that
/// answered, or `Err` with every URL's failure.
type DcsReport = Result<Vec<Member>, String>;

/// How many `/cluster` answers in a row must lack a member that Patroni brought in (not a
/// configured node) before its node is removed: one answer caught mid-restart of a member's
/// Patroni must not drain it. An unreachable Patroni counts for nothing.
pub const MEMBER_GONE_POLLS: u32 = 3;

/// One check's outcome.
#[derive(Debug, Clone)]
struct Observation {
    node: NodeId,
    /// The slot's generation the probe was started for: a late report of a probe stopped
    /// before its node was removed (and perhaps added again) is ignored.
    generation: u64,
    result: Result<Probed, String>,
}

/// Starts the aggregator (which starts a probe task per node) on `tasks`; they stop when
/// `cancel` fires. `updates` carries the settings and their later changes (a reload): the
/// check interval, timeouts, account and lag limits apply from the next check; nodes added to
/// or removed from the list are probed or dropped at once; the health threshold and the
/// Patroni URLs are those at start.
pub fn spawn(
    updates: watch::Receiver<WatcherSettings>,
    topology: Arc<TopologyHandle>,
    tasks: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) {
    let settings = updates.borrow().clone();
    let (tx, rx) = mpsc::channel(64);
    let (dcs_tx, dcs_rx) = mpsc::channel(4);
    if !settings.patroni.is_empty() {
        tasks.spawn(poll_patroni(settings.clone(), dcs_tx, cancel.clone()));
    }
    let probes = Probes {
        tasks: tasks.clone(),
        tx,
        updates: updates.clone(),
        cancel: cancel.clone(),
        running: Vec::new(),
    };
    tasks.spawn(aggregate(settings, updates, topology, (rx, dcs_rx), probes));
}

/// The running probe tasks, one per live node slot.
struct Probes {
    tasks: tokio_util::task::TaskTracker,
    /// Where probes report (the aggregator's inbox).
    tx: mpsc::Sender<Observation>,
    updates: watch::Receiver<WatcherSettings>,
    /// The watcher's own stop signal; each probe gets a child of it.
    cancel: CancellationToken,
    /// Per slot: stops that slot's probe.
    running: Vec<Option<CancellationToken>>,
}

impl Probes {
    /// Starts a probe of `node` (stopping an earlier one of the same slot).
    fn start(&mut self, node: &NodeState, generation: u64, settings: &WatcherSettings) {
        let stop = self.cancel.child_token();
        let probe = Probe {
            node: node.id,
            generation,
            host: node.host.clone(),
            port: node.port,
            settings: settings.clone(),
            updates: self.updates.clone(),
            client: None,
            timeouts: 0,
        };
        self.tasks.spawn(probe.run(self.tx.clone(), stop.clone()));
        if self.running.len() <= node.id {
            self.running.resize(node.id + 1, None);
        }
        if let Some(old) = self.running[node.id].replace(stop) {
            old.cancel();
        }
    }

    /// Stops the probe of slot `id` (its monitoring connection closes).
    fn stop(&mut self, id: NodeId) {
        if let Some(stop) = self.running.get_mut(id).and_then(Option::take) {
            stop.cancel();
        }
    }

    /// Starts and stops probes as the node slots changed.
    fn follow(&mut self, changes: SlotChanges, agg: &Aggregator, nodes: &[NodeState]) {
        for id in changes.stop {
            self.stop(id);
        }
        for id in changes.start {
            self.start(&nodes[id], agg.slots[id].generation, &agg.settings);
        }
    }
}

/// Asks every Patroni URL's `/cluster` at once, every check interval, and reports the
/// freshest answer ([`patroni::freshest`]: a member demoting itself may answer from an old
/// copy of the DCS), or why none answered, to the aggregator. Once one URL has answered, the
/// others get [`PATRONI_GRACE`] more: a URL that hangs delays no report by more.
async fn poll_patroni(
    settings: WatcherSettings,
    tx: mpsc::Sender<DcsReport>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = settings.connect_timeout + settings.query_timeout;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut asks = tokio::task::JoinSet::new();
        for (i, url) in settings.patroni.iter().enumerate() {
            let url = url.clone();
            asks.spawn(async move {
                let answer = patroni::fetch_cluster(&url, limit).await;
                (i, url, answer)
            });
        }
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace {
                None => asks.join_next().await,
                Some(until) => match tokio::time::timeout_at(until, asks.join_next()).await {
                    Ok(next) => next,
                    // The rest answer too late for this check (dropping `asks` stops them).
                    Err(_) => break,
                },
            };
            let Some(joined) = next else { break };
            let Ok((i, url, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(members) => {
                    answers.push((i, members));
                    grace.get_or_insert_with(|| tokio::time::Instant::now() + PATRONI_GRACE);
                }
                Err(e) => failures.push((i, format!("{url}: {e}"))),
            }
        }
        answers.sort_by_key(|(i, _)| *i);
        failures.sort_by_key(|(i, _)| *i);
        let report =
            patroni::freshest(answers.into_iter().map(|(_, m)| m).collect()).ok_or_else(|| {
                failures
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect::<Vec<_>>()
                    .join("; ")
            });
        if tx.send(report).await.is_err() {
            return;
        }
    }
}

/// How long the other Patroni URLs may take once one has answered a check.
const PATRONI_GRACE: Duration = Duration::from_millis(200);

/// The newest settings from a reload, if they changed since last asked (keeping the Patroni
/// URLs and health threshold the watcher started with).
fn refreshed(
    updates: &mut watch::Receiver<WatcherSettings>,
    current: &WatcherSettings,
) -> Option<WatcherSettings> {
    if !updates.has_changed().unwrap_or(false) {
        return None;
    }
    Some(keep_start_only(
        updates.borrow_and_update().clone(),
        current,
    ))
}

/// `next` with the settings read only at start taken from `current`.
fn keep_start_only(mut next: WatcherSettings, current: &WatcherSettings) -> WatcherSettings {
    next.patroni.clone_from(&current.patroni);
    next.health_threshold = current.health_threshold;
    next
}

/// A probe task's state: its node and, when connected, its client and prepared probe.
struct Probe {
    node: NodeId,
    /// The slot's generation when this probe started (see [`Observation::generation`]).
    generation: u64,
    host: String,
    port: u16,
    settings: WatcherSettings,
    /// Settings changed by a reload.
    updates: watch::Receiver<WatcherSettings>,
    client: Option<(Client, Statement)>,
    /// Consecutive probes on the current connection that timed out.
    timeouts: u32,
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
            if let Some(next) = refreshed(&mut self.updates, &self.settings) {
                if next.check_interval != self.settings.check_interval {
                    tick = tokio::time::interval(next.check_interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.reset();
                }
                // New TLS settings (every reload builds them, re-reading the CA file): the
                // next check connects with them.
                if !Arc::ptr_eq(&next.tls, &self.settings.tls) {
                    self.client = None;
                }
                self.settings = next;
            }
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.check() => r,
            };
            match &result {
                Ok(_) => self.timeouts = 0,
                // A probe that timed out leaves its connection for the next check (up to the
                // health threshold): the next probe then times out after `query_timeout` too,
                // instead of a reconnect to a hung node taking `connect_timeout` more. So a
                // black-holed node is out after `health_threshold` checks of `query_timeout`.
                Err(e)
                    if e.starts_with(PROBE_TIMED_OUT)
                        && self.timeouts + 1 < self.settings.health_threshold =>
                {
                    self.timeouts += 1;
                }
                Err(_) => {
                    // Start over with a fresh connection next time.
                    self.client = None;
                    self.timeouts = 0;
                }
            }
            if tx
                .send(Observation {
                    node: self.node,
                    generation: self.generation,
                    result,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn check(&mut self) -> Result<Probed, String> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let Some((client, stmt)) = &self.client else {
            return Err("not connected".into());
        };
        let row = tokio::time::timeout(self.settings.query_timeout, client.query_one(stmt, &[]))
            .await
            .map_err(|_| format!("{PROBE_TIMED_OUT} after {:?}", self.settings.query_timeout))?
            .map_err(|e| format!("probe failed: {e}"))?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let lsn: Option<PgLsn> = row.try_get(1).map_err(|e| e.to_string())?;
        let timeline: Option<i32> = row.try_get(2).map_err(|e| e.to_string())?;
        let system_id: Option<i64> = row.try_get(3).map_err(|e| e.to_string())?;
        Ok(Probed {
            in_recovery,
            lsn: lsn.map(|l| Lsn::from(u64::from(l))),
            timeline: timeline.map(|t| t as u32),
            system_id,
        })
    }

    async fn connect(&self) -> Result<(Client, Statement), String> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.settings.user)
            .dbname(&self.settings.database)
            .application_name("causeway-monitor")
            .connect_timeout(self.settings.connect_timeout);
        if let Some(p) = &self.settings.password {
            cfg.password(p);
        }
        let connect = async {
            let (client, _driver) = self
                .settings
                .tls
                .connect_monitor(&mut cfg)
                .await
                .map_err(|e| e.to_string())?;
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
    /// Whether the node answers checks (with hysteresis).
    health: Hysteresis,
    /// Whether the node is within the lag limits (with hysteresis).
    within_lag: Hysteresis,
    /// The last failed check's error, to log each different one once.
    last_error: Option<String>,
    /// The system identifier the node last reported.
    system_id: Option<i64>,
}

impl Track {
    fn new(threshold: u32) -> Track {
        Track {
            health: Hysteresis::new(false, threshold),
            within_lag: Hysteresis::new(false, threshold),
            last_error: None,
            system_id: None,
        }
    }
}

/// Who brought a node in, which decides what takes it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `[[nodes]]`: removed only by a reload that drops it.
    Configured,
    /// Patroni's member list (not configured): removed once [`MEMBER_GONE_POLLS`] answers in
    /// a row lack it.
    Patroni,
}

/// What the aggregator keeps per node slot besides its [`Track`].
#[derive(Debug, Clone)]
struct Slot {
    source: Source,
    /// Rises each time the slot is removed or revived (see [`Observation::generation`]).
    generation: u64,
    /// Successful `/cluster` answers in a row without this (Patroni-sourced) member.
    absent: u32,
}

/// Node slots whose probe must start (new or revived) or stop (removed).
#[derive(Debug, Default, PartialEq, Eq)]
struct SlotChanges {
    start: Vec<NodeId>,
    stop: Vec<NodeId>,
}

impl SlotChanges {
    fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }
}

/// Everything the aggregator decides from.
struct Aggregator {
    settings: WatcherSettings,
    /// Per node slot.
    tracks: Vec<Track>,
    /// Per node slot.
    slots: Vec<Slot>,
    /// Positions of the current primary.
    history: LsnHistory,
    /// The node `history` belongs to.
    history_of: Option<NodeId>,
    /// The highest timeline a healthy primary has reported: a node out of recovery on an
    /// older one is a former primary and is fenced.
    highest_timeline: Option<u32>,
    /// The system identifier of the cluster served: timelines are only comparable within one
    /// cluster, and a node of another one is fenced.
    system_id: Option<i64>,
    /// Patroni's latest verdict; `None` with the `probe` source, before Patroni first
    /// answered, and while no Patroni URL answers (then the probes decide alone).
    dcs: Option<DcsVerdict>,
    /// Patroni's read exclusions (`noloadbalance`, not a member, not replaying) of its last
    /// verdict, kept while no Patroni URL answers: the last known topology stands, only the
    /// roles come from the probes.
    kept_no_reads: Option<Vec<bool>>,
    /// Addresses in Patroni's latest member list.
    members: Vec<(String, u16)>,
    /// Members already logged as getting no slot, so each is logged once.
    unknown_logged: Vec<String>,
}

/// Everything the aggregator hears: probe observations and Patroni reports.
type Inbox = (mpsc::Receiver<Observation>, mpsc::Receiver<DcsReport>);

/// One input of the aggregator.
enum Input {
    Probe(Observation),
    Dcs(DcsReport),
    /// A reload changed the settings.
    Settings,
}

async fn aggregate(
    settings: WatcherSettings,
    mut updates: watch::Receiver<WatcherSettings>,
    topology: Arc<TopologyHandle>,
    (mut rx, mut dcs_rx): Inbox,
    mut probes: Probes,
) {
    let cancel = probes.cancel.clone();
    let mut agg = {
        // The topology was made from the configuration the proxy was built with; a reload
        // may have changed the list since.
        let current = topology.load_full();
        let mut nodes = current.nodes.clone();
        let mut agg = Aggregator::new(settings, &nodes);
        agg.set_configured(&mut nodes);
        for n in nodes.iter().filter(|n| !n.removed) {
            probes.start(n, agg.slots[n.id].generation, &agg.settings);
        }
        if nodes != current.nodes {
            topology.publish(Topology {
                epoch: 0,
                primary: None,
                nodes,
                role_source: agg.role_source(),
            });
        }
        agg
    };
    loop {
        let input = tokio::select! {
            _ = cancel.cancelled() => return,
            // The aggregator holds a sender (for probes it starts): never `None`.
            Some(o) = rx.recv() => Input::Probe(o),
            Some(d) = dcs_rx.recv() => Input::Dcs(d),
            Ok(()) = updates.changed() => Input::Settings,
        };
        let current = topology.load_full();
        let mut nodes = current.nodes.clone();
        let mut changes = SlotChanges::default();
        // `changed()` above marked the settings seen: take them as they are.
        let next = match input {
            Input::Settings => Some(keep_start_only(
                updates.borrow_and_update().clone(),
                &agg.settings,
            )),
            _ => refreshed(&mut updates, &agg.settings),
        };
        if let Some(next) = next {
            agg.settings = next;
            changes = agg.set_configured(&mut nodes);
        }
        let primary = match input {
            Input::Probe(obs) => agg.apply(&mut nodes, obs, Instant::now()),
            Input::Dcs(report) => {
                let report = report.map(|members| {
                    let more = agg.follow_members(&mut nodes, &members);
                    changes.start.extend(more.start);
                    changes.stop.extend(more.stop);
                    let addrs: Vec<(String, u16)> =
                        nodes.iter().map(|n| (n.host.clone(), n.port)).collect();
                    patroni::verdict(&members, &addrs)
                });
                agg.apply_dcs(report);
                agg.decide(&mut nodes)
            }
            Input::Settings => agg.decide(&mut nodes),
        };
        if !changes.is_empty() {
            probes.follow(changes, &agg, &nodes);
        }
        if primary != current.primary {
            match primary {
                Some(p) => {
                    tracing::info!(node = %nodes[p].addr, "primary is now {}", nodes[p].addr)
                }
                None => tracing::warn!("no primary available"),
            }
        }
        let role_source = agg.role_source();
        if nodes != current.nodes
            || primary != current.primary
            || role_source != current.role_source
        {
            topology.publish(Topology {
                epoch: 0,
                nodes,
                primary,
                role_source,
            });
        }
    }
}

mod slots;

impl Aggregator {
    /// Applies one observation to the node list (logging role and health changes once each)
    /// and returns the primary it implies.
    fn apply(&mut self, nodes: &mut [NodeState], obs: Observation, now: Instant) -> Option<NodeId> {
        let id = obs.node;
        let current = self
            .slots
            .get(id)
            .is_some_and(|s| s.generation == obs.generation);
        if !current || nodes.get(id).is_none_or(|n| n.removed) {
            // A probe stopped when its node was removed, reporting late.
            return self.decide(nodes);
        }
        let observed_ok = obs.result.is_ok();
        {
            let node = &mut nodes[id];
            let track = &mut self.tracks[id];
            match obs.result {
                Ok(p) => {
                    track.last_error = None;
                    let role = if p.in_recovery {
                        Role::Standby
                    } else {
                        Role::Primary
                    };
                    // The server's own answer wins at once: a promotion must not wait for
                    // hysteresis.
                    if role != node.role {
                        let timeline = p
                            .timeline
                            .map_or_else(|| "unknown".to_owned(), |t| t.to_string());
                        match (node.role, role) {
                            (Role::Standby, Role::Primary) => tracing::warn!(
                                node = %node.addr,
                                timeline = ?p.timeline,
                                "node {} promoted: timeline {timeline}",
                                node.addr
                            ),
                            (Role::Primary, Role::Standby) => tracing::warn!(
                                node = %node.addr,
                                timeline = ?p.timeline,
                                "node {} demoted: back in recovery, receiving timeline {timeline}",
                                node.addr
                            ),
                            _ => tracing::info!(
                                node = %node.addr,
                                timeline = ?p.timeline,
                                "node {} is {}: timeline {timeline}",
                                node.addr,
                                role.as_str()
                            ),
                        }
                        node.role = role;
                        node.role_epoch += 1;
                    }
                    if p.system_id != track.system_id {
                        if track.system_id.is_some() {
                            // Another cluster on the same address: no pooled connection of
                            // the old one is reused.
                            node.role_epoch += 1;
                        }
                        track.system_id = p.system_id;
                    }
                    node.lsn = p.lsn;
                    node.timeline = p.timeline;
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
        self.follow_cluster(nodes);
        let primary = self.decide(nodes);
        if primary != self.history_of {
            self.history.clear();
            self.history_of = primary;
        }
        if let Some(p) = primary {
            if p == id && observed_ok {
                if let Some(lsn) = nodes[p].lsn {
                    self.history.record(now, lsn);
                }
            }
        }
        self.update_lag(&mut nodes[id], observed_ok, primary == Some(id), now);
        primary
    }

    /// Learns which cluster is served: the first healthy primary's system identifier. A healthy
    /// primary of another cluster, while no healthy primary of the known one is left, means
    /// the cluster was re-created (restored from a backup: new identifier, timeline back to
    /// 1): what was learned about the old one (its timelines, its primary's positions) is
    /// forgotten, once, and the new one is served.
    fn follow_cluster(&mut self, nodes: &[NodeState]) {
        let primary_of = |id: Option<i64>| {
            nodes
                .iter()
                .find(|n| n.healthy && n.role == Role::Primary && self.tracks[n.id].system_id == id)
        };
        let Some(known) = self.system_id else {
            self.system_id = nodes
                .iter()
                .filter(|n| n.healthy && n.role == Role::Primary)
                .find_map(|n| self.tracks[n.id].system_id);
            return;
        };
        if primary_of(Some(known)).is_some() {
            return;
        }
        let Some((addr, new)) = nodes
            .iter()
            .filter(|n| n.healthy && n.role == Role::Primary)
            .find_map(|n| self.tracks[n.id].system_id.map(|s| (&n.addr, s)))
        else {
            return;
        };
        tracing::warn!(
            node = %addr,
            old = known,
            new,
            "node {addr} is a primary of another cluster (system identifier {new}, was {known}) and none of the old one is left: the cluster was re-created; forgetting its timelines"
        );
        self.system_id = Some(new);
        self.highest_timeline = None;
        self.history.clear();
        self.history_of = None;
    }

    /// Takes Patroni's latest report: a verdict replaces the last one; with no Patroni URL
    /// answering, the probes decide alone until one answers again (logged on each change).
    fn apply_dcs(&mut self, report: Result<DcsVerdict, String>) {
        match report {
            Ok(v) => {
                if self.dcs.is_none() {
                    tracing::info!("following Patroni's /cluster for roles");
                }
                for m in &v.unknown {
                    if !self.unknown_logged.contains(m) {
                        tracing::warn!(member = %m, "Patroni member {m} has no node slot ({MAX_NODES} in use): it gets no traffic");
                        self.unknown_logged.push(m.clone());
                    }
                }
                self.dcs = Some(v);
                self.kept_no_reads = None;
            }
            Err(e) => {
                if let Some(last) = self.dcs.take() {
                    tracing::warn!(error = %e, "no Patroni REST URL answers: keeping the current topology and deciding roles from direct probes until one does ({e})");
                    self.kept_no_reads = Some(last.no_reads);
                }
            }
        }
    }

    /// Who decides the roles now.
    fn role_source(&self) -> RoleSource {
        match (&self.dcs, self.settings.patroni.is_empty()) {
            (_, true) => RoleSource::Probe,
            (Some(_), false) => RoleSource::Patroni,
            (None, false) => RoleSource::PatroniUnreachable,
        }
    }

    /// Fencing, Patroni's read exclusions, and the primary: with Patroni's verdict, only its
    /// leader may be the primary (and only once it is out of recovery, else there is none and
    /// writes wait); without it, [`Topology::derive_primary`] on the probes.
    fn decide(&mut self, nodes: &mut [NodeState]) -> Option<NodeId> {
        self.update_fencing(nodes);
        for n in nodes.iter_mut() {
            n.no_reads = match (&self.dcs, &self.kept_no_reads) {
                (Some(d), _) => d.no_reads.get(n.id).copied().unwrap_or(true),
                (None, Some(kept)) => kept.get(n.id).copied().unwrap_or(false),
                (None, None) => false,
            };
        }
        match &self.dcs {
            None => Topology::derive_primary(nodes),
            Some(d) => d.leader.filter(|&l| {
                let n = &nodes[l];
                n.healthy && n.role == Role::Primary && !n.fenced && !n.removed
            }),
        }
    }

    /// Fences every node out of recovery on a timeline older than the highest a healthy
    /// primary has reported, every node of another cluster, and, with Patroni's verdict, every
    /// node out of recovery that is not Patroni's leader (logging each change once).
    fn update_fencing(&mut self, nodes: &mut [NodeState]) {
        for n in nodes.iter() {
            if n.healthy && n.role == Role::Primary && self.is_other_cluster(n.id) {
                continue;
            }
            if n.healthy && n.role == Role::Primary {
                if let Some(t) = n.timeline {
                    self.highest_timeline = Some(self.highest_timeline.map_or(t, |h| h.max(t)));
                }
            }
        }
        for n in nodes.iter_mut() {
            // A node of another cluster has nothing the clients wrote: nothing goes there.
            let foreign = self.is_other_cluster(n.id);
            let older = foreign
                || matches!((n.timeline, self.highest_timeline), (Some(t), Some(h)) if t < h);
            // A standby on an older timeline replays a former primary's WAL (its data may hold
            // writes the new primary never saw): no reads either. One that was fenced stays so
            // while its timeline is unknown (no WAL receiver), until it receives the new one.
            let not_leader = self.dcs.as_ref().is_some_and(|d| d.leader != Some(n.id));
            let fenced = match n.role {
                Role::Primary => older || not_leader,
                Role::Standby => older || (n.fenced && n.timeline.is_none()),
                Role::Unknown => n.fenced,
            };
            if fenced != n.fenced {
                if fenced && foreign {
                    tracing::warn!(
                        node = %n.addr,
                        system_id = ?self.tracks[n.id].system_id,
                        cluster = ?self.system_id,
                        "node {} fenced: it belongs to another cluster (system identifier {:?}, serving {:?})",
                        n.addr, self.tracks[n.id].system_id, self.system_id
                    );
                } else if fenced && n.role == Role::Primary && !older {
                    tracing::warn!(
                        node = %n.addr,
                        "node {} fenced: out of recovery but not Patroni's leader; no reads or writes",
                        n.addr
                    );
                } else if fenced && n.role == Role::Primary {
                    tracing::warn!(
                        node = %n.addr,
                        timeline = ?n.timeline,
                        newest = ?self.highest_timeline,
                        "node {} fenced: out of recovery on timeline {:?}, older than {:?}; no reads or writes until it rejoins as a standby",
                        n.addr, n.timeline, self.highest_timeline
                    );
                } else if fenced {
                    tracing::warn!(
                        node = %n.addr,
                        timeline = ?n.timeline,
                        newest = ?self.highest_timeline,
                        "node {} fenced: standby receiving timeline {:?}, older than {:?}; no reads until it follows the newest timeline",
                        n.addr, n.timeline, self.highest_timeline
                    );
                } else {
                    tracing::info!(node = %n.addr, "node {} no longer fenced", n.addr);
                }
                n.fenced = fenced;
            }
        }
    }

    /// Whether node `id` last reported a system identifier other than the served cluster's.
    fn is_other_cluster(&self, id: NodeId) -> bool {
        matches!((self.tracks[id].system_id, self.system_id), (Some(a), Some(b)) if a != b)
    }

    /// Recomputes a node's lag and, when it was just observed, feeds its within-limits
    /// hysteresis.
    fn update_lag(&mut self, node: &mut NodeState, observed: bool, is_primary: bool, now: Instant) {
        let track = &mut self.tracks[node.id];
        if is_primary || node.role == Role::Primary {
            node.lag_bytes = None;
            node.lag = None;
            node.within_lag = true;
            return;
        }
        let (bytes, time) = match node.lsn {
            Some(replay) => (
                self.history.lag_bytes(replay),
                self.history.lag_time(replay, now),
            ),
            None => (None, None),
        };
        node.lag_bytes = bytes;
        node.lag = time;
        if !observed {
            return;
        }
        // Unknown lag (no primary to compare with) is not evidence of being late; a standby
        // that never replayed anything (no position) is.
        let within = node.lsn.is_some()
            && self
                .settings
                .max_lag_bytes
                .is_none_or(|max| bytes.is_none_or(|b| b <= max))
            && self
                .settings
                .max_lag
                .is_none_or(|max| time.is_none_or(|t| t <= max));
        if track.within_lag.observe(within) {
            tracing::info!(
                node = %node.addr,
                lag_bytes = ?bytes,
                lag = ?time,
                "node {} is {} the lag limits",
                node.addr,
                if within { "back within" } else { "over" }
            );
        }
        node.within_lag = track.within_lag.get();
    }
}

#[cfg(test)]
mod tests;
