//! Hostile clients and faults (issue 16), through the proxy in front of a real cluster: state a
//! client can make the proxy create is bounded and goes away, and what such a client gets is
//! PostgreSQL's own error.
mod common;
#[path = "common/relay.rs"]
mod relay;

use std::time::Duration;

use causeway::cluster::{APP_PASSWORD, APP_TRUST_USER, APP_USER};
use common::eventually;
use common::raw::{self, RawConn};

/// Lines of node `n`'s server log that contain `needle`.
fn log_lines_with(n: usize, needle: &str) -> usize {
    let path = common::cluster().log_file(n).unwrap();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonexistent_databases_leave_no_state_and_no_reconnects() {
    let proxy = common::start_proxy().await;
    let primary = common::cluster().primary().unwrap();
    // A prefix no other test uses, so that the primary's log lines are this test's.
    let prefix = format!("cw_nodb_{}", rand::random::<u32>());
    for i in 0..30 {
        let db = format!("{prefix}_{i}");
        let err = proxy
            .connect_as(APP_TRUST_USER, "unused", &db)
            .await
            .err()
            .unwrap_or_else(|| panic!("database {db} does not exist"));
        assert_eq!(common::sqlstate(&err), Some("3D000"), "{err}");
    }
    // The clients have left: no pool or catalog is kept for a database that does not exist.
    let gone = eventually(Duration::from_secs(5), || async {
        let pools = proxy.app.pools().all();
        let catalogs = proxy.app.catalog_databases();
        !pools.iter().any(|p| p.key().database.starts_with(&prefix))
            && !catalogs.iter().any(|d| d.starts_with(&prefix))
    })
    .await;
    assert!(
        gone,
        "pools: {:?}, catalogs: {:?}",
        proxy.app.pools().all(),
        proxy.app.catalog_databases()
    );
    // And nothing connects to the primary on their behalf any more: its log of refused
    // connections to these names stops growing.
    let before = log_lines_with(primary, &prefix);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = log_lines_with(primary, &prefix);
    assert_eq!(
        before, after,
        "connections to nonexistent databases went on after the clients left"
    );
    // A database that exists still gets its catalog.
    let client = proxy.connect().await;
    client.simple_query("select 1").await.unwrap();
    let loaded = eventually(Duration::from_secs(5), || async {
        proxy
            .app
            .catalog_databases()
            .iter()
            .any(|d| d == "postgres")
    })
    .await;
    assert!(loaded, "catalog of an existing database");
}

// === pre-auth connections, idle transactions (item 7) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_log_in_do_not_lock_clients_out() {
    let proxy = common::start_proxy_with(
        "max_client_connections = 2\nmax_startup_connections = 3",
        "",
    )
    .await;
    // Two sockets that never send a byte: before, they held both client slots.
    let silent: Vec<RawConn> = vec![
        RawConn::connect(proxy.addr).await,
        RawConn::connect(proxy.addr).await,
    ];
    let a = proxy.connect().await;
    let b = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres")
        .await
        .expect("a second client logs in past the silent sockets");
    // Logged-in clients are counted on their own: a third is refused after it logs in.
    let err = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres")
        .await
        .expect_err("over max_client_connections");
    assert_eq!(common::sqlstate(&err), Some("53300"), "{err}");
    // A third silent socket fills the startup slots: the next connection is refused at once.
    let third = RawConn::connect(proxy.addr).await;
    let mut refused = RawConn::connect(proxy.addr).await;
    refused
        .send(&raw::startup(&[
            ("user", APP_TRUST_USER),
            ("database", "postgres"),
        ]))
        .await;
    let msgs = refused
        .recv_until_closed(Duration::from_secs(3))
        .await
        .expect("refused and closed at once");
    let e = raw::first_error(&msgs).expect("an error before the close");
    assert_eq!(e.code, "53300", "{e:?}");
    drop(silent);
    drop(third);
    drop(b);
    let back = eventually(Duration::from_secs(5), || async {
        proxy
            .connect_as(APP_USER, APP_PASSWORD, "postgres")
            .await
            .is_ok()
    })
    .await;
    assert!(back, "slots come back");
    a.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_is_ended_with_25p03_and_rolled_back() {
    let proxy = common::start_proxy_with("idle_transaction_timeout = \"700ms\"", "").await;
    let primary = common::cluster().primary().unwrap();
    let direct = common::connect_direct(primary).await;
    direct
        .batch_execute(
            "create table if not exists hostile_itx (v int); grant all on hostile_itx to public",
        )
        .await
        .unwrap();
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    let msgs = conn
        .simple_query(
            "begin; lock table hostile_itx in access exclusive mode; select pg_backend_pid()",
        )
        .await;
    assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
    let pid: i32 = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .and_then(|m| m.data_row()[0].clone())
        .unwrap()
        .parse()
        .unwrap();
    let start = std::time::Instant::now();
    let msgs = conn
        .recv_until_closed(Duration::from_secs(5))
        .await
        .expect("the idle client is disconnected");
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "not before its time"
    );
    let e = raw::first_error(&msgs).expect("FATAL before the close");
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("FATAL", "25P03"),
        "{e:?}"
    );
    // The server connection was rolled back: its lock is gone and it is idle (kept for reuse)
    // or closed, never idle in a transaction.
    let clean =
        common::wait_backend_not(&direct, pid, "state <> 'idle'", Duration::from_secs(5)).await;
    assert!(clean, "server connection rolled back");
    let locks: i64 = direct
        .query_one(
            "select count(*) from pg_locks where relation = 'hostile_itx'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0);
    // Idle outside a transaction is not limited by this key.
    let (mut idle, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let msgs = idle.simple_query("select 1").await;
    assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
}

// === memory one client controls (item 4) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_of_a_guarded_request_are_not_held_without_bound() {
    let proxy = common::start_proxy().await;
    let conninfo = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let mut observed = common::connect_observed(&conninfo).await.unwrap();
    // A named prepared statement run outside a transaction is guarded (a stale plan would be
    // re-run): its notices used to be held until the statement answered.
    let stmt = observed
        .client
        .prepare(
            "DO $$ BEGIN FOR i IN 1..4000 LOOP RAISE NOTICE '%', repeat('n', 200); END LOOP; \
             PERFORM pg_sleep(3); END $$",
        )
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let client = &observed.client;
    let run = client.execute(&stmt, &[]);
    tokio::pin!(run);
    let mut notices = 0;
    let streamed = loop {
        tokio::select! {
            r = &mut run => {
                r.unwrap();
                break false;
            }
            m = observed.messages.recv() => {
                if matches!(m, Some(tokio_postgres::AsyncMessage::Notice(_))) {
                    notices += 1;
                }
                if notices >= 1000 {
                    break true;
                }
            }
        }
    };
    assert!(
        streamed && start.elapsed() < Duration::from_millis(2500),
        "notices must reach the client while the statement runs (got {notices} in {:?})",
        start.elapsed()
    );
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_per_client_are_capped_with_54000() {
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    // Parses in batches of 500 up to the limit (10 000), then one more.
    let mut n = 0;
    while n < 10_000 {
        let mut bytes = Vec::new();
        for _ in 0..500 {
            let mut body = format!("s{n}\0select {n}\0").into_bytes();
            body.extend_from_slice(&[0, 0]);
            bytes.extend(raw::frame(b'P', &body));
            n += 1;
        }
        bytes.extend(raw::frame(b'S', &[]));
        conn.send(&bytes).await;
        let msgs = conn.recv_until(b'Z').await;
        assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
    }
    let mut bytes = Vec::new();
    bytes.extend(raw::frame(b'P', b"one_more\0select 1\0\0\0"));
    bytes.extend(raw::frame(b'S', &[]));
    conn.send(&bytes).await;
    let msgs = conn.recv_until(b'Z').await;
    let e = raw::first_error(&msgs).expect("the statement past the limit is refused");
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("ERROR", "54000"),
        "{e:?}"
    );
    assert!(e.message.contains("prepared statements"), "{e:?}");
    // The session goes on, and a statement deallocated makes room again.
    let mut bytes = Vec::new();
    bytes.extend(raw::frame(b'C', b"Ss0\0"));
    bytes.extend(raw::frame(b'P', b"one_more\0select 1\0\0\0"));
    bytes.extend(raw::frame(b'S', &[]));
    conn.send(&bytes).await;
    let msgs = conn.recv_until(b'Z').await;
    assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
}

