//! Failover measurement: what clients of causeway see when the primary crashes and a standby
//! is promoted.
//!
//! ```text
//! cargo run --release --example failover -- --runs 5 [--check-interval-ms 250] [--writers 4] [--readers 4]
//! ```
//!
//! Each run starts a fresh local cluster (primary + 2 standbys, loopback only) and an
//! in-process causeway in front of it, runs a steady write load (autocommit INSERTs) and read
//! load (SELECTs, which go to the standbys) through causeway, then kills the primary
//! (`pg_ctl stop -m immediate`) and promotes node 1 at once, as Patroni or an operator would.
//! It reports, per run:
//! - the time from `pg_promote()` returning (`pg_ctl promote -w` plus the harness seeing the
//!   node out of recovery) to the first write through causeway that succeeded on the new
//!   primary, and to the proxy's snapshot naming it;
//! - client-visible errors by kind (SQLSTATE) for writes and for reads;
//!
//! then the median and the worst over all runs. Everything it starts (clusters, proxy, load
//! tasks) is stopped before it exits; every loop is bounded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use causeway::app::App;
use causeway::cluster::{self, ClusterOptions, LocalCluster, StopMode};
use causeway::config::Config;
use clap::Parser;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Measure what clients of causeway see during a failover")]
struct Args {
    /// Number of runs (each with a fresh cluster).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The proxy's `routing.check_interval`, in milliseconds.
    #[arg(long, default_value_t = 250)]
    check_interval_ms: u64,
    /// Concurrent writing clients.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Concurrent reading clients.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Steady load before the crash, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    before_ms: u64,
    /// Load kept up after the promotion, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    after_ms: u64,
}

/// Longest any single statement may take before the load counts it as an error ("timeout").
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between a client's statements.
const THINK: Duration = Duration::from_millis(5);

/// One statement's outcome.
struct Op {
    done: Instant,
    /// `Ok(port)` of the server that answered, or the error kind.
    result: Result<u16, String>,
}

#[derive(Debug, Default)]
struct RunReport {
    /// pg_promote() returned -> first successful write on the new primary, in ms. Negative
    /// when causeway was faster than pg_promote() (which checks every 100 ms whether the
    /// promotion is done).
    first_write: Option<f64>,
    /// pg_promote() returned -> the proxy's snapshot names the new primary, in ms.
    proxy_switch: Option<f64>,
    /// The primary was killed -> pg_promote() returned, in ms (the failover manager's part;
    /// here the promotion is asked for at once).
    crash_to_promote: f64,
    writes_ok: usize,
    reads_ok: usize,
    write_errors: BTreeMap<String, usize>,
    read_errors: BTreeMap<String, usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "causeway=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let check_interval = Duration::from_millis(args.check_interval_ms.max(1));
    let mut reports = Vec::new();
    for run in 1..=args.runs.max(1) {
        let report = rt.block_on(one_run(&args, check_interval))?;
        print_run(run, &report);
        reports.push(report);
    }
    print_summary(&reports, check_interval);
    Ok(())
}

