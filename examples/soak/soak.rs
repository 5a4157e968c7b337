//! The soak itself, shared by `examples/soak` (any duration, a table and a CSV) and
//! `tests/soak.rs` (2 minutes, assertions): a fresh local cluster (primary + 2 standbys),
//! causeway as a child process of its own in front of it (so /proc shows its descriptors and
//! memory alone), mixed clients ([`work`]), a chaos loop (a standby's replay paused and resumed,
//! switchovers), and a sampler that reads causeway's fds and RSS from /proc, its server
//! connections from each node's `pg_stat_activity`, and the window's p99 latency.
//!
//! After the work stops and every client is gone it waits (with a deadline) for descriptors
//! and server connections to come back to where they were before the work began.

#[path = "work.rs"]
pub mod work;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use causeway::cluster::{self, ClusterOptions, LocalCluster, StopMode};
use tokio::time::Instant;

use work::{Failure, Kind, Shared};

/// How the caller starts causeway: given the configuration file, a command ready to spawn
/// (the example re-runs itself, the test runs the `causeway` binary).
pub type Launcher = Box<dyn Fn(&Path) -> Command + Send + Sync>;

/// What to run.
pub struct Options {
    pub duration: Duration,
    /// Clients, spread round robin over the kinds of work.
    pub clients: usize,
    pub sample_every: Duration,
    /// A standby's replay is paused for `pause_for` this often.
    pub pause_every: Duration,
    pub pause_for: Duration,
    /// A switchover this often (the first after one period), while at least 30 s of the run
    /// remain after it.
    pub switchover_every: Duration,
    /// The user the clients log in as: `app` (SCRAM) or `app_trust` (no password; the test
    /// uses it, SCRAM in a debug build costs much CPU per connection).
    pub user: String,
    pub launcher: Launcher,
    /// Where causeway's log goes (its stderr); inside the cluster's directory when `None`
    /// (removed with it).
    pub proxy_log: Option<PathBuf>,
    /// Print each sample to stderr as it is taken.
    pub progress: bool,
}

/// Errors after a switchover finished that still count as caused by it.
pub const SWITCHOVER_GRACE: Duration = Duration::from_secs(10);

/// One sample of the run.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the work began.
    pub t: f64,
    pub fds: u64,
    pub rss_kib: u64,
    /// causeway's server connections (the clients' user) over all nodes answering.
    pub server_conns: u64,
    /// Of those, idle in a transaction.
    pub idle_in_tx: u64,
    /// The topology watcher's and catalog's connections (the monitor user) over all nodes.
    pub monitor_conns: u64,
    /// Nodes that did not answer the count (stopped for a switchover).
    pub nodes_down: usize,
    /// Client connections open in the harness.
    pub clients: u64,
    /// Successful operations and failures in the window.
    pub ops: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The primary's node number, when the harness could tell.
    pub primary: Option<usize>,
}

/// causeway's own figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level {
    pub fds: u64,
    pub server_conns: u64,
    pub idle_in_tx: u64,
    pub rss_kib: u64,
}

/// Everything a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
    /// Before the work began (pools drained).
    pub start: Level,
    /// After the work stopped and the levels settled (or the deadline passed).
    pub end: Level,
    /// Seconds from the end of the work until `end` was reached.
    pub settle_secs: f64,
    pub settled: bool,
    /// Successful operations per kind.
    pub ok: BTreeMap<&'static str, u64>,
    pub cancels_missed: u64,
    /// Failures inside a switchover window (plus [`SWITCHOVER_GRACE`]), by (kind, code):
    /// how many, and the first one's message.
    pub expected: BTreeMap<(String, String), (u64, String)>,
    /// Every other failure, and every operation left without an answer for
    /// [`work::OP_TIMEOUT`] (code `timeout`) wherever it happened.
    pub unexpected: Vec<Failure>,
    /// (start second, seconds taken, old primary -> new primary) per switchover.
    pub switchovers: Vec<(f64, f64, usize, usize)>,
    pub pauses: usize,
    /// Failures of the chaos loop itself (a switchover step that failed).
    pub chaos_errors: Vec<String>,
    /// The run's real length in seconds.
    pub secs: f64,
    /// When the work began.
    pub began: Option<Instant>,
}

