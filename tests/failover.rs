//! Failover (SPEC section 4, issue 4) against real clusters: the primary crashes and a standby
//! is promoted, a standby is promoted while the old primary still runs (split brain), the old
//! primary rejoins as a standby, a standby is black-holed.
//!
//! Every test here kills or promotes nodes, so each starts its own cluster (dropped, i.e.
//! stopped and removed, when the test ends, also when it fails; the harness's guardian covers
//! a killed test process) and they run one at a time: timing assertions must not compete with
//! another test's initdb on a 2-core machine.
//!
//! The assertions are what a user would check: which server answered (`inet_server_port()`,
//! `pg_is_in_recovery()`), that no committed row is lost, and the SQLSTATE of an error.
mod common;
#[path = "common/relay.rs"]
mod relay;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use causeway::cluster::{self, ClusterOptions, LocalCluster, StopMode};
use tokio::time::Instant;
use tokio_postgres::SimpleQueryMessage;

/// How often the proxy checks each node in these tests.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// One test at a time (see the module documentation). An async mutex: the guard is held
/// across the whole test, and a failed test does not poison it.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Runs a blocking cluster operation off the runtime's threads, so the proxy under test keeps
/// running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A cluster of its own: primary (node 0) and `standbys` standbys, with table `t`.
async fn own_cluster(standbys: usize) -> Arc<LocalCluster> {
    let c = blocking(move || {
        LocalCluster::start(ClusterOptions {
            standbys,
            max_connections: 120,
            ..ClusterOptions::default()
        })
        .expect("start a cluster")
    })
    .await;
    let c = Arc::new(c);
    let c2 = c.clone();
    blocking(move || {
        c2.psql(
            0,
            "CREATE TABLE t (id bigserial PRIMARY KEY, tag text NOT NULL, port int NOT NULL); \
             GRANT ALL ON t, t_id_seq TO app",
        )
        .expect("create table");
        c2.wait_caught_up(Duration::from_secs(30))
            .expect("standbys catch up");
    })
    .await;
    c
}

/// A proxy configuration over `addrs` (`host:port` each; a relay's address may stand in for a
/// node) with read/write splitting, eventual consistency (so reads spread over the standbys
/// whatever the client wrote before) and the given extra `[routing]` / `[monitor]` lines.
fn config(c: &LocalCluster, addrs: &[String], routing: &str, monitor: &str) -> String {
    let mut nodes = String::new();
    for a in addrs {
        nodes.push_str(&format!("[[nodes]]\naddress = \"{a}\"\n"));
    }
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[routing]
check_interval = "{check}ms"
consistency = "eventual"
max_lag = "0"
max_lag_bytes = 0
{routing}

[monitor]
user = "{monitor_user}"
password = "{monitor_password}"
{monitor}

{nodes}
[[users]]
name = "{app}"
password = "{app_password}"

[[users]]
name = "{su}"
password = "{su_password}"
pool_mode = "session"
"#,
        check = CHECK_INTERVAL.as_millis(),
        monitor_user = cluster::MONITOR_USER,
        monitor_password = cluster::MONITOR_PASSWORD,
        app = cluster::APP_USER,
        app_password = cluster::APP_PASSWORD,
        su = cluster::SUPERUSER,
        su_password = c.superuser_password(),
    )
}

/// `127.0.0.1:<port>` of every node of `c`.
fn node_addrs(c: &LocalCluster) -> Vec<String> {
    (0..c.node_count())
        .map(|n| format!("127.0.0.1:{}", c.port(n).unwrap()))
        .collect()
}

/// The first row of a simple query's result, as text.
async fn row(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok((0..r.len())
                .map(|i| r.get(i).unwrap_or("").to_owned())
                .collect());
        }
    }
    Ok(Vec::new())
}

/// Where a statement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answered {
    port: u16,
    in_recovery: bool,
}

fn answered(cols: &[String]) -> Answered {
    Answered {
        port: cols[0].parse().expect("a port"),
        in_recovery: cols[1] == "t",
    }
}

/// Inserts one row tagged `tag` and says which server took it.
async fn write(
    client: &tokio_postgres::Client,
    tag: &str,
) -> Result<Answered, tokio_postgres::Error> {
    let cols = row(
        client,
        &format!(
            "INSERT INTO t (tag, port) VALUES ('{tag}', inet_server_port()) \
             RETURNING inet_server_port(), pg_is_in_recovery()"
        ),
    )
    .await?;
    Ok(answered(&cols))
}

