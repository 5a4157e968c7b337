//! Nodes that come and go while the proxy runs (issues 15 and 18), against the real cluster:
//! a reload that adds a standby (reads reach it), a reload that removes one (a transaction
//! running there finishes, later reads never go there, its server connections close), and a
//! Patroni member that is not in `proxy.toml` (reads reach it without a reload; it is removed
//! when it leaves the member list).

mod common;

use common::fake_patroni::FakePatroni;

use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway::app::App;
use causeway::cluster::SUPERUSER;
use causeway::config::Config;
use common::{cluster, eventually, routing_config_toml, Proxy};

/// The cluster's primary and its two standbys (A, B), by harness index.
fn roles() -> (usize, usize, usize) {
    let c = cluster();
    let p = c.primary().unwrap();
    let s: Vec<usize> = (0..c.node_count()).filter(|&n| n != p).collect();
    (p, s[0], s[1])
}

fn port(n: usize) -> u16 {
    cluster().port(n).unwrap()
}

/// `[[nodes]]` entries for harness nodes `nodes`, each with its weight.
fn nodes_toml(nodes: &[(usize, u32)]) -> String {
    nodes
        .iter()
        .map(|(n, w)| {
            format!(
                "[[nodes]]\naddress = \"127.0.0.1:{}\"\nweight = {w}\n",
                port(*n)
            )
        })
        .collect()
}

/// A read/write-splitting configuration (eventual consistency, the superuser as console
/// admin) over `nodes` only; `extra` is appended.
fn config(nodes: &[(usize, u32)], extra: &str) -> String {
    let base = routing_config_toml("consistency = \"eventual\"", extra);
    let all = cluster().nodes_toml().unwrap();
    assert!(base.contains(&all));
    base.replace(&all, &nodes_toml(nodes))
        .replacen(
            "[proxy]\n",
            &format!("[proxy]\nadmin_users = [\"{SUPERUSER}\"]\n"),
            1,
        )
        .replacen(
            "[monitor]\n",
            "[monitor]\nconnect_timeout = \"5s\"\nquery_timeout = \"5s\"\n",
            1,
        )
}

/// A file of its own for one test's configuration.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "causeway-membership-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts an in-process proxy from a file (so that RELOAD has something to read).
async fn start_from_file(path: &Path) -> Proxy {
    let loaded = Config::load(path).expect("valid test config");
    let app = App::new(loaded.config).expect("build proxy");
    app.set_config_path(path.to_owned());
    let addr = app.start().await.expect("start proxy");
    // Generous: on a loaded test machine, monitoring connections (SCRAM in a debug build) can
    // take seconds.
    app.topology()
        .wait_for_primary(Duration::from_secs(30))
        .await
        .expect("proxy finds the primary");
    Proxy { addr, app }
}

/// Rewrites the file and reloads through the console.
async fn reload_with(p: &Proxy, path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let console = p
        .connect_as(SUPERUSER, cluster().superuser_password(), "causeway")
        .await
        .expect("open the console");
    console.simple_query("RELOAD").await.expect("RELOAD");
}

