//! Session lifecycle through the proxy, against a real cluster: startup parameters, cancel,
//! clients that vanish in the middle of things, backends that die, and proxy shutdown. The
//! primary is checked directly (`pg_stat_activity`) for what a DBA would look for: no session
//! left `idle in transaction`, no query left running, no row left behind.
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use causeway::cluster::{APP_PASSWORD, APP_TRUST_USER, APP_USER};
use common::raw;
use common::{connect_direct, connect_observed, sqlstate, wait_backend, wait_backend_not};
use futures_util::{pin_mut, SinkExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn count_direct(sql: &str) -> i64 {
    connect_direct(0)
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

// === 16. startup parameters ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_reach_the_server() {
    let proxy = common::start_proxy().await;
    let extra =
        " application_name=causeway_test_x options='-c search_path=foo,public -c work_mem=5MB'";
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres") + extra;
    let (client, conn) = tokio_postgres::connect(&info, NoTls).await.unwrap();
    tokio::spawn(conn);
    // What a direct connection with the same parameters shows is what the proxy must show.
    let direct_info = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname=postgres{extra}",
        common::cluster().port(0).unwrap()
    );
    let (direct, conn) = tokio_postgres::connect(&direct_info, NoTls).await.unwrap();
    tokio::spawn(conn);
    for setting in ["application_name", "search_path", "work_mem"] {
        let sql = format!("show {setting}");
        let via_proxy: String = client.query_one(&sql, &[]).await.unwrap().get(0);
        let direct: String = direct.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(via_proxy, direct, "{setting}");
    }
    let name: String = client
        .query_one("show application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "causeway_test_x");
    let path: String = client
        .query_one("show search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        path.starts_with("foo,") || path.starts_with("foo, "),
        "{path}"
    );
    // pg_stat_activity on the primary shows the client's application_name.
    let pid = backend_pid(&client).await;
    assert!(
        wait_backend(
            &connect_direct(0).await,
            pid,
            "application_name = 'causeway_test_x'",
            Duration::from_secs(2)
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_startup_parameter_fails_with_the_server_sqlstate() {
    let proxy = common::start_proxy().await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres")
        + " options='-c statement_timeout=banana'";
    let err = tokio_postgres::connect(&info, NoTls)
        .await
        .err()
        .expect("an invalid parameter value must fail the connection");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_PARAMETER_VALUE),
        "{err}"
    );
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres")
        + " options='-c no_such_setting_at_all=1'";
    let err = tokio_postgres::connect(&info, NoTls)
        .await
        .err()
        .expect("unknown setting");
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_OBJECT), "{err}");
    // The proxy is fine afterwards, and the pooled server connection carries no leftovers.
    let client = proxy.connect().await;
    let t: String = client
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_does_not_leak_to_the_next_client() {
    // One server connection, so the second client is sure to get the first one's.
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 1\n").await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres")
        + " application_name=leaky options='-c search_path=leak,public'";
    let (first, conn) = tokio_postgres::connect(&info, NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    let pid = backend_pid(&first).await;
    first
        .batch_execute(
            "set work_mem = '7MB'; prepare leak_stmt as select 1; \
             create temp table leak_tmp (x int)",
        )
        .await
        .unwrap();
    drop(first);
    task.await.unwrap().unwrap();

    let second = proxy.connect().await;
    assert_eq!(
        backend_pid(&second).await,
        pid,
        "the pool did not reuse the server connection; this test proves nothing"
    );
    let row = second
        .query_one(
            "select current_setting('application_name'), current_setting('search_path'), \
             current_setting('work_mem'), \
             (select count(*) from pg_prepared_statements where name = 'leak_stmt'), \
             (select count(*) from pg_class where relname = 'leak_tmp')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "");
    assert_eq!(row.get::<_, &str>(1), "\"$user\", public");
    assert_eq!(row.get::<_, &str>(2), "4MB");
    assert_eq!(row.get::<_, i64>(3), 0);
    assert_eq!(row.get::<_, i64>(4), 0);
}

// === 11. clients that vanish ===

/// Whether backend `pid` is idle in an open transaction (what the tests below expect before
/// the client vanishes, so that they test something).
async fn in_transaction(direct: &tokio_postgres::Client, pid: i32) -> bool {
    wait_backend(
        direct,
        pid,
        "state = 'idle in transaction' and backend_xid is not null",
        Duration::from_secs(2),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_transaction_leaves_nothing_open() {
    let proxy = common::start_proxy().await;
    let direct = connect_direct(0).await;
    let setup = proxy.connect().await;
    setup
        .batch_execute("create table gone_t (how text); grant insert on gone_t to app_trust")
        .await
        .unwrap();
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");

    // Three ways to go: Terminate (client dropped), socket closed (task aborted), reset (RST).
    for how in ["terminate", "abort", "reset"] {
        let pid;
        if how == "reset" {
            let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
            let msgs = conn
                .simple_query(&format!(
                    "begin; insert into gone_t values ('{how}'); select pg_backend_pid()"
                ))
                .await;
            assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
            let row = msgs.iter().find(|m| m.tag == b'D').unwrap();
            pid = row.data_row()[0].as_deref().unwrap().parse().unwrap();
            assert_eq!(msgs.last().unwrap().body[0], b'T', "not in a transaction");
            assert!(in_transaction(&direct, pid).await);
            conn.reset_on_drop();
            drop(conn);
        } else {
            let c = connect_observed(&info).await.unwrap();
            c.client
                .batch_execute(&format!("begin; insert into gone_t values ('{how}')"))
                .await
                .unwrap();
            pid = backend_pid(&c.client).await;
            assert!(in_transaction(&direct, pid).await);
            if how == "abort" {
                c.task.abort();
            }
            drop(c.client);
        }
        assert!(
            wait_backend_not(
                &direct,
                pid,
                "state like 'idle in transaction%' or backend_xid is not null",
                Duration::from_secs(5)
            )
            .await,
            "{how}: backend {pid} still in a transaction"
        );
    }
    assert_eq!(count_direct("select count(*) from gone_t").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_query_stops_the_query() {
    let proxy = common::start_proxy().await;
    let direct = connect_direct(0).await;
    // The socket closed (FIN) or reset (RST) while the server runs the client's query.
    for how in ["close", "reset"] {
        let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
        let msgs = conn.simple_query("select pg_backend_pid()").await;
        let pid: i32 = msgs.iter().find(|m| m.tag == b'D').unwrap().data_row()[0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        conn.send(&raw::query("select pg_sleep(30)")).await;
        assert!(
            wait_backend(
                &direct,
                pid,
                "state = 'active' and query = 'select pg_sleep(30)'",
                Duration::from_secs(5)
            )
            .await
        );
        let started = Instant::now();
        if how == "reset" {
            conn.reset_on_drop();
        }
        drop(conn);
        assert!(
            wait_backend_not(&direct, pid, "state = 'active'", Duration::from_secs(5)).await,
            "{how}: pg_sleep(30) still running on backend {pid}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The same for a tokio-postgres client whose connection task is aborted mid-query.
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    let pid = backend_pid(&c.client).await;
    let client = c.client;
    let query = tokio::spawn(async move { client.batch_execute("select pg_sleep(30)").await });
    assert!(
        wait_backend(
            &direct,
            pid,
            "state = 'active' and query = 'select pg_sleep(30)'",
            Duration::from_secs(5)
        )
        .await
    );
    c.task.abort();
    assert!(
        wait_backend_not(&direct, pid, "state = 'active'", Duration::from_secs(5)).await,
        "pg_sleep(30) still running on backend {pid}"
    );
    assert!(query.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_copy_frees_its_server_connection() {
    // One server connection: the next client needs the one the vanished client held.
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 1\n").await;
    let setup = proxy.connect().await;
    setup
        .batch_execute("create table gone_copy_t (id int)")
        .await
        .unwrap();
    drop(setup);
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    let sink = c
        .client
        .copy_in::<_, Bytes>("COPY gone_copy_t FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\n2\n3\n")).await.unwrap();
    sink.flush().await.unwrap();
    c.task.abort();
    let started = Instant::now();
    let next = proxy.connect().await;
    let n: i64 = next
        .query_one("select count(*) from gone_copy_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "the next client waited {waited:?} for the server connection"
    );
}

/// A client that vanishes inside COPY FROM STDIN (extended protocol, as tokio-postgres and
/// most drivers send it) must not leave "protocol synchronization was lost" in the server log.
/// The proxy ends the abandoned COPY with CopyFail (+ Sync) before the connection is reused;
/// dropping the socket or sending anything else makes PostgreSQL log "terminating connection
/// because protocol synchronization was lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_copy_leaves_no_protocol_error_on_the_server() {
    let proxy = common::start_proxy().await;
    let setup = proxy.connect().await;
    setup
        .batch_execute("create table gone_copy_log_t (id int)")
        .await
        .unwrap();
    let log = common::cluster().log_file(0).unwrap().to_owned();
    let before = std::fs::read_to_string(&log).unwrap().len();
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    let pid = backend_pid(&c.client).await;
    let sink = c
        .client
        .copy_in::<_, Bytes>("COPY gone_copy_log_t FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\n")).await.unwrap();
    sink.flush().await.unwrap();
    c.task.abort();
    let direct = connect_direct(0).await;
    assert!(
        wait_backend_not(
            &direct,
            pid,
            "query like 'COPY%' and state = 'active'",
            Duration::from_secs(5)
        )
        .await
    );
    let bad_line = || {
        let text = std::fs::read_to_string(&log).unwrap();
        text[before..]
            .lines()
            .find(|l| l.contains(&format!("[{pid}]")) && l.contains("protocol synchronization"))
            .map(str::to_owned)
    };
    let appeared =
        common::eventually(Duration::from_secs(1), || async { bad_line().is_some() }).await;
    assert!(!appeared, "server log: {:?}", bad_line());
}

// === 12. cancel ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_only_the_clients_own_query() {
    let proxy = common::start_proxy().await;
    let direct = connect_direct(0).await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    let token = a.cancel_token();
    let a_query = tokio::spawn(async move {
        let started = Instant::now();
        let r = a.query("select pg_sleep(10)", &[]).await.map(|_| ());
        (a, r, started.elapsed())
    });
    let b_query = tokio::spawn(async move {
        let r = b
            .query_one("select pg_sleep(1.5)::text, 'b done'", &[])
            .await;
        (b, r)
    });
    // With transaction pooling the server process behind a client changes between requests:
    // find the two running queries by their text.
    for q in [
        "select pg_sleep(10)",
        "select pg_sleep(1.5)::text, 'b done'",
    ] {
        assert!(
            running_query_pid(&direct, q).await.is_some(),
            "{q} never ran"
        );
    }
    token.cancel_query(NoTls).await.unwrap();
    let (a, r, took) = a_query.await.unwrap();
    let err = r.expect_err("the query must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "cancelled only after {took:?}"
    );
    // B was not touched.
    let (b, r) = b_query.await.unwrap();
    assert_eq!(r.unwrap().get::<_, &str>(1), "b done");
    // Both sessions go on.
    assert_eq!(
        a.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    assert_eq!(
        b.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
    // A cancel while nothing runs is harmless.
    token.cancel_query(NoTls).await.unwrap();
    assert_eq!(
        a.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0),
        3
    );
}

// === backends that die ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_reports_57p01_once() {
    // Session pooling: the client's session lives on that one server process, so its end is
    // the client's end too, as on a direct connection.
    let proxy = common::start_proxy_with("pool_mode = \"session\"", "").await;
    let direct = connect_direct(0).await;
    // An idle client whose backend an administrator terminates.
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    let pid = backend_pid(&c.client).await;
    direct
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), c.task)
        .await
        .expect("the client connection must end")
        .unwrap();
    let err = ended.expect_err("the connection must end with the server's error");
    // tokio-postgres reports the unsolicited FATAL as a database error, or, when it notices
    // the closed socket first, as "connection closed"; either way the connection ended. The
    // exact bytes on the wire are checked below.
    if let Some(code) = sqlstate(&err) {
        assert_eq!(code, "57P01", "{err}");
    }
    assert!(c.client.query_one("select 1", &[]).await.is_err());

    // On the wire: exactly one ErrorResponse (the server's), then the connection closes.
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    conn.send(&raw::query("select pg_terminate_backend(pg_backend_pid())"))
        .await;
    let msgs = conn
        .recv_until_closed(Duration::from_secs(5))
        .await
        .expect("connection closed");
    let errors: Vec<_> = msgs
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| m.error())
        .collect();
    assert_eq!(errors.len(), 1, "{msgs:?}");
    assert_eq!(errors[0].code, "57P01");
    // The proxy serves new clients.
    let client = proxy.connect().await;
    assert_eq!(
        client
            .query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// The pid of the server process running `query` (exact text), waiting up to 5 s for it.
async fn running_query_pid(direct: &tokio_postgres::Client, query: &str) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = direct
            .query(
                "select pid from pg_stat_activity where state = 'active' and query = $1",
                &[&query],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            return Some(r.get(0));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_fails_one_request_in_transaction_pooling() {
    let proxy = common::start_proxy().await;
    let direct = connect_direct(0).await;
    // Tagged, so that terminating "the pooled server processes" below picks this proxy's only,
    // not those of tests running beside it on the shared cluster.
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres")
        + " application_name=terminated_backend_test";
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&info, NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    let client = connect().await;
    // The query's server process is terminated while it runs: the client gets the server's
    // error as an ERROR, and its connection goes on with another server process.
    const Q: &str = "select pg_sleep(30) /* terminated */";
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query(Q).await;
        (client, r)
    });
    let pid = running_query_pid(&direct, Q).await.expect("the query runs");
    direct
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let (client, r) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the request ends")
        .unwrap();
    let err = r.expect_err("the request fails");
    assert_eq!(sqlstate(&err), Some("57P01"), "{err}");
    let row = client.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    // An idle client does not notice pooled server processes going away.
    let idle = connect().await;
    let pooled: Vec<i32> = direct
        .query(
            "select pid from pg_stat_activity where usename = 'app' and state = 'idle' \
             and application_name = 'terminated_backend_test'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!pooled.is_empty());
    for p in &pooled {
        let _ = direct
            .query_one("select pg_terminate_backend($1)", &[p])
            .await;
    }
    // pg_terminate_backend only signals: wait until the processes are gone.
    assert!(
        common::eventually(Duration::from_secs(5), || {
            let (direct, pooled) = (&direct, &pooled);
            async move {
                let left: i64 = direct
                    .query_one(
                        "select count(*) from pg_stat_activity where pid = any($1)",
                        &[pooled],
                    )
                    .await
                    .unwrap()
                    .get(0);
                left == 0
            }
        })
        .await,
        "terminated server processes exit"
    );
    assert_eq!(
        idle.query_one("select 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

// === 17. shutdown ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_sessions_with_57p01() {
    let proxy = common::start_proxy().await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    // A simple query: `query_one` would leave tokio-postgres closing its prepared statement in
    // the background, and a shutdown racing a request in flight ends the connection with the
    // FATAL taken as that request's reply (as with PostgreSQL itself).
    let rows = c.client.simple_query("select 1").await.unwrap();
    assert_eq!(rows.len(), 3, "RowDescription, Row, CommandComplete");
    let started = Instant::now();
    proxy.app.shutdown(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an idle session held shutdown"
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), c.task)
        .await
        .expect("the client connection must end")
        .unwrap();
    let err = ended.expect_err("the connection ends with an error");
    assert_eq!(sqlstate(&err), Some("57P01"), "{err} {err:?}");
    assert!(c.client.query_one("select 1", &[]).await.is_err());
    // Nobody is accepted any more.
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_open_transaction_commit() {
    let proxy = common::start_proxy().await;
    let setup = proxy.connect().await;
    setup
        .batch_execute("create table shutdown_t (id int)")
        .await
        .unwrap();
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    c.client
        .batch_execute("begin; insert into shutdown_t values (1)")
        .await
        .unwrap();
    let app = proxy.app.clone();
    let shutdown = tokio::spawn(async move {
        let started = Instant::now();
        app.shutdown(Duration::from_secs(5)).await;
        started.elapsed()
    });
    assert!(
        common::eventually(Duration::from_secs(2), || async {
            proxy.app.shutdown_token().is_cancelled()
        })
        .await
    );
    // Inside the grace period the transaction goes on and commits.
    c.client
        .batch_execute("insert into shutdown_t values (2)")
        .await
        .unwrap();
    c.client.batch_execute("commit").await.unwrap();
    let took = shutdown.await.unwrap();
    assert!(took < Duration::from_secs(4), "shutdown waited {took:?}");
    let ended = tokio::time::timeout(Duration::from_secs(2), c.task)
        .await
        .expect("the client connection must end after its transaction")
        .unwrap();
    assert_eq!(sqlstate(&ended.unwrap_err()), Some("57P01"));
    assert_eq!(count_direct("select count(*) from shutdown_t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_over_ends_remaining_sessions() {
    let proxy = common::start_proxy().await;
    let direct = connect_direct(0).await;
    let setup = proxy.connect().await;
    setup
        .batch_execute("create table shutdown_late_t (id int)")
        .await
        .unwrap();
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let c = connect_observed(&info).await.unwrap();
    c.client
        .batch_execute("begin; insert into shutdown_late_t values (1)")
        .await
        .unwrap();
    let pid = backend_pid(&c.client).await;
    proxy.app.shutdown(Duration::from_millis(500)).await;
    // Once shutdown has returned, the proxy is gone: the client is disconnected and its
    // transaction rolled back on the server.
    let ended = tokio::time::timeout(Duration::from_secs(3), c.task).await;
    assert!(
        ended.is_ok(),
        "client still connected after shutdown returned"
    );
    assert!(
        wait_backend_not(
            &direct,
            pid,
            "state like 'idle in transaction%'",
            Duration::from_secs(3)
        )
        .await,
        "transaction still open on the primary after shutdown"
    );
    assert_eq!(
        count_direct("select count(*) from shutdown_late_t").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_terminate_ends_the_session_cleanly() {
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    conn.send(&raw::frame(b'X', b"")).await;
    let msgs = conn
        .recv_until_closed(Duration::from_secs(3))
        .await
        .expect("closed after Terminate");
    assert!(msgs.is_empty(), "{msgs:?}");
}

// === client_idle_timeout ===

const IDLE_1S: &str = "client_idle_timeout = \"1s\"";

/// Waits (up to 10 s) for the proxy to end an observed connection; the error it ended with.
async fn ended_by_proxy(c: common::Observed) -> tokio_postgres::Error {
    match tokio::time::timeout(Duration::from_secs(10), c.task).await {
        Ok(Ok(Err(e))) => e,
        other => panic!("the proxy did not end the connection with an error: {other:?}"),
    }
}

/// A client through `proxy` that has sent one request and is idle from now on.
async fn idle_client(proxy: &common::Proxy) -> common::Observed {
    let c = connect_observed(&proxy.conninfo(APP_USER, APP_PASSWORD, "postgres"))
        .await
        .unwrap();
    c.client.batch_execute("select 1").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_an_idle_client_with_57p05() {
    let proxy = common::start_proxy_with(IDLE_1S, "").await;
    let c = idle_client(&proxy).await;
    // Requests keep it open for longer than the timeout: it counts from the last one.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.client.batch_execute("select 1").await.unwrap();
    }
    let idle_since = Instant::now();
    let err = ended_by_proxy(c).await;
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    assert_eq!(err.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err:?}");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains("client_idle_timeout"), "{db:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_spares_open_transactions_and_running_queries() {
    let proxy = common::start_proxy_with(IDLE_1S, "").await;
    let in_tx = idle_client(&proxy).await;
    in_tx.client.batch_execute("begin").await.unwrap();
    let busy = idle_client(&proxy).await;
    let query = busy.client.batch_execute("select pg_sleep(2.5)");
    // A client idle since after both started (`join!` polls the query first, which sends it)
    // is closed first...
    let witness = async { ended_by_proxy(idle_client(&proxy).await).await };
    let (ran, ended) = tokio::join!(query, witness);
    assert_eq!(ended.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT));
    // ...while the query ran to its end and the transaction is still open.
    ran.expect("the long query finishes");
    busy.client.batch_execute("select 1").await.unwrap();
    let rows = in_tx.client.simple_query("select 1").await.unwrap();
    assert_eq!(rows.len(), 3, "RowDescription, Row, CommandComplete");
    in_tx.client.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_0_never_closes() {
    let never = common::start_proxy().await;
    let c = idle_client(&never).await;
    // A client of a proxy with the timeout on, idle for less long, is closed first.
    let timed = common::start_proxy_with(IDLE_1S, "").await;
    let witness = idle_client(&timed).await;
    ended_by_proxy(witness).await;
    c.client.batch_execute("select 1").await.unwrap();
    assert!(!c.task.is_finished());
}

// === idle clients given back their memory (issue 17) ===

/// Clients idle through two idle sweeps (the first sees their last request, the second asks
/// them to trim: read buffer and write queue given back, and, with nothing held, the session
/// parked without its relay, counted in `clients_parked`) are served afterwards as if nothing
/// happened: a plain query, a statement prepared before the sleep, an open transaction (which
/// holds its server connection, so it trims but does not park), and a client that never sent a
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_idle_through_the_idle_sweep_are_served_as_before() {
    let proxy = common::start_proxy().await;
    proxy
        .connect()
        .await
        .batch_execute("create table idle_sweep_t (id int)")
        .await
        .unwrap();
    let plain = idle_client(&proxy).await;
    let prepared = idle_client(&proxy).await;
    let stmt = prepared.client.prepare("select $1::int + 1").await.unwrap();
    let in_tx = idle_client(&proxy).await;
    in_tx
        .client
        .batch_execute("begin; insert into idle_sweep_t values (1)")
        .await
        .unwrap();
    let fresh = connect_observed(&proxy.conninfo(APP_USER, APP_PASSWORD, "postgres"))
        .await
        .unwrap();

    // The fresh client is parked from its login on; the others once the second sweep after
    // their last request finds them silent. The transaction holds its server connection: it
    // gives back its buffers but is not parked.
    let parked = || proxy.app.ctx().metrics().clients_parked.get();
    let sweeps = causeway::session::cancel::TRIM_INTERVAL * 2 + Duration::from_secs(5);
    assert!(
        common::eventually(sweeps, || async { parked() == 3 }).await,
        "plain, prepared and fresh parked after two sweeps; clients_parked = {}",
        parked()
    );

    let served = async {
        plain.client.batch_execute("select 1").await.unwrap();
        let row = prepared.client.query_one(&stmt, &[&41i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        in_tx
            .client
            .batch_execute("insert into idle_sweep_t values (2); commit")
            .await
            .unwrap();
        let row = fresh
            .client
            .query_one("select count(*) from idle_sweep_t", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 2, "the transaction's rows, committed");
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("idle clients must be served after the sweep");
    for c in [&plain, &prepared, &in_tx, &fresh] {
        assert!(!c.task.is_finished(), "a connection ended while idle");
    }
    assert_eq!(parked(), 0, "every parked client was woken by its request");
    assert_eq!(count_direct("select count(*) from idle_sweep_t").await, 2);
}
