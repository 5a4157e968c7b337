//! The watcher's aggregator, driven by hand: observations, reloads, Patroni verdicts.

use super::*;

fn settings(n: usize) -> WatcherSettings {
    WatcherSettings {
        nodes: (0..n)
            .map(|i| NodeSpec {
                host: "127.0.0.1".to_owned(),
                port: 5432 + i as u16,
                weight: 1,
            })
            .collect(),
        user: "m".into(),
        password: None,
        database: "postgres".into(),
        check_interval: Duration::from_millis(250),
        connect_timeout: Duration::from_secs(1),
        query_timeout: Duration::from_secs(1),
        health_threshold: 2,
        tls: Arc::new(ServerTls::disabled()),
        max_lag_bytes: Some(1000),
        max_lag: None,
        patroni: Vec::new(),
    }
}

fn agg(n: usize) -> (Aggregator, Vec<NodeState>) {
    let s = settings(n);
    let nodes = Topology::of(&s.nodes).nodes;
    (Aggregator::new(s, &nodes), nodes)
}

fn ok(node: NodeId, in_recovery: bool, lsn: u64) -> Observation {
    Observation {
        node,
        generation: 0,
        result: Ok(Probed {
            in_recovery,
            lsn: Some(Lsn::from(lsn)),
            timeline: Some(1),
            system_id: Some(7),
        }),
    }
}

#[test]
fn lagging_standby_leaves_and_returns_after_hysteresis() {
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    assert_eq!(a.apply(&mut nodes, ok(0, false, 100), t), Some(0));
    a.apply(&mut nodes, ok(1, true, 100), t);
    assert!(nodes[1].is_eligible_standby());
    // The primary moves 5000 bytes ahead; the standby stays: one late check is not enough.
    a.apply(&mut nodes, ok(0, false, 5100), t);
    a.apply(&mut nodes, ok(1, true, 100), t);
    assert_eq!(nodes[1].lag_bytes, Some(5000));
    assert!(nodes[1].is_eligible_standby());
    a.apply(&mut nodes, ok(1, true, 100), t);
    assert!(
        !nodes[1].is_eligible_standby(),
        "two late checks exclude it"
    );
    a.apply(&mut nodes, ok(1, true, 5100), t);
    assert!(!nodes[1].is_eligible_standby());
    a.apply(&mut nodes, ok(1, true, 5100), t);
    assert!(
        nodes[1].is_eligible_standby(),
        "two good checks bring it back"
    );
}

#[test]
fn a_failing_standby_becomes_ineligible() {
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    a.apply(&mut nodes, ok(0, false, 100), t);
    a.apply(&mut nodes, ok(1, true, 100), t);
    for _ in 0..2 {
        a.apply(
            &mut nodes,
            Observation {
                node: 1,
                generation: 0,
                result: Err("refused".into()),
            },
            t,
        );
    }
    assert!(!nodes[1].healthy);
    assert!(!nodes[1].is_eligible_standby());
}

#[test]
fn promotion_is_followed_at_once() {
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    a.apply(&mut nodes, ok(0, false, 100), t);
    a.apply(&mut nodes, ok(1, true, 100), t);
    // Old primary down, standby promoted.
    for _ in 0..2 {
        a.apply(
            &mut nodes,
            Observation {
                node: 0,
                generation: 0,
                result: Err("down".into()),
            },
            t,
        );
    }
    assert_eq!(a.apply(&mut nodes, ok(1, false, 200), t), Some(1));
}

fn ok_tl(node: NodeId, in_recovery: bool, lsn: u64, timeline: u32) -> Observation {
    ok_sys(node, in_recovery, lsn, timeline, 7)
}

fn ok_sys(node: NodeId, in_recovery: bool, lsn: u64, timeline: u32, sys: i64) -> Observation {
    Observation {
        node,
        generation: 0,
        result: Ok(Probed {
            in_recovery,
            lsn: Some(Lsn::from(lsn)),
            timeline: Some(timeline),
            system_id: Some(sys),
        }),
    }
}

fn down(node: NodeId) -> Observation {
    Observation {
        node,
        generation: 0,
        result: Err("down".into()),
    }
}