/// A plain read; says which server answered.
async fn read(client: &tokio_postgres::Client) -> Result<Answered, tokio_postgres::Error> {
    Ok(answered(
        &row(client, "SELECT inet_server_port(), pg_is_in_recovery()").await?,
    ))
}

/// Rows tagged `tag` on node `n`, asked directly (not through the proxy).
async fn count_direct(c: &Arc<LocalCluster>, n: usize, tag_like: &str) -> i64 {
    let c = c.clone();
    let sql = format!("SELECT count(*) FROM t WHERE tag LIKE '{tag_like}'");
    blocking(move || c.psql(n, &sql).expect("count rows"))
        .await
        .parse()
        .unwrap()
}

/// The proxy's current primary, as a node index.
fn proxy_primary(p: &common::Proxy) -> Option<usize> {
    p.app.topology().load().primary
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns how long it
/// took, or `None`.
async fn time_until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `causeway_failovers_total` as `/metrics` reports it.
fn failovers(p: &common::Proxy) -> u64 {
    p.app
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("causeway_failovers_total "))
        .and_then(|v| v.parse().ok())
        .expect("causeway_failovers_total in /metrics")
}

/// The primary crashes (immediate stop) and node 1 is promoted. Meanwhile: a write issued
/// while there is no primary waits and succeeds once the promotion happens; 50 clients that
/// were idle through it all run their next write on the new primary without reconnecting; a
/// client that was inside a transaction loses that transaction only; no committed row is lost.
/// `causeway_failovers_total` counts the promotion once (finding the first primary is not one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_crash_and_promotion() {
    let _serial = serial().await;
    let c = own_cluster(2).await;
    let proxy =
        common::start_proxy_from(config(&c, &node_addrs(&c), "primary_wait = \"20s\"", "")).await;
    let (old_port, new_port) = (c.port(0).unwrap(), c.port(1).unwrap());
    assert_eq!(failovers(&proxy), 0);

    // 50 clients, each writes once (on the old primary) and then stays idle.
    let mut idle = Vec::new();
    for i in 0..50 {
        let client = proxy.connect().await;
        let a = write(&client, &format!("before-{i}")).await.unwrap();
        assert_eq!(a.port, old_port);
        idle.push(client);
    }
    // A client inside a transaction on the old primary.
    let in_tx = proxy.connect().await;
    in_tx
        .batch_execute("BEGIN; INSERT INTO t (tag, port) VALUES ('lost-tx', 0)")
        .await
        .unwrap();
    // Everything committed so far is on the standbys too: a crash must not lose it.
    let c2 = c.clone();
    blocking(move || c2.wait_caught_up(Duration::from_secs(30)).unwrap()).await;

    let c2 = c.clone();
    blocking(move || c2.stop(0, StopMode::Immediate).unwrap()).await;
    // A write issued right after the crash, before any promotion: it must wait.
    // New clients get in during the gap (their welcome comes from a standby).
    let waiter_client = tokio::time::timeout(Duration::from_secs(5), proxy.connect())
        .await
        .expect("a new client gets in while there is no primary");
    let waiter = tokio::spawn(async move {
        let r = write(&waiter_client, "waited").await;
        (r, Instant::now())
    });
    // Reads keep going to the standbys meanwhile.
    let reader = tokio::time::timeout(Duration::from_secs(5), proxy.connect())
        .await
        .expect("a new client gets in while there is no primary");
    let r = tokio::time::timeout(Duration::from_secs(5), read(&reader))
        .await
        .expect("a read during the gap does not hang")
        .expect("a read during the gap succeeds");
    assert!(r.in_recovery, "read during the gap answered by a standby");
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            proxy_primary(&proxy).is_none()
        })
        .await,
        "the proxy notices the primary is gone"
    );
    assert!(!waiter.is_finished(), "the write waits for a primary");

    let c2 = c.clone();
    let promoted_at = blocking(move || {
        c2.promote(1).unwrap();
        Instant::now()
    })
    .await;

    // The waiting write lands on the new primary.
    let (r, done_at) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiting write finishes")
        .unwrap();
    let a = r.expect("the write that waited through the failover succeeds");
    assert_eq!(
        a,
        Answered {
            port: new_port,
            in_recovery: false
        }
    );
    let waited_after_promotion = done_at.saturating_duration_since(promoted_at);
    assert!(
        waited_after_promotion <= Duration::from_secs(2),
        "the waiting write finished {waited_after_promotion:?} after pg_promote() returned"
    );
    // A new client's write goes there too.
    let fresh = proxy.connect().await;
    let a = write(&fresh, "fresh").await.unwrap();
    assert_eq!(a.port, new_port);
    assert_eq!(failovers(&proxy), 1, "the promotion is one failover");

    // Every idle client: its next write works, on the new primary, same connection.
    let results = futures_util::future::join_all(
        idle.iter()
            .enumerate()
            .map(|(i, client)| async move { write(client, &format!("after-{i}")).await }),
    )
    .await;
    for (i, r) in results.into_iter().enumerate() {
        let a = r.unwrap_or_else(|e| panic!("idle client {i}: next write failed: {e:?}"));
        assert_eq!(a.port, new_port, "idle client {i} wrote to the new primary");
        assert!(!a.in_recovery);
    }
    assert!(
        idle.iter().all(|c| !c.is_closed()),
        "no client was disconnected"
    );

    // The client whose transaction died with the primary: that transaction fails, the next one
    // works on the new primary.
    let e = in_tx
        .batch_execute("COMMIT")
        .await
        .expect_err("a transaction on the crashed primary cannot commit");
    assert!(
        matches!(
            common::sqlstate(&e),
            Some("08006" | "57P01" | "57P02" | "08003")
        ),
        "transaction lost with the primary: {e:?}"
    );
    let a = write(&in_tx, "after-tx").await.unwrap();
    assert_eq!(a.port, new_port);

    // No committed row lost; the uncommitted one is gone.
    assert_eq!(count_direct(&c, 1, "before-%").await, 50);
    assert_eq!(count_direct(&c, 1, "after-%").await, 51);
    assert_eq!(count_direct(&c, 1, "waited").await, 1);
    assert_eq!(count_direct(&c, 1, "lost-tx").await, 0);
    proxy.app.shutdown(Duration::from_secs(2)).await;
}

