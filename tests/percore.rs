//! `proxy.runtime = "per_core"`: sessions on single-threaded event loops of their own, against
//! a real cluster. Clients are spread over the loops, share the pools and the connection
//! limits, a CancelRequest reaches a session on another loop, and shutdown drains every loop.
mod common;

use std::time::{Duration, Instant};

use causeway::cluster::{APP_PASSWORD, APP_USER};
use common::{connect_observed, sqlstate};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

const PER_CORE: &str = "runtime = \"per_core\"\nworker_threads = 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_the_loops_and_share_the_pools() {
    let proxy = common::start_proxy_with(PER_CORE, "").await;
    let loops = proxy.app.event_loops().expect("per-core loops").clone();
    assert_eq!(loops.len(), 2);
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = proxy.connect().await;
        let n: i32 = c.query_one("select $1::int", &[&i]).await.unwrap().get(0);
        assert_eq!(n, i);
        clients.push(c);
    }
    // The fewest-sessions choice alternates while all stay connected.
    assert_eq!(loops.sessions(), vec![2, 2]);
    // Many requests from every client, at once, through the shared pools.
    let mut running = Vec::new();
    for c in clients {
        running.push(tokio::spawn(async move {
            for i in 0..50 {
                let n: i32 = c.query_one("select $1::int", &[&i]).await.unwrap().get(0);
                assert_eq!(n, i);
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for r in running {
        clients.push(r.await.unwrap());
    }
    drop(clients);
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            loops.sessions() == vec![0, 0]
        })
        .await,
        "sessions end: {:?}",
        loops.sessions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_session_on_another_loop() {
    let proxy = common::start_proxy_with(PER_CORE, "").await;
    let a = proxy.connect().await;
    let token = a.cancel_token();
    let running = tokio::spawn(async move {
        let started = Instant::now();
        let r = a.query("select pg_sleep(10)", &[]).await.map(|_| ());
        (a, r, started.elapsed())
    });
    // The cancel request is a connection of its own: with one session running, the loop
    // with the fewest sessions is the other one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(NoTls).await.unwrap();
    let (a, r, took) = running.await.unwrap();
    let err = r.expect_err("the query must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(took < Duration::from_secs(5), "cancelled after {took:?}");
    let n: i32 = a.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_connections_counts_every_loop() {
    let proxy =
        common::start_proxy_with(&format!("{PER_CORE}\nmax_client_connections = 2"), "").await;
    let _a = proxy.connect().await;
    let _b = proxy.connect().await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let err = tokio_postgres::connect(&info, NoTls)
        .await
        .err()
        .expect("a third client is refused");
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sessions_on_every_loop() {
    let proxy = common::start_proxy_with(PER_CORE, "").await;
    let info = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
    let mut observed = Vec::new();
    for _ in 0..2 {
        let c = connect_observed(&info).await.unwrap();
        let rows = c.client.simple_query("select 1").await.unwrap();
        assert_eq!(rows.len(), 3, "RowDescription, Row, CommandComplete");
        observed.push(c);
    }
    assert_eq!(proxy.app.event_loops().unwrap().sessions(), vec![1, 1]);
    let started = Instant::now();
    proxy.app.shutdown(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle sessions held shutdown"
    );
    for c in observed {
        let ended = tokio::time::timeout(Duration::from_secs(2), c.task)
            .await
            .expect("the client connection must end")
            .unwrap();
        let err = ended.expect_err("the connection ends with an error");
        assert_eq!(sqlstate(&err), Some("57P01"), "{err} {err:?}");
    }
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}