#[test]
fn a_rebuilt_cluster_is_served_and_its_timelines_start_over() {
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    // The old cluster (system identifier 7) after a failover: timeline 3.
    a.apply(&mut nodes, ok_sys(0, false, 100, 3, 7), t);
    a.apply(&mut nodes, ok_sys(1, true, 100, 3, 7), t);
    assert_eq!(a.apply(&mut nodes, ok_sys(0, false, 100, 3, 7), t), Some(0));
    // Restored from a backup: the old nodes go, new ones come on the same addresses, on
    // timeline 1 of a new cluster (system identifier 8).
    for _ in 0..2 {
        a.apply(&mut nodes, down(0), t);
        a.apply(&mut nodes, down(1), t);
    }
    let epoch = nodes[0].role_epoch;
    a.apply(&mut nodes, ok_sys(0, false, 50, 1, 8), t);
    assert_eq!(a.apply(&mut nodes, ok_sys(0, false, 50, 1, 8), t), Some(0));
    assert!(!nodes[0].fenced);
    assert!(
        nodes[0].role_epoch > epoch,
        "no old pooled connection reused"
    );
    a.apply(&mut nodes, ok_sys(1, true, 50, 1, 8), t);
    a.apply(&mut nodes, ok_sys(1, true, 50, 1, 8), t);
    assert!(nodes[1].is_eligible_standby());
    // A promotion in the new cluster fences its old primary as before.
    a.apply(&mut nodes, ok_sys(1, false, 60, 2, 8), t);
    assert_eq!(a.apply(&mut nodes, ok_sys(0, false, 60, 1, 8), t), Some(1));
    assert!(nodes[0].fenced);
}

#[test]
fn a_node_of_another_cluster_is_fenced_while_the_known_primary_serves() {
    let (mut a, mut nodes) = agg(3);
    let t = Instant::now();
    a.apply(&mut nodes, ok_sys(0, false, 100, 1, 7), t);
    a.apply(&mut nodes, ok_sys(0, false, 100, 1, 7), t);
    // A stray server of another cluster on a standby's address, even on a higher timeline.
    a.apply(&mut nodes, ok_sys(1, false, 100, 5, 9), t);
    a.apply(&mut nodes, ok_sys(1, false, 100, 5, 9), t);
    a.apply(&mut nodes, ok_sys(2, true, 100, 1, 9), t);
    a.apply(&mut nodes, ok_sys(2, true, 100, 1, 9), t);
    assert!(nodes[1].fenced);
    assert!(nodes[2].fenced);
    assert!(!nodes[2].is_eligible_standby());
    assert_eq!(a.apply(&mut nodes, ok_sys(0, false, 100, 1, 7), t), Some(0));
    assert!(!nodes[0].fenced);
}

#[test]
fn split_brain_goes_to_the_newer_timeline_and_fences_the_old_primary() {
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    a.apply(&mut nodes, ok_tl(0, false, 100, 1), t);
    a.apply(&mut nodes, ok_tl(1, true, 100, 1), t);
    let epoch_before = nodes[1].role_epoch;
    // Node 1 promoted while node 0 still runs as a primary.
    assert_eq!(a.apply(&mut nodes, ok_tl(1, false, 200, 2), t), Some(1));
    assert!(nodes[1].role_epoch > epoch_before);
    assert_eq!(a.apply(&mut nodes, ok_tl(0, false, 150, 1), t), Some(1));
    assert!(nodes[0].fenced);
    // The new primary goes down: the old one must not take writes again.
    for _ in 0..2 {
        a.apply(
            &mut nodes,
            Observation {
                node: 1,
                generation: 0,
                result: Err("down".into()),
            },
            t,
        );
    }
    assert_eq!(a.apply(&mut nodes, ok_tl(0, false, 150, 1), t), None);
    // Rebuilt as a standby, it is back.
    a.apply(&mut nodes, ok_tl(0, true, 150, 2), t);
    assert!(!nodes[0].fenced);
}

