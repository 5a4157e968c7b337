//! Every request gets an answer when its server connection dies under it (issue 16, the soak's
//! "no answer" finding): a client may have several requests in flight on one server
//! connection at once (a driver that pipelines; tokio-postgres sends the Close + Sync of a
//! statement it dropped right in front of its next request), and when the server process
//! goes away (an administrator's `pg_terminate_backend`, a node stopped for a switchover), each
//! of them must end with an ErrorResponse and a ReadyForQuery, not only the first.
//!
//! Likewise a transaction lost while the client was idle in it: its error must reach the
//! client's next statement, not the Close + Sync the driver sent in front of it.
//!
//! The server process is terminated while it runs a `pg_sleep`, so the moment is known. Every
//! read has a deadline well below the sleep: a request without an answer fails the test.
mod common;

use std::time::Duration;

use causeway::cluster::APP_TRUST_USER;
use common::raw::{self, ext, Msg, RawConn};

/// How long the client waits for all its answers after the server process is terminated
/// (the sleeps run far longer: an answer in time comes from the proxy, not from the sleep
/// ending).
const ANSWER_LIMIT: Duration = Duration::from_secs(20);

/// Close of a prepared statement (the client drops one it prepared earlier).
fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    raw::frame(b'C', &b)
}

/// Reads until `n` ReadyForQuery messages arrived; fails (showing what came) if they do not
/// within [`ANSWER_LIMIT`].
async fn answers(conn: &mut RawConn, n: usize) -> Vec<Msg> {
    let deadline = tokio::time::Instant::now() + ANSWER_LIMIT;
    let mut msgs = Vec::new();
    while msgs.iter().filter(|m: &&Msg| m.tag == b'Z').count() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.recv_within(left).await {
            Ok(m) => msgs.push(m),
            Err(e) => panic!(
                "{n} requests were in flight, {} got a ReadyForQuery ({e:?}); got {msgs:?}",
                msgs.iter().filter(|m| m.tag == b'Z').count()
            ),
        }
    }
    msgs
}

/// The requests' replies split at each ReadyForQuery.
fn per_request(msgs: &[Msg]) -> Vec<Vec<Msg>> {
    let mut out = vec![Vec::new()];
    for m in msgs {
        out.last_mut().unwrap().push(m.clone());
        if m.tag == b'Z' {
            out.push(Vec::new());
        }
    }
    out.pop();
    out
}