async fn one_run(
    args: &Args,
    check_interval: Duration,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let c = Arc::new(
        tokio::task::spawn_blocking(|| {
            LocalCluster::start(ClusterOptions {
                standbys: 2,
                max_connections: 120,
                ..ClusterOptions::default()
            })
        })
        .await??,
    );
    {
        let c = c.clone();
        tokio::task::spawn_blocking(move || -> Result<(), cluster::ClusterError> {
            c.psql(
                0,
                "CREATE TABLE t (id bigserial PRIMARY KEY, v int NOT NULL); \
                 GRANT ALL ON t, t_id_seq TO app",
            )?;
            c.wait_caught_up(Duration::from_secs(30))
        })
        .await??;
    }
    let app = start_proxy(&c, check_interval).await?;
    let addr = app.1;
    let app = app.0;
    let new_port = c.port(1)?;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let sql = format!("INSERT INTO t (v) VALUES ({w}) RETURNING inet_server_port()");
        tasks.push(tokio::spawn(client_loop(
            addr,
            sql,
            stop.clone(),
            writes.clone(),
        )));
    }
    for _ in 0..args.readers {
        let sql = "SELECT inet_server_port() FROM (SELECT count(*) FROM t) s".to_owned();
        tasks.push(tokio::spawn(client_loop(
            addr,
            sql,
            stop.clone(),
            reads.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(args.before_ms)).await;

    // The promotion is asked for the way a failover manager would: `SELECT pg_promote()` on a
    // connection made in advance; it returns once the node is out of recovery.
    let (su, su_conn) = tokio_postgres::connect(
        &c.conninfo(1, cluster::SUPERUSER, Some(c.superuser_password()))?,
        tokio_postgres::NoTls,
    )
    .await?;
    let su_task = tokio::spawn(su_conn);
    let crash = {
        let c = c.clone();
        async move {
            let crashed_at = Instant::now();
            tokio::task::spawn_blocking(move || c.stop(0, StopMode::Immediate)).await??;
            su.simple_query("SELECT pg_promote()").await?;
            Ok::<_, Box<dyn std::error::Error>>((crashed_at, Instant::now()))
        }
    };
    // Watch the proxy's snapshot while the promotion runs.
    let topology = app.topology().clone();
    let watch = tokio::spawn(async move {
        let limit = Instant::now() + Duration::from_secs(60);
        while Instant::now() < limit {
            if topology.load().primary == Some(1) {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    });
    let (crashed_at, promoted_at) = crash.await?;
    su_task.abort();
    tokio::time::sleep(Duration::from_millis(args.after_ms)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(5), t).await;
    }
    let switched_at = watch.await.ok().flatten();
    app.shutdown(Duration::from_secs(2)).await;
    // Stops and removes the cluster (blocking: pg_ctl).
    tokio::task::spawn_blocking(move || drop(c)).await?;

    let mut report = RunReport {
        proxy_switch: switched_at.map(|s| signed_ms(s, promoted_at)),
        crash_to_promote: signed_ms(promoted_at, crashed_at),
        ..RunReport::default()
    };
    for op in writes.lock().unwrap().iter() {
        match &op.result {
            Ok(port) => {
                report.writes_ok += 1;
                if *port == new_port {
                    let d = signed_ms(op.done, promoted_at);
                    if report.first_write.is_none_or(|f| d < f) {
                        report.first_write = Some(d);
                    }
                }
            }
            Err(kind) => *report.write_errors.entry(kind.clone()).or_default() += 1,
        }
    }
    for op in reads.lock().unwrap().iter() {
        match &op.result {
            Ok(_) => report.reads_ok += 1,
            Err(kind) => *report.read_errors.entry(kind.clone()).or_default() += 1,
        }
    }
    Ok(report)
}

/// Starts causeway in this runtime in front of `c`, with the product defaults except the
/// check interval, and waits until it knows the primary and both standbys.
async fn start_proxy(
    c: &LocalCluster,
    check_interval: Duration,
) -> Result<(App, std::net::SocketAddr), Box<dyn std::error::Error>> {
    let nodes = c.nodes_toml()?;
    let toml = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[routing]
check_interval = "{check}ms"

[monitor]
user = "{mu}"
password = "{mp}"

{nodes}
[[users]]
name = "{app}"
password = "{ap}"
"#,
        check = check_interval.as_millis(),
        mu = cluster::MONITOR_USER,
        mp = cluster::MONITOR_PASSWORD,
        app = cluster::APP_USER,
        ap = cluster::APP_PASSWORD,
    );
    let loaded = Config::from_toml(&toml, "failover example", &|_| None)?;
    let app = App::new(loaded.config)?;
    let addr = app.start().await?;
    let ready = app
        .topology()
        .wait_until(Duration::from_secs(30), |t| {
            t.primary.is_some() && t.eligible_standbys() == 2
        })
        .await;
    if !ready {
        app.shutdown(Duration::from_secs(1)).await;
        return Err("causeway did not see the cluster within 30 s".into());
    }
    Ok((app, addr))
}

/// One client: runs `sql` in a loop until `stop`, recording each outcome; reconnects only when
/// its connection is gone (counted as an error of kind `closed`).
async fn client_loop(
    addr: std::net::SocketAddr,
    sql: String,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Op>>>,
) {
    let conninfo = format!(
        "host={} port={} user={} password={} dbname=postgres",
        addr.ip(),
        addr.port(),
        cluster::APP_USER,
        cluster::APP_PASSWORD
    );
    let mut client = None;
    // Bounded: the stop flag ends it, and so does this cap on statements.
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if client
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            match tokio::time::timeout(
                OP_TIMEOUT,
                tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client = Some(c);
                }
                Ok(Err(e)) => {
                    record(&out, Err(format!("connect {}", kind(&e))));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => {
                    record(&out, Err("connect timeout".into()));
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let result = match tokio::time::timeout(OP_TIMEOUT, c.simple_query(&sql)).await {
            Ok(Ok(msgs)) => msgs
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get(0).and_then(|p| p.parse::<u16>().ok())
                    }
                    _ => None,
                })
                .ok_or_else(|| "no row".to_owned()),
            Ok(Err(e)) => Err(kind(&e)),
            Err(_) => Err("timeout".into()),
        };
        record(&out, result);
        tokio::time::sleep(THINK).await;
    }
}

