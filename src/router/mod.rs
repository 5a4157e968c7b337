//! Routing decisions: where a request goes. Pure functions over what the request is, the
//! session's routing state and the topology snapshot; no I/O.
//!
//! ```text
//! classify (lexer)  ─▶ Class { Read | ReadOnlyBegin | Write }
//! session state     ─▶ RouteContext { route override, max_lag, min_lsn, ... }
//! Topology snapshot ─▶ route() ─▶ Decision { Primary | Node(id) | NoStandby }
//!                                   └ balance::choose among eligible nodes
//! ```

pub mod balance;
pub mod classify;
pub mod feedback;
pub mod functions;
pub mod lexer;

use std::time::Duration;

use crate::config::{Fallback, PrimaryReads, ReadOnlyTransactions, Route};
use crate::protocol::Lsn;
use crate::topology::{NodeId, NodeState, Topology};

/// Where a request must run, before resolving to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The node that takes writes.
    Primary,
    /// A specific node (a read chosen by the balancer).
    Node(NodeId),
}

/// What a request is, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A plain read: may run on a standby.
    Read,
    /// `BEGIN READ ONLY` (or a transaction in a read-only-by-default session): may run on a
    /// standby if `read_only_transactions = "standby"`.
    ReadOnlyBegin,
    /// Anything else: a write, a transaction, or something not understood.
    Write,
}

/// Routing settings (from the configuration).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Whether the primary serves reads.
    pub primary_reads: PrimaryReads,
    /// What happens to a read when no standby is eligible.
    pub fallback: Fallback,
    /// Where read-only transactions run.
    pub read_only_transactions: ReadOnlyTransactions,
    /// Balancing strategy.
    pub balance: crate::config::Balance,
}

/// The session's routing state for one request.
#[derive(Debug, Clone, Default)]
pub struct RouteContext<'a> {
    /// `auto`, or forced to the primary / to standbys (user or database default, the
    /// read-only database alias, `SET causeway.route`, a `/* causeway:... */` hint).
    pub route: Option<Route>,
    /// A stricter (or looser) lag limit for this request (`SET causeway.max_lag`,
    /// `/* causeway:max_lag=... */`); `None` uses the watcher's verdict.
    pub max_lag: Option<Duration>,
    /// Read-your-writes: a standby must have replayed at least this position.
    pub min_lsn: Option<Lsn>,
    /// Nodes that could not give a connection for this request (down or refusing before the
    /// watcher noticed): treated as unable to serve it.
    pub excluded: &'a [NodeId],
}

/// Whether `node` may serve a read for this request: the one eligibility rule, used for
/// routing, for the standbys read-your-writes asks, and for the welcome of a new client.
/// [`NodeState::serves_reads`] (healthy, in recovery, unfenced, not removed, within the lag
/// limit), a read weight above zero, and not excluded for this request.
fn may_read(n: &NodeState, ctx: &RouteContext<'_>) -> bool {
    n.weight > 0 && n.serves_reads(ctx.max_lag) && !ctx.excluded.contains(&n.id)
}

/// What the balancer reads of the proxy's own load, asked for only what the configured
/// strategy uses: the shared round-robin tick is an atomic every worker thread writes, and a
/// random draw is a step of the thread's RNG.
pub trait Load {
    /// Requests in flight on `node`.
    fn outstanding(&self, node: NodeId) -> usize;
    /// The next round-robin tick.
    fn tick(&self) -> usize;
    /// A random number (tie-breaking, random balancing).
    fn random(&self) -> u64;
}

/// Load figures given up front (tests, benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedLoad<'a> {
    /// Requests in flight per node id.
    pub outstanding: &'a [usize],
    /// The round-robin tick.
    pub tick: usize,
    /// The random number.
    pub random: u64,
}

impl<'a> FixedLoad<'a> {
    /// Fixed figures.
    pub fn new(outstanding: &'a [usize], tick: usize, random: u64) -> Self {
        FixedLoad {
            outstanding,
            tick,
            random,
        }
    }
}

impl Load for FixedLoad<'_> {
    fn outstanding(&self, node: NodeId) -> usize {
        self.outstanding.get(node).copied().unwrap_or(0)
    }
    fn tick(&self) -> usize {
        self.tick
    }
    fn random(&self) -> u64 {
        self.random
    }
}

/// The outcome of routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run on the primary (waiting for one if none is known).
    Primary,
    /// Run on this node.
    Node(NodeId),
    /// The request must run on a standby and none is eligible.
    NoStandby,
}

impl Decision {
    /// Where to get a connection; `None` when no node may serve the request.
    pub fn target(self) -> Option<Target> {
        match self {
            Decision::Primary => Some(Target::Primary),
            Decision::Node(n) => Some(Target::Node(n)),
            Decision::NoStandby => None,
        }
    }
}