#[test]
fn a_standby_on_an_older_timeline_is_fenced_until_it_follows_the_new_one() {
    let (mut a, mut nodes) = agg(3);
    let t = Instant::now();
    a.apply(&mut nodes, ok_tl(0, false, 100, 1), t);
    a.apply(&mut nodes, ok_tl(1, true, 100, 1), t);
    a.apply(&mut nodes, ok_tl(2, true, 100, 1), t);
    // Node 1 promoted; node 2 still streams from node 0.
    a.apply(&mut nodes, ok_tl(1, false, 200, 2), t);
    a.apply(&mut nodes, ok_tl(2, true, 300, 1), t);
    assert!(nodes[2].fenced);
    assert!(!nodes[2].is_eligible_standby());
    // Its WAL receiver drops (timeline unknown): still fenced.
    a.apply(
        &mut nodes,
        Observation {
            node: 2,
            generation: 0,
            result: Ok(Probed {
                in_recovery: true,
                lsn: Some(Lsn::from(300)),
                timeline: None,
                system_id: Some(7),
            }),
        },
        t,
    );
    assert!(nodes[2].fenced);
    // Re-pointed at node 1, it receives timeline 2.
    a.apply(&mut nodes, ok_tl(2, true, 300, 2), t);
    assert!(!nodes[2].fenced);
}

fn dcs(leader: Option<NodeId>, no_reads: Vec<bool>) -> Result<DcsVerdict, String> {
    Ok(DcsVerdict {
        leader,
        no_reads,
        unknown: Vec::new(),
    })
}

#[test]
fn patroni_leader_decides_writes_and_its_tags_reads() {
    let (mut a, mut nodes) = agg(3);
    let t = Instant::now();
    a.apply_dcs(dcs(Some(0), vec![false, false, true]));
    a.apply(&mut nodes, ok(0, false, 100), t);
    a.apply(&mut nodes, ok(1, true, 100), t);
    assert_eq!(a.apply(&mut nodes, ok(2, true, 100), t), Some(0));
    assert!(nodes[1].is_eligible_standby());
    assert!(!nodes[2].is_eligible_standby(), "noloadbalance: no reads");
    // Node 1 says it is a primary (same timeline), but Patroni's leader is node 0: fenced.
    assert_eq!(a.apply(&mut nodes, ok(1, false, 200), t), Some(0));
    assert!(nodes[1].fenced);
    // Patroni moves the leader key to node 1 (a switchover): it takes writes, node 0 (still
    // out of recovery for a moment) is fenced.
    a.apply_dcs(dcs(Some(1), vec![false, false, true]));
    assert_eq!(a.decide(&mut nodes), Some(1));
    assert!(nodes[0].fenced && !nodes[1].fenced);
    // A leader still in recovery is waited for, not written to.
    a.apply_dcs(dcs(Some(2), vec![false, false, false]));
    assert_eq!(a.decide(&mut nodes), None);
    a.settings.patroni = vec!["http://127.0.0.1:8008".into()];
    assert_eq!(a.role_source(), RoleSource::Patroni);
    // Patroni unreachable: the probes decide the roles alone (node 0 back in recovery,
    // node 1 the only one out of it), and the last verdict's read exclusions stay.
    a.apply_dcs(dcs(Some(1), vec![false, false, true]));
    a.apply_dcs(Err("refused".into()));
    assert_eq!(a.role_source(), RoleSource::PatroniUnreachable);
    a.apply(&mut nodes, ok(0, true, 300), t);
    assert_eq!(a.decide(&mut nodes), Some(1));
    assert!(
        nodes[2].no_reads,
        "noloadbalance is kept while Patroni is unreachable"
    );
    // Patroni answers again, without the tag: node 2's reads come back.
    a.apply_dcs(dcs(Some(1), vec![false, false, false]));
    assert_eq!(a.decide(&mut nodes), Some(1));
    assert!(!nodes[2].no_reads);
    assert_eq!(a.role_source(), RoleSource::Patroni);
}

fn spec(port: u16) -> NodeSpec {
    NodeSpec {
        host: "127.0.0.1".to_owned(),
        port,
        weight: 1,
    }
}

fn member(port: u16, role: patroni::MemberRole) -> Member {
    Member {
        name: format!("pg{port}"),
        role,
        state: "streaming".into(),
        host: "127.0.0.1".into(),
        port,
        timeline: Some(1),
        lag: Some(0),
        nofailover: false,
        noloadbalance: false,
    }
}

