//! Child processes the harness starts (proxies, pgbench), how they are stopped whatever happens,
//! and what `/proc` says about them.
//!
//! Three layers make sure nothing outlives the harness:
//! 1. [`CleanupGuard`]'s `Drop` (normal end, `?`, panics) stops every tracked child by PID.
//! 2. A signal thread ([`install_signal_handler`]) does the same on Ctrl-C / SIGTERM, shuts the
//!    cluster down, and exits. Children run in their own process groups, so a terminal's Ctrl-C
//!    reaches only the harness, which then stops them in order.
//! 3. A watchdog child (this executable with `--watchdog`) is told every PID over a pipe; when
//!    the pipe closes without a clean "bye" (the harness was SIGKILLed), it stops the PIDs it
//!    still holds. The causeway child also exits when its stdin closes.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use causeway::cluster::LocalCluster;

/// A tracked child.
struct Tracked {
    name: String,
    child: Child,
    /// Signal that asks it to stop quickly (`TERM`, or `INT` for pgpool's fast shutdown).
    stop_signal: &'static str,
}

/// Everything that must be stopped at the end.
#[derive(Default)]
struct Registry {
    children: HashMap<u32, Tracked>,
    watchdog: Option<(Child, ChildStdin)>,
    cluster: Option<Arc<LocalCluster>>,
    /// The run's temp directory, removed last.
    temp_dir: Option<std::path::PathBuf>,
}

/// Set once an interrupt asked everything to stop: no new child is started after it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C / SIGTERM asked the run to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

/// Tells the watchdog one line; a dead watchdog is not worth failing the run for.
fn tell_watchdog(reg: &mut Registry, line: &str) {
    if let Some((_, stdin)) = reg.watchdog.as_mut() {
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }
}

/// Starts the watchdog (this executable with `--watchdog`).
pub fn start_watchdog() -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--watchdog")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child.stdin.take().expect("piped");
    lock().watchdog = Some((child, stdin));
    Ok(())
}

/// The watchdog's main: reads `+PID` / `-PID` / `dir PATH` lines; on EOF without `bye`, stops
/// the PIDs that are left and removes the directory.
pub fn watchdog_main() -> std::process::ExitCode {
    let mut pids: Vec<u32> = Vec::new();
    let mut dir: Option<String> = None;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "bye" {
            return std::process::ExitCode::SUCCESS;
        }
        if let Some(path) = line.strip_prefix("dir ") {
            dir = Some(path.to_owned());
        } else if let Some(pid) = line.strip_prefix('+').and_then(|p| p.parse().ok()) {
            pids.push(pid);
        } else if let Some(pid) = line.strip_prefix('-').and_then(|p| p.parse::<u32>().ok()) {
            pids.retain(|&p| p != pid);
        }
    }
    // The harness is gone without saying goodbye: stop its children.
    for &pid in &pids {
        signal(pid, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        thread::sleep(Duration::from_millis(100));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        signal(pid, "KILL");
    }
    if let Some(dir) = dir {
        thread::sleep(Duration::from_millis(500));
        let _ = fs::remove_dir_all(dir);
    }
    std::process::ExitCode::SUCCESS
}

/// Sends a signal with kill(1) (no `unsafe` needed).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|f| f.first() != Some(&"Z")),
        Err(_) => false,
    }
}

