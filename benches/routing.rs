//! Micro-benchmarks of the per-request decisions: statement classification and routing.
//!
//! ```sh
//! cargo bench --bench routing
//! ```
//!
//! Today the router sends everything to the primary, so only the topology lookup a session does
//! per request is measured (`ArcSwap` load + `router::resolve`).
//!
//! PLACE FOR CLASSIFICATION AND ROUTING BENCHMARKS: when read/write splitting lands, add here
//! (one function per step, each added to `criterion_group!` below, each with
//! `Throughput::Elements(1)` so criterion reports the rate per statement):
//! - `classify_*`: the classifier over the statements of `STATEMENTS` below (pgbench's and a few
//!   harder ones: CTEs with writes, `SELECT ... FOR UPDATE`, volatile function calls), simple
//!   Query text and Parse text alike;
//! - `route_*`: the full decision for a classified statement with a realistic session state
//!   (in/out of a transaction, after a write with read-your-writes) over a 3-node topology
//!   with lag figures.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use causeway::router::{resolve, Target};
use causeway::topology::{NodeState, Role, Topology, TopologyHandle};

/// Statements the classifier benchmarks will use (pgbench's built-in scripts plus cases a
/// classifier must not get wrong). Unused until classification exists.
#[allow(dead_code)]
const STATEMENTS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "BEGIN",
    "END",
    "WITH moved AS (DELETE FROM queue RETURNING *) SELECT count(*) FROM moved",
    "SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
    "SELECT nextval('orders_id_seq')",
];

/// A healthy primary and two healthy standbys.
fn three_nodes() -> Topology {
    let nodes = (0..3)
        .map(|id| NodeState {
            id,
            addr: format!("127.0.0.1:{}", 5432 + id),
            role: if id == 0 {
                Role::Primary
            } else {
                Role::Standby
            },
            healthy: true,
            lsn: Some(0x3000_0000),
        })
        .collect::<Vec<_>>();
    Topology {
        epoch: 1,
        primary: Topology::derive_primary(&nodes),
        nodes,
    }
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    let handle = Arc::new(TopologyHandle::new(three_nodes()));
    g.bench_function("load_topology_and_resolve_primary", |b| {
        b.iter(|| {
            let topology = handle.load();
            black_box(resolve(black_box(Target::Primary), &topology))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