/// The causeway child; killed when dropped.
struct ProxyChild {
    child: std::process::Child,
    port: u16,
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn proxy_config(c: &LocalCluster, port: u16) -> Result<String, String> {
    let nodes = c.nodes_toml().map_err(|e| e.to_string())?;
    Ok(format!(
        r#"# Written by the soak (examples/soak).
[proxy]
listen = "127.0.0.1:{port}"

[pool]
# Idle server connections close soon, so the end of the run can check they all went away.
server_idle_timeout = "5s"

[monitor]
user = "{mu}"
password = "{mp}"

{nodes}
[[users]]
name = "{app}"
password = "{ap}"

[[users]]
name = "{trust}"
auth = "trust"
"#,
        mu = cluster::MONITOR_USER,
        mp = cluster::MONITOR_PASSWORD,
        app = cluster::APP_USER,
        ap = cluster::APP_PASSWORD,
        trust = cluster::APP_TRUST_USER,
    ))
}

/// Runs `f` on the blocking pool (the cluster's calls run psql and pg_ctl).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, cluster::ClusterError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Runs the soak. Everything it starts (cluster, causeway, clients) is stopped before it
/// returns, also on error.
pub async fn run(opts: Options) -> Result<Report, String> {
    let c = Arc::new(
        blocking(|| {
            LocalCluster::start(ClusterOptions {
                standbys: 2,
                max_connections: 200,
                ..ClusterOptions::default()
            })
        })
        .await?,
    );
    let result = run_on(&opts, &c).await;
    // Stops and removes the cluster (pg_ctl: blocking).
    let _ = tokio::task::spawn_blocking(move || drop(c)).await;
    result
}

async fn run_on(opts: &Options, c: &Arc<LocalCluster>) -> Result<Report, String> {
    {
        let c = c.clone();
        let user = opts.user.clone();
        blocking(move || {
            c.psql(
                0,
                &format!(
                    "CREATE TABLE soak_t (id bigserial PRIMARY KEY, client int NOT NULL, v int NOT NULL, note text); \
                     CREATE INDEX ON soak_t (client); \
                     CREATE TABLE soak_copy (id bigserial PRIMARY KEY, client int, v int, note text); \
                     GRANT ALL ON soak_t, soak_t_id_seq, soak_copy, soak_copy_id_seq TO {user}"
                ),
            )?;
            c.wait_caught_up(Duration::from_secs(30))
        })
        .await?;
    }
    let port = free_port()?;
    let config = c.base_dir().join("soak-proxy.toml");
    std::fs::write(&config, proxy_config(c, port)?)
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let log = opts
        .proxy_log
        .clone()
        .unwrap_or_else(|| c.base_dir().join("soak-proxy.log"));
    let log_file =
        std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let mut cmd = (opts.launcher)(&config);
    cmd.stdin(Stdio::piped())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file);
    let proxy = ProxyChild {
        child: cmd.spawn().map_err(|e| format!("starting causeway: {e}"))?,
        port,
    };
    let pid = proxy.child.id();
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=postgres connect_timeout=10",
        proxy.port,
        opts.user,
        cluster::APP_PASSWORD
    );
    wait_ready(&conninfo, &log).await?;

    // The start level: pools drained (the readiness check used one connection).
    let (start, _) = settle(c, pid, &opts.user, None, Duration::from_secs(30)).await;

    let shared = Arc::new(Shared::new());
    let began = Instant::now();
    let mut clients = Vec::new();
    for i in 0..opts.clients.max(1) {
        let kind = Kind::ALL[i % Kind::ALL.len()];
        clients.push(tokio::spawn(work::client(
            kind,
            i,
            conninfo.clone(),
            shared.clone(),
        )));
    }
    let windows = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let chaos = tokio::spawn(chaos(
        c.clone(),
        opts.pause_every,
        opts.pause_for,
        opts.switchover_every,
        opts.duration,
        shared.clone(),
        windows.clone(),
    ));
    let samples = sample_loop(c, pid, opts, &shared, began).await;

    shared.stop.store(true, Ordering::Relaxed);
    for t in clients {
        let _ = tokio::time::timeout(work::OP_TIMEOUT + Duration::from_secs(5), t).await;
    }
    let chaos_out = chaos.await.map_err(|e| e.to_string())?;
    let work_end = Instant::now();
    let secs = (work_end - began).as_secs_f64();
    // Replay may have been left paused by a failed chaos step: resume it everywhere.
    {
        let c = c.clone();
        let _ = blocking(move || {
            for n in 0..c.node_count() {
                if c.is_in_recovery(n).unwrap_or(false) {
                    let _ = c.resume_replay(n);
                }
            }
            Ok(())
        })
        .await;
    }
    let (end, settled) = settle(c, pid, &opts.user, Some(start), Duration::from_secs(60)).await;
    let settle_secs = work_end.elapsed().as_secs_f64();

    let windows = windows.lock().unwrap().clone();
    let mut report = Report {
        samples,
        start,
        end,
        settle_secs,
        settled,
        cancels_missed: shared.cancels_missed.load(Ordering::Relaxed),
        switchovers: chaos_out
            .switchovers
            .iter()
            .map(|&(at, took, from, to)| ((at - began).as_secs_f64(), took, from, to))
            .collect(),
        pauses: chaos_out.pauses,
        chaos_errors: chaos_out.errors,
        secs,
        ..Report::default()
    };
    for k in Kind::ALL {
        report
            .ok
            .insert(k.name(), shared.ok[k as usize].load(Ordering::Relaxed));
    }
    report.began = Some(began);
    for f in shared.failures.lock().unwrap().drain(..) {
        // By when the operation began: one that began in the window and failed after it is
        // the switchover's. An operation left without any answer is never expected.
        let expected = f.code != "timeout"
            && windows.iter().any(|&(from, to)| {
                f.started + Duration::from_secs(1) >= from && f.started <= to + SWITCHOVER_GRACE
            });
        if expected {
            report
                .expected
                .entry((f.kind.name().to_owned(), f.code.clone()))
                .or_insert_with(|| (0, f.message.clone()))
                .0 += 1;
        } else {
            report.unexpected.push(f);
        }
    }
    drop(proxy);
    Ok(report)
}

