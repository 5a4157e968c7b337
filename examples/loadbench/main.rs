//! # loadbench: causeway against direct PostgreSQL, PgBouncer and pgpool-II, in one run
//!
//! ```sh
//! cargo run --release --example loadbench             # full run, about 12 minutes
//! cargo run --release --example loadbench -- --quick  # about 4 minutes, fewer/shorter runs
//! cargo run --release --example loadbench -- --help   # every option
//! ```
//!
//! One run:
//! 1. installs PgBouncer and pgpool-II from Debian's packages if they are missing
//!    (`apt-get install -y pgbouncer pgpool2`, after `apt-get update` if that fails) and says so;
//! 2. raises RLIMIT_NOFILE (inherited by every child), starts the 3-node
//!    [`LocalCluster`] (primary + 2 streaming standbys), runs `pgbench -i` on the primary and
//!    waits for the standbys to replay it;
//! 3. starts causeway (this executable re-run with `--serve-proxy <proxy.toml>`, so it is a
//!    process of its own whose CPU and memory can be read from /proc), PgBouncer and pgpool-II,
//!    each by hand with its own configuration files in a temp directory, on its own loopback
//!    port, never as a system service;
//! 4. runs the same pgbench workloads against direct-primary, causeway, PgBouncer and pgpool-II,
//!    interleaved (A B C D, A B C D, ...) for several rounds, reading each proxy's CPU time and
//!    peak RSS from /proc around every run;
//! 5. measures resident memory per idle authenticated client for causeway and PgBouncer;
//! 6. prints a Markdown report and writes it to `docs/BENCHMARKS.md`.
//!
//! Every process it starts is stopped by PID at the end, on Ctrl-C, and (through a watchdog
//! child) even if the harness itself is killed; see `procs.rs`.

mod memory;
mod pgbench;
mod procs;
mod proxies;
mod report;
mod scram;
#[path = "../common/serve_proxy.rs"]
mod serve_proxy;
mod tls;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use causeway::cluster::{ClusterOptions, LocalCluster};

use pgbench::{Protocol, Script, Workload};
use proxies::{CausewaySettings, PgBouncerSettings, PgpoolSettings, Proxy};

// The allocator of this process, and so of its `--serve-proxy` child: the `causeway` binary's
// (feature `jemalloc`), so the figures are those of the shipped binary.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// causeway vs direct PostgreSQL, PgBouncer and pgpool-II on a local 3-node cluster.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadbench")]
struct Args {
    /// About 4 minutes: 2 rounds of 3 s runs, pgbench scale 2, 2,000 idle clients.
    #[arg(long)]
    quick: bool,
    /// Rounds (repetitions) of every workload (default 4, quick 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per pgbench run (`-T`; default 5, quick 3). pgpool-II needs about 2 s to log in
    /// 64 clients, inside that time.
    #[arg(long)]
    duration: Option<u64>,
    /// pgbench scale factor for `pgbench -i` (default 10, quick 2).
    #[arg(long)]
    scale: Option<u32>,
    /// Idle authenticated clients in the memory mode (default 10000, quick 2000).
    #[arg(long)]
    idle_clients: Option<usize>,
    /// Run only this workload, by its label as in the report (for example
    /// `--only="-S -c 16 -M prepared"`, `--only="-S -C -c 16 -M simple sslmode=require"`);
    /// repeat for several. A partial run: keep it out of
    /// docs/BENCHMARKS.md with `--no-write` or `--output`.
    #[arg(long, value_name = "WORKLOAD")]
    only: Vec<String>,
    /// Skip the idle-client memory mode.
    #[arg(long, conflicts_with = "memory_only")]
    skip_memory: bool,
    /// Run only the idle-client memory mode.
    #[arg(long)]
    memory_only: bool,
    /// Where the Markdown report goes (default: docs/BENCHMARKS.md of this repository).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the report but do not write it.
    #[arg(long)]
    no_write: bool,
    /// Internal: run causeway with this configuration (the harness starts itself this way).
    #[arg(long, hide = true)]
    serve_proxy: Option<PathBuf>,
    /// Internal: the watchdog that stops the children if the harness dies.
    #[arg(long, hide = true)]
    watchdog: bool,
}

