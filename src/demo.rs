//! `causeway demo`: a throwaway primary + standbys from the machine's PostgreSQL binaries, the
//! proxy in front of them, a `psql` line that works, and everything removed on Ctrl-C.
//!
//! It runs on the same [`crate::cluster`] harness as the integration tests, so what the demo
//! shows is what the tests exercise.

use std::net::SocketAddr;

use crate::app::App;
use crate::cluster::{self, ClusterOptions, LocalCluster};
use crate::config::Config;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The cluster could not be built (binaries missing, a command failed...).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The generated configuration was rejected (a bug).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The proxy could not start.
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// The configuration the demo runs with: every node of `cluster`, the cluster's roles.
pub fn config_for(cluster: &LocalCluster, listen: SocketAddr) -> Result<Config, DemoError> {
    let nodes = cluster.nodes_toml()?;
    let toml = format!(
        r#"
[proxy]
listen = "{listen}"
pool_mode = "transaction"
admin_users = ["{superuser}"]

[monitor]
user = "{monitor}"
password = "{monitor_password}"

{nodes}
[[users]]
name = "{app}"
password = "{app_password}"

[[users]]
name = "{superuser}"
password = "{superuser_password}"
"#,
        monitor = cluster::MONITOR_USER,
        monitor_password = cluster::MONITOR_PASSWORD,
        app = cluster::APP_USER,
        app_password = cluster::APP_PASSWORD,
        superuser = cluster::SUPERUSER,
        superuser_password = cluster.superuser_password(),
    );
    Ok(Config::from_toml(&toml, "demo", &|_| None)?.config)
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn run(listen: SocketAddr, standbys: usize) -> Result<(), DemoError> {
    eprintln!("causeway demo: starting a primary and {standbys} standbys (takes a few seconds)...");
    let cluster = LocalCluster::start(ClusterOptions {
        standbys,
        ..ClusterOptions::default()
    })?;
    let config = config_for(&cluster, listen)?;
    let runtime = tokio::runtime::Runtime::new().map_err(DemoError::Runtime)?;
    let result = runtime.block_on(async {
        let app = App::new(config)?;
        let addr = app.start().await?;
        let ports: Vec<String> = (0..cluster.node_count())
            .filter_map(|n| cluster.port(n).ok())
            .map(|p| p.to_string())
            .collect();
        println!();
        println!("causeway is listening on {addr} in front of 127.0.0.1 ports {} (primary first).", ports.join(", "));
        println!("Connect with:");
        println!(
            "  psql \"host={} port={} user={} password={} dbname=postgres\"",
            addr.ip(),
            addr.port(),
            cluster::APP_USER,
            cluster::APP_PASSWORD
        );
        println!("Try:  select inet_server_port(), pg_is_in_recovery();");
        println!("Load: PGPASSWORD={pw} pgbench -i -h {ip} -p {port} -U {su} postgres && PGPASSWORD={pw} pgbench -c 8 -T 10 -h {ip} -p {port} -U {su} postgres",
            pw = cluster.superuser_password(), ip = addr.ip(), port = addr.port(), su = cluster::SUPERUSER);
        println!(
            "Console: PGPASSWORD={pw} psql -h {ip} -p {port} -U {su} causeway -c 'SHOW NODES'",
            pw = cluster.superuser_password(),
            ip = addr.ip(),
            port = addr.port(),
            su = cluster::SUPERUSER
        );
        println!("Press Ctrl-C to stop and remove everything.");
        let fast = crate::app::wait_for_stop_signal(app.ctx()).await;
        let _ = fast;
        app.shutdown(std::time::Duration::from_secs(2)).await;
        Ok::<(), DemoError>(())
    });
    drop(runtime);
    eprintln!("causeway demo: stopping the cluster and removing its files...");
    cluster.shutdown()?;
    result
}