/// Starts `cmd` in its own process group and tracks it; returns its PID.
pub fn spawn(name: &str, mut cmd: Command, stop_signal: &'static str) -> std::io::Result<u32> {
    cmd.process_group(0);
    // Checked and spawned under the lock, so nothing starts after the handler took the list.
    let mut reg = lock();
    if interrupted() {
        return Err(std::io::Error::other("interrupted"));
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    tell_watchdog(&mut reg, &format!("+{pid}"));
    reg.children.insert(
        pid,
        Tracked {
            name: name.to_owned(),
            child,
            stop_signal,
        },
    );
    Ok(pid)
}

/// The exit status if the child has exited (reaping and forgetting it), `None` if it runs.
pub fn try_wait(pid: u32) -> std::io::Result<Option<ExitStatus>> {
    let mut reg = lock();
    let Some(t) = reg.children.get_mut(&pid) else {
        return Err(std::io::Error::other(format!("pid {pid} is not tracked")));
    };
    let status = t.child.try_wait()?;
    if status.is_some() {
        reg.children.remove(&pid);
        tell_watchdog(&mut reg, &format!("-{pid}"));
    }
    Ok(status)
}

/// Waits for the child to exit; past `deadline` it is stopped and an error returned.
pub fn wait(pid: u32, deadline: Instant) -> std::io::Result<ExitStatus> {
    loop {
        if let Some(status) = try_wait(pid)? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            stop(pid, Duration::from_secs(2));
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("pid {pid} did not finish in time and was stopped"),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stops one child: its stop signal, up to `grace` to exit, then SIGKILL; reaps it.
pub fn stop(pid: u32, grace: Duration) {
    let tracked = lock().children.remove(&pid);
    if let Some(t) = tracked {
        stop_tracked(t, grace);
        let mut reg = lock();
        tell_watchdog(&mut reg, &format!("-{pid}"));
    }
}

fn stop_tracked(mut t: Tracked, grace: Duration) {
    let pid = t.child.id();
    if let Ok(Some(_)) = t.child.try_wait() {
        return;
    }
    // Descendants (pgpool's children) are collected first: once the parent is gone they are
    // reparented and can no longer be found from it.
    let tree = process_tree(pid);
    signal(pid, t.stop_signal);
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(_)) = t.child.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("loadbench: {} (pid {pid}) did not stop; killing it", t.name);
            let _ = t.child.kill();
            let _ = t.child.wait();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // Children it left behind (they belong to this run, so they are ours to stop).
    let leftovers: Vec<u32> = tree.into_iter().filter(|&p| p != pid && alive(p)).collect();
    if !leftovers.is_empty() {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && leftovers.iter().any(|&p| alive(p)) {
            thread::sleep(Duration::from_millis(50));
        }
        for p in leftovers.into_iter().filter(|&p| alive(p)) {
            signal(p, "KILL");
        }
    }
}

/// Stops every tracked child (newest first), then the cluster, then dismisses the watchdog.
pub fn stop_everything() {
    let (children, cluster, temp_dir) = {
        let mut reg = lock();
        let mut children: Vec<(u32, Tracked)> = reg.children.drain().collect();
        children.sort_by_key(|(pid, _)| std::cmp::Reverse(*pid));
        (children, reg.cluster.take(), reg.temp_dir.take())
    };
    for (_, t) in children {
        stop_tracked(t, Duration::from_secs(5));
    }
    if let Some(cluster) = cluster {
        if let Err(e) = cluster.shutdown() {
            eprintln!("loadbench: stopping the cluster: {e}");
        }
    }
    if let Some(dir) = temp_dir {
        let _ = fs::remove_dir_all(dir);
    }
    let watchdog = lock().watchdog.take();
    if let Some((mut child, mut stdin)) = watchdog {
        let _ = writeln!(stdin, "bye");
        drop(stdin);
        let _ = child.wait();
    }
}

/// Makes the signal handler and [`stop_everything`] shut the cluster down too.
pub fn register_cluster(cluster: Arc<LocalCluster>) {
    lock().cluster = Some(cluster);
}

/// Makes [`stop_everything`] remove the run's temp directory after stopping the children.
pub fn register_temp_dir(dir: std::path::PathBuf) {
    let mut reg = lock();
    tell_watchdog(&mut reg, &format!("dir {}", dir.display()));
    reg.temp_dir = Some(dir);
}

/// Stops everything when dropped (normal end, early return, panic).
pub struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if interrupted() {
            // The signal thread is stopping everything and will exit the process; returning
            // from `main` now would cut it short.
            loop {
                thread::sleep(Duration::from_secs(1));
            }
        }
        stop_everything();
    }
}

/// On SIGINT or SIGTERM: stop every child and the cluster, then exit with status 130.
pub fn install_signal_handler() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Register the handlers before returning, so a Ctrl-C right after start is caught.
    let (mut int, mut term) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            {
                let _reg = lock();
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
            eprintln!("\nloadbench: interrupted; stopping every process it started...");
            stop_everything();
            eprintln!("loadbench: stopped.");
            std::process::exit(130);
        })?;
    Ok(())
}

// === /proc ===

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is field 3 (`state`).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// `pid` and all its descendants, found through the `ppid` field of every `/proc/*/stat`.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(ppid) = stat_fields(&stat).and_then(|f| f.get(1)?.parse().ok()) {
                    parent_of.push((pid, ppid));
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, ppid)| *ppid == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds used by `root` and its descendants: utime + stime of every live process of the
/// tree, plus cutime + cstime (children that exited and were reaped).
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let t = tree_cpu_times(root);
    t.user + t.system
}

/// CPU seconds of a process tree, split into user space and kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// utime + cutime.
    pub user: f64,
    /// stime + cstime.
    pub system: f64,
}

/// [`tree_cpu_seconds`], with user-space and kernel time apart.
pub fn tree_cpu_times(root: u32) -> CpuTimes {
    let (mut user, mut system) = (0u64, 0u64);
    for pid in process_tree(root) {
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(f) = stat_fields(&stat) {
                // After the command name: utime, stime, cutime, cstime at 11..=14.
                let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                user += field(11) + field(13);
                system += field(12) + field(14);
            }
        }
    }
    CpuTimes {
        user: user as f64 / clock_ticks(),
        system: system as f64 / clock_ticks(),
    }
}

/// CPU seconds of this process's tree (the harness, pgbench, the proxies; reaped children
/// included) plus the trees of `others` (the cluster's postmasters, which are not our children).
pub fn our_cpu_seconds(others: &[u32]) -> f64 {
    std::iter::once(std::process::id())
        .chain(others.iter().copied())
        .map(tree_cpu_seconds)
        .sum()
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kb_line(&status, key)
}

fn kb_line(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Sum of a `/proc/<pid>/status` value over the tree.
pub fn tree_status_bytes(root: u32, key: &str) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(|p| status_bytes(p, key))
        .sum()
}

/// Sum of PSS (shared pages divided among the processes sharing them) over the tree.
pub fn tree_pss_bytes(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(|p| {
            let text = fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            kb_line(&text, "Pss")
        })
        .sum()
}

/// Resets the peak RSS (`VmHWM`) of every process of the tree to its current RSS (write `5`
/// to `clear_refs`, Linux 4.0+). Returns false if any reset failed; peaks then cover the whole
/// life of the process.
pub fn reset_peak_rss(root: u32) -> bool {
    process_tree(root)
        .into_iter()
        .all(|p| fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

/// Busy and total jiffies of the whole machine (first line of `/proc/stat`).
pub fn machine_cpu() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let first = text.lines().next().unwrap_or_default();
    let v: Vec<u64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Whether `path` exists (for binaries).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