/// Seconds since the harness started, for progress lines.
pub fn elapsed() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Prints a progress line with the time since the start.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[{:>6.1}s] {}", crate::elapsed(), format!($($arg)*))
    };
}

/// The settled plan of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub scale: u32,
    pub idle_clients: usize,
    pub idle_batch: usize,
    pub load: bool,
    pub memory: bool,
    pub workloads: Vec<Workload>,
    /// `pool_size`/`max_server_connections` of causeway and `default_pool_size` of PgBouncer,
    /// `num_init_children` of pgpool-II in the load runs.
    pub pool_size: usize,
    /// `pool_size` of causeway and `default_pool_size` of PgBouncer in the memory mode.
    pub memory_pool_size: usize,
    /// PIDs of the cluster's postmasters (their process trees count as this run's CPU).
    pub postmasters: Vec<u32>,
}

impl Plan {
    fn from_args(a: &Args) -> Plan {
        let q = a.quick;
        let mut workloads = Vec::new();
        for protocol in [Protocol::Simple, Protocol::Prepared] {
            for clients in [1, 16, 64] {
                workloads.push(Workload::new(Script::SelectOnly, protocol, clients));
            }
        }
        // Many more clients than server connections (issue 17).
        workloads.push(Workload::new(Script::SelectOnly, Protocol::Prepared, 256));
        workloads.push(Workload::new(Script::TpcB, Protocol::Simple, 16));
        // TLS towards the clients (issue 14): the same reads encrypted, and logins per second
        // (`-C`: one login per transaction) with and without TLS, SCRAM-SHA-256 every time.
        let read = |protocol| Workload::new(Script::SelectOnly, protocol, 16);
        workloads.push(Workload {
            tls: true,
            ..read(Protocol::Simple)
        });
        workloads.push(Workload {
            tls: true,
            ..read(Protocol::Prepared)
        });
        for tls in [false, true] {
            workloads.push(Workload {
                tls,
                connect: true,
                ..read(Protocol::Simple)
            });
        }
        if !a.only.is_empty() {
            workloads.retain(|w| a.only.iter().any(|o| o.trim() == w.label()));
        }
        Plan {
            rounds: a.rounds.unwrap_or(if q { 2 } else { 4 }).max(1),
            duration: Duration::from_secs(a.duration.unwrap_or(if q { 3 } else { 5 }).max(1)),
            warmup: Duration::from_secs(if q { 1 } else { 2 }),
            scale: a.scale.unwrap_or(if q { 2 } else { 10 }).max(1),
            idle_clients: a.idle_clients.unwrap_or(if q { 2_000 } else { 10_000 }),
            idle_batch: 200,
            load: !a.memory_only,
            memory: !a.skip_memory,
            workloads,
            pool_size: 80,
            memory_pool_size: 20,
            postmasters: Vec::new(),
        }
    }

    /// The targets a workload runs against. TLS and login (`-C`) rows compare the two
    /// proxies only (the cluster's servers have no TLS set up, and pgpool-II's logins are
    /// another matter); pgpool-II serves at most `num_init_children` clients at once (one more
    /// would wait for a free child for the whole run), so it sits out the rows with more.
    pub fn targets(&self, w: &Workload) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| match k {
                Kind::Causeway | Kind::PgBouncer => true,
                Kind::Direct => !w.tls && !w.connect,
                Kind::Pgpool => !w.tls && !w.connect && w.clients as usize <= self.pool_size,
            })
            .collect()
    }

    /// The most clients of any workload.
    pub fn max_clients(&self) -> usize {
        self.workloads
            .iter()
            .map(|w| w.clients as usize)
            .max()
            .unwrap_or(0)
    }

    /// `-T` of one run. pgbench's clock runs while it logs its clients in, so the rows with
    /// more clients than the default 64 get 5 s more for their logins.
    pub fn run_duration(&self, w: &Workload) -> Duration {
        if w.clients > 64 {
            self.duration + Duration::from_secs(5)
        } else {
            self.duration
        }
    }

    /// `max_connections` of the cluster's servers (see `run`).
    pub fn max_connections(&self) -> u32 {
        let n = (3 * self.pool_size + 2 * self.max_clients().max(64) + 40).max(600);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Rough duration, to print up front.
    fn estimate(&self) -> Duration {
        let runs = if self.load {
            let per_round: usize = self.workloads.iter().map(|w| self.targets(w).len()).sum();
            per_round * self.rounds
        } else {
            0
        };
        let per_run = self.duration.as_secs_f64() + 0.4;
        let load = runs as f64 * per_run + if self.load { 30.0 } else { 0.0 };
        let memory = if self.memory {
            2.0 * (12.0 + self.idle_clients as f64 / 250.0)
        } else {
            0.0
        };
        Duration::from_secs_f64(load + memory + 10.0)
    }
}

