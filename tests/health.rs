//! The HTTP health endpoints against the real cluster: `/live` answers while the process runs;
//! `/ready` says 503 while no node is known healthy (the only node's port is closed) and 200 once
//! one is reachable (a primary, or a standby eligible for reads), and the endpoints close at
//! shutdown. The Grafana dashboard in docs/ queries only metrics that `/metrics` exports.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use causeway::app::App;
use causeway::config::Config;
use common::{cluster, config_toml, eventually, routing_config_toml, start_proxy_from};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A port free at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path`: the status code, or `None` when nothing answers.
async fn get(http: SocketAddr, path: &str) -> Option<u16> {
    fetch(http, path).await.map(|(status, _)| status)
}

/// `GET path`: the status code and the body.
async fn fetch(http: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(http).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: causeway\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.ok()?;
    let status = reply.split(' ').nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A proxy whose only node is `127.0.0.1:node_port`, with its HTTP endpoints on `http`.
async fn start_with_one_node(node_port: u16, http: SocketAddr) -> App {
    let toml = config_toml(&format!("http_listen = \"{http}\""), "").replace(
        &cluster().nodes_toml().unwrap(),
        &format!("[[nodes]]\naddress = \"127.0.0.1:{node_port}\"\n"),
    );
    let loaded = Config::from_toml(&toml, "test", &|_| None).expect("valid test config");
    let app = App::new(loaded.config).expect("build proxy");
    app.start().await.expect("start proxy");
    app
}

/// Forwards every connection to `listener` to `127.0.0.1:target`: the node's port opens.
fn open_port(listener: TcpListener, target: u16) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

/// Not ready while the node's port is closed, ready once it forwards to `target`.
async fn ready_once_reachable(target: u16) {
    let node_port = free_port();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let app = start_with_one_node(node_port, http).await;

    assert_eq!(get(http, "/live").await, Some(200), "live at once");
    // The watcher checks every 100 ms: these span several checks that find the port closed.
    for _ in 0..5 {
        assert_eq!(
            get(http, "/ready").await,
            Some(503),
            "no node known healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(http, "/live").await, Some(200), "live while not ready");

    let listener = TcpListener::bind(("127.0.0.1", node_port)).await.unwrap();
    open_port(listener, target);
    let ready = eventually(Duration::from_secs(15), || async {
        get(http, "/ready").await == Some(200)
    })
    .await;
    assert!(ready, "ready once the node answers");
    assert_eq!(get(http, "/nothing").await, Some(404));

    app.shutdown(Duration::from_secs(1)).await;
    let closed = eventually(Duration::from_secs(5), || async {
        get(http, "/ready").await.is_none()
    })
    .await;
    assert!(closed, "the endpoints close at shutdown: probes fail");
}

#[tokio::test]
async fn ready_when_the_primary_is_reachable() {
    ready_once_reachable(cluster().primary_port().unwrap()).await;
}

#[tokio::test]
async fn ready_with_only_a_standby_eligible_for_reads() {
    ready_once_reachable(cluster().standby_ports()[0]).await;
}

/// Every `causeway_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("causeway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Whether the exposition declares `name`: a sample of it, or its `# TYPE` line (a labelled
/// counter with no series yet has only that; counters are declared without `_total`).
fn exported(metrics: &str, name: &str) -> bool {
    let declared = |n: &str| {
        metrics.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .is_some_and(|t| t.split(' ').next() == Some(n))
        })
    };
    let sampled = metrics.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|t| t.starts_with('{') || t.starts_with(' '))
    });
    sampled || declared(name) || name.strip_suffix("_total").is_some_and(declared)
}

#[tokio::test]
async fn grafana_dashboard_queries_only_exported_metrics() {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let toml = routing_config_toml("", "").replacen(
        "[proxy]\n",
        &format!("[proxy]\nhttp_listen = \"{http}\"\n"),
        1,
    );
    let p = start_proxy_from(toml).await;
    let standbys = eventually(Duration::from_secs(10), || async {
        p.app.topology().load().eligible_standbys() == 2
    })
    .await;
    assert!(standbys, "both standbys become eligible for reads");
    // A write, a read and an error: the per-route and per-SQLSTATE series appear once
    // something was routed or failed.
    let c = p.connect().await;
    c.simple_query("CREATE TEMP TABLE t (x int)").await.unwrap();
    p.connect().await.simple_query("SELECT 1").await.unwrap();
    c.simple_query("SELECT 1/0").await.unwrap_err();
    let (status, metrics) = fetch(http, "/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-causeway.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            queried.extend(metric_names(expr));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = v["query"].as_str() {
            queried.extend(metric_names(q));
        }
    }
    assert!(
        queried.len() >= 15,
        "the dashboard queries metrics: {queried:?}"
    );
    let missing: Vec<&String> = queried.iter().filter(|n| !exported(&metrics, n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{metrics}");
}

/// The values of every `/metrics` sample named `name` whose labels contain all of `labels`.
fn samples(metrics: &str, name: &str, labels: &[&str]) -> Vec<f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let plain = series.is_empty() || series.starts_with('{');
            (plain && labels.iter().all(|want| series.contains(want)))
                .then(|| value.parse().ok())?
        })
        .collect()
}

/// Errors sent to clients are counted by SQLSTATE and by who made them (a division by zero
/// from a standby, an invalid `causeway.*` value from causeway), and the read that failed
/// counts as a read its standby served.
#[tokio::test]
async fn errors_are_counted_by_sqlstate_and_requests_by_node() {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let toml = routing_config_toml("", "").replacen(
        "[proxy]\n",
        &format!("[proxy]\nhttp_listen = \"{http}\"\n"),
        1,
    );
    let p = start_proxy_from(toml).await;
    let standbys = eventually(Duration::from_secs(10), || async {
        p.app.topology().load().eligible_standbys() == 2
    })
    .await;
    assert!(standbys, "both standbys become eligible for reads");
    let c = p.connect().await;
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(common::sqlstate(&e), Some("22012"), "{e}");
    let e = c
        .simple_query("SET causeway.route = 'sideways'")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), Some("22023"), "{e}");

    let (_, metrics) = fetch(http, "/metrics").await.expect("metrics answer");
    let errors = |labels: &[&str]| samples(&metrics, "causeway_errors_total", labels);
    assert_eq!(
        errors(&["sqlstate=\"22012\"", "source=\"server\""]),
        [1.0],
        "{metrics}"
    );
    assert_eq!(
        errors(&["sqlstate=\"22023\"", "source=\"proxy\""]),
        [1.0],
        "{metrics}"
    );
    let standby_reads: f64 = cluster()
        .standby_ports()
        .iter()
        .flat_map(|port| {
            samples(
                &metrics,
                "causeway_node_requests_total",
                &[&format!("node=\"127.0.0.1:{port}\""), "kind=\"read\""],
            )
        })
        .sum();
    assert_eq!(
        standby_reads, 1.0,
        "the failed read, on a standby: {metrics}"
    );
    p.app.shutdown(Duration::from_secs(1)).await;
}
