//! What the router learns from the requests it routes: statements a standby refused as writes
//! (misroute self-healing), requests in flight per node (least-outstanding balancing), and a
//! tick for round robin. Shared by every session of the proxy; no I/O.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Most statements remembered as writes; beyond it the set starts over (they are learned
/// again by the next misroute).
const MAX_LEARNED_WRITES: usize = 10_000;

/// Routing feedback shared by the sessions.
#[derive(Debug)]
pub struct Feedback {
    /// Statements a standby refused as writes, by text hash: they go straight to the primary
    /// from then on.
    learned_writes: Mutex<HashSet<u64>>,
    /// Whether `learned_writes` holds anything: the common case (nothing learned) then costs
    /// every request one relaxed load instead of a shared lock.
    any_learned: AtomicBool,
    /// Requests in flight per node.
    outstanding: Vec<AtomicUsize>,
    /// Advances on every routing decision (round robin, tie-breaking).
    tick: AtomicUsize,
}

/// Counts a request in flight on a node until dropped.
#[derive(Debug)]
pub struct InFlight {
    /// Whose count this is.
    feedback: Arc<Feedback>,
    /// The node.
    node: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.feedback.outstanding[self.node].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Feedback {
    /// Feedback for `nodes` nodes.
    pub fn new(nodes: usize) -> Feedback {
        Feedback {
            learned_writes: Mutex::new(HashSet::new()),
            any_learned: AtomicBool::new(false),
            outstanding: (0..nodes).map(|_| AtomicUsize::new(0)).collect(),
            tick: AtomicUsize::new(0),
        }
    }

    /// Whether a statement text was learned to be a write.
    pub fn is_learned_write(&self, key: u64) -> bool {
        self.any_learned.load(Ordering::Relaxed) && self.learned_writes.lock().contains(&key)
    }

    /// Remembers a statement text as a write.
    pub fn learn_write(&self, key: u64) {
        let mut set = self.learned_writes.lock();
        if set.len() >= MAX_LEARNED_WRITES {
            set.clear();
        }
        set.insert(key);
        self.any_learned.store(true, Ordering::Relaxed);
    }

    /// Counts a request in flight on `node` until the guard is dropped.
    pub fn in_flight(self: &Arc<Self>, node: usize) -> InFlight {
        self.outstanding[node].fetch_add(1, Ordering::Relaxed);
        InFlight {
            feedback: self.clone(),
            node,
        }
    }
}

impl super::Load for Feedback {
    fn outstanding(&self, node: usize) -> usize {
        self.outstanding
            .get(node)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    fn tick(&self) -> usize {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    fn random(&self) -> u64 {
        rand::random()
    }
}
