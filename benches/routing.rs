//! Micro-benchmarks of the per-request routing decision.
//!
//! ```sh
//! cargo bench --bench routing
//! ```
//!
//! Classification itself is measured in `benches/classify.rs`; this measures what a session does
//! after it: one topology snapshot load and `router::route` over a 3-node cluster (a read that
//! the balancer places, a write, and a read-your-writes read whose `min_lsn` rules a standby
//! out), plus the same after a cached classification.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use causeway::config::{Balance, Fallback, PrimaryReads, ReadOnlyTransactions};
use causeway::protocol::Lsn;
use causeway::router::classify::ClassifierCache;
use causeway::router::{route, Class, FixedLoad, Policy, RouteContext};
use causeway::topology::{NodeSpec, NodeState, Role, Topology, TopologyHandle};

/// A healthy primary and two healthy standbys within the lag limits.
fn three_nodes() -> Topology {
    let nodes = (0..3)
        .map(|id| NodeState {
            role: if id == 0 {
                Role::Primary
            } else {
                Role::Standby
            },
            healthy: true,
            lsn: Some(Lsn::from(0x3000_0000 - id as u64 * 100)),
            timeline: Some(1),
            lag_bytes: Some(id as u64 * 100),
            lag: Some(Duration::from_millis(id as u64 * 5)),
            within_lag: true,
            ..NodeState::new(
                id,
                &NodeSpec {
                    host: "127.0.0.1".to_owned(),
                    port: 5432 + id as u16,
                    weight: 1,
                },
            )
        })
        .collect::<Vec<_>>();
    Topology {
        epoch: 1,
        primary: Topology::derive_primary(&nodes),
        nodes,
        role_source: causeway::topology::RoleSource::Probe,
    }
}

fn policy() -> Policy {
    Policy {
        primary_reads: PrimaryReads::Fallback,
        fallback: Fallback::Primary,
        read_only_transactions: ReadOnlyTransactions::Standby,
        balance: Balance::LeastOutstanding,
    }
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    let handle = Arc::new(TopologyHandle::new(three_nodes()));
    let policy = policy();
    let outstanding = [0usize, 2, 1];
    let plain = RouteContext::default();
    let causal = RouteContext {
        min_lsn: Some(Lsn::from(0x3000_0000 - 50)),
        ..RouteContext::default()
    };
    let mut tick = 0usize;
    g.bench_function("read_least_outstanding", |b| {
        b.iter(|| {
            tick += 1;
            let t = handle.load();
            black_box(route(
                Class::Read,
                &plain,
                &t,
                &policy,
                &FixedLoad::new(&outstanding, tick, 0),
            ))
        })
    });
    g.bench_function("write", |b| {
        b.iter(|| {
            let t = handle.load();
            black_box(route(
                Class::Write,
                &plain,
                &t,
                &policy,
                &FixedLoad::new(&outstanding, 0, 0),
            ))
        })
    });
    g.bench_function("read_with_min_lsn", |b| {
        b.iter(|| {
            let t = handle.load();
            black_box(route(
                Class::Read,
                &causal,
                &t,
                &policy,
                &FixedLoad::new(&outstanding, 0, 0),
            ))
        })
    });
    let cache = ClassifierCache::default();
    let sql: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    cache.analyze(sql);
    g.bench_function("cached_classify_then_route", |b| {
        b.iter(|| {
            let a = cache.analyze(black_box(sql));
            let class = if a.route().needs_primary() {
                Class::Write
            } else {
                Class::Read
            };
            let t = handle.load();
            black_box(route(
                class,
                &plain,
                &t,
                &policy,
                &FixedLoad::new(&outstanding, 0, 0),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
