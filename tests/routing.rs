//! Read/write routing (SPEC sections 1 and 2) against a real primary and two streaming
//! standbys, through the proxy. Every assertion is about what a user can check: which node
//! answered (`inet_server_port()`), whether a row exists exactly once, which SQLSTATE came back.
//!
//! Tests run concurrently. Those that depend on both standbys being in sync take the replay lock
//! for reading; the one that pauses replay takes it for writing (and resumes replay in a guard,
//! also when it panics). Nodes are never stopped: a standby that goes down is simulated by a
//! TCP relay (`tests/common/relay.rs`) in front of it that stops listening and cuts its
//! connections.
mod common;
#[path = "common/relay.rs"]
mod relay;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use causeway::cluster::{APP_MD5_PASSWORD, APP_MD5_USER, APP_PASSWORD, APP_TRUST_USER, APP_USER};
use relay::{Mode, Relay};
use tokio::sync::{OnceCell, RwLock};
use tokio_postgres::{Client, SimpleQueryMessage};

// === fixtures ===

/// Shared by tests that need both standbys replaying; taken exclusively to pause replay.
fn replay_lock() -> &'static RwLock<()> {
    static LOCK: OnceLock<RwLock<()>> = OnceLock::new();
    LOCK.get_or_init(|| RwLock::new(()))
}

/// The cluster's nodes as the tests see them.
struct Nodes {
    primary_idx: usize,
    primary: i32,
    /// Standby node indexes, and their ports in the same order.
    standby_idx: Vec<usize>,
    standbys: Vec<i32>,
}

fn nodes() -> Nodes {
    let c = common::cluster();
    let primary_idx = c.primary().unwrap();
    let standby_idx: Vec<usize> = (0..c.node_count()).filter(|&n| n != primary_idx).collect();
    Nodes {
        primary_idx,
        primary: i32::from(c.port(primary_idx).unwrap()),
        standbys: standby_idx
            .iter()
            .map(|&n| i32::from(c.port(n).unwrap()))
            .collect(),
        standby_idx,
    }
}

/// Objects every test may use, created once on the primary and replicated.
async fn setup() {
    static ONCE: OnceCell<()> = OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let n = nodes();
        let direct = common::connect_direct(n.primary_idx).await;
        let roles = format!("{APP_USER}, {APP_MD5_USER}, {APP_TRUST_USER}");
        direct
            .batch_execute(&format!(
                r#"
create table rt_w (v int);
create table rt_lag (v int, pad text);
create sequence rt_seq;
create function rt_vol() returns int language sql volatile as 'select 1';
create view rt_port_v as select inet_server_port() as p;
create table rt_mis (tag text, port int);
create function rt_sneaky(tag text) returns int language plpgsql volatile as $$
begin
  insert into rt_mis values (tag, inet_server_port());
  return inet_server_port();
end $$;
create view rt_sneaky_v as select rt_sneaky('view') as port;
create schema rt_sp;
create table rt_sp.t as select 1 as v;
grant usage on schema rt_sp to {roles};
grant all on all tables in schema public, rt_sp to {roles};
grant all on all sequences in schema public to {roles};
"#
            ))
            .await
            .expect("create the routing tests' objects");
        direct
            .batch_execute("create database rt_db")
            .await
            .expect("create rt_db");
        common::cluster()
            .wait_caught_up(Duration::from_secs(20))
            .unwrap();
    })
    .await;
}

/// Resumes replay on a node when dropped (also during a panic): the cluster is shared.
struct ResumeReplay(usize);

impl Drop for ResumeReplay {
    fn drop(&mut self) {
        let _ = common::cluster().resume_replay(self.0);
    }
}

/// A routing configuration whose node at `from` is replaced by `to`.
fn replace_node(toml: &str, from: i32, to: u16) -> String {
    let old = format!("address = \"127.0.0.1:{from}\"");
    assert!(toml.contains(&old), "node {from} in the configuration");
    toml.replace(&old, &format!("address = \"127.0.0.1:{to}\""))
}

/// Gives the node at `port` a read weight.
fn weigh_node(toml: &str, port: i32, weight: u32) -> String {
    let old = format!("address = \"127.0.0.1:{port}\"\n");
    assert!(toml.contains(&old), "node {port} in the configuration");
    toml.replace(&old, &format!("{old}weight = {weight}\n"))
}

