//! Protocol fidelity, round two (issue 19), against a real primary + 2 standbys: what a client
//! sees through the proxy must be what PostgreSQL itself would send, in both pool modes. A
//! pipeline that waits for an error without Sync, the unnamed prepared statement across a
//! Sync, reads a standby refuses during recovery, and the real backend pid in session mode.
//! Raw protocol where a driver cannot express the case.
mod common;

use std::time::Duration;

use common::raw::{self, ext, Msg, RawConn};
use common::{connect_direct, Proxy};

/// The two pool modes, as `[proxy]` lines.
const MODES: [&str; 2] = ["pool_mode = \"transaction\"", "pool_mode = \"session\""];

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

async fn login(proxy: &Proxy) -> RawConn {
    raw::login_trust(proxy.addr, causeway::cluster::APP_TRUST_USER, "postgres")
        .await
        .0
}

/// Every message up to and including the first with tag `tag`, failing (with what came) if
/// it does not come within a few seconds.
async fn recv_until_within(conn: &mut RawConn, tag: u8, mode: &str) -> Vec<Msg> {
    let mut got = Vec::new();
    loop {
        match conn.recv_within(Duration::from_secs(5)).await {
            Ok(m) => {
                let done = m.tag == tag;
                got.push(m);
                if done {
                    return got;
                }
            }
            Err(e) => panic!(
                "{mode}: waited for {:?}, got {e:?} after {:?}",
                tag as char,
                tags(&got)
            ),
        }
    }
}

// === 1. a pipeline without Sync that waits for an error ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_pipeline_without_sync_reaches_the_client() {
    connect_direct(0)
        .await
        .batch_execute(&format!(
            "create table pipe_err_t (id int primary key); insert into pipe_err_t values (1); \
             grant select, insert on pipe_err_t to {}",
            causeway::cluster::APP_TRUST_USER
        ))
        .await
        .unwrap();
    for mode in MODES {
        let proxy = common::start_proxy_with(mode, "").await;
        let mut conn = login(&proxy).await;

        // A good INSERT, then one that violates the key, and no Sync: PostgreSQL flushes at the
        // error, so the results before it and the error arrive without one.
        let mut b = ext::parse("", "insert into pipe_err_t values (2)", &[]);
        b.extend(ext::bind("", &[]));
        b.extend(ext::execute());
        b.extend(ext::parse("", "insert into pipe_err_t values (1)", &[]));
        b.extend(ext::bind("", &[]));
        b.extend(ext::execute());
        conn.send(&b).await;
        let got = recv_until_within(&mut conn, b'E', mode).await;
        assert_eq!(tags(&got), "12C12E", "{mode}: {got:?}");
        assert_eq!(got[5].sqlstate().as_deref(), Some("23505"), "{mode}");
        // The server skips to the Sync, which the client sends now.
        conn.send(&ext::sync()).await;
        let z = conn.recv().await;
        assert_eq!((z.tag, &z.body[..]), (b'Z', &b"I"[..]), "{mode}");

        // A notice is flushed as well.
        let mut b = ext::parse("", "do $$ begin raise notice 'pipelined'; end $$", &[]);
        b.extend(ext::bind("", &[]));
        b.extend(ext::execute());
        conn.send(&b).await;
        let got = recv_until_within(&mut conn, b'N', mode).await;
        assert_eq!(tags(&got), "12N", "{mode}");
        assert_eq!(got[2].error().message, "pipelined", "{mode}");
        conn.send(&ext::sync()).await;
        assert_eq!(tags(&conn.recv_until(b'Z').await), "CZ", "{mode}");

        // A Flush gets the replies so far, the Sync later the ReadyForQuery.
        let mut b = ext::parse("", "select 7", &[]);
        b.extend(ext::bind("", &[]));
        b.extend(ext::execute());
        b.extend(ext::flush());
        conn.send(&b).await;
        let got = recv_until_within(&mut conn, b'C', mode).await;
        assert_eq!(tags(&got), "12DC", "{mode}");
        conn.send(&ext::sync()).await;
        assert_eq!(tags(&conn.recv_until(b'Z').await), "Z", "{mode}");

        // The session goes on, and the good INSERT was kept (autocommit per Sync... the error
        // rolled back the implicit transaction of the whole pipeline, as directly).
        let msgs = conn.simple_query("select count(*) from pipe_err_t").await;
        let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
        assert_eq!(row.data_row(), vec![Some("1".to_owned())], "{mode}");
    }
}

