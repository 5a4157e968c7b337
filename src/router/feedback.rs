//! What the router learns from the requests it routes: statements a standby refused as writes
//! (misroute self-healing), requests in flight per node (least-outstanding balancing), reads
//! and writes served per node (`SHOW NODES`, `/metrics`), and a tick for round robin. Shared
//! by every session of the proxy; no I/O.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// What is counted per node, by node id.
    nodes: Vec<NodeLoad>,
    /// Advances on every routing decision (round robin, tie-breaking).
    tick: AtomicUsize,
}

/// The counters of one node. Relaxed atomics: each is a count read on its own (balancing,
/// `SHOW NODES`, a scrape), never in step with another.
#[derive(Debug, Default)]
struct NodeLoad {
    /// Requests in flight.
    outstanding: AtomicUsize,
    /// Requests sent here that the classifier called reads, since start.
    reads: AtomicU64,
    /// Requests sent here that the classifier called writes, since start.
    writes: AtomicU64,
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
        if let Some(n) = self.feedback.nodes.get(self.node) {
            n.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Feedback {
    /// Feedback for `nodes` nodes.
    pub fn new(nodes: usize) -> Feedback {
        Feedback {
            learned_writes: Mutex::new(HashSet::new()),
            any_learned: AtomicBool::new(false),
            nodes: (0..nodes).map(|_| NodeLoad::default()).collect(),
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
        if let Some(n) = self.nodes.get(node) {
            n.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            feedback: self.clone(),
            node,
        }
    }

    /// Counts a request sent to `node`, as a read or a write by its class: one relaxed
    /// increment, no lock.
    pub fn count_served(&self, node: usize, class: super::Class) {
        if let Some(n) = self.nodes.get(node) {
            let counter = match class {
                super::Class::Read | super::Class::ReadOnlyBegin => &n.reads,
                super::Class::Write => &n.writes,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads and writes sent to `node` since start (zeros for a node not counted).
    pub fn served(&self, node: usize) -> Served {
        self.nodes.get(node).map_or(Served::default(), |n| Served {
            reads: n.reads.load(Ordering::Relaxed),
            writes: n.writes.load(Ordering::Relaxed),
        })
    }
}

/// Requests one node served since start, by the classifier's verdict on each: a simple Query,
/// or an extended-protocol batch that executes something (counted when sent, inside a
/// transaction as well).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests whose statements are all reads (`Class::Read`, a read-only `BEGIN`).
    pub reads: u64,
    /// The others (`Class::Write`: a write, a transaction's start, or unsure).
    pub writes: u64,
}

impl super::Load for Feedback {
    fn outstanding(&self, node: usize) -> usize {
        self.nodes
            .get(node)
            .map_or(0, |n| n.outstanding.load(Ordering::Relaxed))
    }

    fn tick(&self) -> usize {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    fn random(&self) -> u64 {
        rand::random()
    }
}
