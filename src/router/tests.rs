//! Routing decisions, one test per rule.

use std::time::Duration;

use super::*;
use crate::config::Balance;
use crate::topology::{NodeSpec, NodeState, Role};

fn node(id: NodeId, role: Role, healthy: bool, within_lag: bool, lsn: u64) -> NodeState {
    let spec = NodeSpec {
        host: format!("n{id}"),
        port: 5432,
        weight: 1,
    };
    NodeState {
        role,
        healthy,
        lsn: Some(Lsn::from(lsn)),
        timeline: Some(1),
        lag_bytes: Some(0),
        lag: Some(Duration::from_millis(if within_lag { 10 } else { 5000 })),
        within_lag,
        ..NodeState::new(id, &spec)
    }
}

fn cluster(standbys_ok: [bool; 2]) -> Topology {
    Topology {
        epoch: 1,
        nodes: vec![
            node(0, Role::Primary, true, true, 1000),
            node(1, Role::Standby, true, standbys_ok[0], 1000),
            node(2, Role::Standby, true, standbys_ok[1], 900),
        ],
        primary: Some(0),
        role_source: crate::topology::RoleSource::Probe,
    }
}

fn policy() -> Policy {
    Policy {
        primary_reads: PrimaryReads::Fallback,
        fallback: Fallback::Primary,
        read_only_transactions: ReadOnlyTransactions::Standby,
        balance: Balance::RoundRobin,
    }
}

fn decide(class: Class, ctx: &RouteContext<'_>, t: &Topology, p: &Policy) -> Decision {
    route(class, ctx, t, p, &FixedLoad::new(&[0, 0, 0], 0, 0)).0
}

#[test]
fn writes_go_to_the_primary() {
    let t = cluster([true, true]);
    assert_eq!(
        decide(Class::Write, &RouteContext::default(), &t, &policy()),
        Decision::Primary
    );
}

#[test]
fn reads_spread_over_eligible_standbys() {
    let t = cluster([true, true]);
    let p = policy();
    let picks: Vec<Decision> = (0..4)
        .map(|tick| {
            route(
                Class::Read,
                &RouteContext::default(),
                &t,
                &p,
                &FixedLoad::new(&[0, 0, 0], tick, 0),
            )
            .0
        })
        .collect();
    assert!(picks.contains(&Decision::Node(1)));
    assert!(picks.contains(&Decision::Node(2)));
    assert!(!picks.contains(&Decision::Primary));
}

#[test]
fn lagging_or_unhealthy_standbys_get_no_reads() {
    let t = cluster([false, true]);
    for tick in 0..4 {
        assert_eq!(
            route(
                Class::Read,
                &RouteContext::default(),
                &t,
                &policy(),
                &FixedLoad::new(&[0; 3], tick, 0)
            )
            .0,
            Decision::Node(2)
        );
    }
    let mut t = cluster([true, true]);
    t.nodes[1].healthy = false;
    t.nodes[2].healthy = false;
    assert_eq!(
        route(
            Class::Read,
            &RouteContext::default(),
            &t,
            &policy(),
            &FixedLoad::new(&[0; 3], 0, 0)
        ),
        (Decision::Primary, Reason::Fallback)
    );
}

#[test]
fn no_standby_follows_fallback_and_primary_reads() {
    let t = cluster([false, false]);
    let mut p = policy();
    p.fallback = Fallback::Error;
    assert_eq!(
        decide(Class::Read, &RouteContext::default(), &t, &p),
        Decision::NoStandby
    );
    let mut p = policy();
    p.primary_reads = PrimaryReads::Never;
    assert_eq!(
        decide(Class::Read, &RouteContext::default(), &t, &p),
        Decision::NoStandby
    );
    assert_eq!(
        decide(Class::Read, &RouteContext::default(), &t, &policy()),
        Decision::Primary
    );
}

#[test]
fn primary_reads_always_joins_the_balance() {
    let t = cluster([true, true]);
    let mut p = policy();
    p.primary_reads = PrimaryReads::Always;
    let picks: Vec<Decision> = (0..6)
        .map(|tick| {
            route(
                Class::Read,
                &RouteContext::default(),
                &t,
                &p,
                &FixedLoad::new(&[0; 3], tick, 0),
            )
            .0
        })
        .collect();
    assert!(picks.contains(&Decision::Primary), "{picks:?}");
}

#[test]
fn read_only_transactions_follow_the_setting() {
    let t = cluster([true, true]);
    assert!(matches!(
        decide(
            Class::ReadOnlyBegin,
            &RouteContext::default(),
            &t,
            &policy()
        ),
        Decision::Node(_)
    ));
    let mut p = policy();
    p.read_only_transactions = ReadOnlyTransactions::Primary;
    assert_eq!(
        decide(Class::ReadOnlyBegin, &RouteContext::default(), &t, &p),
        Decision::Primary
    );
}