fn record(out: &Mutex<Vec<Op>>, result: Result<u16, String>) {
    out.lock().unwrap().push(Op {
        done: Instant::now(),
        result,
    });
}

/// An error's kind: its SQLSTATE, or `closed` when the connection itself went away.
fn kind(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => code.code().to_owned(),
        None if e.is_closed() => "closed".to_owned(),
        None => "other".to_owned(),
    }
}

/// `t - since` in milliseconds, negative when `t` came first.
fn signed_ms(t: Instant, since: Instant) -> f64 {
    if t >= since {
        (t - since).as_secs_f64() * 1000.0
    } else {
        -((since - t).as_secs_f64() * 1000.0)
    }
}

fn ms(d: Option<f64>) -> String {
    d.map_or_else(|| "none".to_owned(), |d| format!("{d:.0} ms"))
}

fn errors(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_run(run: usize, r: &RunReport) {
    println!(
        "run {run}: primary killed, pg_promote() returned {:.0} ms later; first write on the new primary {} after that \
         (proxy switched after {}); writes ok {}, write errors [{}]; reads ok {}, read errors [{}]",
        r.crash_to_promote,
        ms(r.first_write),
        ms(r.proxy_switch),
        r.writes_ok,
        errors(&r.write_errors),
        r.reads_ok,
        errors(&r.read_errors),
    );
}

/// Median (the lower one for an even count) and worst of the present values.
fn median_worst(mut v: Vec<f64>) -> (Option<f64>, Option<f64>) {
    v.sort_by(f64::total_cmp);
    let median = (!v.is_empty()).then(|| v[(v.len() - 1) / 2]);
    (median, v.last().copied())
}

fn print_summary(reports: &[RunReport], check_interval: Duration) {
    let first: Vec<f64> = reports.iter().filter_map(|r| r.first_write).collect();
    let missing = reports.len() - first.len();
    let (median, worst) = median_worst(first);
    let (sw_median, sw_worst) =
        median_worst(reports.iter().filter_map(|r| r.proxy_switch).collect());
    let total = |pick: fn(&RunReport) -> &BTreeMap<String, usize>| {
        let mut all: BTreeMap<String, usize> = BTreeMap::new();
        for r in reports {
            for (k, v) in pick(r) {
                *all.entry(k.clone()).or_default() += v;
            }
        }
        all
    };
    let per_run = |pick: fn(&RunReport) -> &BTreeMap<String, usize>| {
        let mut v: Vec<usize> = reports.iter().map(|r| pick(r).values().sum()).collect();
        v.sort_unstable();
        (v[(v.len() - 1) / 2], v.last().copied().unwrap_or(0))
    };
    let (we_median, we_worst) = per_run(|r| &r.write_errors);
    let (re_median, re_worst) = per_run(|r| &r.read_errors);
    println!();
    println!(
        "summary over {} runs, check_interval = {} ms:",
        reports.len(),
        check_interval.as_millis()
    );
    println!(
        "  pg_promote() returned -> first successful write through causeway: median {}, worst {}{}",
        ms(median),
        ms(worst),
        if missing > 0 {
            format!(" ({missing} runs without one!)")
        } else {
            String::new()
        }
    );
    println!(
        "  pg_promote() returned -> proxy snapshot names the new primary: median {}, worst {}",
        ms(sw_median),
        ms(sw_worst)
    );
    println!(
        "  client-visible write errors per run: median {we_median}, worst {we_worst}; by kind over all runs: {}",
        errors(&total(|r| &r.write_errors))
    );
    println!(
        "  client-visible read errors per run: median {re_median}, worst {re_worst}; by kind over all runs: {}",
        errors(&total(|r| &r.read_errors))
    );
}
