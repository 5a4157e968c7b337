//! Connection pooling against a real cluster: clients sharing few server connections must not
//! notice it. Each test checks what a user (or a DBA looking at `pg_stat_activity`) would check:
//! a client's own settings, statements, temp tables and cursors; no lost rows under load; a
//! clear error when the pool is exhausted; cancel, disconnects, DDL, LISTEN/NOTIFY; and server
//! connections opened and closed as `[pool]` says.
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway::cluster::{APP_MD5_PASSWORD, APP_MD5_USER, APP_PASSWORD, APP_TRUST_USER, APP_USER};
use common::raw::{self, Msg, RawConn};
use common::{connect_direct, connect_observed, eventually, sqlstate, wait_backend_not};
use tokio_postgres::{AsyncMessage, NoTls};

// === helpers ===

/// The text rows of a simple query, panicking on an error.
async fn rows(conn: &mut RawConn, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = conn.simple_query(sql).await;
    if let Some(e) = raw::first_error(&msgs) {
        panic!("{sql}: {} ({})", e.message, e.code);
    }
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(Msg::data_row)
        .collect()
}

/// The single value of a one-row, one-column simple query.
async fn value(conn: &mut RawConn, sql: &str) -> String {
    let r = rows(conn, sql).await;
    assert_eq!(r.len(), 1, "{sql}: {r:?}");
    r[0][0].clone().unwrap_or_default()
}

/// Logs in through `addr` as the trust user with startup parameters.
async fn raw_login(addr: std::net::SocketAddr, params: &[(&str, &str)]) -> RawConn {
    let mut c = RawConn::connect(addr).await;
    let mut all = vec![("user", APP_TRUST_USER), ("database", "postgres")];
    all.extend_from_slice(params);
    c.send(&raw::startup(&all)).await;
    let msgs = c.recv_until(b'Z').await;
    assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
    c
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    raw::frame(b'P', &b)
}

/// Bind (no parameters, text results) + Describe portal + Execute + Sync.
fn run_statement(name: &str) -> Vec<u8> {
    let mut bind = vec![0u8];
    bind.extend_from_slice(name.as_bytes());
    bind.push(0);
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = raw::frame(b'B', &bind);
    out.extend(raw::frame(b'D', b"P\0"));
    out.extend(raw::frame(b'E', b"\0\0\0\0\0"));
    out.extend(raw::frame(b'S', b""));
    out
}

/// Runs the client's prepared statement `name`: its rows, or the error's (code, message).
async fn execute(conn: &mut RawConn, name: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    conn.send(&run_statement(name)).await;
    let msgs = conn.recv_until(b'Z').await;
    match raw::first_error(&msgs) {
        Some(e) => Err(format!("{}: {}", e.code, e.message)),
        None => Ok(msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(Msg::data_row)
            .collect()),
    }
}

/// Prepares `sql` as `name` (Parse + Sync), panicking on an error.
async fn prepare(conn: &mut RawConn, name: &str, sql: &str) {
    let mut b = parse(name, sql);
    b.extend(raw::frame(b'S', b""));
    conn.send(&b).await;
    let msgs = conn.recv_until(b'Z').await;
    assert!(raw::first_error(&msgs).is_none(), "{name}: {msgs:?}");
    assert!(msgs.iter().any(|m| m.tag == b'1'), "no ParseComplete");
}

async fn pid_of(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Creates a database owned by `app` (for tests that count server connections by database).
async fn create_database(name: &str) {
    let direct = connect_direct(0).await;
    direct
        .batch_execute(&format!("drop database if exists {name}"))
        .await
        .unwrap();
    direct
        .batch_execute(&format!("create database {name} owner {APP_USER}"))
        .await
        .unwrap();
}

/// Server connections of `user` to database `db` on the primary.
async fn backends(direct: &tokio_postgres::Client, user: &str, db: &str) -> i64 {
    direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = $1 and datname = $2",
            &[&user, &db],
        )
        .await
        .unwrap()
        .get(0)
}