/// Terminates the primary's backend that runs a query containing `marker` (waiting until it
/// runs).
async fn terminate_running(marker: &str) {
    let direct = common::connect_direct(0).await;
    let like = format!("%{marker}%");
    let killed = common::eventually(Duration::from_secs(10), || async {
        let n: i64 = direct
            .query_one(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                 where query like $1 and state = 'active' and pid <> pg_backend_pid()",
                &[&like],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    })
    .await;
    assert!(killed, "the query {marker} runs on the primary");
}

/// The session goes on afterwards: a new request runs, outside any transaction.
async fn session_goes_on(conn: &mut RawConn) {
    let msgs = conn.simple_query("select 41 + 1").await;
    let row = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("a row: {msgs:?}"));
    assert_eq!(row.data_row(), vec![Some("42".to_owned())]);
    assert_eq!(&msgs.last().unwrap().body[..], b"I", "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_in_a_transaction_all_fail_when_the_backend_dies() {
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    let begun = conn.simple_query("begin").await;
    assert_eq!(&begun.last().unwrap().body[..], b"T", "{begun:?}");
    // What the soak's transaction client sends: a statement running, then (pipelined) the
    // Close + Sync of a statement it dropped, the next statement's Parse/Describe/Sync, and
    // the COMMIT.
    let marker = "noanswer_tx";
    let mut pipeline = raw::query(&format!("select pg_sleep(60) /* {marker} */"));
    pipeline.extend(close_statement("gone"));
    pipeline.extend(ext::sync());
    pipeline.extend(ext::parse("next", "select 1", &[]));
    pipeline.extend(ext::describe_statement("next"));
    pipeline.extend(ext::sync());
    pipeline.extend(raw::query("commit"));
    conn.send(&pipeline).await;
    terminate_running(marker).await;

    let msgs = answers(&mut conn, 4).await;
    let replies = per_request(&msgs);
    assert_eq!(replies.len(), 4, "{msgs:?}");
    // The running statement fails with the server's reason; each request behind it fails too
    // (the transaction is gone: none of them may run elsewhere, the COMMIT least of all).
    for (i, r) in replies.iter().enumerate() {
        let e = raw::first_error(r).unwrap_or_else(|| panic!("request {i} fails: {msgs:?}"));
        assert!(
            e.code == "57P01" || e.code == "08006",
            "request {i}: {e:?} ({msgs:?})"
        );
    }
    assert_eq!(raw::first_error(&replies[0]).unwrap().code, "57P01");
    assert_eq!(&msgs.last().unwrap().body[..], b"I", "{msgs:?}");
    session_goes_on(&mut conn).await;
}

/// A statement running in a transaction when its server process dies: it fails, and the
/// client is in a failed transaction block (nothing runs until its ROLLBACK), not outside the
/// transaction where a retry would autocommit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_in_flight_in_a_transaction_leaves_a_failed_block() {
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    let begun = conn.simple_query("begin").await;
    assert_eq!(&begun.last().unwrap().body[..], b"T", "{begun:?}");
    let marker = "noanswer_inflight";
    conn.send(&raw::query(&format!("select pg_sleep(60) /* {marker} */")))
        .await;
    terminate_running(marker).await;
    let msgs = answers(&mut conn, 1).await;
    let e = raw::first_error(&msgs).unwrap_or_else(|| panic!("it fails: {msgs:?}"));
    assert!(e.code == "57P01" || e.code == "08006", "{e:?}");
    assert_eq!(&msgs.last().unwrap().body[..], b"E", "{msgs:?}");
    still_failed_until_rollback(&mut conn).await;
    session_goes_on(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_behind_a_running_one_all_get_an_answer_when_the_backend_dies() {
    // Outside a transaction: a request sent while the one before still runs follows it on the
    // same server connection (everything goes to the primary here).
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    let marker = "noanswer_auto";
    let mut pipeline = ext::parse("", &format!("select pg_sleep(60) /* {marker} */"), &[]);
    pipeline.extend(ext::bind("", &[]));
    pipeline.extend(ext::execute());
    pipeline.extend(ext::sync());
    pipeline.extend(close_statement("gone"));
    pipeline.extend(ext::sync());
    pipeline.extend(ext::parse("copy_out", "copy (select 1) to stdout", &[]));
    pipeline.extend(ext::describe_statement("copy_out"));
    pipeline.extend(ext::sync());
    conn.send(&pipeline).await;
    terminate_running(marker).await;

    let msgs = answers(&mut conn, 3).await;
    let replies = per_request(&msgs);
    assert_eq!(replies.len(), 3, "{msgs:?}");
    assert_eq!(
        raw::first_error(&replies[0])
            .unwrap_or_else(|| panic!("the running statement fails: {msgs:?}"))
            .code,
        "57P01"
    );
    // The requests behind it either failed with the connection or ran elsewhere: answered
    // either way, and the session is in step with the client.
    for (i, r) in replies.iter().enumerate().skip(1) {
        if let Some(e) = raw::first_error(r) {
            assert!(
                e.code == "57P01" || e.code == "08006",
                "request {i}: {e:?} ({msgs:?})"
            );
        }
    }
    session_goes_on(&mut conn).await;
}

/// Terminates the primary's backend whose pid is `pid`, and waits until it is gone.
async fn terminate_pid(pid: i32) {
    let direct = common::connect_direct(0).await;
    direct
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(
        common::wait_backend_not(&direct, pid, "true", Duration::from_secs(10)).await,
        "backend {pid} ends"
    );
}

/// Waits until `proxy` has dropped the server connection it held for its one client (it saw
/// the server's FATAL and the connection close).
async fn proxy_dropped_its_connection(proxy: &common::Proxy) {
    let dropped = common::eventually(Duration::from_secs(10), || async {
        let pools = proxy.app.ctx().pools().all();
        pools.iter().map(|p| p.in_use()).sum::<usize>() == 0
    })
    .await;
    assert!(dropped, "the proxy notices its server connection closed");
}

/// The server process of the client's open transaction (through the proxy).
async fn backend_in_transaction(conn: &mut RawConn) -> i32 {
    let begun = conn.simple_query("begin").await;
    assert_eq!(&begun.last().unwrap().body[..], b"T", "{begun:?}");
    let msgs = conn.simple_query("select pg_backend_pid()").await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    row.data_row()[0].as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lost_while_idle_fails_the_next_statement_not_a_close() {
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    for next in ["prepare", "commit"] {
        let pid = backend_in_transaction(&mut conn).await;
        terminate_pid(pid).await;
        proxy_dropped_its_connection(&proxy).await;
        // What tokio-postgres sends next in a transaction: the Close + Sync of the statement
        // it dropped (whose reply it ignores), then the next statement's Parse/Describe/Sync,
        // or the COMMIT. The error must reach that statement: the COMMIT of a lost transaction
        // must not succeed outside it.
        let mut pipeline = close_statement("gone");
        pipeline.extend(ext::sync());
        if next == "prepare" {
            pipeline.extend(ext::parse("next", "select 1", &[]));
            pipeline.extend(ext::describe_statement("next"));
            pipeline.extend(ext::sync());
        } else {
            pipeline.extend(raw::query("commit"));
        }
        conn.send(&pipeline).await;
        let msgs = answers(&mut conn, 2).await;
        let replies = per_request(&msgs);
        assert!(raw::first_error(&replies[0]).is_none(), "{next}: {msgs:?}");
        let e = raw::first_error(&replies[1])
            .unwrap_or_else(|| panic!("{next} fails with the lost transaction: {msgs:?}"));
        assert!(
            e.code == "57P01" || e.code == "08006",
            "{next}: {e:?} ({msgs:?})"
        );
        assert!(
            !replies[1].iter().any(|m| m.tag == b'C' || m.tag == b'1'),
            "{next} ran: {msgs:?}"
        );
        if next == "commit" {
            // The COMMIT ended the transaction (it did not commit: the client was told).
            assert_eq!(&replies[1].last().unwrap().body[..], b"I", "{msgs:?}");
        } else {
            // A failed transaction block, as on PostgreSQL after an error: nothing runs
            // until the client ends it, so a retried statement cannot autocommit.
            assert_eq!(&replies[1].last().unwrap().body[..], b"E", "{msgs:?}");
            still_failed_until_rollback(&mut conn).await;
        }
        session_goes_on(&mut conn).await;
    }
}

/// In the failed block a transaction lost while idle leaves: a statement fails with 25P02
/// without running (simple and extended protocol), then `ROLLBACK` (sent as a driver's
/// prepared statement is) ends the block.
async fn still_failed_until_rollback(conn: &mut RawConn) {
    let msgs = conn.simple_query("select 41 + 1").await;
    let e = raw::first_error(&msgs).unwrap_or_else(|| panic!("25P02: {msgs:?}"));
    assert_eq!(e.code, "25P02", "{msgs:?}");
    assert!(!msgs.iter().any(|m| m.tag == b'D'), "it ran: {msgs:?}");
    assert_eq!(&msgs.last().unwrap().body[..], b"E", "{msgs:?}");

    let mut pipeline = ext::parse("", "select 1", &[]);
    pipeline.extend(ext::bind("", &[]));
    pipeline.extend(ext::execute());
    pipeline.extend(ext::sync());
    conn.send(&pipeline).await;
    let msgs = answers(conn, 1).await;
    let e = raw::first_error(&msgs).unwrap_or_else(|| panic!("25P02: {msgs:?}"));
    assert_eq!(e.code, "25P02", "{msgs:?}");
    assert!(
        !msgs
            .iter()
            .any(|m| matches!(m.tag, b'1' | b'2' | b'D' | b'C')),
        "{msgs:?}"
    );
    assert_eq!(&msgs.last().unwrap().body[..], b"E", "{msgs:?}");

    let mut pipeline = ext::parse("", "ROLLBACK", &[]);
    pipeline.extend(ext::bind("", &[]));
    pipeline.extend(ext::execute());
    pipeline.extend(ext::sync());
    conn.send(&pipeline).await;
    let msgs = answers(conn, 1).await;
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"12CZ", "{msgs:?}");
    assert_eq!(&msgs[2].body[..], b"ROLLBACK\0", "{msgs:?}");
    assert_eq!(&msgs[3].body[..], b"I", "{msgs:?}");
}
