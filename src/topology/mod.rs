//! What causeway knows about the cluster: each node's role, health and WAL position, published
//! as an immutable [`Topology`] snapshot.
//!
//! The watcher ([`watcher`]) is the only writer; sessions read with one `ArcSwap::load` per
//! request and never lock. A `watch` channel carrying the snapshot's epoch lets a session wait
//! for a change (for instance for a primary to appear) without polling.

pub mod health;
pub mod lag;
pub mod patroni;
pub mod watcher;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::protocol::Lsn;

/// A node's slot in the topology's node list: a small integer that never changes while the
/// proxy runs. Slots are only ever appended (a node added by a reload or by the cluster
/// manager gets the next one; an address that comes back gets its old one), and a removed
/// node keeps its slot, marked [`NodeState::removed`], so that every `Vec` indexed by node
/// (topology, pools, routing feedback) stays valid without a lock.
pub type NodeId = usize;

/// Most node slots a proxy allocates (the routing feedback preallocates one counter per
/// slot so that the request path indexes a plain slice). Addresses seen beyond it get no
/// slot and are logged.
pub const MAX_NODES: usize = 1024;

/// A node as the configuration (or the cluster manager) names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeSpec {
    /// Host name or IP address.
    pub host: String,
    /// PostgreSQL port.
    pub port: u16,
    /// Share of reads (`weight`; 0: never reads). Nodes Patroni adds get 1.
    pub weight: u32,
}

impl NodeSpec {
    /// `host:port` (`[host]:port` for an IPv6 address), as logs and views name the node.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether this names the server at `host`, `port`.
    pub fn is_at(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host == host
    }
}

/// What a node says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `pg_is_in_recovery()` is false.
    Primary,
    /// `pg_is_in_recovery()` is true.
    Standby,
    /// Never reached yet.
    Unknown,
}

impl Role {
    /// Lower-case name for logs and admin views.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        }
    }
}

/// One node in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Its slot (see [`NodeId`]); `nodes[id]` is this node.
    pub id: NodeId,
    /// `host:port`.
    pub addr: String,
    /// Host, as server connections reach it.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Share of reads relative to the other nodes (0: never reads).
    pub weight: u32,
    /// No longer a node of the cluster (a reload removed it from `[[nodes]]`, or it left
    /// Patroni's member list): never the primary, no reads, not probed, its pools drain. The
    /// slot stays so that node ids stay valid; the address coming back revives it.
    pub removed: bool,
    /// Last role the node reported.
    pub role: Role,
    /// Healthy after hysteresis: enough consecutive successful checks.
    pub healthy: bool,
    /// WAL position: `pg_current_wal_lsn()` on a primary, `pg_last_wal_replay_lsn()` on a
    /// standby; `None` until known.
    pub lsn: Option<Lsn>,
    /// Timeline: of the WAL a primary writes, or a standby receives; `None` until known.
    pub timeline: Option<u32>,
    /// Bytes of WAL a standby is behind the primary; `None` for a primary or when unknown.
    pub lag_bytes: Option<u64>,
    /// How long ago the primary was where a standby is now; `None` when unknown.
    pub lag: Option<Duration>,
    /// Within `max_lag_bytes` and `max_lag`, after hysteresis. Always true for a primary.
    pub within_lag: bool,
    /// On an older timeline than a primary the proxy has seen: a former primary that came back
    /// (out of recovery), or a standby still replaying a former primary's WAL. It gets neither
    /// writes nor reads until it is a standby receiving the newest timeline.
    pub fenced: bool,
    /// The cluster manager (Patroni) says no reads here: a `noloadbalance` member, a member
    /// not in a replaying state, or a node that is not a member at all. Always false with the
    /// `probe` source.
    pub no_reads: bool,
    /// Increases every time the node's role changes; server connections made under an older
    /// value are never reused (a connection to a former standby must not serve as a primary
    /// connection, nor the reverse).
    pub role_epoch: u64,
}

impl NodeState {
    /// A node not yet checked: unknown role, unhealthy, in slot `id`.
    pub fn new(id: NodeId, spec: &NodeSpec) -> NodeState {
        NodeState {
            id,
            addr: spec.address(),
            host: spec.host.clone(),
            port: spec.port,
            weight: spec.weight,
            removed: false,
            role: Role::Unknown,
            healthy: false,
            lsn: None,
            timeline: None,
            lag_bytes: None,
            lag: None,
            within_lag: false,
            fenced: false,
            no_reads: false,
            role_epoch: 0,
        }
    }

    /// Whether the node may serve reads as a standby right now: healthy, in recovery, not
    /// fenced, within the lag limits (the watcher's verdict).
    pub fn is_eligible_standby(&self) -> bool {
        self.serves_reads(None)
    }