// === session fidelity on a shared server connection ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_taking_turns_on_one_server_connection_keep_their_own_state() {
    let proxy =
        common::start_proxy_with("", "[pool]\npool_size = 1\npool_timeout = \"20s\"\n").await;
    let direct = connect_direct(0).await;
    for s in ["turn_a", "turn_b"] {
        let who = &s[5..];
        direct
            .batch_execute(&format!(
                "create schema {s}; create table {s}.who as select '{who}'::text as x; \
                 grant usage on schema {s} to {APP_TRUST_USER}; \
                 grant select on {s}.who to {APP_TRUST_USER}"
            ))
            .await
            .unwrap();
    }
    let mut a = raw_login(
        proxy.addr,
        &[
            ("application_name", "client_a"),
            ("options", "-c search_path=turn_a"),
        ],
    )
    .await;
    let mut b = raw_login(
        proxy.addr,
        &[
            ("application_name", "client_b"),
            ("options", "-c search_path=turn_b"),
        ],
    )
    .await;
    // The same statement name, and the same text resolved through each client's search_path.
    const SAME: &str = "select x, current_setting('application_name') from who";
    prepare(&mut a, "stmt", SAME).await;
    prepare(&mut b, "stmt", SAME).await;
    prepare(&mut a, "other", "select 'a only'").await;
    prepare(&mut b, "other", "select 'b only', 2").await;
    prepare(&mut a, "only_a", "select 1").await;
    let shared_pid = value(&mut a, "select pg_backend_pid()").await;
    for round in 0..3 {
        assert_eq!(
            execute(&mut a, "stmt").await.unwrap(),
            vec![vec![Some("a".into()), Some("client_a".into())]],
            "round {round}"
        );
        assert_eq!(
            execute(&mut b, "stmt").await.unwrap(),
            vec![vec![Some("b".into()), Some("client_b".into())]],
            "round {round}"
        );
        assert_eq!(
            execute(&mut b, "other").await.unwrap(),
            vec![vec![Some("b only".into()), Some("2".into())]]
        );
        assert_eq!(
            execute(&mut a, "other").await.unwrap(),
            vec![vec![Some("a only".into())]]
        );
        assert_eq!(value(&mut a, "show search_path").await, "turn_a");
        assert_eq!(value(&mut b, "show search_path").await, "turn_b");
        assert_eq!(value(&mut b, "show application_name").await, "client_b");
        assert_eq!(value(&mut a, "show application_name").await, "client_a");
        // A SET of one client is not seen by the other.
        rows(
            &mut a,
            &format!("set statement_timeout = '{}s'", 10 + round),
        )
        .await;
        assert_eq!(value(&mut b, "show statement_timeout").await, "0");
        assert_eq!(
            value(&mut a, "show statement_timeout").await,
            format!("{}s", 10 + round)
        );
    }
    assert_eq!(
        value(&mut b, "select pg_backend_pid()").await,
        shared_pid,
        "the clients did not share the server connection; this test proves nothing"
    );
    // B cannot use A's statement.
    let err = execute(&mut b, "only_a").await.unwrap_err();
    assert!(err.starts_with("26000"), "{err}");

    // A temporary table pins A to the (only) server connection: B waits for it.
    rows(
        &mut a,
        "create temp table turn_tmp (v text); insert into turn_tmp values ('a')",
    )
    .await;
    let b_waits = tokio::spawn(async move {
        let r = rows(
            &mut b,
            "select pg_backend_pid()::text, to_regclass('pg_temp.turn_tmp')::text",
        )
        .await;
        (b, r)
    });
    for _ in 0..3 {
        assert_eq!(
            value(&mut a, "select string_agg(v, ',') from turn_tmp").await,
            "a"
        );
        assert_eq!(value(&mut a, "select pg_backend_pid()").await, shared_pid);
        assert_eq!(
            execute(&mut a, "stmt").await.unwrap()[0][0].as_deref(),
            Some("a")
        );
    }
    assert!(
        !b_waits.is_finished(),
        "B got a server connection while A was pinned to it"
    );
    // A leaves: B gets the connection, without A's temporary table.
    a.send(&raw::frame(b'X', b"")).await;
    drop(a);
    let (mut b, r) = tokio::time::timeout(Duration::from_secs(5), b_waits)
        .await
        .expect("B gets the server connection once A is gone")
        .unwrap();
    assert_eq!(r, vec![vec![Some(shared_pid.clone()), None]]);
    rows(
        &mut b,
        "create temp table turn_tmp (v text); insert into turn_tmp values ('b')",
    )
    .await;
    assert_eq!(
        value(&mut b, "select string_agg(v, ',') from turn_tmp").await,
        "b"
    );
    assert_eq!(value(&mut b, "show search_path").await, "turn_b");
    assert_eq!(value(&mut b, "show statement_timeout").await, "0");
    assert_eq!(
        execute(&mut b, "stmt").await.unwrap(),
        vec![vec![Some("b".into()), Some("client_b".into())]]
    );
}