/// The primary crashes and nobody promotes: a write waits `primary_wait`, then fails with
/// SQLSTATE 57P03 and a message saying no primary is available. Reads keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_promotion_fails_after_primary_wait() {
    let _serial = serial().await;
    let c = own_cluster(1).await;
    let primary_wait = Duration::from_millis(1500);
    let proxy = common::start_proxy_from(config(
        &c,
        &node_addrs(&c),
        &format!("primary_wait = \"{}ms\"", primary_wait.as_millis()),
        "",
    ))
    .await;
    let client = proxy.connect().await;
    write(&client, "before").await.unwrap();

    let c2 = c.clone();
    blocking(move || c2.stop(0, StopMode::Immediate).unwrap()).await;
    // Issued at once, before the proxy may have noticed: it must not fail early with a
    // connection error either.
    let started = Instant::now();
    let e = write(&client, "never")
        .await
        .expect_err("no primary: the write fails");
    let waited = started.elapsed();
    assert_eq!(common::sqlstate(&e), Some("57P03"), "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("no primary"), "message: {message}");
    assert!(
        waited >= primary_wait && waited < primary_wait + Duration::from_secs(2),
        "failed after {waited:?}, primary_wait is {primary_wait:?}"
    );
    // Reads still go to the standby, on the same connection.
    let a = read(&client).await.unwrap();
    assert_eq!(
        a,
        Answered {
            port: c.port(1).unwrap(),
            in_recovery: true
        }
    );
    proxy.app.shutdown(Duration::from_secs(2)).await;
}

