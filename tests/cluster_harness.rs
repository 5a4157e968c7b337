//! Integration tests of the local-cluster harness (`causeway::cluster`) against real PostgreSQL
//! servers: replication, replay control, restarts, configuration, roles, failover, cleanup, and
//! the guardian that cleans up after a killed process.
//!
//! Most tests share one cluster (a `static`, as other test binaries do, which also exercises the
//! guardian at exit). Tests that pause or stop one of its standbys take `EXCLUSIVE` for writing so
//! that no other test's `wait_caught_up` waits on a standby that cannot catch up; the failover
//! test gets a cluster of its own.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard},
    thread,
    time::{Duration, Instant},
};

use causeway::cluster::{
    ClusterError, ClusterOptions, LocalCluster, StopMode, APP_MD5_PASSWORD, APP_MD5_USER,
    APP_PASSWORD, APP_TRUST_USER, APP_USER, MONITOR_PASSWORD, MONITOR_USER,
};

const WAIT: Duration = Duration::from_secs(30);

static SHARED: OnceLock<LocalCluster> = OnceLock::new();
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> &'static LocalCluster {
    SHARED.get_or_init(|| {
        let started = Instant::now();
        let cluster = LocalCluster::start(ClusterOptions::default()).expect("start shared cluster");
        eprintln!(
            "shared cluster (2 standbys) started in {:?}",
            started.elapsed()
        );
        cluster
    })
}

fn shared_read() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

fn shared_write() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

fn count(cluster: &LocalCluster, n: usize, table: &str) -> i64 {
    cluster
        .psql(n, &format!("SELECT count(*) FROM {table}"))
        .unwrap()
        .parse()
        .unwrap()
}

fn refuses_connections(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[test]
fn writes_reach_every_standby_and_roles_are_reported() {
    let _guard = shared_read();
    let c = shared();
    assert_eq!(c.node_count(), 3);
    assert!(!c.is_in_recovery(0).unwrap());
    assert!(c.is_in_recovery(1).unwrap());
    assert!(c.is_in_recovery(2).unwrap());
    assert_eq!(c.primary().unwrap(), 0);
    assert_eq!(c.primary_port().unwrap(), c.port(0).unwrap());
    assert_eq!(
        c.standby_ports(),
        vec![c.port(1).unwrap(), c.port(2).unwrap()]
    );
    assert_eq!(c.upstream(2).unwrap(), Some(0));
    assert!(matches!(c.port(3), Err(ClusterError::NoSuchNode { .. })));

    c.psql(
        0,
        "CREATE TABLE visible (id int PRIMARY KEY); \
         INSERT INTO visible SELECT generate_series(1, 100)",
    )
    .unwrap();
    c.wait_caught_up(WAIT).unwrap();
    for n in 1..=2 {
        assert_eq!(count(c, n, "visible"), 100, "node{n}");
    }
    let primary = c.current_lsn(0).unwrap();
    assert!(c.replay_lsn(1).unwrap().unwrap() >= primary);
}

/// Resumes replay even when an assertion fails, so other tests are not left waiting.
struct Resume<'a>(&'a LocalCluster, usize);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume_replay(self.1);
    }
}

#[test]
fn paused_standby_lags_until_resumed() {
    let _guard = shared_write();
    let c = shared();
    c.psql(0, "CREATE TABLE paused (id int)").unwrap();
    c.wait_caught_up(WAIT).unwrap();

    c.pause_replay(1).unwrap();
    let resume = Resume(c, 1);
    c.psql(0, "INSERT INTO paused VALUES (1)").unwrap();
    let written = c.current_lsn(0).unwrap();
    c.wait_replayed(2, written, WAIT).unwrap();
    assert_eq!(count(c, 2, "paused"), 1);
    assert_eq!(count(c, 1, "paused"), 0);
    assert!(c.replay_lsn(1).unwrap().unwrap() < written);
    assert!(matches!(
        c.wait_replayed(1, written, Duration::from_millis(300)),
        Err(ClusterError::Timeout { .. })
    ));

    drop(resume);
    c.wait_caught_up(WAIT).unwrap();
    assert_eq!(count(c, 1, "paused"), 1);
}

#[test]
fn crashed_standby_restarts_and_catches_up() {
    let _guard = shared_write();
    let c = shared();
    c.psql(0, "CREATE TABLE crash (id int)").unwrap();
    c.stop(2, StopMode::Immediate).unwrap();
    assert!(!c.is_running(2).unwrap());
    c.stop(2, StopMode::Immediate).unwrap(); // already stopped: no-op
    c.psql(0, "INSERT INTO crash SELECT generate_series(1, 50)")
        .unwrap();
    // A stopped standby is skipped, not waited for.
    c.wait_caught_up(WAIT).unwrap();

    c.start_node(2).unwrap();
    assert!(c.is_running(2).unwrap());
    assert!(c.is_in_recovery(2).unwrap());
    c.wait_caught_up(WAIT).unwrap();
    assert_eq!(count(c, 2, "crash"), 50);

    c.restart_node(1).unwrap();
    c.wait_caught_up(WAIT).unwrap();
    assert_eq!(count(c, 1, "crash"), 50);
}

