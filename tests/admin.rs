//! The admin console against the real cluster: who gets in, what each `SHOW` answers (with
//! the exact queries `pgbouncer_exporter` sends), `KILL`, `SHUTDOWN`, and psql rendering it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use causeway::cluster::{APP_PASSWORD, APP_USER, SUPERUSER};
use common::{cluster, eventually, sqlstate, start_proxy_with, Proxy};
use tokio_postgres::SimpleQueryMessage;

/// A proxy whose admin is the superuser.
async fn proxy() -> Proxy {
    start_proxy_with(&format!("admin_users = [\"{SUPERUSER}\"]"), "").await
}

/// Opens the console as the admin.
async fn console(p: &Proxy) -> tokio_postgres::Client {
    p.connect_as(SUPERUSER, cluster().superuser_password(), "causeway")
        .await
        .expect("the admin opens the console")
}

/// A result set as column names and rows of text.
struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// The rows as maps from column name to value.
    fn maps(&self) -> Vec<HashMap<&str, Option<&str>>> {
        self.rows
            .iter()
            .map(|r| {
                self.columns
                    .iter()
                    .map(String::as_str)
                    .zip(r.iter().map(Option::as_deref))
                    .collect()
            })
            .collect()
    }
}

/// Runs one console query and collects its (single) result set.
async fn show(c: &tokio_postgres::Client, sql: &str) -> Rows {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Rows {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                out.columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                out.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                out.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn only_admin_users_get_the_console() {
    let p = proxy().await;
    let e = p
        .connect_as(APP_USER, APP_PASSWORD, "causeway")
        .await
        .expect_err("a non-admin user is refused");
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
    // A wrong password is still a wrong password.
    let e = p
        .connect_as(SUPERUSER, "wrong", "causeway")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");
    let c = console(&p).await;
    let v = show(&c, "SHOW VERSION").await;
    assert_eq!(v.columns, ["version"]);
    assert!(v.rows[0][0].as_deref().unwrap().starts_with("causeway "));
    // Unknown commands are errors, and the console goes on.
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("42601"));
    assert_eq!(show(&c, "show version;").await.rows.len(), 1);
}

#[tokio::test]
async fn show_nodes_reports_the_topology() {
    let p = proxy().await;
    let c = console(&p).await;
    let ok = eventually(Duration::from_secs(10), || async {
        let nodes = show(&c, "SHOW NODES").await;
        let maps = nodes.maps();
        maps.len() == 3
            && maps.iter().filter(|n| n["role"] == Some("primary")).count() == 1
            && maps
                .iter()
                .filter(|n| n["role"] == Some("standby") && n["eligible_for_reads"] == Some("yes"))
                .count()
                == 2
    })
    .await;
    assert!(ok, "one primary and two readable standbys");
    let nodes = show(&c, "SHOW NODES").await;
    let primary = nodes
        .maps()
        .into_iter()
        .find(|n| n["role"] == Some("primary"))
        .unwrap()
        .clone();
    let port = cluster().primary_port().unwrap();
    assert_eq!(
        primary["address"],
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(primary["healthy"], Some("yes"));
    assert!(primary["timeline"].unwrap().parse::<u32>().unwrap() >= 1);
}

/// `SHOW NODES` counts the reads and writes each node served: with read/write splitting,
/// reads on the standbys and the write (a transaction) on the primary.
#[tokio::test]
async fn show_nodes_counts_reads_and_writes_per_node() {
    let toml = common::routing_config_toml("", "").replacen(
        "[proxy]\n",
        &format!("[proxy]\nadmin_users = [\"{SUPERUSER}\"]\n"),
        1,
    );
    let p = common::start_proxy_from(toml).await;
    let standbys = eventually(Duration::from_secs(10), || async {
        p.app.topology().load().eligible_standbys() == 2
    })
    .await;
    assert!(standbys, "both standbys become eligible for reads");
    let reader = p.connect().await;
    for _ in 0..4 {
        reader.simple_query("SELECT 1").await.unwrap();
    }
    let writer = p.connect().await;
    writer
        .simple_query("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
    let c = console(&p).await;
    let nodes = show(&c, "SHOW NODES").await;
    let (mut standby_reads, mut standby_writes) = (0, 0);
    for n in nodes.maps() {
        let count = |col: &str| n[col].unwrap().parse::<u64>().unwrap();
        match n["role"] {
            Some("primary") => {
                assert_eq!((count("reads_served"), count("writes_served")), (0, 1));
            }
            _ => {
                standby_reads += count("reads_served");
                standby_writes += count("writes_served");
            }
        }
    }
    assert_eq!((standby_reads, standby_writes), (4, 0));
}

#[tokio::test]
async fn pgbouncer_exporter_queries_get_rows_of_the_shape_it_expects() {
    let p = proxy().await;
    let app = p.connect().await;
    for _ in 0..5 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    let c = console(&p).await;

    // The exporter pings with SHOW STATS.
    let stats = show(&c, "SHOW STATS").await;
    for col in [
        "database",
        "total_query_count",
        "p50_us",
        "p90_us",
        "p99_us",
        "p99_9_us",
    ] {
        assert!(
            stats.columns.iter().any(|c| c == col),
            "{col} in {:?}",
            stats.columns
        );
    }
    let primary = stats
        .maps()
        .into_iter()
        .find(|r| r["database"] == Some("primary"))
        .map(|r| r["total_query_count"].unwrap().parse::<u64>().unwrap());
    assert!(primary.unwrap() >= 5, "requests counted on the primary");

    let lists = show(&c, "SHOW LISTS;").await;
    assert_eq!(lists.columns.len(), 2, "SHOW LISTS has two columns");
    let lists: HashMap<String, f64> = lists
        .rows
        .iter()
        .map(|r| {
            let items = r[1]
                .as_deref()
                .unwrap()
                .parse::<f64>()
                .expect("items is a number");
            (r[0].clone().unwrap(), items)
        })
        .collect();
    for list in [
        "databases",
        "users",
        "pools",
        "free_clients",
        "used_clients",
        "login_clients",
        "free_servers",
        "used_servers",
        "dns_names",
        "dns_zones",
        "dns_queries",
    ] {
        assert!(lists.contains_key(list), "SHOW LISTS has {list}");
    }
    assert!(lists["used_clients"] >= 1.0);
    assert!(lists["pools"] >= 1.0);

    let pools = show(&c, "SHOW POOLS;").await;
    for col in [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
    ] {
        assert!(
            pools.columns.iter().any(|c| c == col),
            "{col} in {:?}",
            pools.columns
        );
    }
    let maps = pools.maps();
    let mut keys: Vec<_> = maps.iter().map(|r| (r["database"], r["user"])).collect();
    let n = keys.len();
    keys.dedup();
    assert_eq!(
        keys.len(),
        n,
        "one row per database and user (the exporter's labels)"
    );
    let row = maps
        .iter()
        .find(|r| r["user"] == Some(APP_USER) && r["database"] == Some("postgres"))
        .expect("a pool row for app@postgres");
    assert_eq!(row["cl_active"], Some("1"));
    for col in &pools.columns {
        if !matches!(col.as_str(), "database" | "user" | "pool_mode") {
            assert!(
                row[col.as_str()].unwrap().parse::<f64>().is_ok(),
                "{col} is a number"
            );
        }
    }

    let dbs = show(&c, "SHOW DATABASES;").await;
    for col in [
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "reserve_pool",
        "pool_mode",
        "max_connections",
        "current_connections",
        "paused",
        "disabled",
    ] {
        assert!(
            dbs.columns.iter().any(|c| c == col),
            "{col} in {:?}",
            dbs.columns
        );
    }
    let postgres = dbs
        .maps()
        .into_iter()
        .find(|r| r["name"] == Some("postgres"))
        .unwrap()
        .clone();
    assert_eq!(
        postgres["port"],
        Some(cluster().primary_port().unwrap().to_string().as_str())
    );

    let totals = show(&c, "SHOW STATS_TOTALS;").await;
    assert!(totals.columns.iter().any(|c| c == "query_count"));
    let config = show(&c, "SHOW CONFIG;").await;
    assert_eq!(config.columns, ["key", "value", "default", "changeable"]);
    let version = show(&c, "SHOW VERSION;").await;
    assert_eq!(version.columns, ["version"]);
}

#[tokio::test]
async fn show_clients_and_servers_then_kill_ends_a_session_with_57p01() {
    let p = proxy().await;
    let app = p.connect().await;
    app.simple_query("SELECT 1").await.unwrap();
    let c = console(&p).await;
    let clients = show(&c, "SHOW CLIENTS").await;
    let maps = clients.maps();
    let me = maps
        .iter()
        .find(|r| r["user"] == Some(APP_USER))
        .expect("the app client is listed");
    assert_eq!(me["database"], Some("postgres"));
    assert!(
        maps.iter().any(|r| r["state"] == Some("admin")),
        "the console lists itself"
    );
    let id = me["id"].unwrap().to_owned();

    let servers = show(&c, "SHOW SERVERS").await;
    assert!(
        servers
            .maps()
            .iter()
            .any(|r| r["user"] == Some(APP_USER) && r["state"] == Some("idle")),
        "the app's pooled connection is idle"
    );

    let e = c.simple_query("KILL 999999999").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("42704"));
    c.simple_query(&format!("KILL {id}")).await.unwrap();
    let e = app.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        sqlstate(&e) == Some("57P01") || app.is_closed(),
        "the killed session ends: {e}"
    );
    let gone = eventually(Duration::from_secs(5), || async {
        !show(&c, "SHOW CLIENTS")
            .await
            .maps()
            .iter()
            .any(|r| r["id"] == Some(id.as_str()))
    })
    .await;
    assert!(gone, "the killed client leaves SHOW CLIENTS");
}

#[tokio::test]
async fn shutdown_asks_the_proxy_to_stop() {
    let p = proxy().await;
    let c = console(&p).await;
    assert!(!p.app.stop_requested().is_cancelled());
    c.simple_query("SHUTDOWN").await.unwrap();
    assert!(p.app.stop_requested().is_cancelled());
}

#[tokio::test]
async fn psql_renders_the_console() {
    let p = proxy().await;
    let psql = cluster().bin().path("psql");
    let out = tokio::process::Command::new(psql)
        .args([
            "-X",
            "-h",
            &p.addr.ip().to_string(),
            "-p",
            &p.addr.port().to_string(),
        ])
        .args([
            "-U",
            SUPERUSER,
            "-d",
            "causeway",
            "-c",
            "SHOW NODES",
            "-c",
            "SHOW STATS",
        ])
        .env("PGPASSWORD", cluster().superuser_password())
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql failed: {stderr}");
    assert!(stdout.contains("eligible_for_reads"), "{stdout}");
    assert!(stdout.contains("(3 rows)"), "{stdout}");
    assert!(stdout.contains("p99_9_us"), "{stdout}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
}

#[tokio::test]
async fn pause_waits_for_transactions_and_holds_new_ones_until_resume() {
    let p = proxy().await;
    let a = p.connect().await;
    let b = p.connect().await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let c = console(&p).await;
    let mut pause = tokio::spawn(async move { c.simple_query("PAUSE").await.map(|_| c) });
    let paused = eventually(Duration::from_secs(5), || async {
        p.app.pools().is_paused("postgres")
    })
    .await;
    assert!(paused, "PAUSE is in force at once");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pause)
            .await
            .is_err(),
        "PAUSE waits while a transaction runs"
    );
    a.batch_execute("SELECT 2; COMMIT")
        .await
        .expect("the running transaction finishes");
    let c = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE answers once the transaction ended")
        .unwrap()
        .unwrap();
    let e = c.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("55000"), "already paused");

    let mut held = tokio::spawn(async move { b.simple_query("SELECT 1").await.map(|_| ()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut held)
            .await
            .is_err(),
        "a new transaction is held"
    );
    let waiting = eventually(Duration::from_secs(5), || async {
        show(&c, "SHOW POOLS").await.maps().iter().any(|r| {
            r["user"] == Some(APP_USER)
                && r["database"] == Some("postgres")
                && r["cl_waiting"] == Some("1")
        })
    })
    .await;
    assert!(waiting, "SHOW POOLS counts the held client in cl_waiting");
    let dbs = show(&c, "SHOW DATABASES").await;
    let row = dbs
        .maps()
        .into_iter()
        .find(|r| r["name"] == Some("postgres"))
        .unwrap()
        .clone();
    assert_eq!(row["paused"], Some("1"));
    c.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held transaction runs after RESUME")
        .unwrap()
        .unwrap();
    let e = c.simple_query("RESUME").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("55000"), "not paused");
}