// === load ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_on_ten_server_connections_lose_nothing() {
    const CLIENTS: usize = 500;
    const TXS: usize = 2;
    const ACCOUNTS: i32 = 10;
    // A loaded machine must not turn the queue into 53300s: the point is throughput.
    let proxy = common::start_proxy_with(
        "",
        "[pool]\npool_size = 10\nmax_server_connections = 10\npool_timeout = \"60s\"\n",
    )
    .await;
    let direct = connect_direct(0).await;
    direct
        .batch_execute(&format!(
            "create table pgb_accounts (aid int primary key, abalance int not null); \
             insert into pgb_accounts select g, 0 from generate_series(1, {ACCOUNTS}) g; \
             create table pgb_history (cid int, aid int, delta int); \
             grant select, update on pgb_accounts to {APP_MD5_USER}; \
             grant insert on pgb_history to {APP_MD5_USER}"
        ))
        .await
        .unwrap();
    // Server connections of this test's user, sampled while it runs.
    let done = Arc::new(tokio::sync::Notify::new());
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let done = done.clone();
        let most = most.clone();
        tokio::spawn(async move {
            let direct = connect_direct(0).await;
            loop {
                let n = backends(&direct, APP_MD5_USER, "postgres").await;
                most.fetch_max(n, Ordering::Relaxed);
                tokio::select! {
                    _ = done.notified() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    let info = proxy.conninfo(APP_MD5_USER, APP_MD5_PASSWORD, "postgres");
    let all_in = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for cid in 0..CLIENTS {
        let info = info.clone();
        let all_in = all_in.clone();
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(async move {
            let client = {
                let _p = connecting.acquire().await.unwrap();
                let (client, conn) = tokio_postgres::connect(&info, NoTls)
                    .await
                    .map_err(|e| format!("client {cid} connect: {e}"))?;
                tokio::spawn(conn);
                client
            };
            // Every client is connected before any starts.
            all_in.wait().await;
            let e = |e: tokio_postgres::Error| format!("client {cid}: {e}");
            let update = client
                .prepare("update pgb_accounts set abalance = abalance + 1 where aid = $1")
                .await
                .map_err(e)?;
            let select = client
                .prepare("select abalance from pgb_accounts where aid = $1")
                .await
                .map_err(e)?;
            let insert = client
                .prepare("insert into pgb_history values ($1, $2, 1)")
                .await
                .map_err(e)?;
            for t in 0..TXS {
                let aid = ((cid + t) % ACCOUNTS as usize) as i32 + 1;
                client.batch_execute("begin").await.map_err(e)?;
                client.execute(&update, &[&aid]).await.map_err(e)?;
                let _: i32 = client.query_one(&select, &[&aid]).await.map_err(e)?.get(0);
                client
                    .execute(&insert, &[&(cid as i32), &aid])
                    .await
                    .map_err(e)?;
                client.batch_execute("commit").await.map_err(e)?;
            }
            Ok::<_, String>(())
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            errors.push(e);
        }
    }
    let took = started.elapsed();
    done.notify_one();
    sampler.await.unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    let expected = (CLIENTS * TXS) as i64;
    assert_eq!(
        count(&direct, "select sum(abalance)::int8 from pgb_accounts").await,
        expected
    );
    assert_eq!(
        count(&direct, "select count(*) from pgb_history").await,
        expected
    );
    let most = most.load(Ordering::Relaxed);
    assert!(
        (1..=10).contains(&most),
        "{most} server connections for 10 allowed"
    );
    eprintln!(
        "{CLIENTS} clients x {TXS} transactions in {took:?}, at most {most} server connections"
    );
}

// === pool exhausted ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_answers_53300_naming_the_pool_after_pool_timeout() {
    let proxy =
        common::start_proxy_with("", "[pool]\npool_size = 1\npool_timeout = \"500ms\"\n").await;
    let pool_name = format!(
        "{APP_USER}@postgres on 127.0.0.1:{}",
        common::cluster().port(0).unwrap()
    );
    let waiting = proxy.connect().await;
    let holder = proxy.connect().await;
    holder.batch_execute("begin; select 1").await.unwrap();
    // A request from another client waits pool_timeout, then fails with a clear error.
    let started = Instant::now();
    let err = waiting.simple_query("select 1").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains(&pool_name), "{message}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "failed after {waited:?}"
    );
    // So does a new client, at startup (it needs a server connection for its welcome).
    let Err(err) = proxy.connect_as(APP_USER, APP_PASSWORD, "postgres").await else {
        panic!("a new client got a server connection from an exhausted pool");
    };
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains(&pool_name), "{message}");
    // The waiting client's session is intact, and goes on once the holder commits.
    holder.batch_execute("commit").await.unwrap();
    assert_eq!(
        waiting
            .query_one("select 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
    let late = proxy.connect().await;
    assert_eq!(
        late.query_one("select 8", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        8
    );
}

// === cancel ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_returns_57014_within_a_second_and_spares_the_neighbour() {
    let proxy = common::start_proxy().await;
    let direct = connect_direct(0).await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    let token = a.cancel_token();
    const QA: &str = "select pg_sleep(10) /* pooling a */";
    const QB: &str = "select pg_sleep(1.5) /* pooling b */";
    let a_query = tokio::spawn(async move {
        let r = a.simple_query(QA).await.map(|_| ());
        (a, r, Instant::now())
    });
    let b_query = tokio::spawn(async move {
        let r = b.simple_query(QB).await.map(|_| ());
        (b, r)
    });
    for q in [QA, QB] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                count(
                    &direct,
                    &format!("select count(*) from pg_stat_activity where state = 'active' and query = '{q}'"),
                )
                .await
                    == 1
            })
            .await,
            "{q} never ran"
        );
    }
    let cancelled_at = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let (a, r, ended) = tokio::time::timeout(Duration::from_secs(5), a_query)
        .await
        .expect("A's query ends")
        .unwrap();
    let err = r.expect_err("A's query is cancelled");
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    let took = ended.duration_since(cancelled_at);
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    let (b, r) = b_query.await.unwrap();
    r.expect("B's query on the same node is not cancelled");
    assert_eq!(
        a.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    assert_eq!(
        b.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
}

// === client gone ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transaction_leaves_no_idle_transaction_within_a_second() {
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 1\n").await;
    let direct = connect_direct(0).await;
    let setup = proxy.connect().await;
    setup
        .batch_execute("create table killed_t (id int)")
        .await
        .unwrap();
    drop(setup);
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    c.client
        .batch_execute("begin; insert into killed_t values (1)")
        .await
        .unwrap();
    let pid = pid_of(&c.client).await;
    assert!(
        common::wait_backend(
            &direct,
            pid,
            "state = 'idle in transaction'",
            Duration::from_secs(2)
        )
        .await
    );
    c.task.abort();
    drop(c.client);
    assert!(
        wait_backend_not(
            &direct,
            pid,
            "state like 'idle in transaction%' or backend_xid is not null",
            Duration::from_secs(1)
        )
        .await,
        "backend {pid} still in a transaction 1 s after its client was killed"
    );
    // The next client gets the (only) server connection, clean.
    let next = proxy.connect().await;
    assert_eq!(count(&next, "select count(*) from killed_t").await, 0);
}