#[test]
fn set_conf_reloads_one_node_and_rejects_bad_lines() {
    let _guard = shared_read();
    let c = shared();
    c.set_conf(2, "work_mem = '7MB'").unwrap();
    assert_eq!(c.psql(2, "SHOW work_mem").unwrap(), "7MB");
    assert_ne!(c.psql(1, "SHOW work_mem").unwrap(), "7MB");
    c.set_conf(2, "recovery_min_apply_delay = '50ms'").unwrap();
    assert_eq!(c.psql(2, "SHOW recovery_min_apply_delay").unwrap(), "50ms");
    c.set_conf(2, "recovery_min_apply_delay = 0").unwrap();

    let err = c.set_conf(2, "work_mem = 'plenty'").unwrap_err();
    assert!(matches!(err, ClusterError::Invalid(_)), "{err}");
    let err = c.set_conf(2, "no_such_setting_here = 1").unwrap_err();
    assert!(matches!(err, ClusterError::Invalid(_)), "{err}");
    assert!(c.set_conf(2, "a = 1\nb = 2").is_err());
    // The rejected lines were taken back: the node still reloads cleanly.
    c.set_conf(2, "work_mem = '6MB'").unwrap();
    assert_eq!(c.psql(2, "SHOW work_mem").unwrap(), "6MB");
}

#[test]
fn roles_log_in_over_tcp_with_their_methods() {
    let _guard = shared_read();
    let c = shared();
    let logins = [
        (APP_USER, Some(APP_PASSWORD)),
        (APP_MD5_USER, Some(APP_MD5_PASSWORD)),
        (APP_TRUST_USER, None),
        (MONITOR_USER, Some(MONITOR_PASSWORD)),
        ("postgres", Some(c.superuser_password())),
    ];
    for n in [0, 1] {
        for (user, password) in logins {
            assert_eq!(
                c.psql_as(n, user, password, "SELECT current_user").unwrap(),
                user,
                "node{n}"
            );
        }
    }
    for user in [APP_USER, APP_MD5_USER, MONITOR_USER, "postgres"] {
        match c.psql_as(0, user, Some("wrong"), "SELECT 1") {
            Err(ClusterError::CommandFailed { stderr, .. }) => {
                assert!(
                    stderr.contains("password authentication failed"),
                    "{stderr}"
                )
            }
            other => panic!("{user} with a wrong password: {other:?}"),
        }
    }

    let stored = c
        .psql(
            0,
            "SELECT rolname, left(rolpassword, 6) FROM pg_authid \
             WHERE rolname IN ('app', 'app_md5', 'causeway_monitor') ORDER BY rolname",
        )
        .unwrap();
    let stored: Vec<&str> = stored.lines().collect();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(stored[0], "app|SCRAM-");
    assert!(stored[1].starts_with("app_md5|md5"), "{stored:?}");
    assert_eq!(stored[2], "causeway_monitor|SCRAM-");
    assert_eq!(
        c.psql_as(
            0,
            MONITOR_USER,
            Some(MONITOR_PASSWORD),
            "SELECT pg_has_role('pg_monitor', 'MEMBER')"
        )
        .unwrap(),
        "t"
    );
    for (user, password) in [(APP_USER, Some(APP_PASSWORD)), (APP_TRUST_USER, None)] {
        let table = format!("owned_by_{user}");
        c.psql_as(
            0,
            user,
            password,
            &format!("CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1)"),
        )
        .unwrap();
    }
    let conninfo = c.conninfo(1, APP_USER, Some(APP_PASSWORD)).unwrap();
    assert_eq!(
        conninfo,
        format!(
            "host=127.0.0.1 port={} user=app password=app dbname=postgres",
            c.port(1).unwrap()
        )
    );
}