// === 3. the unnamed prepared statement across a Sync ===

/// Sends `msgs` followed by Sync and returns the reply up to ReadyForQuery.
async fn request(conn: &mut RawConn, msgs: &[Vec<u8>]) -> Vec<Msg> {
    let mut b: Vec<u8> = msgs.concat();
    b.extend(ext::sync());
    conn.send(&b).await;
    conn.recv_until(b'Z').await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_outlives_its_request() {
    connect_direct(0)
        .await
        .batch_execute(&format!(
            "create table unnamed_t (v int); grant select, insert on unnamed_t to {}",
            causeway::cluster::APP_TRUST_USER
        ))
        .await
        .unwrap();
    for mode in MODES {
        let proxy = common::start_proxy_with(mode, "").await;
        let mut conn = login(&proxy).await;
        let mut other = login(&proxy).await;

        // PQsendPrepare with an empty name: Parse, Sync.
        let got = request(&mut conn, &[ext::parse("", "select $1::int * 2", &[23])]).await;
        assert_eq!(tags(&got), "1Z", "{mode}: {got:?}");
        // Another client takes the connection that answered (the pool hands out the last one
        // back first) and keeps it in a transaction, so in transaction pooling the next
        // request runs elsewhere.
        assert_eq!(tags(&other.simple_query("begin").await), "CZ", "{mode}");

        // PQsendQueryPrepared with an empty name: Bind, Execute, Sync.
        let got = request(&mut conn, &[ext::bind("", &["21"]), ext::execute()]).await;
        assert_eq!(tags(&got), "2DCZ", "{mode}: {got:?}");
        assert_eq!(got[1].data_row(), vec![Some("42".to_owned())], "{mode}");
        // PQsendDescribePrepared with an empty name.
        let got = request(&mut conn, &[ext::describe_statement("")]).await;
        assert_eq!(tags(&got), "tTZ", "{mode}: {got:?}");
        assert_eq!(tags(&other.simple_query("rollback").await), "CZ", "{mode}");

        // A write, executed twice after its Parse: whatever the proxy runs on the connection
        // between the requests (its own simple queries drop the unnamed statement) is unseen.
        let got = request(
            &mut conn,
            &[ext::parse("", "insert into unnamed_t values ($1)", &[])],
        )
        .await;
        assert_eq!(tags(&got), "1Z", "{mode}: {got:?}");
        for v in ["1", "2"] {
            let got = request(&mut conn, &[ext::bind("", &[v]), ext::execute()]).await;
            assert_eq!(tags(&got), "2CZ", "{mode}: {got:?}");
        }

        // A simple Query drops the unnamed statement, as it does directly.
        conn.simple_query("select 1").await;
        let got = request(&mut conn, &[ext::bind("", &["3"]), ext::execute()]).await;
        assert_eq!(tags(&got), "EZ", "{mode}: {got:?}");
        assert_eq!(got[0].sqlstate().as_deref(), Some("26000"), "{mode}");
    }
    let n: i64 = connect_direct(0)
        .await
        .query_one("select count(*) from unnamed_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_of_the_unnamed_statement_is_routed_by_its_text() {
    let proxy = common::start_routing_proxy("", "").await;
    let mut conn = login(&proxy).await;
    let got = request(
        &mut conn,
        &[ext::parse("", "select inet_server_port()::text", &[])],
    )
    .await;
    assert_eq!(tags(&got), "1Z", "{got:?}");
    // A read, sent to a standby and prepared there.
    let got = request(&mut conn, &[ext::bind("", &[]), ext::execute()]).await;
    assert_eq!(tags(&got), "2DCZ", "{got:?}");
    let port = got[1].data_row()[0].clone().unwrap();
    let c = common::cluster();
    let standbys = [
        c.port(1).unwrap().to_string(),
        c.port(2).unwrap().to_string(),
    ];
    assert!(standbys.contains(&port), "ran on port {port}");
}

// === 2. reads a standby refuses during recovery ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_a_standby_cannot_serve_is_rerun_on_the_primary_and_learned() {
    let c = common::cluster();
    connect_direct(0)
        .await
        .batch_execute(&format!(
            "create unlogged table unlogged_t (v int); insert into unlogged_t values (1), (2); \
             grant select on unlogged_t to {}",
            causeway::cluster::APP_USER
        ))
        .await
        .unwrap();
    c.wait_caught_up(Duration::from_secs(10)).unwrap();
    let proxy = common::start_routing_proxy("consistency = \"eventual\"", "").await;
    let client = proxy.connect().await;
    let primary = c.port(0).unwrap().to_string();
    let retries = || proxy.app.metrics().misroute_retries.get();

    // Plain reads still go to a standby.
    let row = client
        .query_one("select inet_server_port()::text", &[])
        .await
        .unwrap();
    assert_ne!(row.get::<_, String>(0), primary);

    // A standby refuses (0A000, "cannot access temporary or unlogged relations during
    // recovery"): the read runs on the primary unseen, and the text is learned.
    let sql = "select count(*)::text, inet_server_port()::text from unlogged_t";
    for i in 0..2 {
        let msgs = client.simple_query(sql).await.unwrap();
        let row = msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        assert_eq!(
            (row.get(0), row.get(1)),
            (Some("2"), Some(primary.as_str())),
            "run {i}"
        );
        assert_eq!(retries(), 1, "after run {i}");
    }
    // The extended protocol, with a parameter.
    let n: i64 = client
        .query_one("select count(*) from unlogged_t where v > $1", &[&0i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

// === 4. session mode: the real backend pid ===

/// The first DataRow's first column among `msgs`.
fn first_value(msgs: &[Msg]) -> String {
    let row = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("no row in {msgs:?}"));
    row.data_row()[0].clone().expect("not NULL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_tells_the_client_its_real_backend_pid() {
    let proxy = common::start_proxy_with(MODES[1], "").await;
    let (mut conn, key) =
        raw::login_trust(proxy.addr, causeway::cluster::APP_TRUST_USER, "postgres").await;
    let pid = key.pid.to_string();
    assert_eq!(
        first_value(&conn.simple_query("select pg_backend_pid()").await),
        pid
    );
    let direct = connect_direct(0).await;
    let user: String = direct
        .query_one(
            "select usename::text from pg_stat_activity where pid = $1",
            &[&key.pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, causeway::cluster::APP_TRUST_USER);

    // A notification carries the same pid.
    conn.simple_query("listen fidelity_chan").await;
    let msgs = conn.simple_query("notify fidelity_chan, 'hi'").await;
    let a = msgs
        .iter()
        .find(|m| m.tag == b'A')
        .unwrap_or_else(|| panic!("no notification in {msgs:?}"));
    assert_eq!(&a.body[..4], &key.pid.to_be_bytes());

    // A cancel with the key still works (the secret is the proxy's own).
    conn.send(&raw::query("select pg_sleep(30)")).await;
    assert!(
        common::wait_backend(
            &direct,
            key.pid,
            "state = 'active'",
            Duration::from_secs(10)
        )
        .await
    );
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&raw::cancel_request(key.pid, key.secret)).await;
    let msgs = conn.recv_until(b'Z').await;
    assert_eq!(
        raw::first_error(&msgs).map(|e| e.code).as_deref(),
        Some("57014")
    );
    // A wrong secret does nothing.
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&raw::cancel_request(key.pid, key.secret.wrapping_add(1)))
        .await;
    assert_eq!(first_value(&conn.simple_query("select 1").await), "1");

    // The server connection dies: the client gets the server's error and is disconnected, as
    // it would be directly.
    direct
        .execute("select pg_terminate_backend($1)", &[&key.pid])
        .await
        .unwrap();
    let msgs = conn
        .recv_until_closed(Duration::from_secs(10))
        .await
        .unwrap_or_else(|m| panic!("still open after {m:?}"));
    let e = raw::first_error(&msgs).unwrap_or_else(|| panic!("no error in {msgs:?}"));
    assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "57P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_keeps_the_proxy_pid_and_outlives_its_server_connection() {
    let proxy = common::start_proxy_with(MODES[0], "").await;
    let (mut conn, key) =
        raw::login_trust(proxy.addr, causeway::cluster::APP_TRUST_USER, "postgres").await;
    let backend: i32 = first_value(&conn.simple_query("select pg_backend_pid()").await)
        .parse()
        .unwrap();
    assert_ne!(backend, key.pid);
    let direct = connect_direct(0).await;
    direct
        .execute("select pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap();
    assert!(common::wait_backend_not(&direct, backend, "true", Duration::from_secs(10)).await);
    // The next request gets another server connection.
    assert_eq!(first_value(&conn.simple_query("select 1").await), "1");
}