// === settings that leak between clients (item 6) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parameter_sync_closes_the_connection() {
    // One server connection, so the second client gets the first one's.
    let proxy = common::start_proxy_with("", "[pool]\npool_size = 1\n").await;
    let primary = common::cluster().primary().unwrap();
    let direct = common::connect_direct(primary).await;
    let grant = format!("grant set on parameter session_replication_role to {APP_USER}");
    let revoke = format!("revoke set on parameter session_replication_role from {APP_USER}");
    direct.batch_execute(&grant).await.unwrap();
    let show = "show session_replication_role";
    // Both clients are in before the first one changes the setting.
    let first = proxy.connect().await;
    let second = proxy.connect().await;
    first
        .batch_execute("set session_replication_role = replica")
        .await
        .unwrap();
    let row = first.query_one(show, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "replica");
    let pid: i32 = first
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // The second client cannot RESET it any more: the proxy's sync in front of its next
    // request fails.
    direct.batch_execute(&revoke).await.unwrap();
    // The request that needed the sync must not run on that connection either: it fails with
    // the sync's error (or runs elsewhere), never with the first client's setting.
    // (A simple query: it runs in the request the sync goes in front of, where a driver's
    // prepared query would only be described there.)
    match second.simple_query(show).await {
        Ok(msgs) => {
            let value = msgs.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(
                value.as_deref(),
                Some("origin"),
                "the request behind the failed sync ran with another client's setting"
            );
        }
        Err(e) => assert_eq!(common::sqlstate(&e), Some("42501"), "{e}"),
    }
    let gone = common::wait_backend_not(&direct, pid, "true", Duration::from_secs(5)).await;
    assert!(gone, "the connection whose sync failed is closed, not kept");
    for _ in 0..3 {
        let row = second.query_one(show, &[]).await.unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            "origin",
            "another client's setting"
        );
    }
    let third = proxy.connect().await;
    let row = third.query_one(show, &[]).await.unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "origin",
        "another client's setting"
    );
}

