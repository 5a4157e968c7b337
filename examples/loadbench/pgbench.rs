//! Running pgbench against one target and reading what it measured: TPS from its summary,
//! latency percentiles from its per-transaction log (`--log`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::procs;
use crate::proxies::{clean_command, PASSWORD, USER};

/// pgbench's built-in script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// `-S`: one `SELECT abalance FROM pgbench_accounts WHERE aid = :aid`.
    SelectOnly,
    /// The default TPC-B-like script: BEGIN, 3 UPDATEs, a SELECT, an INSERT, END.
    TpcB,
}

impl Script {
    /// Statements per transaction, for "per 1,000 queries".
    pub fn statements(self) -> u64 {
        match self {
            Script::SelectOnly => 1,
            Script::TpcB => 7,
        }
    }
}

/// `-M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Simple,
    Prepared,
}

impl Protocol {
    pub fn as_arg(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Prepared => "prepared",
        }
    }
}

/// One pgbench workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub script: Script,
    pub protocol: Protocol,
    pub clients: u32,
    /// TLS between pgbench and the target (`PGSSLMODE=require`); otherwise `disable`.
    pub tls: bool,
    /// `-C`: a new connection (and login) for every transaction.
    pub connect: bool,
}

impl Workload {
    /// A workload over plaintext, one connection per client for the whole run.
    pub fn new(script: Script, protocol: Protocol, clients: u32) -> Workload {
        Workload {
            script,
            protocol,
            clients,
            tls: false,
            connect: false,
        }
    }

    /// Label as the pgbench options that differ, e.g. `-S -c 16 -M prepared`, `-S -C -c 16 -M
    /// simple sslmode=require`.
    pub fn label(&self) -> String {
        let s = match self.script {
            Script::SelectOnly => "-S ",
            Script::TpcB => "TPC-B ",
        };
        format!(
            "{s}{}-c {} -M {}{}",
            if self.connect { "-C " } else { "" },
            self.clients,
            self.protocol.as_arg(),
            if self.tls { " sslmode=require" } else { "" }
        )
    }

    /// The same workload over plaintext.
    pub fn plaintext(&self) -> Workload {
        Workload {
            tls: false,
            ..*self
        }
    }

    /// `-j`: at most the two cores, never more than the clients.
    pub fn threads(&self) -> u32 {
        self.clients.min(2)
    }
}

/// What one pgbench run measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub tps: f64,
    pub transactions: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs pgbench once; `logs` is a directory for its per-transaction logs (removed after).
