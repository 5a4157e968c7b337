//! Several causeway instances in front of one cluster (issue 18), as application sidecars would
//! be: the read-your-writes token taken from one instance works on another, and after a
//! promotion every instance finds the same new primary within a deadline.
//!
//! No coordination between instances exists or is needed: the token is a WAL position, and
//! each instance derives the primary from what the nodes say. These tests check exactly that.
mod common;

use std::sync::Arc;
use std::time::Duration;

use causeway::cluster::{self, ClusterOptions, LocalCluster, StopMode, APP_PASSWORD, APP_USER};
use tokio_postgres::SimpleQueryMessage;

/// The tests here pause replay or promote nodes: one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Runs a blocking cluster operation off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The first column of the first row of a simple query, as text.
async fn first(client: &tokio_postgres::Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} answers a row"))
}

/// A client writes through instance A, takes `SHOW causeway.min_lsn` there and hands it to a
/// client of instance B, while standby 1 has stopped replaying: B's client reads its write, and
/// never from the paused standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_one_instance_works_on_another() {
    let _g = serial().await;
    let c = common::cluster();
    // No lag limits: only the token keeps B away from the paused standby.
    let routing = "consistency = \"session\"\nmax_lag = \"0\"\nmax_lag_bytes = 0";
    let a = common::start_routing_proxy(routing, "").await;
    let b = common::start_routing_proxy(routing, "").await;
    let writer = a.connect().await;
    writer
        .batch_execute("drop table if exists inst_token_t; create table inst_token_t (v int)")
        .await
        .unwrap();
    c.wait_caught_up(Duration::from_secs(10)).unwrap();
    let paused_port = c.port(1).unwrap();
    blocking(|| common::cluster().pause_replay(1).unwrap()).await;

    let mut misses = Vec::new();
    for i in 0..30 {
        writer
            .execute("insert into inst_token_t values ($1)", &[&i])
            .await
            .unwrap();
        let token = first(&writer, "show causeway.min_lsn").await;
        let reader = b
            .connect_as(APP_USER, APP_PASSWORD, "postgres")
            .await
            .unwrap();
        reader
            .batch_execute(&format!("set causeway.min_lsn = '{token}'"))
            .await
            .unwrap();
        let row = reader
            .query_one(
                "select count(*), inet_server_port() from inst_token_t where v = $1",
                &[&i],
            )
            .await
            .unwrap();
        let (count, port): (i64, i32) = (row.get(0), row.get(1));
        if count != 1 || port == i32::from(paused_port) {
            misses.push((i, token, count, port));
        }
    }
    blocking(|| common::cluster().resume_replay(1).unwrap()).await;
    assert!(
        misses.is_empty(),
        "reads through B with A's token that missed the write or ran on the paused standby \
         (port {paused_port}): {misses:?}"
    );
    c.wait_caught_up(Duration::from_secs(10)).unwrap();
}

/// A proxy configuration over every node of `c`, read/write split, checking every 100 ms.
fn own_config(c: &LocalCluster) -> String {
    let nodes: String = (0..c.node_count())
        .map(|n| {
            format!(
                "[[nodes]]\naddress = \"127.0.0.1:{}\"\n",
                c.port(n).unwrap()
            )
        })
        .collect();
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[routing]
check_interval = "100ms"
primary_wait = "20s"

[monitor]
user = "{monitor_user}"
password = "{monitor_password}"

{nodes}
[[users]]
name = "{app}"
password = "{app_password}"
"#,
        monitor_user = cluster::MONITOR_USER,
        monitor_password = cluster::MONITOR_PASSWORD,
        app = cluster::APP_USER,
        app_password = cluster::APP_PASSWORD,
    )
}

/// The primary crashes and node 1 is promoted: both instances name node 1 as the primary
/// within two seconds of `pg_promote()` returning, and a write through either lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_agree_on_the_primary_after_a_promotion() {
    let _g = serial().await;
    let c = blocking(|| {
        LocalCluster::start(ClusterOptions {
            standbys: 2,
            ..ClusterOptions::default()
        })
        .expect("start a cluster")
    })
    .await;
    let c = Arc::new(c);
    let c2 = c.clone();
    blocking(move || {
        c2.psql(0, "CREATE TABLE w (port int); GRANT ALL ON w TO app")
            .unwrap();
        c2.wait_caught_up(Duration::from_secs(30)).unwrap();
    })
    .await;
    let a = common::start_proxy_from(own_config(&c)).await;
    let b = common::start_proxy_from(own_config(&c)).await;
    assert_eq!(a.app.topology().load().primary, Some(0));
    assert_eq!(b.app.topology().load().primary, Some(0));

    let c2 = c.clone();
    blocking(move || {
        c2.stop(0, StopMode::Immediate).unwrap();
        c2.promote(1).unwrap();
    })
    .await;
    let agreed = common::eventually(Duration::from_secs(2), || async {
        a.app.topology().load().primary == Some(1) && b.app.topology().load().primary == Some(1)
    })
    .await;
    assert!(
        agreed,
        "both instances name node 1 within 2 s of the promotion: A {:?}, B {:?}",
        a.app.topology().load().primary,
        b.app.topology().load().primary
    );
    let new_port = c.port(1).unwrap().to_string();
    for proxy in [&a, &b] {
        let client = proxy.connect().await;
        let port = first(
            &client,
            "insert into w values (inet_server_port()) returning port",
        )
        .await;
        assert_eq!(
            port, new_port,
            "a write through each instance reaches node 1"
        );
    }
}