// === DDL that changes a prepared statement's result type ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_type_change_after_ddl_is_re_prepared_not_failed_forever() {
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 1\n").await;
    let owner = proxy.connect().await;
    owner
        .batch_execute(&format!(
            "create table ddl_t (a int); insert into ddl_t values (1); \
             grant select on ddl_t to {APP_TRUST_USER}"
        ))
        .await
        .unwrap();
    let direct_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", common::cluster().port(0).unwrap())
            .parse()
            .unwrap();
    let (mut direct, _) = raw::login_trust(direct_addr, APP_TRUST_USER, "postgres").await;
    let mut client = raw_login(proxy.addr, &[]).await;
    for c in [&mut direct, &mut client] {
        prepare(c, "star", "select * from ddl_t").await;
        assert_eq!(
            execute(c, "star").await.unwrap(),
            vec![vec![Some("1".into())]]
        );
    }
    owner
        .batch_execute("alter table ddl_t add column b text default 'x'")
        .await
        .unwrap();
    // PostgreSQL itself fails every later execution of the statement.
    for _ in 0..2 {
        let err = execute(&mut direct, "star").await.unwrap_err();
        assert!(
            err.starts_with("0A000") && err.contains("cached plan must not change result type"),
            "{err}"
        );
    }
    // Through causeway the statement is prepared again and the request re-run: outside a
    // transaction the client sees no error at all, only the new result type.
    for _ in 0..3 {
        assert_eq!(
            execute(&mut client, "star").await.unwrap(),
            vec![vec![Some("1".into()), Some("x".into())]]
        );
    }
    // The stale server-side statement was deallocated, not left behind.
    assert_eq!(
        value(
            &mut client,
            "select count(*) from pg_prepared_statements where statement = 'select * from ddl_t'"
        )
        .await,
        "1"
    );
    // A second DDL, the statement now cached again.
    owner
        .batch_execute("alter table ddl_t add column c int default 3")
        .await
        .unwrap();
    // Inside a transaction the failed statement aborts it, as it would on PostgreSQL, so the
    // client sees the error once; the statement is prepared again for the next transaction.
    rows(&mut client, "begin").await;
    let err = execute(&mut client, "star").await.unwrap_err();
    assert!(err.starts_with("0A000"), "{err}");
    rows(&mut client, "rollback").await;
    rows(&mut client, "begin").await;
    assert_eq!(
        execute(&mut client, "star").await.unwrap(),
        vec![vec![Some("1".into()), Some("x".into()), Some("3".into())]]
    );
    rows(&mut client, "commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_statement_fails_once_per_pool_not_once_per_server_connection() {
    let proxy = common::start_proxy_with(
        "",
        "[pool]
pool_size = 3
",
    )
    .await;
    let owner = proxy.connect().await;
    owner
        .batch_execute(&format!(
            "create table ddl_u (a int); insert into ddl_u values (1); \
             grant select on ddl_u to {APP_TRUST_USER}"
        ))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = raw_login(proxy.addr, &[]).await;
        prepare(&mut c, "star", "select * from ddl_u").await;
        clients.push(c);
    }
    // Each client in a transaction holds its own server connection, where the statement gets
    // prepared.
    let mut pids = BTreeSet::new();
    for c in clients.iter_mut() {
        rows(c, "begin").await;
        pids.insert(value(c, "select pg_backend_pid()").await);
        assert_eq!(
            execute(c, "star").await.unwrap(),
            vec![vec![Some("1".into())]]
        );
    }
    assert_eq!(
        pids.len(),
        3,
        "the clients did not get three server connections"
    );
    for c in clients.iter_mut() {
        rows(c, "commit").await;
    }
    owner
        .batch_execute("alter table ddl_u add column b int default 2")
        .await
        .unwrap();
    let mut errors = 0;
    for c in clients.iter_mut() {
        rows(c, "begin").await;
    }
    for c in clients.iter_mut() {
        match execute(c, "star").await {
            Ok(r) => assert_eq!(r, vec![vec![Some("1".into()), Some("2".into())]]),
            Err(e) => {
                assert!(e.starts_with("0A000"), "{e}");
                errors += 1;
            }
        }
    }
    assert_eq!(
        errors, 1,
        "one failure for the pool, then every connection re-prepares"
    );
    for c in clients.iter_mut() {
        rows(c, "rollback").await;
        assert_eq!(
            execute(c, "star").await.unwrap(),
            vec![vec![Some("1".into()), Some("2".into())]]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cache_is_bounded_and_evicted_statements_still_work() {
    const STATEMENTS: usize = 1_100;
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 1\n").await;
    let mut client = raw_login(proxy.addr, &[]).await;
    let mut batch = Vec::new();
    for i in 0..STATEMENTS {
        batch.extend(parse(&format!("p{i}"), &format!("select {i}")));
    }
    batch.extend(raw::frame(b'S', b""));
    client.send(&batch).await;
    let msgs = client.recv_until(b'Z').await;
    assert!(
        raw::first_error(&msgs).is_none(),
        "{:?}",
        raw::first_error(&msgs)
    );
    assert_eq!(msgs.iter().filter(|m| m.tag == b'1').count(), STATEMENTS);
    // Every statement works, the least recently used ones prepared again on the server.
    for i in [0, 1, 550, STATEMENTS - 1] {
        assert_eq!(
            execute(&mut client, &format!("p{i}")).await.unwrap(),
            vec![vec![Some(i.to_string())]]
        );
    }
    // The server connection holds at most the cache's bound.
    let n: usize = value(&mut client, "select count(*) from pg_prepared_statements")
        .await
        .parse()
        .unwrap();
    assert!(
        (4..=1_000).contains(&n),
        "{n} statements prepared on the server connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_prepared_statement_replies_keep_their_order_and_large_rows_stream() {
    // Outside a transaction a request that binds a prepared statement is guarded (see the DDL
    // tests): what the proxy holds back must still reach the client first, in order.
    let proxy = common::start_proxy().await;
    let mut client = raw_login(proxy.addr, &[]).await;
    const LEN: usize = 20 << 20;
    prepare(&mut client, "big", &format!("select repeat('x', {LEN})")).await;
    for _ in 0..2 {
        // Bind + Execute + Sync: BindComplete, then the (large) row, CommandComplete,
        // ReadyForQuery.
        let mut bind = b"\0big\0".to_vec();
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut b = raw::frame(b'B', &bind);
        b.extend(raw::frame(b'E', b"\0\0\0\0\0"));
        b.extend(raw::frame(b'S', b""));
        client.send(&b).await;
        let msgs = client.recv_until(b'Z').await;
        let tags: Vec<char> = msgs.iter().map(|m| m.tag as char).collect();
        assert_eq!(tags, ['2', 'D', 'C', 'Z'], "{msgs:?}");
        assert_eq!(msgs[1].data_row()[0].as_ref().map(String::len), Some(LEN));
    }
}

// === LISTEN / NOTIFY ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_is_pinned_and_receives_every_notify() {
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 2\n").await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let mut listener = connect_observed(&info).await.unwrap();
    listener
        .client
        .batch_execute("listen pool_chan")
        .await
        .unwrap();
    let pid = pid_of(&listener.client).await;
    // The listener keeps its server connection, and keeps using it (every prepared query also
    // makes the proxy deallocate the previous one in front of the next), while the others come
    // and go: notifications arrive in the middle of all of it.
    let client = Arc::new(listener.client);
    let stop = Arc::new(tokio::sync::Notify::new());
    let busy = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut queries = 0;
            loop {
                assert_eq!(pid_of(&client).await, pid);
                queries += 1;
                tokio::select! {
                    _ = stop.notified() => return queries,
                    _ = tokio::task::yield_now() => {}
                }
            }
        })
    };
    const SENDERS: usize = 3;
    const EACH: usize = 20;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let client = proxy.connect().await;
        senders.push(tokio::spawn(async move {
            for i in 0..EACH {
                client
                    .batch_execute(&format!("notify pool_chan, '{s}-{i}'"))
                    .await
                    .unwrap();
                // Other traffic in between, on the same small pool.
                client.query_one("select 1", &[]).await.unwrap();
            }
        }));
    }
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < SENDERS * EACH {
        match tokio::time::timeout_at(deadline, listener.messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                assert_eq!(n.channel(), "pool_chan");
                assert!(
                    got.insert(n.payload().to_owned()),
                    "duplicate {}",
                    n.payload()
                );
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    stop.notify_one();
    let queries = busy.await.unwrap();
    assert_eq!(
        got.len(),
        SENDERS * EACH,
        "after {queries} listener queries, got {got:?}"
    );
    assert_eq!(pid_of(&client).await, pid);
    let metrics = proxy.app.metrics_text();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("pinned") && l.contains("LISTEN") && !l.starts_with('#')),
        "{metrics}"
    );
}