    /// The one rule for "may this node serve reads": healthy, in recovery, not fenced, and
    /// within the lag limit: `max_lag` when a session or request asks for its own limit, else
    /// the watcher's verdict on the configured limits (with hysteresis).
    pub fn serves_reads(&self, max_lag: Option<Duration>) -> bool {
        self.healthy
            && self.role == Role::Standby
            && !self.fenced
            && !self.removed
            && !self.no_reads
            && match max_lag {
                None => self.within_lag,
                Some(limit) => self.lag.is_some_and(|l| l <= limit),
            }
    }
}

/// Who decided the roles of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleSource {
    /// The nodes' own answers (`[topology] source = "probe"`).
    Probe,
    /// Patroni's `/cluster` (`source = "patroni"`).
    Patroni,
    /// `source = "patroni"`, but no Patroni REST URL answers (or none has yet): the last
    /// topology is kept (Patroni's read exclusions included) and roles come from the probes.
    PatroniUnreachable,
}

impl RoleSource {
    /// Name for logs and `/topology`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoleSource::Probe => "probe",
            RoleSource::Patroni => "patroni",
            RoleSource::PatroniUnreachable => "patroni_unreachable",
        }
    }
}

/// An immutable view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Increases with every published change.
    pub epoch: u64,
    /// Every node slot, indexed by [`NodeId`]: the configured nodes first, in configuration
    /// order, then nodes added at run time; removed ones stay, marked
    /// [`NodeState::removed`] (see [`Topology::current`]).
    pub nodes: Vec<NodeState>,
    /// The node that takes writes, if exactly one healthy node is out of recovery.
    pub primary: Option<NodeId>,
    /// Who decided the roles.
    pub role_source: RoleSource,
}

impl Topology {
    /// How many standbys may take reads now (healthy, in recovery, within the lag limits).
    pub fn eligible_standbys(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.is_eligible_standby())
            .count()
    }

    /// The nodes that belong to the cluster now (not removed): what views list.
    pub fn current(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| !n.removed)
    }

    /// The starting snapshot: every node unknown and unhealthy, no primary.
    pub fn of(nodes: &[NodeSpec]) -> Topology {
        Topology {
            epoch: 0,
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(id, spec)| NodeState::new(id, spec))
                .collect(),
            primary: None,
            role_source: RoleSource::Probe,
        }
    }

    /// [`Topology::of`] nodes named `host:port` (weight 1), for tests and tools.
    pub fn initial(addrs: &[String]) -> Topology {
        let specs: Vec<NodeSpec> = addrs
            .iter()
            .map(|a| {
                let (host, port) = a.rsplit_once(':').unwrap_or((a.as_str(), "0"));
                NodeSpec {
                    host: host.to_owned(),
                    port: port.parse().unwrap_or(0),
                    weight: 1,
                }
            })
            .collect();
        Topology::of(&specs)
    }

    /// Derives `primary` from the nodes: among healthy, unfenced nodes out of recovery, the
    /// only one, or the one on the strictly highest timeline (a promotion while the old primary
    /// still runs). When that cannot be decided (same or unknown timelines) there is no
    /// primary, so that no write goes to a node that might be the stale one.
    pub fn derive_primary(nodes: &[NodeState]) -> Option<NodeId> {
        let mut best: Option<&NodeState> = None;
        let mut tie = false;
        for n in nodes
            .iter()
            .filter(|n| n.healthy && n.role == Role::Primary && !n.fenced && !n.removed)
        {
            match best {
                None => best = Some(n),
                Some(b) => match (n.timeline, b.timeline) {
                    (Some(tn), Some(tb)) if tn > tb => {
                        best = Some(n);
                        tie = false;
                    }
                    (Some(tn), Some(tb)) if tn < tb => {}
                    _ => tie = true,
                },
            }
        }
        if tie {
            None
        } else {
            best.map(|b| b.id)
        }
    }
}

/// Shared handle to the current snapshot.
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    changed: watch::Sender<u64>,
    /// The address of the last primary published, to tell a new primary from the same one
    /// coming back (by address, not id: ids are positions in a node list). A lock only the
    /// publisher (the watcher) takes.
    last_primary: parking_lot::Mutex<Option<String>>,
    /// Failovers seen: published primaries that differ from the last one (`/metrics`).
    failovers: AtomicU64,
}

