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
pub mod functions;
pub mod lexer;

use std::time::Duration;

use crate::config::{Fallback, PrimaryReads, ReadOnlyTransactions, Route};
use crate::protocol::Lsn;
use crate::topology::{NodeId, Role, Topology};

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
    /// Read weight of each node (0: never reads).
    pub weights: Vec<u32>,
}

/// The session's routing state for one request.
#[derive(Debug, Clone, Default)]
pub struct RouteContext {
    /// `auto`, or forced to the primary / to standbys (user or database default, the
    /// read-only database alias, `SET causeway.route`, a `/* causeway:... */` hint).
    pub route: Option<Route>,
    /// A stricter (or looser) lag limit for this request (`SET causeway.max_lag`,
    /// `/* causeway:max_lag=... */`); `None` uses the watcher's verdict.
    pub max_lag: Option<Duration>,
    /// Read-your-writes: a standby must have replayed at least this position.
    pub min_lsn: Option<Lsn>,
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
    ctx: &RouteContext,
    topology: &Topology,
    policy: &Policy,
    outstanding: &[usize],
    tick: usize,
    random: u64,
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
    for n in &topology.nodes {
        let weight = policy.weights.get(n.id).copied().unwrap_or(1);
        if weight == 0 || !n.healthy || n.role != Role::Standby || n.fenced {
            continue;
        }
        let within = match ctx.max_lag {
            None => n.within_lag,
            Some(limit) => n.lag.is_some_and(|l| l <= limit),
        };
        if !within {
            continue;
        }
        if let Some(min) = ctx.min_lsn {
            if n.lsn.is_none_or(|l| l < min) {
                causal_block = true;
                continue;
            }
        }
        candidates.push(balance::Candidate {
            node: n.id,
            weight,
            outstanding: outstanding.get(n.id).copied().unwrap_or(0),
        });
    }
    let primary_joins = !wants_standby && policy.primary_reads == PrimaryReads::Always;
    if primary_joins {
        if let Some(p) = topology.primary {
            let weight = policy.weights.get(p).copied().unwrap_or(1);
            if weight > 0 {
                candidates.push(balance::Candidate {
                    node: p,
                    weight,
                    outstanding: outstanding.get(p).copied().unwrap_or(0),
                });
            }
        }
    }
    if let Some(node) = balance::choose(&candidates, policy.balance, tick, random) {
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

/// Standbys a read could go to if the session had no read-your-writes position (healthy, in
/// recovery, within the lag limits, weight above zero), most replayed first as the snapshot
/// last saw them. The session asks them for their current replay position.
pub fn causal_candidates(ctx: &RouteContext, topology: &Topology, policy: &Policy) -> Vec<usize> {
    let mut c: Vec<(Lsn, usize)> = topology
        .nodes
        .iter()
        .filter(|n| {
            policy.weights.get(n.id).copied().unwrap_or(1) > 0
                && n.healthy
                && n.role == Role::Standby
                && match ctx.max_lag {
                    None => n.within_lag,
                    Some(limit) => n.lag.is_some_and(|l| l <= limit),
                }
        })
        .map(|n| (n.lsn.unwrap_or(Lsn::ZERO), n.id))
        .collect();
    c.sort_by_key(|&(lsn, _)| std::cmp::Reverse(lsn));
    c.into_iter().map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests;
