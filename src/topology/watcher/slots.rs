//! The aggregator's node slots: the node list a reload or Patroni's member list changes,
//! kept append-only so a `NodeId` never changes meaning.

use super::*;

impl Aggregator {
    /// The aggregator for the node slots of `nodes` (the topology it starts from), all
    /// configured.
    pub(super) fn new(settings: WatcherSettings, nodes: &[NodeState]) -> Aggregator {
        let threshold = settings.health_threshold;
        Aggregator {
            settings,
            tracks: nodes.iter().map(|_| Track::new(threshold)).collect(),
            slots: nodes
                .iter()
                .map(|_| Slot {
                    source: Source::Configured,
                    generation: 0,
                    absent: 0,
                })
                .collect(),
            history: LsnHistory::default(),
            history_of: None,
            highest_timeline: None,
            system_id: None,
            dcs: None,
            kept_no_reads: None,
            members: Vec::new(),
            unknown_logged: Vec::new(),
        }
    }

    /// Makes the live nodes match the configured list (a reload): new addresses are added,
    /// weights follow, configured nodes no longer listed are removed (or, while Patroni lists
    /// them as members, kept as Patroni's).
    pub(super) fn set_configured(&mut self, nodes: &mut Vec<NodeState>) -> SlotChanges {
        let mut changes = SlotChanges::default();
        let specs = self.settings.nodes.clone();
        for spec in &specs {
            if let Some(id) = self.add_node(nodes, spec, Source::Configured) {
                changes.start.push(id);
            }
        }
        for id in 0..nodes.len() {
            let n = &nodes[id];
            if n.removed
                || self.slots[id].source != Source::Configured
                || specs.iter().any(|s| s.is_at(&n.host, n.port))
            {
                continue;
            }
            let member = self.dcs.is_some()
                && self
                    .members
                    .iter()
                    .any(|(h, p)| *h == n.host && *p == n.port);
            if member {
                tracing::info!(node = %n.addr, "node {} left [[nodes]] but is a Patroni member: kept while it is one", n.addr);
                self.slots[id].source = Source::Patroni;
                self.slots[id].absent = 0;
            } else {
                tracing::info!(node = %n.addr, "node {} removed from [[nodes]]: no new traffic; its connections close as their clients finish", n.addr);
                self.remove_node(nodes, id);
                changes.stop.push(id);
            }
        }
        changes
    }

    /// Follows Patroni's member list: a member that is no node yet is added; a node Patroni
    /// brought in is removed once [`MEMBER_GONE_POLLS`] answers in a row lack it. Configured
    /// nodes stay (they are the seed list); Patroni's verdict keeps traffic off those that are
    /// not members.
    pub(super) fn follow_members(
        &mut self,
        nodes: &mut Vec<NodeState>,
        members: &[Member],
    ) -> SlotChanges {
        let mut changes = SlotChanges::default();
        self.members = members.iter().map(|m| (m.host.clone(), m.port)).collect();
        for m in members {
            let spec = NodeSpec {
                host: m.host.clone(),
                port: m.port,
                weight: 1,
            };
            if let Some(id) = self.add_node(nodes, &spec, Source::Patroni) {
                tracing::info!(node = %nodes[id].addr, member = %m.name, "Patroni member {} ({}) added as a node: reads once it is healthy", m.name, nodes[id].addr);
                changes.start.push(id);
            }
        }
        for id in 0..nodes.len() {
            if nodes[id].removed || self.slots[id].source != Source::Patroni {
                continue;
            }
            let present = members
                .iter()
                .any(|m| m.port == nodes[id].port && m.host == nodes[id].host);
            let slot = &mut self.slots[id];
            slot.absent = if present { 0 } else { slot.absent + 1 };
            if slot.absent >= MEMBER_GONE_POLLS {
                tracing::info!(node = %nodes[id].addr, "node {} is no longer a Patroni member: no new traffic; its connections close as their clients finish", nodes[id].addr);
                self.remove_node(nodes, id);
                changes.stop.push(id);
            }
        }
        changes
    }

    /// Adds the node `spec` names, from `source`: a live node of that address keeps its slot
    /// (a configured one takes the configured weight; a node Patroni brought in becomes
    /// configured), a removed one is revived in its slot, a new address gets the next slot.
    /// Returns the slot when its probe must start.
    pub(super) fn add_node(
        &mut self,
        nodes: &mut Vec<NodeState>,
        spec: &NodeSpec,
        source: Source,
    ) -> Option<NodeId> {
        if let Some(n) = nodes.iter_mut().find(|n| spec.is_at(&n.host, n.port)) {
            let id = n.id;
            if !n.removed {
                if source == Source::Configured {
                    n.weight = spec.weight;
                    self.slots[id].source = Source::Configured;
                }
                return None;
            }
            tracing::info!(node = %n.addr, "node {} added again: reads once it is healthy", n.addr);
            *n = NodeState {
                role_epoch: n.role_epoch,
                ..NodeState::new(id, spec)
            };
            self.tracks[id] = Track::new(self.settings.health_threshold);
            let slot = &mut self.slots[id];
            slot.source = source;
            slot.generation += 1;
            slot.absent = 0;
            return Some(id);
        }
        let id = nodes.len();
        if id >= MAX_NODES {
            let addr = spec.address();
            if !self.unknown_logged.contains(&addr) {
                tracing::warn!(node = %addr, "node {addr} not added: already {MAX_NODES} node slots; restart causeway to start over");
                self.unknown_logged.push(addr);
            }
            return None;
        }
        if source == Source::Configured {
            tracing::info!(node = %spec.address(), "node {} added to [[nodes]]: reads once it is healthy", spec.address());
        }
        nodes.push(NodeState::new(id, spec));
        self.tracks.push(Track::new(self.settings.health_threshold));
        self.slots.push(Slot {
            source,
            generation: 0,
            absent: 0,
        });
        Some(id)
    }

    /// Marks node `id` removed: unhealthy, unknown role, no reads, never the primary; a later
    /// report of its probe is ignored.
    pub(super) fn remove_node(&mut self, nodes: &mut [NodeState], id: NodeId) {
        let n = &mut nodes[id];
        n.removed = true;
        n.healthy = false;
        n.role = Role::Unknown;
        n.within_lag = false;
        n.lag_bytes = None;
        n.lag = None;
        // `role_epoch` stays: a session in a transaction there must finish it (a higher epoch
        // would make it drop the connection); the retired pools reuse nothing.
        self.slots[id].generation += 1;
        if self.history_of == Some(id) {
            self.history.clear();
            self.history_of = None;
        }
    }
}