#[test]
fn a_reload_adds_and_removes_nodes_in_their_own_slots() {
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    a.apply(&mut nodes, ok(0, false, 100), t);
    a.apply(&mut nodes, ok(1, true, 100), t);
    // Node 5434 added: a new slot, probed, reads only after a healthy check.
    a.settings.nodes.push(spec(5434));
    let changes = a.set_configured(&mut nodes);
    assert_eq!(changes.start, vec![2]);
    assert!(changes.stop.is_empty());
    assert_eq!(nodes[2].addr, "127.0.0.1:5434");
    assert!(!nodes[2].is_eligible_standby(), "not checked yet");
    a.apply(&mut nodes, ok(2, true, 100), t);
    assert!(
        nodes[2].is_eligible_standby(),
        "reads after its first healthy check"
    );
    // Node 5433 (slot 1) removed: no reads, its probe stops, late reports are ignored.
    a.settings.nodes.remove(1);
    let changes = a.set_configured(&mut nodes);
    assert_eq!(changes.stop, vec![1]);
    assert!(nodes[1].removed && !nodes[1].is_eligible_standby());
    let late = ok(1, true, 100);
    assert_eq!(a.apply(&mut nodes, late, t), Some(0));
    assert!(
        !nodes[1].healthy,
        "a stopped probe's report changes nothing"
    );
    assert_eq!(nodes[2].id, 2, "other slots keep their ids");
    // Added again: the same slot, a new generation, checked from scratch.
    a.settings.nodes.insert(1, spec(5433));
    let changes = a.set_configured(&mut nodes);
    assert_eq!(changes.start, vec![1]);
    assert!(!nodes[1].removed && !nodes[1].healthy);
    let mut obs = ok(1, true, 100);
    obs.generation = a.slots[1].generation;
    a.apply(&mut nodes, obs.clone(), t);
    a.apply(&mut nodes, obs, t);
    assert!(nodes[1].is_eligible_standby());
    assert_eq!(nodes.len(), 3);
}

#[test]
fn removing_the_primary_leaves_no_primary() {
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    a.apply(&mut nodes, ok(0, false, 100), t);
    assert_eq!(a.apply(&mut nodes, ok(0, false, 100), t), Some(0));
    a.settings.nodes.remove(0);
    a.set_configured(&mut nodes);
    assert_eq!(a.decide(&mut nodes), None);
}

#[test]
fn patroni_members_come_and_go_without_a_reload() {
    use patroni::MemberRole::{Leader, Replica};
    let (mut a, mut nodes) = agg(2);
    let t = Instant::now();
    let members = vec![
        member(5432, Leader),
        member(5433, Replica),
        member(5440, Replica),
    ];
    let changes = a.follow_members(&mut nodes, &members);
    assert_eq!(changes.start, vec![2], "the new member gets a slot");
    assert_eq!(nodes[2].addr, "127.0.0.1:5440");
    let addrs: Vec<(String, u16)> = nodes.iter().map(|n| (n.host.clone(), n.port)).collect();
    a.apply_dcs(Ok(patroni::verdict(&members, &addrs)));
    a.apply(&mut nodes, ok(0, false, 100), t);
    for _ in 0..2 {
        a.apply(&mut nodes, ok(2, true, 100), t);
    }
    assert!(nodes[2].is_eligible_standby(), "reads once healthy");
    // It leaves the member list: one answer without it (or an unreachable Patroni) is not
    // enough; MEMBER_GONE_POLLS in a row are.
    let without = vec![member(5432, Leader), member(5433, Replica)];
    for _ in 1..MEMBER_GONE_POLLS {
        assert!(a.follow_members(&mut nodes, &without).is_empty());
    }
    a.apply_dcs(Err("unreachable".into()));
    assert!(!nodes[2].removed);
    let changes = a.follow_members(&mut nodes, &without);
    assert_eq!(changes.stop, vec![2]);
    assert!(nodes[2].removed && !nodes[2].is_eligible_standby());
    // A configured node is a seed: its absence from the member list never removes it.
    let only_leader = vec![member(5432, Leader)];
    for _ in 0..MEMBER_GONE_POLLS * 2 {
        assert!(a.follow_members(&mut nodes, &only_leader).is_empty());
    }
    assert!(!nodes[1].removed);
    // Back in the list: its old slot.
    let changes = a.follow_members(&mut nodes, &members);
    assert_eq!(changes.start, vec![2]);
    assert_eq!(nodes.len(), 3);
}