// === a cancel reaching another client's query (item 5) ===

/// Forwards connections to `target`, holding back a CancelRequest for `delay` (a slow network
/// between the proxy and the server).
async fn slow_cancel_relay(target: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if inbound.read_exact(&mut head).await.is_err() {
                    return;
                }
                // CancelRequest: length 16, code 80877102.
                if head == [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e] {
                    tokio::time::sleep(delay).await;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                if outbound.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_does_not_stop_the_next_clients_query() {
    let c = common::cluster();
    let primary = c.primary().unwrap();
    let port = c.port(primary).unwrap();
    let relay = slow_cancel_relay(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(1500),
    )
    .await;
    let toml = common::config_toml("", "[pool]\npool_size = 1\n").replace(
        &format!("address = \"127.0.0.1:{port}\""),
        &format!("address = \"127.0.0.1:{}\"", relay.port()),
    );
    let proxy = common::start_proxy_from(toml).await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    // A's cancel is sent while its query runs, and is slow to arrive; A's query ends first.
    let token = a.cancel_token();
    // The proxy answers a CancelRequest once it has passed it on, which the relay delays.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = token.cancel_query(tokio_postgres::NoTls).await;
    });
    let ra = a.simple_query("select pg_sleep(0.5)").await;
    ra.unwrap();
    // B's query runs on the only pooled connection, or a new one: the late cancel must not
    // stop it.
    let started = std::time::Instant::now();
    let r = b.simple_query("select pg_sleep(2)").await;
    assert!(
        r.is_ok(),
        "B's query was cancelled after {:?}: {:?}",
        started.elapsed(),
        r.err()
    );
}