#[allow(clippy::too_many_arguments)]
pub fn run(
    pgbench: &Path,
    port: u16,
    database: &str,
    w: &Workload,
    duration: Duration,
    logs: &Path,
    tag: &str,
    extra_args: &[&str],
) -> Result<Measured, String> {
    let prefix = logs.join(tag);
    let out_path = logs.join(format!("{tag}.out"));
    let err_path = logs.join(format!("{tag}.err"));
    let mut cmd = clean_command(pgbench);
    cmd.env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        // Explicit both ways: libpq's default (`prefer`) would encrypt wherever TLS is on.
        .env("PGSSLMODE", if w.tls { "require" } else { "disable" })
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .args(["-n", "-M", w.protocol.as_arg()])
        .args(["-c", &w.clients.to_string(), "-j", &w.threads().to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .arg("--log")
        .arg(format!("--log-prefix={}", prefix.display()))
        .args(extra_args);
    if w.script == Script::SelectOnly {
        cmd.arg("-S");
    }
    if w.connect {
        cmd.arg("-C");
    }
    cmd.arg(database)
        .current_dir(logs)
        .stdout(fs::File::create(&out_path).map_err(|e| e.to_string())?)
        .stderr(fs::File::create(&err_path).map_err(|e| e.to_string())?);
    let pid = procs::spawn("pgbench", cmd, "INT").map_err(|e| format!("starting pgbench: {e}"))?;
    let deadline = Instant::now() + duration + Duration::from_secs(60);
    let status = procs::wait(pid, deadline).map_err(|e| e.to_string())?;
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let log_files = log_files(logs, tag);
    let result = if status.success() {
        let mut m = parse_summary(&stdout).ok_or_else(|| {
            if stdout.contains("actually processed: 0") {
                format!(
                    "pgbench completed no transaction in {} s",
                    duration.as_secs()
                )
            } else {
                format!("no tps in pgbench's output:\n{stdout}\n{stderr}")
            }
        })?;
        let mut latencies = Vec::with_capacity(m.transactions as usize);
        for f in &log_files {
            read_latencies(f, &mut latencies);
        }
        if latencies.is_empty() {
            return Err("pgbench wrote no per-transaction log".into());
        }
        m.p50_ms = percentile(&mut latencies, 0.50) as f64 / 1000.0;
        m.p99_ms = percentile(&mut latencies, 0.99) as f64 / 1000.0;
        Ok(m)
    } else {
        let last: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(format!(
            "pgbench exited with {status}: {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    };
    for f in log_files {
        let _ = fs::remove_file(f);
    }
    let _ = fs::remove_file(&out_path);
    if result.is_ok() {
        let _ = fs::remove_file(&err_path);
    }
    result
}

/// `<tag>.<pid>` and `<tag>.<pid>.<thread>` in `dir`.
fn log_files(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let start = format!("{tag}.");
    let mut files = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&start) {
                if rest.split('.').all(|p| p.parse::<u64>().is_ok()) {
                    files.push(e.path());
                }
            }
        }
    }
    files
}

/// Appends the latency (µs, third column) of every successful transaction in a log file.
fn read_latencies(path: &Path, out: &mut Vec<u64>) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        // client_id transaction_no time script_no time_epoch time_us [...]
        if let Some(t) = line.split(' ').nth(2).and_then(|t| t.parse::<u64>().ok()) {
            out.push(t);
        }
    }
}

/// Nearest-rank percentile (`q` in 0..=1) of a non-empty slice.
pub fn percentile(v: &mut [u64], q: f64) -> u64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    *v.select_nth_unstable(rank).1
}

/// TPS, processed and failed transactions from pgbench's summary.
fn parse_summary(out: &str) -> Option<Measured> {
    let mut m = Measured::default();
    let mut tps = None;
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("tps = ") {
            // PostgreSQL 14+: one line "(without initial connection time)", or with `-C`
            // "(including reconnection times)"; older versions print "including"/"excluding
            // connections establishing": take the excluding one.
            if !rest.contains("including connections") {
                tps = rest.split_whitespace().next().and_then(|t| t.parse().ok());
            }
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            m.transactions = rest
                .split_whitespace()
                .next()
                .and_then(|t| t.split('/').next()?.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            m.failed = rest
                .split_whitespace()
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
        }
    }
    m.tps = tps?;
    Some(m)
}

/// `pgbench -i -s <scale>` on the primary, directly.
pub fn initialize(pgbench: &Path, port: u16, scale: u32) -> Result<(), String> {
    let out = clean_command(pgbench)
        .env("PGPASSWORD", PASSWORD)
        .args(["-i", "-q", "-s", &scale.to_string()])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .arg(crate::proxies::DATABASE)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running pgbench -i: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_15_summary() {
        let out = "transaction type: <builtin: select only>\n\
                   number of transactions actually processed: 81234\n\
                   number of failed transactions: 0 (0.000%)\n\
                   latency average = 1.234 ms\n\
                   initial connection time = 12.345 ms\n\
                   tps = 11604.123456 (without initial connection time)\n";
        let m = parse_summary(out).unwrap();
        assert_eq!(m.transactions, 81234);
        assert_eq!(m.failed, 0);
        assert!((m.tps - 11604.123456).abs() < 1e-6);
        let connect = "number of transactions actually processed: 5000\n\
                       tps = 987.654321 (including reconnection times)\n";
        assert!((parse_summary(connect).unwrap().tps - 987.654321).abs() < 1e-6);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&mut v, 0.5), 50);
        assert_eq!(percentile(&mut v, 0.99), 99);
        assert_eq!(percentile(&mut [7], 0.99), 7);
    }
}