#[test]
fn failover_rebuild_rewind_and_shutdown() {
    let started = Instant::now();
    let c = LocalCluster::start(ClusterOptions {
        standbys: 1,
        ..ClusterOptions::default()
    })
    .unwrap();
    eprintln!(
        "failover cluster (1 standby) started in {:?}",
        started.elapsed()
    );
    let base = c.base_dir().to_path_buf();
    let ports = [c.port(0).unwrap(), c.port(1).unwrap()];
    c.psql(
        0,
        "CREATE TABLE history (id int, at text); INSERT INTO history VALUES (1, 'node0')",
    )
    .unwrap();
    c.wait_caught_up(WAIT).unwrap();

    // Promote the standby; the old primary keeps running, split-brain style.
    c.promote(1).unwrap();
    assert!(!c.is_in_recovery(1).unwrap());
    assert_eq!(c.upstream(1).unwrap(), None);
    assert_eq!(c.primary().unwrap(), 1, "the most recent promotion wins");
    c.psql(1, "INSERT INTO history VALUES (2, 'node1')")
        .unwrap();

    // Rejoin the old primary as a standby of the new one by rebuilding it.
    let t = Instant::now();
    c.rebuild_standby(0, 1).unwrap();
    eprintln!("rebuild_standby took {:?}", t.elapsed());
    assert!(c.is_in_recovery(0).unwrap());
    assert_eq!(c.upstream(0).unwrap(), Some(1));
    c.psql(1, "INSERT INTO history VALUES (3, 'node1')")
        .unwrap();
    c.wait_caught_up(WAIT).unwrap();
    assert_eq!(
        c.psql(
            0,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM history"
        )
        .unwrap(),
        "1,2,3"
    );
    assert_eq!(c.primary_port().unwrap(), ports[1]);

    // Promote node 0 again while node 1 still runs and diverges, then rewind node 1.
    c.promote(0).unwrap();
    c.psql(1, "INSERT INTO history VALUES (100, 'diverged')")
        .unwrap();
    c.psql(0, "INSERT INTO history VALUES (4, 'node0')")
        .unwrap();
    let t = Instant::now();
    c.rewind_standby(1, 0).unwrap();
    eprintln!("rewind_standby took {:?}", t.elapsed());
    assert!(c.is_in_recovery(1).unwrap());
    c.psql(0, "INSERT INTO history VALUES (5, 'node0')")
        .unwrap();
    c.wait_caught_up(WAIT).unwrap();
    assert_eq!(
        c.psql(
            1,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM history"
        )
        .unwrap(),
        "1,2,3,4,5"
    );
    assert_eq!(c.primary().unwrap(), 0);

    c.shutdown().unwrap();
    assert!(!base.exists(), "{} still exists", base.display());
    for port in ports {
        assert!(refuses_connections(port), "port {port} still accepts");
    }
    c.shutdown().unwrap(); // idempotent
    assert!(matches!(c.psql(0, "SELECT 1"), Err(ClusterError::ShutDown)));
}

#[test]
fn panic_unwinding_drops_and_cleans_up() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let c = LocalCluster::start(ClusterOptions {
            standbys: 0,
            ..ClusterOptions::default()
        })
        .unwrap();
        seen = Some((c.base_dir().to_path_buf(), c.port(0).unwrap()));
        assert_eq!(c.node_count(), 1);
        assert_eq!(c.psql(0, "SELECT 1").unwrap(), "1");
        panic!("test panic while the cluster is alive");
    }));
    assert!(result.is_err());
    let (base, port) = seen.unwrap();
    assert!(!base.exists(), "{} still exists", base.display());
    assert!(refuses_connections(port));
    assert!(processes_mentioning(&base).is_empty());
}

const CHILD_ENV: &str = "CAUSEWAY_GUARDIAN_CHILD";
const CHILD_MARKER: &str = "GUARDIAN-CHILD";

/// Run by `guardian_cleans_up_after_sigkill` in a child copy of this test binary: starts a
/// cluster, reports it on stdout, then waits for its parent, which SIGKILLs it.
#[test]
#[ignore = "helper process for guardian_cleans_up_after_sigkill"]
fn guardian_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let c = LocalCluster::start(ClusterOptions {
        standbys: 1,
        ..ClusterOptions::default()
    })
    .unwrap();
    println!(
        "{CHILD_MARKER} {} {} {}",
        c.base_dir().display(),
        c.port(0).unwrap(),
        c.port(1).unwrap()
    );
    // Blocks until the parent kills us or, if the parent dies first, until stdin closes.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Processes whose command line mentions `path` (the servers run with `-D <base>/nodeN/data`).
fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn guardian_cleans_up_after_sigkill() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "guardian_child", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // libtest may print "test guardian_child ... " on the same line first.
    let report = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| Some(line.split_once(CHILD_MARKER)?.1.to_owned()))
        .expect("child reported its cluster");
    let mut fields = report.split_whitespace();
    let base = PathBuf::from(fields.next().unwrap());
    let ports: Vec<u16> = fields.map(|p| p.parse().unwrap()).collect();
    assert!(base.exists());
    assert!(
        !processes_mentioning(&base).is_empty(),
        "servers are running"
    );
    assert!(!refuses_connections(ports[0]));

    child.kill().unwrap(); // SIGKILL: no Drop, no unwinding
    child.wait().unwrap();
    let killed = Instant::now();
    loop {
        let left = processes_mentioning(&base);
        let open: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&p| !refuses_connections(p))
            .collect();
        if left.is_empty() && open.is_empty() && !base.exists() {
            break;
        }
        assert!(
            killed.elapsed() < WAIT,
            "after SIGKILL: processes {left:?}, open ports {open:?}, dir exists {}",
            base.exists()
        );
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("guardian cleaned up {:?} after SIGKILL", killed.elapsed());
}
