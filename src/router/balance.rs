//! Choosing one node among the eligible ones: least outstanding (default), round robin or
//! random, all weighted.

use crate::config::Balance;
use crate::topology::NodeId;

use super::Load;

/// An eligible node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: NodeId,
    /// Its read weight (> 0).
    pub weight: u32,
    /// Requests in flight on it.
    pub outstanding: usize,
}

/// Picks a node. `tick` advances on every call (round robin); `random` is a fresh random
/// number (random balancing, and tie-breaking for least outstanding so equal nodes share the
/// load).
pub fn choose(candidates: &[Candidate], strategy: Balance, load: &impl Load) -> Option<NodeId> {
    if candidates.is_empty() {
        return None;
    }
    if candidates.len() == 1 {
        return Some(candidates[0].node);
    }
    match strategy {
        Balance::LeastOutstanding => {
            // Lowest load per unit of weight: (outstanding + 1) / weight, compared exactly by
            // cross-multiplication. Ties are broken at random: a shared rotating tick lines
            // up with a client's own pattern (a write then a read advances it by two), which
            // would send all of that client's reads to the same node.
            let n = candidates.len();
            let start = (load.random() % n as u64) as usize;
            let mut best = candidates[start];
            for i in 1..n {
                let c = candidates[(start + i) % n];
                let lhs = (c.outstanding as u64 + 1) * best.weight as u64;
                let rhs = (best.outstanding as u64 + 1) * c.weight as u64;
                if lhs < rhs {
                    best = c;
                }
            }
            Some(best.node)
        }
        Balance::RoundRobin => pick_weighted(candidates, load.tick() as u64),
        Balance::Random => pick_weighted(candidates, load.random()),
    }
}

/// The candidate at position `x` of the weighted line (each node owns `weight` slots).
fn pick_weighted(candidates: &[Candidate], x: u64) -> Option<NodeId> {
    let total: u64 = candidates.iter().map(|c| c.weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut slot = x % total;
    for c in candidates {
        if slot < c.weight as u64 {
            return Some(c.node);
        }
        slot -= c.weight as u64;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::FixedLoad;

    fn c(node: NodeId, weight: u32, outstanding: usize) -> Candidate {
        Candidate {
            node,
            weight,
            outstanding,
        }
    }

    #[test]
    fn least_outstanding_prefers_the_idle_node_and_breaks_ties_at_random() {
        let cs = [c(1, 1, 3), c(2, 1, 0)];
        for tick in 0..4 {
            assert_eq!(
                choose(
                    &cs,
                    Balance::LeastOutstanding,
                    &FixedLoad::new(&[], tick, 0)
                ),
                Some(2)
            );
        }
        let tied = [c(1, 1, 0), c(2, 1, 0)];
        let picks: Vec<_> = (0..4)
            .map(|t| {
                choose(
                    &tied,
                    Balance::LeastOutstanding,
                    &FixedLoad::new(&[], 0, t as u64),
                )
                .unwrap()
            })
            .collect();
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    }

    #[test]
    fn least_outstanding_respects_weight() {
        // Load per unit of weight: node 1 (1+1)/1 = 2, node 2 (2+1)/2 = 1.5.
        let cs = [c(1, 1, 1), c(2, 2, 2)];
        assert_eq!(
            choose(&cs, Balance::LeastOutstanding, &FixedLoad::new(&[], 0, 0)),
            Some(2)
        );
    }

    #[test]
    fn round_robin_and_random_follow_weights() {
        let cs = [c(1, 1, 0), c(2, 3, 0)];
        let mut counts = [0usize; 3];
        for tick in 0..400 {
            counts[choose(&cs, Balance::RoundRobin, &FixedLoad::new(&[], tick, 0)).unwrap()] += 1;
        }
        assert_eq!((counts[1], counts[2]), (100, 300));
        let mut counts = [0usize; 3];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            counts[choose(&cs, Balance::Random, &FixedLoad::new(&[], 0, x)).unwrap()] += 1;
        }
        assert!(counts[2] > 2 * counts[1], "{counts:?}");
        assert_eq!(
            choose(&[], Balance::Random, &FixedLoad::new(&[], 0, 1)),
            None
        );
    }
}