/// Split brain: node 1 is promoted while the old primary (node 0) still runs and accepts
/// writes. Once the proxy has seen the promotion, every write lands on node 1 (the newer
/// timeline), none on node 0, and node 0 gets no reads either (fenced), nor node 2, which still
/// replays node 0's timeline. Then node 0 is rewound into a standby of node 1: it rejoins the
/// read pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_then_old_primary_rejoins() {
    let _serial = serial().await;
    let c = own_cluster(2).await;
    let proxy = common::start_proxy_from(config(&c, &node_addrs(&c), "", "")).await;
    let (old_port, new_port) = (c.port(0).unwrap(), c.port(1).unwrap());

    // A steady writer from before the promotion until after the proxy followed it.
    let writer = proxy.connect().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = tokio::spawn(async move {
        let mut order = Vec::new();
        let mut i = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && i < 100_000 {
            order.push(write(&writer, &format!("steady-{i}")).await.map(|a| a.port));
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (writer, order)
    });
    // A session-pooled client (it keeps its server connection) and a client with a transaction
    // open, both on the old primary.
    let session_client = proxy
        .connect_as(cluster::SUPERUSER, c.superuser_password(), "postgres")
        .await
        .unwrap();
    assert_eq!(
        write(&session_client, "session-before").await.unwrap().port,
        old_port
    );
    let in_tx = proxy.connect().await;
    in_tx.batch_execute("BEGIN").await.unwrap();
    assert_eq!(write(&in_tx, "tx-before").await.unwrap().port, old_port);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let c2 = c.clone();
    blocking(move || c2.promote(1).unwrap()).await;
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            proxy_primary(&proxy) == Some(1)
        })
        .await,
        "the proxy follows the promotion while the old primary still runs"
    );
    let topo = proxy.app.topology().load();
    assert!(topo.nodes[0].fenced, "the old primary is fenced: {topo:?}");
    assert!(topo.nodes[1].timeline > topo.nodes[0].timeline);
    let json = causeway::admin::http::topology_json(&topo);
    assert!(
        json.contains("\"fenced\":true"),
        "/topology shows the fence: {json}"
    );
    // Connections held on the fenced node are not used again: the session-pooled client loses
    // its session (FATAL 08006), the open transaction fails; neither writes to node 0.
    let e = write(&session_client, "session-after")
        .await
        .expect_err("a session on the fenced node cannot go on");
    assert_eq!(common::sqlstate(&e), Some("08006"), "{e:?}");
    let e = write(&in_tx, "tx-after")
        .await
        .expect_err("a transaction on the fenced node cannot go on");
    assert_eq!(common::sqlstate(&e), Some("08006"), "{e:?}");
    // Until the client ends its failed transaction, nothing runs (a retry must not autocommit
    // outside it); after its ROLLBACK, the next write works on the new primary.
    let e = write(&in_tx, "tx-retry")
        .await
        .expect_err("a failed transaction block until ROLLBACK");
    assert_eq!(common::sqlstate(&e), Some("25P02"), "{e:?}");
    in_tx.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(write(&in_tx, "tx-next").await.unwrap().port, new_port);
    assert_eq!(count_direct(&c, 1, "tx-retry").await, 0, "the retry ran");
    assert_eq!(count_direct(&c, 0, "%-after").await, 0);
    // Writes after the switch: all on node 1, none on node 0 (checked on node 0 directly).
    let client = proxy.connect().await;
    for i in 0..50 {
        let a = write(&client, &format!("split-{i}")).await.unwrap();
        assert_eq!(
            a,
            Answered {
                port: new_port,
                in_recovery: false
            }
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (writer, order) = load.await.unwrap();
    // The steady writer never failed and, once it reached node 1, never went back to node 0.
    let ports: Vec<u16> = order
        .into_iter()
        .map(|r| r.expect("the steady writer's writes all succeed"))
        .collect();
    let first_new = ports
        .iter()
        .position(|&p| p == new_port)
        .expect("the steady writer reached the new primary");
    assert!(
        ports[first_new..].iter().all(|&p| p == new_port),
        "a write went back to the old primary after the switch: {ports:?}"
    );
    assert!(ports[..first_new].iter().all(|&p| p == old_port));
    assert_eq!(count_direct(&c, 0, "split-%").await, 0);
    assert_eq!(count_direct(&c, 1, "split-%").await, 50);
    // Node 2 still streams from node 0, on the old timeline: fenced too (its data may hold
    // writes the new primary never saw).
    let stale_port = c.port(2).unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            proxy.app.topology().load().nodes[2].fenced
        })
        .await,
        "the standby of the old primary is fenced"
    );
    // Reads never reach the fenced nodes.
    for _ in 0..30 {
        let a = read(&client).await.unwrap();
        assert_ne!(a.port, old_port, "a read went to the fenced old primary");
        assert_ne!(
            a.port, stale_port,
            "a read went to the old primary's standby"
        );
    }

    // Node 0 comes back as a standby of node 1 (pg_rewind): it rejoins the read pool.
    let c2 = c.clone();
    blocking(move || c2.rewind_standby(0, 1).unwrap()).await;
    let back = time_until(Duration::from_secs(15), || async {
        let topo = proxy.app.topology().load();
        !topo.nodes[0].fenced && topo.nodes[0].is_eligible_standby()
    })
    .await;
    assert!(back.is_some(), "the rewound node becomes a read standby");
    let reached = time_until(Duration::from_secs(10), || async {
        read(&client)
            .await
            .is_ok_and(|a| a.port == old_port && a.in_recovery)
    })
    .await;
    assert!(reached.is_some(), "reads reach the rejoined node again");
    // And it serves the new timeline's data: the rows written after the split.
    assert_eq!(count_direct(&c, 0, "split-%").await, 50);
    // Writes still go to node 1.
    let a = write(&writer, "after-rejoin").await.unwrap();
    assert_eq!(a.port, new_port);
    proxy.app.shutdown(Duration::from_secs(2)).await;
}