/// Waits until a write and a read through causeway succeed.
async fn wait_ready(conninfo: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                let task = tokio::spawn(conn);
                let r = client
                    .batch_execute(
                        "INSERT INTO soak_t (client, v, note) VALUES (-1, 0, 'ready'); \
                         SELECT count(*) FROM soak_t",
                    )
                    .await;
                drop(client);
                let _ = task.await;
                match r {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "causeway did not answer within 60 s ({last}); its log ends:\n{}",
        tail(log)
    ))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Per node: (server connections of `user`, of them idle in transaction, monitor
/// connections), `None` for a node that did not answer.
async fn node_counts(c: &Arc<LocalCluster>, user: &str) -> Vec<Option<(u64, u64, u64)>> {
    let c = c.clone();
    let sql = format!(
        "SELECT count(*) FILTER (WHERE usename = '{user}'), \
                count(*) FILTER (WHERE usename = '{user}' AND state LIKE 'idle in transaction%'), \
                count(*) FILTER (WHERE usename = '{mon}') \
         FROM pg_stat_activity WHERE backend_type = 'client backend'",
        mon = cluster::MONITOR_USER
    );
    tokio::task::spawn_blocking(move || {
        (0..c.node_count())
            .map(|n| {
                let out = c.psql(n, &sql).ok()?;
                let mut it = out.split('|').map(|v| v.trim().parse::<u64>().ok());
                Some((it.next()??, it.next()??, it.next()??))
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

async fn level(c: &Arc<LocalCluster>, pid: u32, user: &str) -> Level {
    let counts = node_counts(c, user).await;
    let mut l = Level {
        fds: fd_count(pid),
        rss_kib: rss_kib(pid),
        ..Level::default()
    };
    for (conns, idle_tx, _) in counts.into_iter().flatten() {
        l.server_conns += conns;
        l.idle_in_tx += idle_tx;
    }
    l
}

/// Polls causeway's level every 500 ms until its server connections are gone and no
/// transaction is left open (and, given `start`, its descriptors are back to at most
/// `start`'s + [`FD_SLACK`] and its server connections to at most `start`'s), or `limit`
/// passes. Returns the last level and whether it settled.
async fn settle(
    c: &Arc<LocalCluster>,
    pid: u32,
    user: &str,
    start: Option<Level>,
    limit: Duration,
) -> (Level, bool) {
    let deadline = Instant::now() + limit;
    loop {
        let l = level(c, pid, user).await;
        let ok = l.idle_in_tx == 0
            && match start {
                None => l.server_conns == 0,
                Some(s) => l.server_conns <= s.server_conns && l.fds <= s.fds + FD_SLACK,
            };
        if ok || Instant::now() >= deadline {
            return (l, ok);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Descriptors causeway may hold above its start level once the work is over: a topology
/// watcher or catalog connection being re-made at that moment.
pub const FD_SLACK: u64 = 2;

async fn sample_loop(
    c: &Arc<LocalCluster>,
    pid: u32,
    opts: &Options,
    shared: &Arc<Shared>,
    began: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ops_before = 0u64;
    let mut errors_before = 0usize;
    let mut next = began + opts.sample_every;
    let end = began + opts.duration;
    if opts.progress {
        eprintln!("{}", Sample::header());
    }
    while next <= end + Duration::from_millis(1) {
        tokio::time::sleep_until(next).await;
        next += opts.sample_every;
        let hist = {
            let mut h = shared.window.lock().unwrap();
            let copy = h.clone();
            h.reset();
            copy
        };
        let ops_now: u64 = shared.ok.iter().map(|o| o.load(Ordering::Relaxed)).sum();
        let errors_now = shared.failures.lock().unwrap().len();
        let counts = node_counts(c, &opts.user).await;
        let primary = {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.primary().ok())
                .await
                .ok()
                .flatten()
        };
        let mut s = Sample {
            t: began.elapsed().as_secs_f64(),
            fds: fd_count(pid),
            rss_kib: rss_kib(pid),
            clients: shared.connected.load(Ordering::Relaxed),
            ops: ops_now - ops_before,
            errors: (errors_now - errors_before) as u64,
            p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
            primary,
            ..Sample::default()
        };
        for n in &counts {
            match n {
                Some((conns, idle_tx, mon)) => {
                    s.server_conns += conns;
                    s.idle_in_tx += idle_tx;
                    s.monitor_conns += mon;
                }
                None => s.nodes_down += 1,
            }
        }
        ops_before = ops_now;
        errors_before = errors_now;
        if opts.progress {
            eprintln!("{}", s.row());
        }
        samples.push(s);
    }
    samples
}

#[derive(Default)]
struct ChaosOut {
    switchovers: Vec<(Instant, f64, usize, usize)>,
    pauses: usize,
    errors: Vec<String>,
}

/// Pauses a standby's replay for `pause_for` every `pause_every`, and switches over every
/// `switchover_every`: the primary is stopped cleanly, a standby promoted, the old primary
/// rewound to follow it and the other standby re-pointed at it. Each switchover's window is
/// pushed to `windows`.
async fn chaos(
    c: Arc<LocalCluster>,
    pause_every: Duration,
    pause_for: Duration,
    switchover_every: Duration,
    duration: Duration,
    shared: Arc<Shared>,
    windows: Arc<Mutex<Vec<(Instant, Instant)>>>,
) -> ChaosOut {
    let began = Instant::now();
    let end = began + duration;
    let mut out = ChaosOut::default();
    let mut next_pause = began + pause_every;
    let mut next_switch = began + switchover_every;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < end {
        let now = Instant::now();
        if now >= next_switch {
            next_switch += switchover_every;
            if now + Duration::from_secs(30) > end {
                continue;
            }
            let from = Instant::now();
            // The window is known as open while it runs (failures are classified at the end).
            let c2 = c.clone();
            let r = blocking(move || {
                let old = c2.primary()?;
                let new = (old + 1) % c2.node_count();
                let other = (old + 2) % c2.node_count();
                c2.stop(old, StopMode::Fast)?;
                c2.promote(new)?;
                c2.rewind_standby(old, new)?;
                c2.rewind_standby(other, new)?;
                Ok((old, new))
            })
            .await;
            let to = Instant::now();
            windows.lock().unwrap().push((from, to));
            match r {
                Ok((old, new)) => {
                    out.switchovers
                        .push((from, (to - from).as_secs_f64(), old, new));
                }
                Err(e) => out.errors.push(format!("switchover: {e}")),
            }
            continue;
        }
        if now >= next_pause {
            next_pause += pause_every;
            let c2 = c.clone();
            let paused = blocking(move || {
                let primary = c2.primary()?;
                let n = (primary + 1) % c2.node_count();
                c2.pause_replay(n)?;
                Ok(n)
            })
            .await;
            match paused {
                Ok(n) => {
                    out.pauses += 1;
                    let until = (Instant::now() + pause_for).min(end);
                    while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let c2 = c.clone();
                    if let Err(e) = blocking(move || c2.resume_replay(n)).await {
                        out.errors.push(format!("resume replay on node{n}: {e}"));
                    }
                }
                Err(e) => out.errors.push(format!("pause replay: {e}")),
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

impl Sample {
    pub fn header() -> String {
        format!(
            "{:>7} {:>5} {:>9} {:>6} {:>4} {:>4} {:>7} {:>7} {:>6} {:>8} {:>8} {:>4}",
            "t_s",
            "fds",
            "rss_kib",
            "server",
            "itx",
            "mon",
            "clients",
            "ops",
            "errors",
            "p50_ms",
            "p99_ms",
            "prim"
        )
    }

    pub fn row(&self) -> String {
        format!(
            "{:>7.0} {:>5} {:>9} {:>6} {:>4} {:>4} {:>7} {:>7} {:>6} {:>8.2} {:>8.2} {:>4}",
            self.t,
            self.fds,
            self.rss_kib,
            if self.nodes_down > 0 {
                format!("{}*", self.server_conns)
            } else {
                self.server_conns.to_string()
            },
            self.idle_in_tx,
            self.monitor_conns,
            self.clients,
            self.ops,
            self.errors,
            self.p50_ms,
            self.p99_ms,
            self.primary.map_or("?".to_owned(), |p| p.to_string()),
        )
    }
}

/// Least-squares slope of `(x, y)`, per unit of `x`, and its standard error (0 with fewer
/// than 3 points); `None` with fewer than 2 distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = sxy / sxx;
    let se = if points.len() > 2 {
        let a = my - b * mx;
        let ssr: f64 = points.iter().map(|p| (p.1 - a - b * p.0).powi(2)).sum();
        (ssr / (n - 2.0) / sxx).sqrt()
    } else {
        0.0
    };
    Some((b, se))
}

/// One metric's trend over the second half of the run.
#[derive(Debug, Clone)]
pub struct Trend {
    pub name: &'static str,
    pub unit: &'static str,
    pub mean: f64,
    /// Per minute.
    pub slope: f64,
    /// The slope's standard error.
    pub se: f64,
    /// What the fitted line moves over the second half.
    pub drift: f64,
    /// The largest drift still called flat.
    pub allowed: f64,
    pub flat: bool,
}

/// Trends of fds, RSS, server connections and p99 over the samples taken in the second half
/// of the run (the first half is warm-up). A metric is flat when its fitted line moves less
/// than a tolerance over that half: 3 fds, 2 connections, 4 MiB of RSS (each or 5% of the
/// mean, whichever is larger); p99 by 50% of its mean (it follows the machine's load). A slope
/// within two standard errors of zero is flat too: noise, not a trend (a short run's few
/// samples of a count that moves with the clients' timing).
pub fn trends(samples: &[Sample], secs: f64) -> Vec<Trend> {
    let half: Vec<&Sample> = samples.iter().filter(|s| s.t >= secs / 2.0).collect();
    let span_min = match (half.first(), half.last()) {
        (Some(a), Some(b)) => (b.t - a.t) / 60.0,
        _ => 0.0,
    };
    let metric = |name, unit, abs: f64, rel: f64, pick: &dyn Fn(&Sample) -> f64| {
        let pts: Vec<(f64, f64)> = half.iter().map(|s| (s.t / 60.0, pick(s))).collect();
        let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len().max(1) as f64;
        let (slope, se) = slope(&pts).unwrap_or((0.0, 0.0));
        let drift = slope * span_min;
        let allowed = abs.max(rel * mean);
        Trend {
            name,
            unit,
            mean,
            slope,
            se,
            drift,
            allowed,
            flat: drift.abs() <= allowed || slope.abs() <= 2.0 * se,
        }
    };
    vec![
        metric("fds", "", 3.0, 0.05, &|s| s.fds as f64),
        metric("rss", " MiB", 4.0, 0.05, &|s| s.rss_kib as f64 / 1024.0),
        metric("server_conns", "", 2.0, 0.05, &|s| s.server_conns as f64),
        metric("p99", " ms", 0.0, 0.5, &|s| s.p99_ms),
    ]
}

impl Report {
    /// The table, the trends, the errors and the end levels as text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "{}", Sample::header());
        for s in &self.samples {
            let _ = writeln!(o, "{}", s.row());
        }
        let _ = writeln!(
            o,
            "(server = causeway's connections on all nodes, * = a node did not answer; itx = idle in transaction; mon = monitor connections)"
        );
        let _ = writeln!(o, "\nrun: {:.0} s", self.secs);
        let _ = writeln!(
            o,
            "operations ok: {}",
            self.ok
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            o,
            "cancels that missed their statement: {}",
            self.cancels_missed
        );
        let _ = writeln!(o, "replay pauses: {}", self.pauses);
        for (at, took, from, to) in &self.switchovers {
            let _ = writeln!(
                o,
                "switchover at {at:.0} s: node{from} -> node{to}, took {took:.1} s"
            );
        }
        for e in &self.chaos_errors {
            let _ = writeln!(o, "chaos step failed: {e}");
        }
        let _ = writeln!(
            o,
            "\ntrends over the second half (least squares, per minute):"
        );
        for t in trends(&self.samples, self.secs) {
            let _ = writeln!(
                o,
                "  {:<13} mean {:>9.2}{u:<4} slope {:>+8.3} ± {:.3}{u}/min, drift over the half {:>+8.2}{u} (flat if within ±{:.2}{u}): {}",
                t.name,
                t.mean,
                t.slope,
                t.se,
                t.drift,
                t.allowed,
                if t.flat { "flat" } else { "NOT FLAT" },
                u = t.unit,
            );
        }
        let _ = writeln!(
            o,
            "\nerrors in switchover windows (+{} s), expected: {}",
            SWITCHOVER_GRACE.as_secs(),
            if self.expected.is_empty() {
                "none".to_owned()
            } else {
                self.expected
                    .iter()
                    .map(|((k, c), (n, first))| format!("\n  {k} {c}: {n} (first: {first})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let mut by_code: BTreeMap<(String, String), u64> = BTreeMap::new();
        for f in &self.unexpected {
            *by_code
                .entry((f.kind.name().to_owned(), f.code.clone()))
                .or_default() += 1;
        }
        let _ = writeln!(
            o,
            "unexpected errors (and operations without an answer in {} s, code timeout): {}",
            work::OP_TIMEOUT.as_secs(),
            self.unexpected.len()
        );
        let secs = |t: Instant| {
            self.began
                .map_or(0.0, |b| t.saturating_duration_since(b).as_secs_f64())
        };
        for ((k, c), n) in &by_code {
            let first: Vec<String> = self
                .unexpected
                .iter()
                .filter(|f| f.kind.name() == k && &f.code == c)
                .take(3)
                .map(|f| {
                    format!(
                        "began {:.1} s, failed {:.1} s: {}",
                        secs(f.started),
                        secs(f.at),
                        f.message
                    )
                })
                .collect();
            let _ = writeln!(o, "  {k} {c}: {n} ({})", first.join("; "));
        }
        let _ = writeln!(
            o,
            "\nbefore the work: fds {}, server connections {}, RSS {} KiB",
            self.start.fds, self.start.server_conns, self.start.rss_kib
        );
        let _ = writeln!(
            o,
            "after it ({:.1} s later): fds {}, server connections {}, idle in transaction {}, RSS {} KiB: {}",
            self.settle_secs,
            self.end.fds,
            self.end.server_conns,
            self.end.idle_in_tx,
            self.end.rss_kib,
            if self.settled {
                "back to the start"
            } else {
                "NOT back to the start"
            }
        );
        o
    }

    /// The samples as CSV.
    pub fn csv(&self) -> String {
        let mut o = String::from(
            "t_s,fds,rss_kib,server_conns,idle_in_tx,monitor_conns,nodes_down,clients,ops,errors,p50_ms,p99_ms,primary\n",
        );
        for s in &self.samples {
            let _ = writeln!(
                o,
                "{:.1},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{}",
                s.t,
                s.fds,
                s.rss_kib,
                s.server_conns,
                s.idle_in_tx,
                s.monitor_conns,
                s.nodes_down,
                s.clients,
                s.ops,
                s.errors,
                s.p50_ms,
                s.p99_ms,
                s.primary.map_or(String::new(), |p| p.to_string())
            );
        }
        o
    }
}