/// Who a pgbench run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Causeway,
    PgBouncer,
    Pgpool,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Direct, Kind::Causeway, Kind::PgBouncer, Kind::Pgpool];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Causeway => "causeway",
            Kind::PgBouncer => "PgBouncer",
            Kind::Pgpool => "pgpool-II",
        }
    }

    /// The name as shown for a workload: PgBouncer runs `-M prepared` in session mode.
    pub fn label(self, w: &Workload) -> String {
        match (self, w.protocol) {
            (Kind::PgBouncer, Protocol::Prepared) => "PgBouncer (session mode)".into(),
            (Kind::PgBouncer, Protocol::Simple) => "PgBouncer (transaction mode)".into(),
            _ => self.name().into(),
        }
    }
}

/// A target with where it listens and which process is the proxy.
#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    port: u16,
    pid: Option<u32>,
}

impl Target {
    fn database(&self, w: &Workload) -> &'static str {
        match (self.kind, w.protocol) {
            (Kind::PgBouncer, Protocol::Prepared) => proxies::SESSION_DATABASE,
            _ => proxies::DATABASE,
        }
    }
}

/// One pgbench run's figures.
#[derive(Debug, Clone)]
pub struct Sample {
    pub m: pgbench::Measured,
    /// Proxy CPU seconds (user + system, whole process tree) during the run.
    pub proxy_cpu: Option<f64>,
    /// The user-space part of `proxy_cpu`.
    pub proxy_user_cpu: Option<f64>,
    /// Proxy peak RSS during the run (sum over its processes), bytes.
    pub peak_rss: Option<u64>,
    /// Proxy PSS at the end of the run (shared pages split among its processes), bytes.
    pub pss: Option<u64>,
    /// Busy fraction of the whole machine (all cores) during the run.
    pub machine_busy: f64,
    /// Share of the machine used by processes that are not part of this run (other users of
    /// this shared machine): machine busy time minus the CPU time of the harness, its children
    /// and the cluster's servers.
    pub other_load: f64,
    /// Wall time of the run.
    pub wall: f64,
}

impl Sample {
    pub fn queries(&self, w: &Workload) -> u64 {
        self.m.transactions * w.script.statements()
    }

    pub fn cpu_per_1k_queries(&self, w: &Workload) -> Option<f64> {
        self.per_1k_queries(w, self.proxy_cpu)
    }

    /// User-space CPU seconds per 1000 queries.
    pub fn user_cpu_per_1k_queries(&self, w: &Workload) -> Option<f64> {
        self.per_1k_queries(w, self.proxy_user_cpu)
    }

    fn per_1k_queries(&self, w: &Workload, cpu: Option<f64>) -> Option<f64> {
        let q = self.queries(w);
        cpu.filter(|_| q > 0).map(|c| c / (q as f64 / 1000.0))
    }
}

/// Every run of a workload: `runs[round][target index in Kind::ALL]`, `None` for a target the
/// workload does not run against ([`Plan::targets`]).
#[derive(Debug, Clone)]
pub struct WorkloadRuns {
    pub workload: Workload,
    pub runs: Vec<Vec<Option<Result<Sample, String>>>>,
}

