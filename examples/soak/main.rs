//! Soak: mixed work through causeway for a set time while a standby's replay is paused and
//! resumed and switchovers happen; reports causeway's file descriptors, RSS, server
//! connections and p99 latency over time, and the slope of each over the second half.
//!
//! ```text
//! cargo run --release --example soak -- --duration 30m [--clients 21] [--csv soak.csv]
//! ```
//!
//! It starts a fresh local cluster (primary + 2 standbys, loopback only) and causeway as a
//! child process (this executable re-run with `--serve-proxy`, so /proc shows causeway's own
//! descriptors and memory). Clients, spread over seven kinds of work: simple reads, prepared
//! reads, autocommit writes, multi-statement transactions, COPY in and out, cancelled
//! `pg_sleep`s, and clients that vanish mid-transaction (socket dropped without Terminate).
//! A chaos loop pauses one standby's replay every `--pause-every` for `--pause-for`, and
//! switches over every `--switchover-every` (primary stopped cleanly, a standby promoted, the
//! old primary rewound under it, the other standby re-pointed). Errors are counted by
//! SQLSTATE, those inside a switchover window apart from the others. At the end it checks that
//! causeway's descriptors and server connections come back to where they were before the work.
//! The exit status is non-zero when something was not flat, not back, or an unexpected error
//! happened. `tests/soak.rs` runs the same code for 2 minutes with assertions.

#[path = "../common/serve_proxy.rs"]
mod serve_proxy;
mod soak;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

// The allocator of this process, and so of its `--serve-proxy` child: the `causeway` binary's
// (feature `jemalloc`), so the RSS it reports is the shipped binary's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(about = "Run mixed work through causeway under chaos and watch for leaks")]
struct Args {
    /// How long the work runs (`90s`, `30m`, `1h`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent clients (spread round robin over the seven kinds of work).
    #[arg(long, default_value_t = 21)]
    clients: usize,
    /// Sampling period.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample_every: Duration,
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pause_every: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pause_for: Duration,
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    switchover_every: Duration,
    /// Log in as `app_trust` (no password) instead of `app` (SCRAM).
    #[arg(long)]
    trust: bool,
    /// Write the samples to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Keep causeway's log in this file.
    #[arg(long)]
    proxy_log: Option<PathBuf>,
    /// Internal: run causeway from the library with this configuration.
    #[arg(long, hide = true)]
    serve_proxy: Option<PathBuf>,
}

/// `90s`, `30m`, `2h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    Ok(Duration::from_secs(n * mult))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(config) = &args.serve_proxy {
        return serve_proxy::serve_proxy(config, "soak");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "causeway=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("current_exe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = soak::Options {
        duration: args.duration,
        clients: args.clients,
        sample_every: args.sample_every,
        pause_every: args.pause_every,
        pause_for: args.pause_for,
        switchover_every: args.switchover_every,
        user: if args.trust {
            causeway::cluster::APP_TRUST_USER
        } else {
            causeway::cluster::APP_USER
        }
        .to_owned(),
        launcher: Box::new(move |config: &Path| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("--serve-proxy").arg(config).env(
                "RUST_LOG",
                std::env::var("CAUSEWAY_SOAK_LOG").unwrap_or_else(|_| "warn".into()),
            );
            cmd
        }),
        proxy_log: args.proxy_log.clone(),
        progress: true,
    };
    eprintln!(
        "soak: {} s, {} clients, sample every {} s, replay paused {} s every {} s, switchover every {} s",
        args.duration.as_secs(),
        args.clients,
        args.sample_every.as_secs(),
        args.pause_for.as_secs(),
        args.pause_every.as_secs(),
        args.switchover_every.as_secs()
    );
    let report = match rt.block_on(soak::run(opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.render());
    if let Some(path) = &args.csv {
        if let Err(e) = std::fs::write(path, report.csv()) {
            eprintln!("writing {}: {e}", path.display());
        }
    }
    let flat = soak::trends(&report.samples, report.secs)
        .iter()
        .filter(|t| t.name != "p99")
        .all(|t| t.flat);
    let verdict =
        flat && report.settled && report.unexpected.is_empty() && report.chaos_errors.is_empty();
    println!(
        "verdict: {}",
        if verdict {
            "no leak seen: fds, RSS and server connections flat, back to the start, no unexpected error"
        } else {
            "LOOK AT THE FIGURES ABOVE"
        }
    );
    if verdict {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