/// Waits until `count` standbys are eligible for reads.
async fn wait_eligible(proxy: &common::Proxy, count: usize) {
    let ok = common::eventually(Duration::from_secs(10), || async {
        proxy.app.topology().load().eligible_standbys() == count
    })
    .await;
    assert!(ok, "{count} standbys become eligible for reads");
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn misroutes(proxy: &common::Proxy) -> u64 {
    proxy.app.metrics().misroute_retries.get()
}

// === asking which node answered ===

/// First column of the first row of `sql`, simple protocol.
async fn cell(c: &Client, sql: &str) -> String {
    try_cell(c, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", show(&e)))
}

async fn try_cell(c: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row")))
}

/// The port that answered `sql` (whose first column is the port), simple protocol.
async fn port_s(c: &Client, sql: &str) -> i32 {
    cell(c, sql).await.parse().unwrap()
}

/// The same in the extended protocol (tokio-postgres prepares a named statement, then binds it).
async fn port_x(c: &Client, sql: &str) -> i32 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", show(&e)))
        .get(0)
}

/// An error with its SQLSTATE and server message.
fn show(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Counts answers per port.
#[derive(Default, Debug)]
struct Tally(BTreeMap<i32, usize>);

impl Tally {
    fn add(&mut self, port: i32) {
        *self.0.entry(port).or_default() += 1;
    }
    fn on(&self, port: i32) -> usize {
        self.0.get(&port).copied().unwrap_or(0)
    }
    fn only_on(&self, ports: &[i32]) -> bool {
        self.0.keys().all(|p| ports.contains(p))
    }
}

// === where statements go ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_reads_go_to_standbys_and_spread_over_both() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let c = proxy.connect().await;
    let reads = [
        "select inet_server_port()",
        "select inet_server_port() from (values (1)) v",
        "with x as (select 1) select inet_server_port() from x",
        "select inet_server_port(), now(), random(), clock_timestamp()",
        "select p from rt_port_v where p in (select p from rt_port_v)",
        "/* insert into rt_w values (1) */ select inet_server_port()",
        "select inet_server_port() where 'delete from rt_w' <> $$update$$",
    ];
    let mut simple = Tally::default();
    let mut extended = Tally::default();
    for sql in reads {
        for _ in 0..6 {
            simple.add(port_s(&c, sql).await);
            extended.add(port_x(&c, sql).await);
        }
    }
    // TABLE and SHOW are reads too.
    for _ in 0..6 {
        simple.add(port_s(&c, "table rt_port_v").await);
        simple.add(port_s(&c, "show port").await);
    }
    for t in [&simple, &extended] {
        assert!(t.only_on(&n.standbys), "reads only on standbys: {t:?}");
        for &s in &n.standbys {
            assert!(t.on(s) >= 10, "reads spread over both standbys: {t:?}");
        }
    }
    // A client that alternates writes and reads still reads from both standbys.
    let mut alternating = Tally::default();
    for i in 0..20 {
        c.execute("insert into rt_w values ($1)", &[&i])
            .await
            .unwrap();
        alternating.add(port_x(&c, "select inet_server_port()").await);
    }
    assert!(alternating.only_on(&n.standbys), "{alternating:?}");
    for &s in &n.standbys {
        assert!(
            alternating.on(s) >= 3,
            "reads between writes spread: {alternating:?}"
        );
    }
    assert_eq!(misroutes(&proxy), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_locking_reads_go_to_the_primary() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let c = proxy.connect().await;
    c.batch_execute("insert into rt_w values (42)")
        .await
        .unwrap();
    common::cluster()
        .wait_caught_up(Duration::from_secs(10))
        .unwrap();
    let writes = [
        "insert into rt_w values (1) returning inet_server_port()",
        "select inet_server_port() from rt_w where v = 42 for update",
        "select inet_server_port() from rt_w where v = 42 for share",
        "select inet_server_port() from rt_w where v = 42 for no key update",
        "select inet_server_port() from rt_w where v = 42 for key share",
        "select inet_server_port() from rt_w where v = 42 for update skip locked",
        "with i as (insert into rt_w values (2) returning v) select inet_server_port() from i",
        "with d as (delete from rt_w where v = 2 returning v) select inet_server_port()",
        "select inet_server_port(), nextval('rt_seq')",
        "select inet_server_port(), rt_vol()",
        "select inet_server_port(), public.rt_vol()",
        "select inet_server_port(), txid_current()",
        "select inet_server_port(), pg_advisory_xact_lock(7)",
        "select inet_server_port(), pg_notify('rt_chan', 'x')",
        "explain analyze insert into rt_w values (3)",
    ];
    for sql in writes {
        if sql.starts_with("explain") {
            // Its output is a plan; the row it wrote tells where it ran.
            c.simple_query(sql).await.unwrap();
            c.query(sql, &[]).await.unwrap();
            continue;
        }
        assert_eq!(port_s(&c, sql).await, n.primary, "{sql} (simple protocol)");
        assert_eq!(
            port_x(&c, sql).await,
            n.primary,
            "{sql} (extended protocol)"
        );
    }
    // Several statements in one Query: one write sends them all to the primary.
    assert_eq!(
        port_s(&c, "select inet_server_port(); insert into rt_w values (4)").await,
        n.primary
    );
    // SELECT INTO creates a table: on the primary.
    c.batch_execute("select inet_server_port() as p into rt_into_s")
        .await
        .unwrap();
    c.execute("select inet_server_port() as p into rt_into_x", &[])
        .await
        .unwrap();
    let direct = common::connect_direct(n.primary_idx).await;
    for t in ["rt_into_s", "rt_into_x"] {
        let p: i32 = direct
            .query_one(&format!("select p from {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(p, n.primary, "{t}");
        direct
            .batch_execute(&format!("drop table {t}"))
            .await
            .unwrap();
    }
    // Nothing above reached a standby and had to be re-run: each went straight to the primary.
    assert_eq!(misroutes(&proxy), 0, "writes are routed, not healed");

    // A write pipelined behind a read that is still running on a standby does not follow it
    // there.
    for _ in 0..3 {
        let (r, w) = tokio::join!(
            try_cell(&c, "select inet_server_port() from pg_sleep(0.2)"),
            try_cell(
                &c,
                "insert into rt_w values (10) returning inet_server_port()"
            ),
        );
        let r: i32 = r.unwrap().parse().unwrap();
        let w: i32 = w.map_err(|e| show(&e)).unwrap().parse().unwrap();
        assert!(n.standbys.contains(&r), "pipelined read on {r}");
        assert_eq!(w, n.primary, "pipelined write");
        let (w, r) = tokio::join!(
            try_cell(
                &c,
                "insert into rt_w values (11) returning inet_server_port()"
            ),
            try_cell(&c, "select inet_server_port()"),
        );
        assert_eq!(w.unwrap().parse::<i32>().unwrap(), n.primary);
        // (It may share the primary's connection: correct, if not spread.)
        r.unwrap();
    }
    assert_eq!(misroutes(&proxy), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_run_on_the_primary_unless_read_only() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let c = proxy.connect().await;
    for begin in [
        "begin",
        "start transaction",
        "begin isolation level repeatable read",
        "start transaction isolation level serializable, read write",
    ] {
        c.batch_execute(begin).await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                port_s(&c, "select inet_server_port()").await,
                n.primary,
                "{begin}"
            );
            assert_eq!(
                port_x(&c, "select inet_server_port()").await,
                n.primary,
                "{begin}"
            );
        }
        c.batch_execute("commit").await.unwrap();
    }
    // tokio-postgres' own transactions.
    let mut c = c;
    {
        let t = c.transaction().await.unwrap();
        let p: i32 = t
            .query_one("select inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(p, n.primary);
        t.commit().await.unwrap();
    }
    // Read-only transactions go to a standby and stay on it.
    let mut ro = Tally::default();
    for i in 0..8 {
        let begin = if i % 2 == 0 {
            "begin read only"
        } else {
            "start transaction isolation level repeatable read, read only"
        };
        c.batch_execute(begin).await.unwrap();
        let first = port_s(&c, "select inet_server_port()").await;
        assert_eq!(port_x(&c, "select inet_server_port()").await, first);
        assert_eq!(port_s(&c, "select inet_server_port()").await, first);
        c.batch_execute("commit").await.unwrap();
        ro.add(first);
    }
    {
        let t = c.build_transaction().read_only(true).start().await.unwrap();
        let p: i32 = t
            .query_one("select inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        ro.add(p);
        t.commit().await.unwrap();
    }
    assert!(
        ro.only_on(&n.standbys),
        "read-only transactions on standbys: {ro:?}"
    );
    // A session whose transactions are read-only by default.
    c.batch_execute("set default_transaction_read_only = on")
        .await
        .unwrap();
    c.batch_execute("begin").await.unwrap();
    let p = port_s(&c, "select inet_server_port()").await;
    c.batch_execute("commit").await.unwrap();
    assert!(
        n.standbys.contains(&p),
        "default read-only transaction on {p}"
    );
    c.batch_execute("reset default_transaction_read_only")
        .await
        .unwrap();
    c.batch_execute("begin").await.unwrap();
    assert_eq!(port_s(&c, "select inet_server_port()").await, n.primary);
    c.batch_execute("commit").await.unwrap();

    // read_only_transactions = "primary".
    let proxy = common::start_routing_proxy(
        "consistency = \"eventual\"\nread_only_transactions = \"primary\"",
        "",
    )
    .await;
    let c = proxy.connect().await;
    c.batch_execute("begin read only").await.unwrap();
    assert_eq!(port_s(&c, "select inet_server_port()").await, n.primary);
    c.batch_execute("commit").await.unwrap();
    assert!(n
        .standbys
        .contains(&port_s(&c, "select inet_server_port()").await));
}

// === hints and defaults ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_causeway_route_setting() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let c = proxy.connect().await;
    for _ in 0..5 {
        assert_eq!(
            port_s(&c, "/* causeway:primary */ select inet_server_port()").await,
            n.primary
        );
        assert_eq!(
            port_x(&c, "/* causeway:primary */ select inet_server_port()").await,
            n.primary
        );
    }
    assert_eq!(cell(&c, "show causeway.route").await, "auto");
    c.batch_execute("set causeway.route = 'primary'")
        .await
        .unwrap();
    assert_eq!(cell(&c, "show causeway.route").await, "primary");
    // The proxy's own settings answer in the extended protocol too (named statements).
    let r: String = c
        .query_one("show causeway.route", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, "primary");
    let stmt = c.prepare("show causeway.route").await.unwrap();
    for _ in 0..3 {
        let r: String = c.query_one(&stmt, &[]).await.unwrap().get(0);
        assert_eq!(r, "primary");
    }
    for _ in 0..5 {
        assert_eq!(port_s(&c, "select inet_server_port()").await, n.primary);
        assert_eq!(port_x(&c, "select inet_server_port()").await, n.primary);
    }
    c.batch_execute("set causeway.route = 'auto'")
        .await
        .unwrap();
    let mut t = Tally::default();
    for _ in 0..6 {
        t.add(port_s(&c, "select inet_server_port()").await);
    }
    assert!(t.only_on(&n.standbys), "{t:?}");
    c.batch_execute("set causeway.route = 'primary'")
        .await
        .unwrap();
    c.batch_execute("reset causeway.route").await.unwrap();
    assert!(n
        .standbys
        .contains(&port_s(&c, "select inet_server_port()").await));
    // Invalid values are refused with the documented SQLSTATE.
    let e = c
        .batch_execute("set causeway.route = 'sideways'")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), Some("22023"));

    // With the primary taking part in balancing (and weighted heavily), a standby hint or
    // setting still keeps reads on standbys; writes stay on the primary whatever is asked.
    let toml = weigh_node(
        &common::routing_config_toml("consistency = \"eventual\"\nprimary_reads = \"always\"", ""),
        n.primary,
        50,
    );
    let proxy = common::start_proxy_from(toml).await;
    wait_eligible(&proxy, 2).await;
    let c = proxy.connect().await;
    let mut auto = Tally::default();
    let mut hinted = Tally::default();
    for _ in 0..10 {
        auto.add(port_s(&c, "select inet_server_port()").await);
        hinted.add(port_s(&c, "/* causeway:standby */ select inet_server_port()").await);
        hinted.add(port_x(&c, "/* causeway:standby */ select inet_server_port()").await);
    }
    assert!(auto.on(n.primary) > 0, "the primary takes reads: {auto:?}");
    assert!(hinted.only_on(&n.standbys), "{hinted:?}");
    assert_eq!(
        port_s(
            &c,
            "/* causeway:standby */ insert into rt_w values (5) returning inet_server_port()"
        )
        .await,
        n.primary
    );
    c.batch_execute("set causeway.route = 'standby'")
        .await
        .unwrap();
    let mut forced = Tally::default();
    for _ in 0..10 {
        forced.add(port_s(&c, "select inet_server_port()").await);
        forced.add(port_x(&c, "select inet_server_port()").await);
    }
    assert!(forced.only_on(&n.standbys), "{forced:?}");
    assert_eq!(
        port_x(
            &c,
            "insert into rt_w values (6) returning inet_server_port()"
        )
        .await,
        n.primary
    );
    assert_eq!(misroutes(&proxy), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_alias_and_configured_defaults() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    // The primary takes reads (and wins them, by weight) unless a route says standby.
    let base = weigh_node(
        &common::routing_config_toml(
            "consistency = \"eventual\"\nprimary_reads = \"always\"",
            "[[databases]]\nname = \"rt_db\"\ndefault_route = \"standby\"\n",
        ),
        n.primary,
        50,
    );
    let proxy = common::start_proxy_from(base).await;
    wait_eligible(&proxy, 2).await;
    let reads = |c: Client| async move {
        let mut t = Tally::default();
        for _ in 0..8 {
            t.add(port_s(&c, "select inet_server_port()").await);
            t.add(port_x(&c, "select inet_server_port()").await);
        }
        let db = cell(&c, "select current_database()").await;
        (t, db)
    };
    let (auto, _) = reads(proxy.connect().await).await;
    assert!(auto.on(n.primary) > 0, "{auto:?}");
    let (alias, db) = reads(
        proxy
            .connect_as(APP_USER, APP_PASSWORD, "postgres_ro")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(db, "postgres", "the alias connects to the real database");
    assert!(alias.only_on(&n.standbys), "postgres_ro reads: {alias:?}");
    let (db_default, db) = reads(
        proxy
            .connect_as(APP_USER, APP_PASSWORD, "rt_db")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(db, "rt_db");
    assert!(
        db_default.only_on(&n.standbys),
        "rt_db reads: {db_default:?}"
    );
    // Through the alias, writes still reach the primary.
    let ro = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres_ro")
        .await
        .unwrap();
    assert_eq!(
        port_s(
            &ro,
            "insert into rt_w values (7) returning inet_server_port()"
        )
        .await,
        n.primary
    );

    // A user's default route (primary), which wins over the database's.
    let toml = common::routing_config_toml(
        "consistency = \"eventual\"",
        "[[databases]]\nname = \"rt_db\"\ndefault_route = \"standby\"\n",
    )
    .replace(
        "auth = \"md5\"\n",
        "auth = \"md5\"\ndefault_route = \"primary\"\n",
    );
    let proxy = common::start_proxy_from(toml).await;
    wait_eligible(&proxy, 2).await;
    for db in ["postgres", "rt_db"] {
        let c = proxy
            .connect_as(APP_MD5_USER, APP_MD5_PASSWORD, db)
            .await
            .unwrap();
        let (t, _) = reads(c).await;
        assert!(t.only_on(&[n.primary]), "{APP_MD5_USER} on {db}: {t:?}");
        let c = proxy.connect_as(APP_USER, APP_PASSWORD, db).await.unwrap();
        let (t, _) = reads(c).await;
        assert!(t.only_on(&n.standbys), "{APP_USER} on {db}: {t:?}");
    }
}

// === lag ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_standby_gets_no_reads_until_it_catches_up() {
    setup().await;
    let _g = replay_lock().write().await;
    let cluster = common::cluster();
    let n = nodes();
    let (paused_idx, paused) = (n.standby_idx[0], n.standbys[0]);
    let other = n.standbys[1];
    // Byte limit only (the time limit is exercised per session below).
    let proxy = common::start_routing_proxy(
        "consistency = \"eventual\"\nmax_lag = \"0\"\nmax_lag_bytes = 65536",
        "",
    )
    .await;
    // No limits at all: only a session's own causeway.max_lag keeps it away.
    let unlimited = common::start_routing_proxy(
        "consistency = \"eventual\"\nmax_lag = \"0\"\nmax_lag_bytes = 0",
        "",
    )
    .await;
    let c = proxy.connect().await;
    let u = unlimited.connect().await;
    let direct = common::connect_direct(n.primary_idx).await;

    let resume = ResumeReplay(paused_idx);
    cluster.pause_replay(paused_idx).unwrap();
    // About 500 kB of WAL, far beyond the 64 kB limit.
    direct
        .batch_execute(
            "insert into rt_lag select g, repeat('x', 200) from generate_series(1, 2000) g",
        )
        .await
        .unwrap();
    let paused_at = tokio::time::Instant::now();
    // Within a few check intervals (100 ms, 2 agreeing checks) the paused standby gets no reads.
    let excluded = common::eventually(Duration::from_secs(3), || async {
        let mut t = Tally::default();
        for _ in 0..6 {
            t.add(port_s(&c, "select inet_server_port()").await);
        }
        t.on(paused) == 0
    })
    .await;
    assert!(
        excluded,
        "a standby beyond max_lag_bytes stops getting reads"
    );
    eprintln!("lagging standby excluded after {:?}", paused_at.elapsed());
    let mut t = Tally::default();
    for _ in 0..20 {
        t.add(port_s(&c, "select inet_server_port()").await);
        t.add(port_x(&c, "select inet_server_port()").await);
    }
    assert!(
        t.only_on(&[other]),
        "only the replaying standby reads: {t:?}"
    );

    // Without limits the paused standby still serves reads...
    let seen = common::eventually(Duration::from_secs(3), || async {
        port_s(&u, "select inet_server_port()").await == paused
    })
    .await;
    assert!(seen, "with no lag limit the paused standby still reads");
    // ... until the session asks for fresher data, or one query does.
    direct
        .batch_execute("insert into rt_lag values (0, 'more')")
        .await
        .unwrap();
    u.batch_execute("set causeway.max_lag = '300ms'")
        .await
        .unwrap();
    assert_eq!(cell(&u, "show causeway.max_lag").await, "300ms");
    let fresh = common::eventually(Duration::from_secs(3), || async {
        let mut t = Tally::default();
        for _ in 0..6 {
            t.add(port_s(&u, "select inet_server_port()").await);
        }
        t.on(paused) == 0
    })
    .await;
    assert!(fresh, "SET causeway.max_lag keeps reads off a late standby");
    let mut t = Tally::default();
    for _ in 0..10 {
        t.add(port_x(&u, "select inet_server_port()").await);
        t.add(port_s(&u, "/* causeway:max_lag=300ms */ select inet_server_port()").await);
    }
    assert!(t.only_on(&[other]), "{t:?}");
    u.batch_execute("reset causeway.max_lag").await.unwrap();
    let mut t = Tally::default();
    for _ in 0..10 {
        t.add(port_s(&u, "/* causeway:max_lag=300ms */ select inet_server_port()").await);
    }
    assert!(t.only_on(&[other]), "the per-query hint alone: {t:?}");

    // Resume: the standby catches up and gets reads again.
    drop(resume);
    let back = common::eventually(Duration::from_secs(5), || async {
        port_s(&c, "select inet_server_port()").await == paused
    })
    .await;
    assert!(back, "the standby gets reads again after it caught up");
    // An idle primary does not make a caught-up standby look late.
    cluster.wait_caught_up(Duration::from_secs(10)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    u.batch_execute("set causeway.max_lag = '300ms'")
        .await
        .unwrap();
    let mut t = Tally::default();
    for _ in 0..10 {
        t.add(port_s(&u, "select inet_server_port()").await);
    }
    assert_eq!(t.on(paused) + t.on(other), 10, "{t:?}");
    assert!(t.on(paused) > 0, "idle primary, caught-up standby: {t:?}");
}

// === standbys that go away ===

/// Reads in a loop from `clients` connections until `stop`; every answer's port, or error.
fn spawn_readers(
    clients: Vec<Client>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Result<i32, String>>>> {
    clients
        .into_iter()
        .map(|c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = c
                        .query_one("select inet_server_port() from pg_sleep(0.02)", &[])
                        .await;
                    out.push(r.map(|r| r.get::<_, i32>(0)).map_err(|e| show(&e)));
                }
                out
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_going_down_is_dropped_without_client_errors() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let fwd = Relay::start(([127, 0, 0, 1], n.standbys[1] as u16).into())
        .await
        .unwrap();
    let toml = replace_node(
        &common::routing_config_toml("consistency = \"eventual\"", ""),
        n.standbys[1],
        fwd.port(),
    );
    let proxy = common::start_proxy_from(toml).await;
    wait_eligible(&proxy, 2).await;
    // The forwarded standby answers with its real port.
    let (kept, lost) = (n.standbys[0], n.standbys[1]);
    let first = proxy.connect().await;
    let reaches = common::eventually(Duration::from_secs(3), || async {
        port_s(&first, "select inet_server_port()").await == lost
    })
    .await;
    assert!(reaches, "reads reach the forwarded standby");
    let mut clients = vec![first];
    for _ in 0..2 {
        clients.push(proxy.connect().await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(clients, stop.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    fwd.set(Mode::Down);
    let down_at = tokio::time::Instant::now();
    let noticed = common::eventually(Duration::from_secs(3), || async {
        proxy.app.topology().load().eligible_standbys() == 1
    })
    .await;
    assert!(noticed, "the proxy notices the standby is down");
    let took = down_at.elapsed();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut t = Tally::default();
    let mut errors = Vec::new();
    for r in readers {
        for x in r.await.unwrap() {
            match x {
                Ok(p) => t.add(p),
                Err(e) => errors.push(e),
            }
        }
    }
    assert!(
        errors.is_empty(),
        "clients saw {} errors, first {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(t.on(kept) > 0, "{t:?}");
    // With 100 ms checks and 2 agreeing ones, about two intervals (plus connect time).
    assert!(took < Duration::from_secs(1), "noticed after {took:?}");
    eprintln!("down standby noticed after {took:?}; reads {t:?}");

    // It comes back: reads return to it.
    fwd.set(Mode::Pass);
    let c = proxy.connect().await;
    let back = common::eventually(Duration::from_secs(5), || async {
        port_s(&c, "select inet_server_port()").await == lost
    })
    .await;
    assert!(back, "the standby gets reads again after it recovers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_refusing_connections_at_checkout_is_routed_around() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let fwd = Relay::start(([127, 0, 0, 1], n.standbys[1] as u16).into())
        .await
        .unwrap();
    let toml = replace_node(
        &common::routing_config_toml("consistency = \"eventual\"", ""),
        n.standbys[1],
        fwd.port(),
    );
    let proxy = common::start_proxy_from(toml.clone()).await;
    // Its only standby is the forwarded one, and reads that need a standby fail without one.
    let lone = common::start_proxy_from(
        replace_node(&toml, n.standbys[0], dead_port().await)
            .replace("[routing]\n", "[routing]\nfallback = \"error\"\n"),
    )
    .await;
    wait_eligible(&proxy, 2).await;
    wait_eligible(&lone, 1).await;
    // The monitoring connections survive; new server connections fail.
    fwd.set(Mode::RefuseNew);
    let c = proxy.connect().await;
    let mut t = Tally::default();
    for _ in 0..10 {
        t.add(port_s(&c, "select inet_server_port()").await);
        t.add(port_x(&c, "select inet_server_port()").await);
    }
    assert!(t.only_on(&[n.standbys[0], n.primary]), "{t:?}");
    assert!(
        proxy.app.topology().load().eligible_standbys() == 2,
        "the proxy still believes the refusing standby is fine (this is the checkout path)"
    );

    // No other standby: the documented error, and nothing left counted in flight on the
    // refusing node.
    let ro = lone
        .connect_as(APP_USER, APP_PASSWORD, "postgres_ro")
        .await
        .unwrap();
    for _ in 0..3 {
        let e = ro.simple_query("select 1").await.unwrap_err();
        assert_eq!(common::sqlstate(&e), Some("57P03"), "{}", show(&e));
    }
    let topo = lone.app.topology().load();
    let fwd_node = topo
        .nodes
        .iter()
        .position(|x| x.addr.ends_with(&format!(":{}", fwd.port())))
        .expect("forwarded node in the topology");
    drop(topo);
    assert_eq!(
        causeway::router::Load::outstanding(&**lone.app.feedback(), fwd_node),
        0,
        "in-flight count of the refusing node"
    );
}

// === misroute self-healing ===

async fn rows_tagged(direct: &Client, tag: &str) -> Vec<i32> {
    direct
        .query("select port from rt_mis where tag = $1", &[&tag])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_write_is_rerun_on_the_primary_and_learned() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    // rt_sneaky is VOLATILE and inserts; the configuration wrongly says it only reads.
    let proxy = common::start_routing_proxy(
        "consistency = \"eventual\"\nread_functions = [\"rt_sneaky\"]",
        "",
    )
    .await;
    let c = proxy.connect().await;
    let direct = common::connect_direct(n.primary_idx).await;

    // Simple protocol: the first run reaches a standby, is refused (25006) and re-run on the
    // primary; the client sees one success. The second goes straight to the primary.
    assert_eq!(port_s(&c, "select rt_sneaky('simple')").await, n.primary);
    assert_eq!(misroutes(&proxy), 1);
    assert_eq!(rows_tagged(&direct, "simple").await, vec![n.primary]);
    assert_eq!(port_s(&c, "select rt_sneaky('simple')").await, n.primary);
    assert_eq!(misroutes(&proxy), 1, "learned: no second trip to a standby");
    assert_eq!(rows_tagged(&direct, "simple").await.len(), 2);

    // Extended protocol, with a parameter (the same text each time).
    for (i, tag) in ["ext-1", "ext-2", "ext-3"].into_iter().enumerate() {
        let p: i32 = c
            .query_one("select rt_sneaky($1)", &[&tag])
            .await
            .unwrap()
            .get(0);
        assert_eq!(p, n.primary);
        assert_eq!(rows_tagged(&direct, tag).await, vec![n.primary], "{tag}");
        assert_eq!(misroutes(&proxy), 2, "after call {i}");
    }

    // A write the lexer cannot see: a view over the writing function.
    let before = rows_tagged(&direct, "view").await.len();
    for _ in 0..2 {
        let p: i32 = c
            .query_one("select port from rt_sneaky_v", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(p, n.primary);
    }
    assert_eq!(rows_tagged(&direct, "view").await.len(), before + 2);
    assert_eq!(misroutes(&proxy), 3);

    // A writing function created after the proxy loaded the catalog: unknown, so not
    // trusted to be read-only; the client sees no error and the row exists once.
    direct
        .batch_execute(&format!(
            "create function rt_late() returns int language sql volatile as \
             $$ insert into rt_mis values ('late', inet_server_port()) returning port $$; \
             grant execute on function rt_late() to {APP_USER}"
        ))
        .await
        .unwrap();
    common::cluster()
        .wait_caught_up(Duration::from_secs(10))
        .unwrap();
    assert_eq!(port_s(&c, "select rt_late()").await, n.primary);
    assert_eq!(rows_tagged(&direct, "late").await, vec![n.primary]);
    // Other reads still go to standbys.
    assert!(n
        .standbys
        .contains(&port_s(&c, "select inet_server_port()").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_on_a_standby_backend_that_is_terminated_is_rerun() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let c = proxy.connect().await;
    let mut standbys = Vec::new();
    for &i in &n.standby_idx {
        standbys.push(common::connect_direct(i).await);
    }
    for round in 0..2 {
        let marker = format!("rt_kill_{round}");
        let sql = format!("select inet_server_port(), '{marker}' from pg_sleep(1)");
        // Simple protocol (the standby sends RowDescription before it starts sleeping),
        // then extended.
        let query = {
            let sql = sql.clone();
            let c = &c;
            async move {
                if round == 0 {
                    try_cell(c, &sql).await.map(|p| p.parse::<i32>().unwrap())
                } else {
                    c.query_one(sql.as_str(), &[]).await.map(|r| r.get(0))
                }
            }
        };
        let killer = async {
            let like = format!("%{marker}%");
            let found = common::eventually(Duration::from_secs(3), || async {
                for s in &standbys {
                    let killed: i64 = s
                        .query_one(
                            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                             where query like $1 and state = 'active' and pid <> pg_backend_pid()",
                            &[&like],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    if killed > 0 {
                        return true;
                    }
                }
                false
            })
            .await;
            assert!(found, "the read runs on a standby");
        };
        let (r, ()) = tokio::join!(query, killer);
        let port = r.unwrap_or_else(|e| panic!("the client sees no error: {}", show(&e)));
        assert_eq!(port, n.primary, "re-run on the primary");
    }
}

// === no eligible standby ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_standby_falls_back_or_fails_as_configured() {
    setup().await;
    let n = nodes();
    let dead = dead_port().await;
    // Standbys replaced by a port nothing listens on: no standby is ever eligible.
    let only_primary = |routing: &str| {
        let t = common::routing_config_toml(routing, "");
        let t = replace_node(&t, n.standbys[0], dead);
        // Two nodes may not share an address: drop the second standby.
        t.replace(
            &format!("[[nodes]]\naddress = \"127.0.0.1:{}\"\n", n.standbys[1]),
            "",
        )
    };
    // Default: primary_reads = "fallback", fallback = "primary".
    let proxy = common::start_proxy_from(only_primary("")).await;
    let c = proxy.connect().await;
    assert_eq!(port_s(&c, "select inet_server_port()").await, n.primary);
    assert_eq!(port_x(&c, "select inet_server_port()").await, n.primary);
    let ro = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres_ro")
        .await
        .unwrap();
    assert_eq!(port_s(&ro, "select inet_server_port()").await, n.primary);
    c.batch_execute("begin read only").await.unwrap();
    assert_eq!(port_s(&c, "select inet_server_port()").await, n.primary);
    c.batch_execute("commit").await.unwrap();

    // fallback = "error": reads that need a standby fail with 57P03, writes still work.
    for routing in [
        "primary_reads = \"never\"\nfallback = \"error\"",
        "fallback = \"error\"",
    ] {
        let proxy = common::start_proxy_from(only_primary(routing)).await;
        let c = proxy.connect().await;
        let e = c
            .simple_query("select inet_server_port()")
            .await
            .unwrap_err();
        assert_eq!(common::sqlstate(&e), Some("57P03"), "{routing}: {e}");
        let e = c.query("select inet_server_port()", &[]).await.unwrap_err();
        assert_eq!(common::sqlstate(&e), Some("57P03"), "{routing}: {e}");
        let ro = proxy
            .connect_as(APP_USER, APP_PASSWORD, "postgres_ro")
            .await
            .unwrap();
        let e = ro.simple_query("select 1").await.unwrap_err();
        assert_eq!(common::sqlstate(&e), Some("57P03"), "{routing}: {e}");
        // Read-only transactions and a session forced to standbys need one too.
        let e = c.batch_execute("begin read only").await.unwrap_err();
        assert_eq!(common::sqlstate(&e), Some("57P03"), "{routing}: {e}");
        let forced = proxy.connect().await;
        forced
            .batch_execute("set causeway.route = 'standby'")
            .await
            .unwrap();
        let e = forced.query("select 1", &[]).await.unwrap_err();
        assert_eq!(common::sqlstate(&e), Some("57P03"), "{routing}: {e}");
        // The session goes on: writes and transactions run on the primary.
        assert_eq!(
            port_x(
                &c,
                "insert into rt_w values (8) returning inet_server_port()"
            )
            .await,
            n.primary
        );
        c.batch_execute("begin").await.unwrap();
        assert_eq!(port_s(&c, "select inet_server_port()").await, n.primary);
        c.batch_execute("commit").await.unwrap();
        // A statement prepared for a write, then closed (Close + Sync, no statement to
        // route): answered, not refused for want of a standby.
        let mut raw = common::raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres")
            .await
            .0;
        let mut close = Vec::new();
        close.extend(common::raw::frame(b'C', b"Snope\0"));
        close.extend(common::raw::frame(b'S', b""));
        raw.send(&close).await;
        let msgs = raw.recv_until(b'Z').await;
        assert!(
            common::raw::first_error(&msgs).is_none(),
            "{routing}: Close/Sync refused: {:?}",
            common::raw::first_error(&msgs).map(|e| e.message)
        );
        assert_eq!(msgs[0].tag, b'3', "{routing}: CloseComplete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_reads_always_shares_reads_with_the_primary() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy =
        common::start_routing_proxy("consistency = \"eventual\"\nprimary_reads = \"always\"", "")
            .await;
    let c = proxy.connect().await;
    let mut t = Tally::default();
    for _ in 0..30 {
        t.add(port_s(&c, "select inet_server_port()").await);
    }
    assert!(t.on(n.primary) > 0, "{t:?}");
    for &s in &n.standbys {
        assert!(t.on(s) > 0, "{t:?}");
    }
}

// === session state across nodes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_hold_on_every_node() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let c = proxy.connect().await;
    c.batch_execute(
        "set search_path = rt_sp, public; set application_name = 'rt_app'; set TimeZone = 'Asia/Tokyo'",
    )
    .await
    .unwrap();
    let mut t = Tally::default();
    for i in 0..100 {
        let sql = "select inet_server_port(), current_setting('search_path'), \
                   current_setting('application_name'), current_setting('TimeZone'), \
                   (select count(*) from t)::int";
        let row = if i % 2 == 0 {
            let msgs = c.simple_query(sql).await.unwrap();
            let r = msgs
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                })
                .expect("a row");
            (
                r.get(0).unwrap().parse::<i32>().unwrap(),
                r.get(1).unwrap().to_owned(),
                r.get(2).unwrap().to_owned(),
                r.get(3).unwrap().to_owned(),
                r.get(4).unwrap().parse::<i32>().unwrap(),
            )
        } else {
            let r = c.query_one(sql, &[]).await.unwrap();
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
        };
        assert_eq!(
            (row.1.as_str(), row.2.as_str(), row.3.as_str(), row.4),
            ("rt_sp, public", "rt_app", "Asia/Tokyo", 1),
            "read {i} on {}",
            row.0
        );
        t.add(row.0);
    }
    for &s in &n.standbys {
        assert!(t.on(s) > 0, "reads spread: {t:?}");
    }
    // And on the primary.
    let r = c
        .query_one(
            "insert into rt_w values (9) returning inet_server_port(), current_setting('search_path'), current_setting('TimeZone')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), n.primary);
    assert_eq!(r.get::<_, String>(1), "rt_sp, public");
    assert_eq!(r.get::<_, String>(2), "Asia/Tokyo");
    // DISCARD ALL returns every setting to the default, on every node.
    let defaults = {
        let d = common::connect_direct(n.primary_idx).await;
        let sp: String = d.query_one("show search_path", &[]).await.unwrap().get(0);
        sp
    };
    c.batch_execute("discard all").await.unwrap();
    for _ in 0..6 {
        assert_eq!(cell(&c, "show search_path").await, defaults);
        assert_eq!(cell(&c, "show application_name").await, "");
    }
    c.batch_execute("set search_path = rt_sp, public; set TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    // RESET returns to the default everywhere.
    c.batch_execute("reset TimeZone").await.unwrap();
    let direct_tz: String = common::connect_direct(n.primary_idx)
        .await
        .query_one("show TimeZone", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..6 {
        assert_eq!(cell(&c, "show TimeZone").await, direct_tz);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statement_runs_on_primary_and_standbys() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let mut c = proxy.connect().await;
    let st = c
        .prepare("select inet_server_port(), $1::int * 2")
        .await
        .unwrap();
    let mut t = Tally::default();
    for i in 0..100i32 {
        if i % 5 == 0 {
            let tx = c.transaction().await.unwrap();
            let r = tx.query_one(&st, &[&i]).await.unwrap();
            assert_eq!(r.get::<_, i32>(0), n.primary, "in a transaction");
            assert_eq!(r.get::<_, i32>(1), i * 2);
            tx.commit().await.unwrap();
        } else {
            let r = c.query_one(&st, &[&i]).await.unwrap();
            assert_eq!(r.get::<_, i32>(1), i * 2);
            t.add(r.get(0));
        }
    }
    assert!(t.only_on(&n.standbys), "{t:?}");
    for &s in &n.standbys {
        assert!(t.on(s) > 0, "{t:?}");
    }
    // A statement first used on the primary, then on a standby.
    let w = c
        .prepare("select inet_server_port(), count(*)::int from rt_w where v = $1")
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    assert_eq!(
        tx.query_one(&w, &[&42]).await.unwrap().get::<_, i32>(0),
        n.primary
    );
    tx.commit().await.unwrap();
    let p: i32 = c.query_one(&w, &[&42]).await.unwrap().get(0);
    assert!(n.standbys.contains(&p));
    drop(w);
    drop(st);
    // Closing them leaves the session usable.
    assert!(n
        .standbys
        .contains(&port_x(&c, "select inet_server_port()").await));

    // SQL PREPARE cannot be replayed on another connection: it pins the session to the
    // primary, where EXECUTE and everything after it run.
    c.batch_execute("prepare rt_p(int) as select inet_server_port(), $1 + 1")
        .await
        .unwrap();
    for i in 0..10 {
        let r = try_cell(&c, &format!("execute rt_p({i})")).await;
        let p = r.unwrap_or_else(|e| panic!("execute {i}: {}", show(&e)));
        assert_eq!(p.parse::<i32>().unwrap(), n.primary);
        assert_eq!(
            port_x(
                &c,
                "insert into rt_w values (12) returning inet_server_port()"
            )
            .await,
            n.primary
        );
    }
    c.batch_execute("deallocate rt_p").await.unwrap();
    let e = c.batch_execute("execute rt_p(1)").await.unwrap_err();
    assert_eq!(common::sqlstate(&e), Some("26000"), "{}", show(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let toml = weigh_node(
        &common::routing_config_toml("consistency = \"eventual\"\nbalance = \"round_robin\"", ""),
        n.standbys[1],
        3,
    );
    let proxy = common::start_proxy_from(toml).await;
    wait_eligible(&proxy, 2).await;
    let c = proxy.connect().await;
    let mut t = Tally::default();
    for _ in 0..80 {
        t.add(port_s(&c, "select inet_server_port()").await);
    }
    assert!(t.only_on(&n.standbys), "{t:?}");
    let (light, heavy) = (t.on(n.standbys[0]), t.on(n.standbys[1]));
    assert!(
        (15..=25).contains(&light) && heavy == 80 - light,
        "1:3 weights: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_pins_the_session_to_the_primary() {
    setup().await;
    let _g = replay_lock().read().await;
    let n = nodes();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let c = proxy.connect().await;
    assert!(n
        .standbys
        .contains(&port_s(&c, "select inet_server_port()").await));
    c.batch_execute("create temp table rt_tmp as select 1 as v")
        .await
        .unwrap();
    for i in 0..20 {
        let sql = "select inet_server_port(), count(*)::int from rt_tmp";
        let (p, count) = if i % 2 == 0 {
            let r = c.query_one(sql, &[]).await.unwrap();
            (r.get::<_, i32>(0), r.get::<_, i32>(1))
        } else {
            (port_s(&c, sql).await, 1)
        };
        assert_eq!((p, count), (n.primary, 1));
        assert_eq!(port_s(&c, "select inet_server_port()").await, n.primary);
    }
    c.batch_execute("insert into rt_tmp values (2)")
        .await
        .unwrap();
    let r = c
        .query_one("select count(*)::int from rt_tmp", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 2);
    // Another client is not pinned.
    let other = proxy.connect().await;
    assert!(n
        .standbys
        .contains(&port_s(&other, "select inet_server_port()").await));

    // The other session state that lives on one server process pins too, to the primary.
    for pin in [
        "listen rt_chan",
        "select pg_advisory_lock(4242)",
        "declare rt_cur cursor with hold for select inet_server_port() from generate_series(1, 3)",
    ] {
        let c = proxy.connect().await;
        assert!(n
            .standbys
            .contains(&port_s(&c, "select inet_server_port()").await));
        c.batch_execute(pin)
            .await
            .unwrap_or_else(|e| panic!("{pin}: {}", show(&e)));
        for _ in 0..5 {
            assert_eq!(
                port_s(&c, "select inet_server_port()").await,
                n.primary,
                "after {pin}"
            );
            assert_eq!(
                port_x(&c, "select inet_server_port()").await,
                n.primary,
                "after {pin}"
            );
        }
        if pin.starts_with("declare") {
            assert_eq!(port_s(&c, "fetch 1 from rt_cur").await, n.primary);
        }
    }
}