/// What the report needs besides the runs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub command: String,
    pub started: String,
    pub elapsed: Duration,
    pub cores: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub postgres: String,
    pub pgbouncer: String,
    pub pgpool: String,
    pub causeway: String,
    pub rustc: String,
    pub installed: Vec<String>,
    pub peak_rss_reset: bool,
    pub nofile_limit: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    elapsed();
    if args.watchdog {
        return procs::watchdog_main();
    }
    if let Some(config) = &args.serve_proxy {
        return serve_proxy::serve_proxy(config, "harness");
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command and returns its first output line (stdout or stderr), or `unknown`.
fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Installs PgBouncer and pgpool-II from Debian's packages if they are missing.
fn ensure_installed() -> Result<Vec<String>, String> {
    let missing: Vec<&str> = [
        ("pgbouncer", proxies::PGBOUNCER),
        ("pgpool2", proxies::PGPOOL),
    ]
    .into_iter()
    .filter(|(_, bin)| !procs::exists(Path::new(bin)))
    .map(|(pkg, _)| pkg)
    .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    say!(
        "{} missing: installing with `apt-get install -y {}`",
        missing.join(" and "),
        missing.join(" ")
    );
    let install = || {
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        say!("install failed; running `apt-get update` and trying again");
        let _ = std::process::Command::new("apt-get")
            .args(["update", "-q"])
            .status();
        if !install() {
            return Err(format!(
                "could not install {} (try `apt-get install -y {}` by hand)",
                missing.join(", "),
                missing.join(" ")
            ));
        }
    }
    Ok(missing.iter().map(|s| s.to_string()).collect())
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard) so this process and every child it spawns
/// can hold the idle clients. Returns the soft limit in force.
fn raise_nofile(wanted: u64) -> u64 {
    use rlimit::Resource;
    if let Ok((soft, hard)) = Resource::NOFILE.get() {
        if soft >= wanted {
            return soft;
        }
        if Resource::NOFILE.set(wanted, wanted.max(hard)).is_ok() {
            return wanted;
        }
    }
    rlimit::increase_nofile_limit(wanted).unwrap_or(0)
}

fn collect_facts(args: &Args, cluster: Option<&LocalCluster>) -> Facts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let repo = env!("CARGO_MANIFEST_DIR");
    let commit = first_line("git", &["-C", repo, "rev-parse", "--short=12", "HEAD"]);
    let dirty = std::process::Command::new("git")
        .args([
            "-C",
            repo,
            "status",
            "--porcelain",
            "--",
            ".",
            ":!docs/BENCHMARKS.md",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let mut command = String::from("cargo run --release --example loadbench");
    let passed: Vec<String> = std::env::args().skip(1).collect();
    if !passed.is_empty() {
        command.push_str(" -- ");
        command.push_str(&passed.join(" "));
    }
    let postgres = cluster
        .map(|c| first_line(&c.bin().path("postgres").to_string_lossy(), &["--version"]))
        .unwrap_or_else(|| "unknown".into());
    let _ = args;
    Facts {
        command,
        started: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        postgres,
        pgbouncer: first_line(proxies::PGBOUNCER, &["--version"]),
        pgpool: first_line(proxies::PGPOOL, &["--version"]),
        causeway: format!(
            "{} {commit}{}",
            env!("CARGO_PKG_VERSION"),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
        rustc: first_line("rustc", &["--version"]),
        ..Facts::default()
    }
}

fn run(args: &Args) -> Result<(), String> {
    let mut plan = Plan::from_args(args);
    if plan.load && plan.workloads.is_empty() {
        return Err(format!(
            "--only matched no workload; the labels are like \"-S -c 16 -M prepared\" and \"TPC-B -c 16 -M simple\" (got {:?})",
            args.only
        ));
    }
    let started = Instant::now();
    say!(
        "{} rounds x {} workloads x 2-4 targets, {} s each{}; about {} min in all",
        plan.rounds,
        plan.workloads.len(),
        plan.duration.as_secs(),
        if plan.memory {
            format!(", then {} idle clients", plan.idle_clients)
        } else {
            String::new()
        },
        plan.estimate().as_secs().div_ceil(60)
    );
    let installed = ensure_installed()?;
    let nofile = raise_nofile((plan.idle_clients as u64 + 2_000).max(4_096));
    if plan.memory && nofile < plan.idle_clients as u64 + 1_000 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {} idle clients",
            plan.idle_clients
        ));
    }

    procs::install_signal_handler().map_err(|e| format!("installing the signal handler: {e}"))?;
    procs::start_watchdog().map_err(|e| format!("starting the watchdog: {e}"))?;
    // Whatever way `run` ends, this stops every child, then the cluster, then removes `base`.
    let _guard = procs::CleanupGuard;
    let base = std::env::temp_dir().join(format!("causeway-loadbench-{}", std::process::id()));
    proxies::make_dir(&base, None).map_err(|e| format!("creating {}: {e}", base.display()))?;
    procs::register_temp_dir(base.clone());

    say!("starting the 3-node cluster...");
    let cluster = Arc::new(
        LocalCluster::start(ClusterOptions {
            // Every proxy keeps its server connections between runs: 80 (causeway) + 80 +
            // up to one per client (PgBouncer's transaction and session pools) + 80 (pgpool)
            // + one per client (direct) on the primary, and more.
            max_connections: plan.max_connections(),
            extra_conf: vec![
                // pgbench's tables (about 16 MB per scale unit) stay in shared memory.
                "shared_buffers = 256MB".into(),
            ],
            ..ClusterOptions::default()
        })
        .map_err(|e| format!("starting the cluster: {e}"))?,
    );
    procs::register_cluster(cluster.clone());
    plan.postmasters = (0..cluster.node_count())
        .filter_map(|n| {
            let pidfile = cluster.data_dir(n).ok()?.join("postmaster.pid");
            std::fs::read_to_string(pidfile)
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    let mut facts = collect_facts(args, Some(&cluster));
    facts.installed = installed;
    facts.nofile_limit = nofile;

    let pgbench_bin = cluster.bin().path("pgbench");
    let primary = cluster.port(0).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    if plan.load {
        say!("pgbench -i -s {} on the primary...", plan.scale);
        pgbench::initialize(&pgbench_bin, primary, plan.scale)?;
        cluster
            .wait_caught_up(Duration::from_secs(120))
            .map_err(|e| format!("standbys did not catch up: {e}"))?;
        results = load_runs(&plan, &cluster, &base, &mut facts)?;
    }
    let mut memory_results = Vec::new();
    if plan.memory && !procs::interrupted() {
        memory_results = memory_runs(&plan, &cluster, &base);
    }
    if procs::interrupted() {
        return Err("interrupted".into());
    }
    facts.elapsed = started.elapsed();
    let text = report::render(&plan, &facts, &results, &memory_results);
    println!("{text}");
    if !args.no_write {
        let out = args
            .output
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md"));
        std::fs::write(&out, &text).map_err(|e| format!("writing {}: {e}", out.display()))?;
        say!("wrote {}", out.display());
    }
    say!(
        "done in {:.1} min; stopping everything",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

fn load_runs(
    plan: &Plan,
    cluster: &LocalCluster,
    base: &Path,
    facts: &mut Facts,
) -> Result<Vec<WorkloadRuns>, String> {
    say!("starting causeway, PgBouncer and pgpool-II...");
    // One certificate for both proxies' client TLS; plaintext rows ask for no TLS.
    let tls_dir = base.join("tls");
    proxies::make_dir(&tls_dir, None).map_err(|e| e.to_string())?;
    let owner = if proxies::is_root() {
        proxies::postgres_account()
    } else {
        None
    };
    let cert = tls::write_self_signed(&tls_dir, owner)?;
    let causeway = proxies::start_causeway(
        cluster,
        &base.join("causeway"),
        &CausewaySettings {
            pool_size: plan.pool_size,
            max_server_connections: plan.pool_size,
            max_client_connections: 1_000,
            pool_timeout: "30s",
            tls: Some(cert.clone()),
        },
    )?;
    let pgbouncer = proxies::start_pgbouncer(
        cluster,
        &base.join("pgbouncer"),
        &PgBouncerSettings {
            default_pool_size: plan.pool_size,
            session_pool_size: plan.pool_size.max(plan.max_clients()),
            max_client_conn: 1_000,
            tls: Some(cert),
        },
    )?;
    let pgpool = proxies::start_pgpool(
        cluster,
        &base.join("pgpool"),
        &PgpoolSettings {
            num_init_children: plan.pool_size,
        },
    )?;
    let primary = cluster.port(0).map_err(|e| e.to_string())?;
    let targets: Vec<Target> = Kind::ALL
        .iter()
        .map(|&kind| {
            let (port, pid) = match kind {
                Kind::Direct => (primary, None),
                Kind::Causeway => (causeway.port, Some(causeway.pid)),
                Kind::PgBouncer => (pgbouncer.port, Some(pgbouncer.pid)),
                Kind::Pgpool => (pgpool.port, Some(pgpool.pid)),
            };
            Target { kind, port, pid }
        })
        .collect();
    let logs = base.join("pgbench");
    proxies::make_dir(&logs, None).map_err(|e| e.to_string())?;
    let pgbench_bin = cluster.bin().path("pgbench");

    // Warm-up: fill every pool (64 clients; PgBouncer's session pool as many as the largest
    // workload's clients, since it holds one server connection per client) and the caches;
    // nothing recorded.
    say!("warm-up...");
    // pgpool-II is context, not the subject: when it cannot warm up (it logs 64 clients in to
    // all three nodes, which a loaded machine may not finish), the run goes on without it.
    let mut sitting_out: Vec<Kind> = Vec::new();
    for t in &targets {
        for protocol in [Protocol::Simple, Protocol::Prepared] {
            if protocol == Protocol::Prepared && t.kind != Kind::PgBouncer {
                continue;
            }
            let clients = if protocol == Protocol::Prepared {
                plan.max_clients().max(64) as u32
            } else {
                64
            };
            let w = Workload::new(Script::SelectOnly, protocol, clients);
            // New server connections (SCRAM each, pgpool-II to all three nodes) can take longer
            // than a short run: try again, longer, until a run completes transactions.
            let mut last = String::new();
            let ok = (1..=4).any(|attempt| {
                match pgbench::run(
                    &pgbench_bin,
                    t.port,
                    t.database(&w),
                    &w,
                    plan.warmup * attempt,
                    &logs,
                    "warmup",
                    &[],
                ) {
                    Ok(m) => m.transactions > 0,
                    Err(e) => {
                        last = e;
                        false
                    }
                }
            });
            if !ok && t.kind == Kind::Pgpool {
                say!("warm-up against pgpool-II failed ({last}); it sits out this run");
                sitting_out.push(t.kind);
            } else if !ok {
                return Err(format!(
                    "warm-up against {} failed: {last}",
                    t.kind.label(&w)
                ));
            }
        }
    }

    facts.peak_rss_reset = true;
    let total: usize = plan
        .workloads
        .iter()
        .map(|w| plan.targets(w).len() * plan.rounds)
        .sum();
    let mut done = 0;
    let mut all = Vec::new();
    for w in &plan.workloads {
        let mut runs = Vec::new();
        for round in 0..plan.rounds {
            let mut row = Vec::new();
            for t in &targets {
                if !plan.targets(w).contains(&t.kind) || sitting_out.contains(&t.kind) {
                    row.push(None);
                    continue;
                }
                if procs::interrupted() {
                    return Err("interrupted".into());
                }
                done += 1;
                let tag = format!("run{done}");
                let sample = one_run(plan, &pgbench_bin, t, w, &logs, &tag, facts);
                match &sample {
                    Ok(s) => say!(
                        "[{done:>3}/{total}] {:<22} round {} {:<28} {:>9.0} tps  p50 {:>7.3} ms  p99 {:>7.3} ms{}",
                        w.label(),
                        round + 1,
                        t.kind.label(w),
                        s.m.tps,
                        s.m.p50_ms,
                        s.m.p99_ms,
                        s.cpu_per_1k_queries(w)
                            .map(|c| format!("  proxy {:.3} CPU-s/1k q", c))
                            .unwrap_or_default()
                    ),
                    Err(e) => say!(
                        "[{done:>3}/{total}] {:<22} round {} {:<28} FAILED: {e}",
                        w.label(),
                        round + 1,
                        t.kind.label(w)
                    ),
                }
                row.push(Some(sample));
            }
            runs.push(row);
        }
        all.push(WorkloadRuns { workload: *w, runs });
    }
    for p in [causeway.pid, pgbouncer.pid, pgpool.pid] {
        procs::stop(p, Duration::from_secs(10));
    }
    Ok(all)
}

fn one_run(
    plan: &Plan,
    pgbench_bin: &Path,
    t: &Target,
    w: &Workload,
    logs: &Path,
    tag: &str,
    facts: &mut Facts,
) -> Result<Sample, String> {
    if let Some(pid) = t.pid {
        if !procs::alive(pid) {
            return Err(format!("{} is not running", t.kind.name()));
        }
        if !procs::reset_peak_rss(pid) {
            facts.peak_rss_reset = false;
        }
    }
    let cpu0 = t.pid.map(procs::tree_cpu_times);
    let ours0 = procs::our_cpu_seconds(&plan.postmasters);
    let (busy0, total0) = procs::machine_cpu();
    let started = Instant::now();
    let m = pgbench::run(
        pgbench_bin,
        t.port,
        t.database(w),
        w,
        plan.run_duration(w),
        logs,
        tag,
        &[],
    )?;
    let wall = started.elapsed().as_secs_f64();
    let (busy1, total1) = procs::machine_cpu();
    let ours = procs::our_cpu_seconds(&plan.postmasters) - ours0;
    let total_seconds = (total1 - total0) as f64 / procs::clock_ticks();
    let busy_seconds = (busy1 - busy0) as f64 / procs::clock_ticks();
    let proxy_times = t.pid.zip(cpu0).map(|(pid, c0)| {
        let c1 = procs::tree_cpu_times(pid);
        (c1.user - c0.user, c1.system - c0.system)
    });
    let proxy_cpu = proxy_times.map(|(u, s)| u + s);
    let proxy_user_cpu = proxy_times.map(|(u, _)| u);
    let peak_rss = t.pid.map(|pid| procs::tree_status_bytes(pid, "VmHWM"));
    let pss = t.pid.map(procs::tree_pss_bytes);
    Ok(Sample {
        m,
        proxy_cpu,
        proxy_user_cpu,
        peak_rss,
        pss,
        machine_busy: (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        other_load: ((busy_seconds - ours) / total_seconds.max(1e-9)).max(0.0),
        wall,
    })
}

fn memory_runs(
    plan: &Plan,
    cluster: &LocalCluster,
    base: &Path,
) -> Vec<Result<memory::MemoryResult, String>> {
    let n = plan.idle_clients;
    let mut out = Vec::new();
    for kind in [Kind::Causeway, Kind::PgBouncer] {
        say!(
            "memory mode: {n} idle clients to {} ({} at a time)...",
            kind.name(),
            plan.idle_batch
        );
        let dir = base.join(format!("memory-{}", kind.name().to_lowercase()));
        let started: Result<Proxy, String> = match kind {
            Kind::Causeway => proxies::start_causeway(
                cluster,
                &dir,
                &CausewaySettings {
                    pool_size: plan.memory_pool_size,
                    max_server_connections: plan.memory_pool_size,
                    max_client_connections: n + 100,
                    pool_timeout: "0",
                    tls: None,
                },
            ),
            _ => proxies::start_pgbouncer(
                cluster,
                &dir,
                &PgBouncerSettings {
                    default_pool_size: plan.memory_pool_size,
                    session_pool_size: plan.memory_pool_size,
                    max_client_conn: n + 100,
                    tls: None,
                },
            ),
        };
        let result = started.and_then(|proxy| {
            let r = memory::measure(
                kind.name(),
                proxy.pid,
                proxy.port,
                n,
                plan.idle_batch,
                Duration::from_secs(2),
            );
            procs::stop(proxy.pid, Duration::from_secs(10));
            r
        });
        match &result {
            Ok(r) => say!(
                "{}: {} of {} logins completed ({} AuthenticationOk, {} ReadyForQuery), RSS {:.1} -> {:.1} MiB: {} bytes per client; one more client logged in and got ReadyForQuery in {}",
                r.proxy,
                r.authenticated,
                r.requested,
                r.auth_ok,
                r.ready,
                r.rss_before as f64 / 1048576.0,
                r.rss_after as f64 / 1048576.0,
                r.bytes_per_client().map_or("n/a".into(), |b| format!("{b:.0}")),
                r.one_more_login
                    .map_or("(not within 10 s)".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            ),
            Err(e) => say!("memory mode against {} failed: {e}", kind.name()),
        }
        out.push(result);
    }
    out
}