/// The addresses `SHOW NODES` lists on the console.
async fn show_nodes(p: &Proxy) -> Vec<String> {
    let console = p
        .connect_as(SUPERUSER, cluster().superuser_password(), "causeway")
        .await
        .expect("open the console");
    console
        .simple_query("SHOW NODES")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("address").map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// The port of the server that answers one autocommit read.
async fn read_port(client: &tokio_postgres::Client) -> u16 {
    let port: i32 = client
        .query_one("select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    u16::try_from(port).unwrap()
}

/// Polls reads until one is answered by `port`.
async fn reads_reach(client: &tokio_postgres::Client, port: u16, limit: Duration) -> bool {
    eventually(limit, || async { read_port(client).await == port }).await
}

/// A reload that adds standby B to a proxy started with the primary and standby A only: reads
/// reach B once it is healthy, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_node_and_reads_reach_it() {
    let (p, a, b) = roles();
    let path = config_file("add", &config(&[(p, 1), (a, 1)], ""));
    let proxy = start_from_file(&path).await;
    let client = proxy.connect().await;
    for _ in 0..10 {
        assert_ne!(read_port(&client).await, port(b), "B is not a node yet");
    }
    reload_with(&proxy, &path, &config(&[(p, 1), (a, 1), (b, 1)], "")).await;
    assert!(
        reads_reach(&client, port(b), Duration::from_secs(20)).await,
        "a read reaches the added node"
    );
    let t = proxy.app.topology().load_full();
    assert_eq!(t.current().count(), 3);
    assert!(t
        .current()
        .any(|n| n.port == port(b) && n.is_eligible_standby()));
    let listed = show_nodes(&proxy).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed.contains(&format!("127.0.0.1:{}", port(b))),
        "{listed:?}"
    );
    proxy.app.shutdown(Duration::from_secs(5)).await;
}

/// Roles of their own (created on the primary, replicated to the standbys), so that this
/// test's connections to B are told apart from other tests' in `pg_stat_activity`.
const DRAIN_APP: &str = "membership_app";
const DRAIN_MONITOR: &str = "membership_mon";

async fn create_drain_roles(b: usize) {
    let primary = common::connect_direct(cluster().primary().unwrap()).await;
    primary
        .batch_execute(&format!(
            "DO $$ BEGIN \
               CREATE ROLE {DRAIN_APP} LOGIN PASSWORD 'pw'; \
               EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
             DO $$ BEGIN \
               CREATE ROLE {DRAIN_MONITOR} LOGIN PASSWORD 'pw' IN ROLE pg_monitor; \
               EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ))
        .await
        .unwrap();
    let standby = common::connect_direct(b).await;
    let replicated = eventually(Duration::from_secs(10), || async {
        let n: i64 = standby
            .query_one(
                "select count(*) from pg_roles where rolname in ($1, $2)",
                &[&DRAIN_APP, &DRAIN_MONITOR],
            )
            .await
            .unwrap()
            .get(0);
        n == 2
    })
    .await;
    assert!(replicated, "the roles reach standby B");
}

