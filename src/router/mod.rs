//! Routing decisions: where a request goes. Pure functions over the request, the session's
//! state and the topology snapshot; no I/O.
//!
//! Until read/write splitting lands, every request goes to the primary.

pub mod classify;
pub mod lexer;

use crate::topology::NodeId;

/// Where a request must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The node that takes writes.
    Primary,
}

/// The node a target resolves to right now, if any.
pub fn resolve(target: Target, topology: &crate::topology::Topology) -> Option<NodeId> {
    match target {
        Target::Primary => topology.primary,
    }
}