// === other pins ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_and_hold_cursors_pin() {
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 3\n").await;
    let direct = connect_direct(0).await;
    let locker = proxy.connect().await;
    let cursor = proxy.connect().await;
    let other = proxy.connect().await;
    locker
        .batch_execute("select pg_advisory_lock(424242)")
        .await
        .unwrap();
    let locker_pid = pid_of(&locker).await;
    cursor
        .batch_execute("declare pool_hc cursor with hold for select g from generate_series(1, 6) g")
        .await
        .unwrap();
    let cursor_pid = pid_of(&cursor).await;
    let mut fetched = Vec::new();
    for _ in 0..3 {
        // Traffic of another client between each step.
        for _ in 0..3 {
            let p = pid_of(&other).await;
            assert_ne!(p, locker_pid);
            assert_ne!(p, cursor_pid);
        }
        for m in cursor.simple_query("fetch 2 from pool_hc").await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                fetched.push(r.get(0).unwrap().to_owned());
            }
        }
        assert_eq!(pid_of(&locker).await, locker_pid);
        assert_eq!(pid_of(&cursor).await, cursor_pid);
    }
    assert_eq!(fetched, ["1", "2", "3", "4", "5", "6"]);
    // The lock is held by the locker's server process all along, and it can release it.
    assert_eq!(
        count(
            &direct,
            &format!(
                "select count(*) from pg_locks where locktype = 'advisory' and objid = 424242 \
                 and granted and pid = {locker_pid}"
            )
        )
        .await,
        1
    );
    let unlocked: bool = locker
        .query_one("select pg_advisory_unlock(424242)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_deallocate_and_discard_all_are_honoured_and_sql_prepare_pins() {
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 2\n").await;
    let mut client = raw_login(proxy.addr, &[]).await;
    let mut other = raw_login(proxy.addr, &[]).await;
    prepare(&mut client, "kept", "select 'kept'").await;
    prepare(&mut client, "closed", "select 'closed'").await;
    prepare(&mut other, "closed", "select 'closed'").await;
    // Close forgets the client's statement only: another client's same statement still works.
    let mut close = raw::frame(b'C', b"Sclosed\0");
    close.extend(raw::frame(b'S', b""));
    client.send(&close).await;
    let msgs = client.recv_until(b'Z').await;
    assert!(
        msgs.iter().any(|m| m.tag == b'3'),
        "no CloseComplete: {msgs:?}"
    );
    let err = execute(&mut client, "closed").await.unwrap_err();
    assert!(err.starts_with("26000"), "{err}");
    assert_eq!(
        execute(&mut other, "closed").await.unwrap(),
        vec![vec![Some("closed".into())]]
    );
    assert_eq!(
        execute(&mut client, "kept").await.unwrap(),
        vec![vec![Some("kept".into())]]
    );
    // DISCARD ALL forgets every statement of the client, and its settings.
    rows(&mut client, "set statement_timeout = '5s'").await;
    rows(&mut client, "discard all").await;
    let err = execute(&mut client, "kept").await.unwrap_err();
    assert!(err.starts_with("26000"), "{err}");
    assert_eq!(value(&mut client, "show statement_timeout").await, "0");
    assert_eq!(
        execute(&mut other, "closed").await.unwrap(),
        vec![vec![Some("closed".into())]]
    );
    // SQL PREPARE pins: EXECUTE and DEALLOCATE find the statement whatever the others do.
    rows(&mut client, "prepare sql_stmt (int) as select $1 + 1").await;
    let pid = value(&mut client, "select pg_backend_pid()").await;
    for i in 0..3 {
        assert_ne!(value(&mut other, "select pg_backend_pid()").await, pid);
        assert_eq!(
            value(&mut client, &format!("execute sql_stmt({i})")).await,
            (i + 1).to_string()
        );
    }
    let metrics = proxy.app.metrics_text();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("pinned") && l.contains("SQL PREPARE") && !l.starts_with('#')),
        "{metrics}"
    );
    rows(&mut client, "deallocate sql_stmt").await;
    let msgs = client.simple_query("execute sql_stmt(1)").await;
    assert_eq!(
        raw::first_error(&msgs).map(|e| e.code),
        Some("26000".to_owned())
    );
}