// === writes re-run after a lost connection (item 8) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_insert_whose_connection_drops_is_not_run_twice() {
    let c = common::cluster();
    let primary = c.primary().unwrap();
    let port = c.port(primary).unwrap();
    let relay = relay::Relay::start(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let toml = common::config_toml("", "").replace(
        &format!("address = \"127.0.0.1:{port}\""),
        &format!("address = \"127.0.0.1:{}\"", relay.port()),
    );
    let proxy = common::start_proxy_from(toml).await;
    let direct = common::connect_direct(primary).await;
    let tag = format!("rerun_{}", rand::random::<u32>());
    direct
        .batch_execute(
            "create table if not exists hostile_rerun (tag text); \
             grant all on hostile_rerun to public",
        )
        .await
        .unwrap();
    let client = proxy.connect().await;
    // A named statement run outside a transaction: the stale-plan guard watches it. The
    // server goes on (and commits) after its client connection is cut: it notices only when
    // it writes the reply.
    let stmt = client
        .prepare("insert into hostile_rerun select $1 from pg_sleep(1)")
        .await
        .unwrap();
    let run = tokio::spawn(async move { client.execute(&stmt, &[&tag]).await });
    let active = common::eventually(Duration::from_secs(5), || async {
        let n: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity \
                 where query like 'insert into hostile_rerun%' and state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    })
    .await;
    assert!(active, "the insert runs");
    relay.set(relay::Mode::Down);
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.restore();
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the client gets an answer")
        .unwrap();
    let err = result.expect_err("the request whose connection dropped fails");
    assert_eq!(common::sqlstate(&err), Some("08006"), "{err}");
    // Wait for the cut-off server process to finish its commit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows: i64 = direct
        .query_one(
            "select count(*) from hostile_rerun where tag like 'rerun_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the insert ran {rows} times");
}

/// A lone primary of its own whose commits wait for a synchronous standby that does not
/// exist (`synchronous_standby_names = 'nosuch'`): every commit is durable locally and then
/// waits forever. Its own, so no other test's commits wait; removed when dropped.
async fn sync_rep_cluster() -> causeway::cluster::LocalCluster {
    use causeway::cluster::{ClusterOptions, LocalCluster};
    tokio::task::spawn_blocking(|| {
        let c = LocalCluster::start(ClusterOptions {
            standbys: 0,
            max_connections: 50,
            ..ClusterOptions::default()
        })
        .expect("start a cluster");
        c.psql(
            0,
            "create table sync_rep_t (tag text); grant all on sync_rep_t to public",
        )
        .expect("create table");
        c.set_conf(0, "synchronous_standby_names = 'nosuch'")
            .expect("set synchronous_standby_names");
        c
    })
    .await
    .unwrap()
}

/// Runs `request` through a proxy in front of the synchronous-replication cluster, terminates
/// its server process once it waits for the synchronous standby (committed locally), and
/// checks the client gets 08006 and the row is there exactly once.
async fn terminated_in_sync_rep_wait(
    c: &causeway::cluster::LocalCluster,
    proxy: &common::Proxy,
    tag: &str,
    request: impl FnOnce(
        tokio_postgres::Client,
    ) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let info = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=postgres",
        c.port(0).unwrap(),
        causeway::cluster::SUPERUSER,
        c.superuser_password()
    );
    let (direct, conn) = tokio_postgres::connect(&info, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let run = request(proxy.connect().await);
    // Polled with a deadline: the commit reaches its wait once the proxy has sent it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let row = direct
            .query_opt(
                "select pid from pg_stat_activity where wait_event = 'SyncRep' \
                 and query like '%sync_rep_t%'",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = row {
            break r.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit waits for the synchronous standby"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    direct
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the client gets an answer")
        .unwrap();
    let err = result.expect_err("the request whose connection was terminated fails");
    assert_eq!(common::sqlstate(&err), Some("08006"), "{err}");
    // Reading needs no synchronous standby; nothing may have run it a second time.
    let rows: i64 = direct
        .query_one("select count(*) from sync_rep_t where tag = $1", &[&tag])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the insert ran {rows} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_terminated_in_its_synchronous_replication_wait_is_not_run_twice() {
    let c = sync_rep_cluster().await;
    let config = causeway::demo::config_for(&c, "127.0.0.1:0".parse().unwrap()).unwrap();
    let app = causeway::app::App::new(config).expect("build proxy");
    let addr = app.start().await.expect("start proxy");
    app.topology()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .expect("proxy finds the primary");
    let proxy = common::Proxy { addr, app };
    // An autocommit named statement (the stale-plan guard watches it).
    terminated_in_sync_rep_wait(&c, &proxy, "named", |client| {
        tokio::spawn(async move {
            let stmt = client.prepare("insert into sync_rep_t values ($1)").await?;
            client.execute(&stmt, &[&"named"]).await.map(drop)
        })
    })
    .await;
    // A batch with its COMMIT inside.
    terminated_in_sync_rep_wait(&c, &proxy, "batch", |client| {
        tokio::spawn(async move {
            client
                .batch_execute("begin; insert into sync_rep_t values ('batch'); commit;")
                .await
        })
    })
    .await;
    proxy.app.shutdown(Duration::from_secs(1)).await;
}