#[test]
fn forced_routes_win() {
    let t = cluster([true, true]);
    let primary = RouteContext {
        route: Some(Route::Primary),
        ..RouteContext::default()
    };
    assert_eq!(
        decide(Class::Read, &primary, &t, &policy()),
        Decision::Primary
    );
    let standby = RouteContext {
        route: Some(Route::Standby),
        ..RouteContext::default()
    };
    assert!(matches!(
        decide(Class::Read, &standby, &t, &policy()),
        Decision::Node(_)
    ));
    // A write is never sent to a standby, whatever the session asks.
    assert_eq!(
        decide(Class::Write, &standby, &t, &policy()),
        Decision::Primary
    );
    // Forced to standbys with none eligible: fallback decides.
    let none = cluster([false, false]);
    let mut p = policy();
    p.fallback = Fallback::Error;
    assert_eq!(
        decide(Class::Read, &standby, &none, &p),
        Decision::NoStandby
    );
}

#[test]
fn per_request_max_lag_overrides_the_watcher() {
    let t = cluster([true, true]);
    let strict = RouteContext {
        max_lag: Some(Duration::from_millis(1)),
        ..RouteContext::default()
    };
    assert_eq!(
        decide(Class::Read, &strict, &t, &policy()),
        Decision::Primary
    );
    let t = cluster([false, false]);
    let loose = RouteContext {
        max_lag: Some(Duration::from_secs(10)),
        ..RouteContext::default()
    };
    assert!(matches!(
        decide(Class::Read, &loose, &t, &policy()),
        Decision::Node(_)
    ));
}

#[test]
fn min_lsn_excludes_standbys_that_have_not_replayed_it() {
    let t = cluster([true, true]);
    let ctx = RouteContext {
        min_lsn: Some(Lsn::from(950)),
        ..RouteContext::default()
    };
    for tick in 0..4 {
        assert_eq!(
            route(
                Class::Read,
                &ctx,
                &t,
                &policy(),
                &FixedLoad::new(&[0; 3], tick, 0)
            )
            .0,
            Decision::Node(1)
        );
    }
    let ctx = RouteContext {
        min_lsn: Some(Lsn::from(5000)),
        ..RouteContext::default()
    };
    assert_eq!(
        route(
            Class::Read,
            &ctx,
            &t,
            &policy(),
            &FixedLoad::new(&[0; 3], 0, 0)
        ),
        (Decision::Primary, Reason::Causal)
    );
}

#[test]
fn weight_zero_never_reads() {
    let mut t = cluster([true, true]);
    t.nodes[1].weight = 0;
    let p = policy();
    for tick in 0..4 {
        assert_eq!(
            route(
                Class::Read,
                &RouteContext::default(),
                &t,
                &p,
                &FixedLoad::new(&[0; 3], tick, 0)
            )
            .0,
            Decision::Node(2)
        );
    }
}

/// A standby still replaying a fenced former primary's timeline may be far "ahead" in WAL
/// positions that the new primary never wrote: read-your-writes must never ask it (its replay
/// position would pass any `min_lsn`, and the read would see a divergent history).
#[test]
fn read_your_writes_never_asks_a_fenced_standby() {
    let mut t = cluster([true, true]);
    // Node 2 follows the fenced old timeline, and reports a replay position past everything.
    t.nodes[2].fenced = true;
    t.nodes[2].lsn = Some(Lsn::from(1_000_000));
    let asked = causal_candidates(&RouteContext::default(), &t);
    assert_eq!(asked, vec![1], "only the unfenced standby is asked");
}

/// A node that could not give a connection for this request is passed over, and with every
/// standby passed over the read falls back as when none is eligible.
#[test]
fn excluded_nodes_are_passed_over() {
    let t = cluster([true, true]);
    let ctx = RouteContext {
        excluded: &[1],
        ..RouteContext::default()
    };
    for tick in 0..4 {
        assert_eq!(
            decide(Class::Read, &ctx, &t, &policy()),
            Decision::Node(2),
            "tick {tick}"
        );
    }
    let ctx = RouteContext {
        excluded: &[1, 2],
        ..RouteContext::default()
    };
    assert_eq!(
        route(
            Class::Read,
            &ctx,
            &t,
            &policy(),
            &FixedLoad::new(&[0; 3], 0, 0)
        ),
        (Decision::Primary, Reason::Fallback)
    );
}

/// With no primary known, a new client may be welcomed by a standby (transaction pooling),
/// never by a fenced one.
#[test]
fn the_welcome_never_comes_from_a_fenced_standby() {
    let mut t = cluster([true, true]);
    t.primary = None;
    t.nodes[0].healthy = false;
    t.nodes[1].fenced = true;
    assert_eq!(welcome_node(&t, true), Some(2));
    assert_eq!(welcome_node(&t, false), None);
    t.nodes[2].fenced = true;
    assert_eq!(welcome_node(&t, true), None);
}