/// A standby behind a relay is black-holed (TCP stays up, nothing is answered): the watcher's
/// query timeout takes it out of the read pool within two check intervals (plus that timeout),
/// reads keep working on the other standby, and it comes back once the relay forwards again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_standby_leaves_the_read_pool() {
    let _serial = serial().await;
    let c = own_cluster(2).await;
    let relay = relay::Relay::start(([127, 0, 0, 1], c.port(2).unwrap()).into())
        .await
        .unwrap();
    let mut addrs = node_addrs(&c);
    addrs[2] = relay.addr().to_string();
    let check = CHECK_INTERVAL;
    // Connecting (SCRAM) may be slow in a debug build on a busy machine; a check on an open
    // connection is not.
    let connect_timeout = Duration::from_secs(2);
    let query_timeout = Duration::from_millis(150);
    let proxy = common::start_proxy_from(config(
        &c,
        &addrs,
        "",
        &format!(
            "connect_timeout = \"{}ms\"\nquery_timeout = \"{}ms\"",
            connect_timeout.as_millis(),
            query_timeout.as_millis()
        ),
    ))
    .await;
    let hidden_port = c.port(2).unwrap();
    // Reads reach the relayed standby while the relay forwards.
    let client = proxy.connect().await;
    let reached = time_until(Duration::from_secs(10), || async {
        read(&client).await.is_ok_and(|a| a.port == hidden_port)
    })
    .await;
    assert!(
        reached.is_some(),
        "reads reach the standby behind the relay"
    );

    relay.black_hole();
    // Two failed checks (health_threshold = 2): the check after the black hole starts within a
    // check interval and times out after query_timeout (< check_interval), the next one starts
    // a check interval later on the same connection and times out too. So: two check intervals
    // plus the query timeout, plus slack for a busy machine.
    let bound = 2 * check + query_timeout;
    let slack = Duration::from_millis(600);
    let took = time_until(bound + slack, || async {
        !proxy.app.topology().load().nodes[2].is_eligible_standby()
    })
    .await;
    let took = took.unwrap_or_else(|| {
        panic!(
            "the black-holed standby still gets reads after {:?}",
            bound + slack
        )
    });
    eprintln!("black-holed standby out of the read pool after {took:?} (bound {bound:?})");
    // From now on reads never go there (a read sent there would hang: each must answer fast).
    for i in 0..40 {
        let a = tokio::time::timeout(Duration::from_secs(2), read(&client))
            .await
            .unwrap_or_else(|_| panic!("read {i} hung (sent to the black hole?)"))
            .unwrap();
        assert_ne!(a.port, hidden_port);
    }
    // Writes are not affected.
    write(&client, "during-black-hole").await.unwrap();

    relay.restore();
    let back = time_until(Duration::from_secs(10), || async {
        read(&client).await.is_ok_and(|a| a.port == hidden_port)
    })
    .await;
    assert!(
        back.is_some(),
        "the standby returns to the read pool once it answers again"
    );
    proxy.app.shutdown(Duration::from_secs(2)).await;
}
