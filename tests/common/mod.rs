//! Shared fixtures for the integration tests: one real cluster per test binary (primary + 2
//! streaming standbys, started on first use and removed when the binary exits), and an
//! in-process causeway in front of it per test.
#![allow(dead_code)]

pub mod fake_patroni;
pub mod raw;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use causeway::app::App;
use causeway::cluster::{self, ClusterOptions, LocalCluster};
use causeway::config::Config;

/// The cluster shared by every test of this binary.
pub fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        LocalCluster::start(ClusterOptions::default()).expect("start the test cluster")
    })
}

/// A proxy running inside the test's runtime.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its handle.
    pub app: App,
}

/// The base configuration: every node of the cluster, its roles as users, everything routed to
/// the primary (each user's `default_route`), as the protocol and pooling tests assume. `extra`
/// is appended (extra `[[users]]` entries, or whole sections the base leaves out).
pub fn config_toml(proxy_section: &str, extra: &str) -> String {
    config_toml_full(proxy_section, "", "default_route = \"primary\"", extra)
}

/// A configuration with read/write splitting: `routing_section` lines go into `[routing]`,
/// users have no default route.
pub fn routing_config_toml(routing_section: &str, extra: &str) -> String {
    config_toml_full("", routing_section, "", extra)
}

fn config_toml_full(
    proxy_section: &str,
    routing_section: &str,
    user_route: &str,
    extra: &str,
) -> String {
    let c = cluster();
    let nodes = c.nodes_toml().unwrap();
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
{proxy_section}

[routing]
check_interval = "100ms"
{routing_section}

[monitor]
user = "{monitor}"
password = "{monitor_password}"

{nodes}
[[users]]
name = "{app}"
password = "{app_password}"
{user_route}

[[users]]
name = "{md5}"
password = "{md5_password}"
auth = "md5"
{user_route}

[[users]]
name = "{trust}"
auth = "trust"
{user_route}

[[users]]
name = "{su}"
password = "{su_password}"
{user_route}
{extra}
"#,
        monitor = cluster::MONITOR_USER,
        monitor_password = cluster::MONITOR_PASSWORD,
        app = cluster::APP_USER,
        app_password = cluster::APP_PASSWORD,
        md5 = cluster::APP_MD5_USER,
        md5_password = cluster::APP_MD5_PASSWORD,
        trust = cluster::APP_TRUST_USER,
        su = cluster::SUPERUSER,
        su_password = c.superuser_password(),
    )
}

/// How long a test proxy may take to find the primary and its standbys. On an idle machine
/// it takes one or two check intervals; a machine loaded by parallel builds (load average
/// 30 on 2 cores, seen) has taken over 10 s to connect and log in the watcher. A deadline,
/// not a wait: the tests go on as soon as the condition holds.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Starts a proxy with the base configuration plus `proxy_section` lines in `[proxy]` and
/// `extra` at the end, and waits until it knows the primary.
pub async fn start_proxy_with(proxy_section: &str, extra: &str) -> Proxy {
    start_proxy_from(config_toml(proxy_section, extra)).await
}

/// Starts a proxy with read/write splitting (see [`routing_config_toml`]) and waits until it
/// knows the primary and both standbys are eligible for reads.
pub async fn start_routing_proxy(routing_section: &str, extra: &str) -> Proxy {
    let proxy = start_proxy_from(routing_config_toml(routing_section, extra)).await;
    let ok = eventually(STARTUP_DEADLINE, || async {
        proxy.app.topology().load().eligible_standbys() == 2
    })
    .await;
    assert!(ok, "both standbys become eligible for reads");
    proxy
}

/// Starts a proxy from a whole configuration text.
pub async fn start_proxy_from(toml: String) -> Proxy {
    let loaded = Config::from_toml(&toml, "test", &|_| None).expect("valid test config");
    let app = App::new(loaded.config).expect("build proxy");
    let addr = app.start().await.expect("start proxy");
    app.topology()
        .wait_for_primary(STARTUP_DEADLINE)
        .await
        .expect("proxy finds the primary");
    Proxy { addr, app }
}

/// Starts a proxy with the base configuration.
pub async fn start_proxy() -> Proxy {
    start_proxy_with("", "").await
}

impl Proxy {
    /// A tokio-postgres connection string through the proxy.
    pub fn conninfo(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={user} password={password} dbname={dbname}",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// Connects through the proxy as `app`.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_as(cluster::APP_USER, cluster::APP_PASSWORD, "postgres")
            .await
            .expect("connect through the proxy")
    }

    /// Connects through the proxy with the given credentials.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(
            &self.conninfo(user, password, dbname),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

/// Connects directly to node `n` as the superuser (for assertions that must not go through the
/// proxy).
pub async fn connect_direct(n: usize) -> tokio_postgres::Client {
    let c = cluster();
    let info = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=postgres",
        c.port(n).unwrap(),
        cluster::SUPERUSER,
        c.superuser_password()
    );
    let (client, conn) = tokio_postgres::connect(&info, tokio_postgres::NoTls)
        .await
        .expect("connect directly");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client connection whose asynchronous messages (notices, notifications) are collected, and
/// whose connection task can be aborted or awaited.
pub struct Observed {
    /// The client.
    pub client: tokio_postgres::Client,
    /// Notices and notifications, in arrival order.
    pub messages: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
    /// The task driving the connection; ends with the connection's own result.
    pub task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// Connects with `conninfo` and drives the connection with `poll_message`, so notices and
/// notifications reach [`Observed::messages`].
pub async fn connect_observed(conninfo: &str) -> Result<Observed, tokio_postgres::Error> {
    let (client, mut conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(m)) => {
                    let _ = tx.send(m);
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    Ok(Observed {
        client,
        messages,
        task,
    })
}

/// The SQLSTATE of a tokio-postgres error, if the error came from a server (or the proxy).
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Waits until backend `pid` (as seen through `direct`, a connection to its node) satisfies `sql_predicate` (an SQL boolean over
/// `pg_stat_activity` columns, for instance `state = 'active'`), or `limit` passes.
pub async fn wait_backend(
    direct: &tokio_postgres::Client,
    pid: i32,
    sql_predicate: &str,
    limit: Duration,
) -> bool {
    let sql = format!("select count(*) from pg_stat_activity where pid = $1 and ({sql_predicate})");
    eventually(limit, || async {
        let n: i64 = direct.query_one(&sql, &[&pid]).await.unwrap().get(0);
        n > 0
    })
    .await
}

/// Waits until backend `pid` (as seen through `direct`) no longer satisfies `sql_predicate` (a gone backend
/// satisfies nothing), or `limit` passes.
pub async fn wait_backend_not(
    direct: &tokio_postgres::Client,
    pid: i32,
    sql_predicate: &str,
    limit: Duration,
) -> bool {
    let sql = format!("select count(*) from pg_stat_activity where pid = $1 and ({sql_predicate})");
    eventually(limit, || async {
        let n: i64 = direct.query_one(&sql, &[&pid]).await.unwrap().get(0);
        n == 0
    })
    .await
}