/// A reload that removes standby B while a read-only transaction runs there: the transaction
/// goes on and commits, later reads never reach B, and once the transaction is over no
/// connection of the proxy to B remains (neither pooled nor monitoring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removes_a_node_and_its_connections_drain() {
    let (p, a, b) = roles();
    create_drain_roles(b).await;
    let users = format!("[[users]]\nname = \"{DRAIN_APP}\"\npassword = \"pw\"\n");
    // A takes no reads (weight 0), so a standby read goes to B.
    let text = |nodes: &[(usize, u32)]| {
        config(nodes, &users).replacen(
            &format!("user = \"{}\"", causeway::cluster::MONITOR_USER),
            &format!("user = \"{DRAIN_MONITOR}\""),
            1,
        )
    };
    let text = |nodes: &[(usize, u32)]| {
        text(nodes).replacen(
            &format!("password = \"{}\"", causeway::cluster::MONITOR_PASSWORD),
            "password = \"pw\"",
            1,
        )
    };
    let path = config_file("remove", &text(&[(p, 1), (a, 0), (b, 1)]));
    let proxy = start_from_file(&path).await;
    let ready = eventually(Duration::from_secs(10), || async {
        let t = proxy.app.topology().load();
        t.nodes[2].is_eligible_standby()
    })
    .await;
    assert!(ready, "B serves reads");
    let client = proxy.connect_as(DRAIN_APP, "pw", "postgres").await.unwrap();
    // `read_only_transactions = "standby"` (the default): the transaction runs on B.
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert_eq!(
        read_port(&client).await,
        port(b),
        "the transaction runs on B"
    );

    reload_with(&proxy, &path, &text(&[(p, 1), (a, 0)])).await;
    let removed = eventually(Duration::from_secs(10), || async {
        proxy.app.topology().load().nodes[2].removed
    })
    .await;
    assert!(removed, "B is removed from the topology");
    let listed = show_nodes(&proxy).await;
    assert!(
        !listed.contains(&format!("127.0.0.1:{}", port(b))),
        "a removed node is not listed: {listed:?}"
    );
    let retired = eventually(Duration::from_secs(10), || async {
        proxy
            .app
            .pools()
            .all()
            .iter()
            .all(|pool| pool.key().node != 2)
    })
    .await;
    assert!(retired, "B's pools are retired while the transaction runs");
    // The running transaction is not cut.
    assert_eq!(read_port(&client).await, port(b), "still on B");
    client
        .batch_execute("COMMIT")
        .await
        .expect("the transaction on the removed node commits");

    // Later reads and read-only transactions never reach B.
    for _ in 0..20 {
        assert_ne!(
            read_port(&client).await,
            port(b),
            "a read on the removed node"
        );
    }
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert_ne!(read_port(&client).await, port(b));
    client.batch_execute("COMMIT").await.unwrap();

    // No connection of this proxy to B remains: the pooled one closed when given back, the
    // monitoring one when its probe stopped.
    let direct = common::connect_direct(b).await;
    let drained = eventually(Duration::from_secs(10), || async {
        let n: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where usename in ($1, $2)",
                &[&DRAIN_APP, &DRAIN_MONITOR],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(
        drained,
        "no connection from the proxy to the removed node remains"
    );
    proxy.app.shutdown(Duration::from_secs(5)).await;
}

/// A `/cluster` body listing harness nodes `members`, `leader` holding the leader key.
fn cluster_json(leader: usize, members: &[usize]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|&n| {
            let role = if n == leader { "leader" } else { "replica" };
            format!(
                r#"{{"name": "n{n}", "role": "{role}", "state": "running", "host": "127.0.0.1", "port": {}, "timeline": 1}}"#,
                port(n)
            )
        })
        .collect();
    format!(
        r#"{{"members": [{}], "scope": "test"}}"#,
        members.join(", ")
    )
}

/// With `source = "patroni"` and only the primary and standby A in `proxy.toml`: B, a member
/// Patroni lists, gets reads without a reload; once it leaves the member list it is removed
/// and gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patroni_member_not_configured_gets_reads_and_leaves() {
    let (p, a, b) = roles();
    let fake = FakePatroni::start(cluster_json(p, &[p, a, b])).await;
    let extra = format!(
        "[topology]\nsource = \"patroni\"\npatroni = [\"{}\"]\n",
        fake.url
    );
    let path = config_file("patroni", &config(&[(p, 1), (a, 1)], &extra));
    let proxy = start_from_file(&path).await;
    let client = proxy.connect().await;
    assert!(
        reads_reach(&client, port(b), Duration::from_secs(20)).await,
        "a read reaches the member that is not in proxy.toml"
    );
    // B leaves Patroni's member list: after a few answers without it, it is removed.
    fake.set(cluster_json(p, &[p, a]));
    let gone = eventually(Duration::from_secs(10), || async {
        !proxy
            .app
            .topology()
            .load()
            .current()
            .any(|n| n.port == port(b))
    })
    .await;
    assert!(gone, "the member that left is removed");
    for _ in 0..20 {
        assert_ne!(
            read_port(&client).await,
            port(b),
            "a read on a removed member"
        );
    }
    // It comes back: reads reach it again, in its old slot.
    fake.set(cluster_json(p, &[p, a, b]));
    assert!(
        reads_reach(&client, port(b), Duration::from_secs(20)).await,
        "a member that came back gets reads again"
    );
    assert_eq!(proxy.app.topology().load().nodes.len(), 3);
    proxy.app.shutdown(Duration::from_secs(5)).await;
}