/// Why a decision was made, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A write or a transaction.
    Write,
    /// Forced to the primary by a hint or a default route.
    Forced,
    /// A read that found an eligible node.
    Read,
    /// A read that fell back to the primary: no standby eligible.
    Fallback,
    /// A read that went to the primary because no standby had replayed the session's writes.
    Causal,
}

/// Decides where a request goes.
///
/// `tick` and `random` feed the round-robin and random strategies; `outstanding[n]` is the
/// number of requests in flight on node `n`.
pub fn route(
    class: Class,
    ctx: &RouteContext<'_>,
    topology: &Topology,
    policy: &Policy,
    load: &impl Load,
) -> (Decision, Reason) {
    let wants_standby = match (class, ctx.route) {
        (_, Some(Route::Primary)) => return (Decision::Primary, Reason::Forced),
        (Class::Write, _) => return (Decision::Primary, Reason::Write),
        (Class::ReadOnlyBegin, None | Some(Route::Auto))
            if policy.read_only_transactions == ReadOnlyTransactions::Primary =>
        {
            return (Decision::Primary, Reason::Write)
        }
        (_, Some(Route::Standby)) => true,
        (Class::ReadOnlyBegin, _) => true,
        (Class::Read, _) => false,
    };
    let mut candidates: smallvec::SmallVec<[balance::Candidate; 8]> = smallvec::SmallVec::new();
    let mut causal_block = false;
    for n in topology.nodes.iter().filter(|n| may_read(n, ctx)) {
        if let Some(min) = ctx.min_lsn {
            if n.lsn.is_none_or(|l| l < min) {
                causal_block = true;
                continue;
            }
        }
        candidates.push(balance::Candidate {
            node: n.id,
            weight: n.weight,
            outstanding: load.outstanding(n.id),
        });
    }
    let primary_joins = !wants_standby && policy.primary_reads == PrimaryReads::Always;
    if primary_joins {
        if let Some(p) = topology.primary.filter(|p| !ctx.excluded.contains(p)) {
            let weight = topology.nodes.get(p).map_or(0, |n| n.weight);
            if weight > 0 {
                candidates.push(balance::Candidate {
                    node: p,
                    weight,
                    outstanding: load.outstanding(p),
                });
            }
        }
    }
    if let Some(node) = balance::choose(&candidates, policy.balance, load) {
        if Some(node) == topology.primary {
            return (Decision::Primary, Reason::Read);
        }
        return (Decision::Node(node), Reason::Read);
    }
    // Nothing eligible.
    let reason = if causal_block {
        Reason::Causal
    } else {
        Reason::Fallback
    };
    if causal_block && !wants_standby {
        // Read-your-writes: the primary always has the session's writes.
        return (Decision::Primary, reason);
    }
    let may_fall_back = policy.fallback == Fallback::Primary
        && (wants_standby || policy.primary_reads != PrimaryReads::Never);
    if may_fall_back {
        (Decision::Primary, reason)
    } else {
        (Decision::NoStandby, reason)
    }
}

/// Standbys a read could go to if the session had no read-your-writes position (see
/// [`may_read`]), most replayed first as the snapshot last saw them. The session asks them for
/// their current replay position.
pub fn causal_candidates(ctx: &RouteContext<'_>, topology: &Topology) -> Vec<NodeId> {
    let mut c: Vec<(Lsn, NodeId)> = topology
        .nodes
        .iter()
        .filter(|n| may_read(n, ctx))
        .map(|n| (n.lsn.unwrap_or(Lsn::ZERO), n.id))
        .collect();
    c.sort_by_key(|&(lsn, _)| std::cmp::Reverse(lsn));
    c.into_iter().map(|(_, id)| id).collect()
}

/// Whether a read the router sent to the primary only for read-your-writes should first ask
/// the standbys for their replay position (the snapshot may be a check interval old).
pub fn asks_standbys_first(decision: Decision, reason: Reason) -> bool {
    decision == Decision::Primary && reason == Reason::Causal
}

/// The node that greets a new client (its parameters are applied there and reported back):
/// the primary; with `standby_ok` (transaction pooling, during a failover) a standby that may
/// serve reads when no primary is known, so that new clients still get in and can read.
pub fn welcome_node(topology: &Topology, standby_ok: bool) -> Option<NodeId> {
    let ctx = RouteContext::default();
    topology.primary.or_else(|| {
        topology
            .nodes
            .iter()
            .find(|n| standby_ok && may_read(n, &ctx))
            .map(|n| n.id)
    })
}

#[cfg(test)]
mod tests;