// === session mode ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_the_server_connection_for_the_next_client() {
    let proxy =
        common::start_proxy_with("pool_mode = \"session\"", "[pool]\npool_size = 1\n").await;
    let direct = connect_direct(0).await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let first = connect_observed(&info).await.unwrap();
    first
        .client
        .batch_execute(
            "set work_mem = '9MB'; create temp table sess_tmp (x int); \
             prepare sess_stmt as select 1; select pg_advisory_lock(515151); listen sess_chan; \
             declare sess_cur cursor with hold for select 1",
        )
        .await
        .unwrap();
    let pid = pid_of(&first.client).await;
    drop(first.client);
    first.task.await.unwrap().unwrap();

    let second = proxy.connect().await;
    assert_eq!(
        pid_of(&second).await,
        pid,
        "the pool did not reuse the server connection; this test proves nothing"
    );
    let row = second
        .query_one(
            "select current_setting('work_mem'), to_regclass('pg_temp.sess_tmp')::text, \
             (select count(*) from pg_prepared_statements where name = 'sess_stmt'), \
             (select count(*) from pg_listening_channels()), \
             (select count(*) from pg_cursors where name = 'sess_cur')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "4MB");
    assert_eq!(row.get::<_, Option<&str>>(1), None);
    assert_eq!(row.get::<_, i64>(2), 0);
    assert_eq!(row.get::<_, i64>(3), 0);
    assert_eq!(row.get::<_, i64>(4), 0);
    assert_eq!(
        count(
            &direct,
            "select count(*) from pg_locks where locktype = 'advisory' and objid = 515151"
        )
        .await,
        0
    );
}