impl TopologyHandle {
    /// Creates a handle holding `initial`.
    pub fn new(initial: Topology) -> TopologyHandle {
        let (changed, _) = watch::channel(initial.epoch);
        TopologyHandle {
            current: ArcSwap::from_pointee(initial),
            changed,
            last_primary: parking_lot::Mutex::new(None),
            failovers: AtomicU64::new(0),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.current.load()
    }

    /// The current snapshot as an `Arc`, to keep across an `.await` or to modify a copy.
    pub fn load_full(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Failovers since start: how many times a primary was published that is not the node
    /// published as primary before it. The first primary found is not one, nor is a primary
    /// that is lost and comes back (a restart); a standby promoted after the primary was lost
    /// is one, whether or not a snapshot without a primary came in between.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Counts a failover if `next` names a primary other than the last one.
    fn note_primary(&self, next: &Topology) {
        let Some(addr) = next
            .primary
            .and_then(|p| next.nodes.get(p))
            .map(|n| &n.addr)
        else {
            return;
        };
        let mut last = self.last_primary.lock();
        if last.as_deref() != Some(addr.as_str()) {
            if last.is_some() {
                self.failovers.fetch_add(1, Ordering::Relaxed);
            }
            *last = Some(addr.clone());
        }
    }

    /// Publishes a new snapshot (one atomic store), giving it the next epoch.
    pub fn publish(&self, mut next: Topology) {
        self.note_primary(&next);
        let epoch = self.current.load().epoch + 1;
        next.epoch = epoch;
        self.current.store(Arc::new(next));
        self.changed.send_replace(epoch);
    }

    /// Waits up to `limit` for a snapshot that satisfies `pred`; returns whether one did.
    pub async fn wait_until(&self, limit: Duration, pred: impl Fn(&Topology) -> bool) -> bool {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if pred(&self.load()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return pred(&self.load()),
            }
        }
    }

    /// Waits up to `limit` for a snapshot with a primary; returns it, or `None` on timeout.
    pub async fn wait_for_primary(&self, limit: Duration) -> Option<NodeId> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(p) = self.load().primary {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Timeout, or the sender is gone (shutting down).
                _ => return self.load().primary,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: usize, role: Role, healthy: bool) -> NodeState {
        NodeState {
            role,
            healthy,
            within_lag: true,
            ..NodeState::new(
                id,
                &NodeSpec {
                    host: format!("n{id}"),
                    port: 5432,
                    weight: 1,
                },
            )
        }
    }

    #[test]
    fn failovers_count_changes_of_primary() {
        let h = TopologyHandle::new(Topology::initial(&["n0".into(), "n1".into()]));
        let with_primary = |primary: Option<NodeId>| Topology {
            epoch: 0,
            nodes: vec![node(0, Role::Primary, true), node(1, Role::Standby, true)],
            primary,
            role_source: RoleSource::Probe,
        };
        // The first primary found, then the same one lost and back: no failover.
        for p in [Some(0), None, Some(0), Some(0)] {
            h.publish(with_primary(p));
        }
        assert_eq!(h.failovers(), 0);
        // Another node: one, with or without a gap in between.
        h.publish(with_primary(None));
        h.publish(with_primary(Some(1)));
        assert_eq!(h.failovers(), 1);
        h.publish(with_primary(Some(0)));
        assert_eq!(h.failovers(), 2);
    }

    #[test]
    fn primary_needs_exactly_one_healthy_primary() {
        let n = [node(0, Role::Primary, true), node(1, Role::Standby, true)];
        assert_eq!(Topology::derive_primary(&n), Some(0));
        let n = [node(0, Role::Primary, false), node(1, Role::Standby, true)];
        assert_eq!(Topology::derive_primary(&n), None);
        let n = [node(0, Role::Primary, true), node(1, Role::Primary, true)];
        assert_eq!(
            Topology::derive_primary(&n),
            None,
            "same timeline: undecidable"
        );
        let mut n = [node(0, Role::Primary, true), node(1, Role::Primary, true)];
        n[1].timeline = Some(2);
        n[0].timeline = Some(1);
        assert_eq!(
            Topology::derive_primary(&n),
            Some(1),
            "the higher timeline wins"
        );
        n[1].fenced = true;
        assert_eq!(Topology::derive_primary(&n), Some(0));
    }

    #[tokio::test]
    async fn waiting_for_a_primary_wakes_on_publish() {
        let handle = Arc::new(TopologyHandle::new(Topology::initial(&["a".into()])));
        let waiter = {
            let h = handle.clone();
            tokio::spawn(async move { h.wait_for_primary(Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        let mut t = Topology::initial(&["a".into()]);
        t.nodes[0].role = Role::Primary;
        t.nodes[0].healthy = true;
        t.primary = Some(0);
        handle.publish(t);
        assert_eq!(waiter.await.unwrap(), Some(0));
        assert_eq!(handle.load().epoch, 1);
        let empty = TopologyHandle::new(Topology::initial(&["a".into()]));
        assert_eq!(
            empty.wait_for_primary(Duration::from_millis(20)).await,
            None
        );
    }
}