// === server connection lifetimes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_close_after_server_idle_timeout() {
    let proxy = common::start_proxy_with("", "[pool]\nserver_idle_timeout = \"1s\"\n").await;
    let direct = connect_direct(0).await;
    let client = proxy.connect().await;
    let pid = pid_of(&client).await;
    // The client stays connected but idle: its pooled server process goes away.
    assert!(
        wait_backend_not(&direct, pid, "true", Duration::from_secs(4)).await,
        "idle server process {pid} still there"
    );
    assert_ne!(pid_of(&client).await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_are_replaced_after_server_lifetime() {
    let proxy = common::start_proxy_with(
        "",
        "[pool]\nserver_lifetime = \"1s\"\nserver_idle_timeout = \"0\"\n",
    )
    .await;
    let direct = connect_direct(0).await;
    let client = proxy.connect().await;
    let pid = pid_of(&client).await;
    // A busy client: its requests move to a new server process once the old one is too old.
    assert!(
        eventually(Duration::from_secs(5), || async {
            pid_of(&client).await != pid
        })
        .await,
        "still on server process {pid}"
    );
    assert!(wait_backend_not(&direct, pid, "true", Duration::from_secs(3)).await);
    // An idle pool's connections go too.
    let newer = pid_of(&client).await;
    assert!(
        wait_backend_not(&direct, newer, "true", Duration::from_secs(4)).await,
        "idle server process {newer} outlived server_lifetime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_keeps_server_connections_warm() {
    create_database("pool_warm").await;
    let proxy = common::start_proxy_with(
        "",
        "[pool]\npool_size = 5\nmin_idle = 3\nserver_idle_timeout = \"1s\"\n",
    )
    .await;
    let direct = connect_direct(0).await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "pool_warm");
    let (client, conn) = tokio_postgres::connect(&info, NoTls).await.unwrap();
    tokio::spawn(conn);
    assert!(
        eventually(Duration::from_secs(3), || async {
            backends(&direct, APP_USER, "pool_warm").await == 3
        })
        .await,
        "{} server connections for min_idle = 3",
        backends(&direct, APP_USER, "pool_warm").await
    );
    // One in use: three idle ones are still kept.
    client.batch_execute("begin; select 1").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            backends(&direct, APP_USER, "pool_warm").await == 4
        })
        .await,
        "{} server connections with one in use",
        backends(&direct, APP_USER, "pool_warm").await
    );
    client.batch_execute("commit").await.unwrap();
    // server_idle_timeout closes the extra one, never going below min_idle.
    assert!(
        eventually(Duration::from_secs(4), || async {
            backends(&direct, APP_USER, "pool_warm").await == 3
        })
        .await
    );
    // At shutdown the warm connections are closed.
    proxy.app.shutdown(Duration::from_secs(1)).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            backends(&direct, APP_USER, "pool_warm").await == 0
        })
        .await,
        "{} server connections left after shutdown",
        backends(&direct, APP_USER, "pool_warm").await
    );
}
