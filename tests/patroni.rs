//! causeway in `[topology] source = "patroni"` mode in front of a real Patroni cluster (issue
//! 18): three PostgreSQL 15 nodes managed by Patroni 3 with its built-in Raft store (no etcd),
//! all on loopback, two causeway instances in front. Writes go to Patroni's leader; through
//! `patronictl switchover` under write load (no failed write beyond the in-flight ones, no
//! acknowledged write lost) and a crash of the leader's PostgreSQL (Patroni fails over) both
//! instances follow the new leader, and the time from Patroni naming it to the first write
//! through each instance is printed; a `noloadbalance` member gets no reads; with every
//! Patroni API unreachable the last topology stands and the probes decide (`/topology` says
//! so); a fourth Patroni member started at run time, not in `proxy.toml`, gets reads without
//! a reload, and none once it stopped and left the member list. The fake-API test below covers
//! the leader key on a standby.
//!
//! Skipped, with the reason printed, when `patroni` or `patronictl` is not installed (Debian:
//! `apt-get install patroni python3-pysyncobj`; `.ci/run` installs them).
mod common;

use common::fake_patroni::FakePatroni;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use causeway::cluster::{APP_PASSWORD, APP_USER, MONITOR_PASSWORD, MONITOR_USER};
use causeway::topology::RoleSource;
use tokio::time::Instant;
use tokio_postgres::SimpleQueryMessage;

/// PostgreSQL 15's binaries (the version the rest of the suite uses).
const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How often the proxies check.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Whether a program is on `PATH`.
fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `(uid, gid)` of the `postgres` OS user when this process is root (PostgreSQL refuses root).
fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str, user: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    Some((id("-u", "postgres")?, id("-g", "postgres")?))
}

/// `n` free loopback ports (bound, then released together).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Three Patroni members over Raft; stopped and removed on drop.
struct PatroniCluster {
    dir: PathBuf,
    /// PostgreSQL port of each member.
    pg_ports: Vec<u16>,
    /// REST API port of each member.
    api_ports: Vec<u16>,
    children: Vec<Child>,
    ids: Option<(u32, u32)>,
    /// Raft port of each member.
    raft_ports: Vec<u16>,
    /// PostgreSQL, REST API and Raft ports kept for a fourth member (`n3`) added at run time.
    spare_ports: (u16, u16, u16),
    /// The fourth member's Patroni process, while it runs.
    spare: std::sync::Mutex<Option<Child>>,
}

impl PatroniCluster {
    fn start() -> PatroniCluster {
        let ports = free_ports(12);
        let (pg_ports, api_ports, raft_ports) =
            (ports[0..3].to_vec(), ports[3..6].to_vec(), &ports[6..9]);
        let dir = std::env::temp_dir().join(format!("cw-patroni-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ids = postgres_ids();
        let mut cluster = PatroniCluster {
            dir: dir.clone(),
            pg_ports,
            api_ports,
            children: Vec::new(),
            ids,
            raft_ports: raft_ports.to_vec(),
            spare_ports: (ports[9], ports[10], ports[11]),
            spare: std::sync::Mutex::new(None),
        };
        for i in 0..3 {
            let home = dir.join(format!("n{i}"));
            fs::create_dir_all(&home).unwrap();
            let partners: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("127.0.0.1:{}", raft_ports[j]))
                .collect();
            fs::write(
                home.join("patroni.yml"),
                member_yaml(
                    i,
                    &home,
                    (cluster.pg_ports[i], cluster.api_ports[i]),
                    raft_ports[i],
                    &partners,
                ),
            )
            .unwrap();
        }
        if let Some((uid, gid)) = ids {
            let status = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the Patroni directory");
        }
        for i in 0..3 {
            let child = cluster.spawn_patroni(&dir.join(format!("n{i}")));
            cluster.children.push(child);
        }
        cluster
    }

    /// Starts Patroni with the configuration in `home`, as the `postgres` user when root.
    fn spawn_patroni(&self, home: &Path) -> Child {
        let log = fs::File::create(home.join("patroni.log")).unwrap();
        let mut cmd = Command::new("patroni");
        cmd.arg(home.join("patroni.yml"))
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn().expect("start patroni")
    }

    /// Starts a fourth member, `n3`, on the spare ports: a new data directory, the same Raft
    /// cluster (Patroni's Raft store adds a node that lists the existing members as partners),
    /// so it bootstraps as a replica of the leader. Stopped by `stop_fourth` or on drop.
    fn start_fourth(&self) {
        let (pg, api, raft) = self.spare_ports;
        let home = self.dir.join("n3");
        fs::create_dir_all(&home).unwrap();
        let partners: Vec<String> = self
            .raft_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        fs::write(
            home.join("patroni.yml"),
            member_yaml(3, &home, (pg, api), raft, &partners),
        )
        .unwrap();
        if let Some((uid, gid)) = self.ids {
            let status = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(&home)
                .status()
                .unwrap();
            assert!(status.success(), "chown the fourth member's directory");
        }
        let child = self.spawn_patroni(&home);
        *self.spare.lock().unwrap() = Some(child);
    }

    /// `syncobj_admin` (pysyncobj's admin tool) against the Raft node on `port`: its output.
    fn syncobj_admin(port: u16, args: &[&str]) -> String {
        Command::new("syncobj_admin")
            .args(["-conn", &format!("127.0.0.1:{port}")])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The Raft leader's port and its status, as one of the first three members reports it.
    fn raft_leader(&self) -> Option<(u16, String)> {
        self.raft_ports.iter().find_map(|p| {
            let status = Self::syncobj_admin(*p, &["-status"]);
            let leader = status.lines().find_map(|l| l.strip_prefix("leader: "))?;
            let port: u16 = leader.trim().rsplit(':').next()?.parse().ok()?;
            let status = Self::syncobj_admin(port, &["-status"]);
            status.contains("state: 2").then_some((port, status))
        })
    }

    /// Waits (up to `limit`) until the Raft leader counts the fourth member among its nodes.
    /// Patroni 3.0.2 asks a partner once, at start, to add a new node; here that often did not
    /// take effect (the leader's node list lacked it, the new node saw no leader and stayed out
    /// of the DCS for minutes), so after 3 s this sends the same `add` to the Raft leader itself
    /// (`syncobj_admin -add`) until the leader lists the node. How many `add`s it sent, or
    /// `None` if the member was not admitted in time.
    fn admit_fourth(&self, limit: Duration) -> Option<usize> {
        let me = format!("127.0.0.1:{}", self.spare_ports.2);
        let deadline = std::time::Instant::now() + limit;
        let mut sent = 0;
        // Patroni's own attempt first (it succeeds when the leader answered first).
        std::thread::sleep(Duration::from_secs(3));
        while std::time::Instant::now() < deadline {
            if let Some((port, status)) = self.raft_leader() {
                if status.contains(&format!("partner_node_status_server_{me}")) {
                    return Some(sent);
                }
                if sent == 0 {
                    eprintln!(
                        "added member: not a Raft member after 3 s; the Raft leader's status:\n{}\n\
                         the new member's status:\n{}",
                        status.trim(),
                        Self::syncobj_admin(self.spare_ports.2, &["-status"]).trim()
                    );
                }
                let out = Self::syncobj_admin(port, &["-add", &me]);
                eprintln!(
                    "added member: syncobj_admin -add on the Raft leader: {}",
                    out.trim()
                );
                sent += 1;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        None
    }

    /// SIGTERM to the fourth member's Patroni (it stops its PostgreSQL and leaves the member
    /// list); waits up to 30 s for it to exit. Whether it exited.
    fn stop_fourth(&self) -> bool {
        let Some(mut child) = self.spare.lock().unwrap().take() else {
            return true;
        };
        stop_patroni(&mut child)
    }

    fn api_urls(&self) -> Vec<String> {
        self.api_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// `patronictl` against member 0's configuration.
    fn patronictl(&self, args: &[&str]) -> String {
        let out = Command::new("patronictl")
            .arg("-c")
            .arg(self.dir.join("n0/patroni.yml"))
            .args(args)
            .env("HOME", &self.dir)
            .output()
            .expect("run patronictl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "patronictl {args:?}: {text}");
        text
    }

    /// psql as the superuser on member `n`.
    fn psql(&self, n: usize, sql: &str) -> Result<String, String> {
        let out = Command::new(Path::new(BIN_DIR).join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.pg_ports[n].to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", "pg")
            .env("PGCONNECT_TIMEOUT", "2")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `HUP`, ...) to member `n`'s Patroni process (only: its
    /// PostgreSQL keeps running).
    fn signal(&self, n: usize, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.children[n].id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} patroni n{n}");
    }

    /// Sends `signal` to every member's Patroni process.
    fn signal_patroni(&self, signal: &str) {
        (0..3).for_each(|n| self.signal(n, signal));
    }

    /// SIGKILL to member `n`'s postmaster (its PID from `postmaster.pid`): PostgreSQL crashes,
    /// Patroni keeps running.
    fn kill_postmaster(&self, n: usize) {
        let pid = fs::read_to_string(self.dir.join(format!("n{n}/data/postmaster.pid")))
            .expect("postmaster.pid");
        let pid = pid.lines().next().unwrap().trim().to_owned();
        let status = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(status.success(), "kill -KILL postmaster {pid} of n{n}");
    }

    /// Gives member `n` the `noloadbalance` tag (in its configuration, then a reload).
    fn tag_noloadbalance(&self, n: usize) {
        use std::io::Write as _;
        let mut yaml = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join(format!("n{n}/patroni.yml")))
            .unwrap();
        yaml.write_all(b"tags:\n  noloadbalance: true\n").unwrap();
        self.signal(n, "HUP");
    }

    fn logs(&self) -> String {
        (0..4)
            .map(|i| {
                let text = fs::read_to_string(self.dir.join(format!("n{i}/patroni.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- n{i}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// SIGCONT then SIGTERM to a Patroni process (it stops its PostgreSQL), waiting up to 30 s for
/// it to exit, then SIGKILL. Whether it exited by itself.
fn stop_patroni(child: &mut Child) -> bool {
    for signal in ["-CONT", "-TERM"] {
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = child.try_wait().ok().flatten().is_some();
    let _ = child.kill();
    let _ = child.wait();
    exited
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        let spare = self
            .spare
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = spare {
            stop_patroni(&mut child);
        }
        // Patroni stops its PostgreSQL on SIGTERM (once running again, if a test stopped it).
        for child in &self.children {
            for signal in ["-CONT", "-TERM"] {
                let _ = Command::new("kill")
                    .args([signal, &child.id().to_string()])
                    .status();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for child in &mut self.children {
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..4 {
            let data = self.dir.join(format!("n{i}/data"));
            if data.join("postmaster.pid").exists() {
                let mut cmd = Command::new(Path::new(BIN_DIR).join("pg_ctl"));
                cmd.args(["stop", "-m", "immediate", "-D"]).arg(&data);
                if let Some((uid, gid)) = self.ids {
                    cmd.uid(uid).gid(gid);
                }
                let _ = cmd.output();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One member's Patroni configuration.
fn member_yaml(
    i: usize,
    home: &Path,
    (pg, api): (u16, u16),
    raft_port: u16,
    partners: &[String],
) -> String {
    let home = home.display();
    format!(
        r#"scope: causeway-test
name: n{i}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
raft:
  data_dir: {home}/raft
  self_addr: 127.0.0.1:{raft_port}
  partner_addrs: [{partners}]
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    primary_start_timeout: 0
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
  initdb:
    - encoding: UTF8
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {home}/data
  bin_dir: {BIN_DIR}
  pgpass: {home}/pgpass
  pg_hba:
    - local all all trust
    - host replication all 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
  authentication:
    replication: {{username: replicator, password: rep}}
    superuser: {{username: postgres, password: pg}}
    rewind: {{username: rewinder, password: rw}}
  parameters:
    unix_socket_directories: {home}
"#,
        partners = partners.join(", "),
    )
}

/// Patroni's current view, straight from a member's REST API.
async fn members(c: &PatroniCluster) -> Vec<causeway::topology::patroni::Member> {
    for url in c.api_urls() {
        if let Ok(m) =
            causeway::topology::patroni::fetch_cluster(&url, Duration::from_secs(1)).await
        {
            return m;
        }
    }
    Vec::new()
}

/// The index of the member Patroni names leader, once it runs.
async fn leader(c: &PatroniCluster) -> Option<usize> {
    use causeway::topology::patroni::MemberRole;
    let m = members(c).await;
    let l = m
        .iter()
        .find(|m| m.role == MemberRole::Leader && m.state == "running")?;
    c.pg_ports.iter().position(|p| *p == l.port)
}

fn proxy_config(c: &PatroniCluster) -> String {
    let nodes: String = c
        .pg_ports
        .iter()
        .map(|p| format!("[[nodes]]\naddress = \"127.0.0.1:{p}\"\n"))
        .collect();
    let urls: Vec<String> = c.api_urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[routing]
check_interval = "{check}ms"
primary_wait = "30s"

[topology]
source = "patroni"
patroni = [{urls}]

[monitor]
user = "{MONITOR_USER}"
password = "{MONITOR_PASSWORD}"

{nodes}
[[users]]
name = "{APP_USER}"
password = "{APP_PASSWORD}"
"#,
        check = CHECK_INTERVAL.as_millis(),
        urls = urls.join(", "),
    )
}

/// Inserts a row through `client`; the port of the server that took it.
async fn write(client: &tokio_postgres::Client) -> Result<u16, tokio_postgres::Error> {
    for m in client
        .simple_query("INSERT INTO t VALUES (inet_server_port()) RETURNING port")
        .await?
    {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap().parse().unwrap());
        }
    }
    panic!("INSERT ... RETURNING answered no row");
}

/// One write of a [`Load`]: its row, when it was sent and answered, and the port of the server
/// that took it (or the error).
struct Write {
    writer: i32,
    seq: i32,
    sent: Instant,
    result: Result<u16, String>,
}

/// Clients writing through a proxy back to back, as pgbench does (one connection each, kept
/// across errors as an application keeps it; a new one only when the proxy closed it), until
/// stopped. Each write inserts its own `(writer, seq)` row.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Successful writes so far, over all clients.
    ok: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Write>>>,
}

impl Load {
    /// Starts `clients` writers numbered from `first`.
    fn start(proxy: &common::Proxy, clients: i32, first: i32) -> Load {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conninfo = proxy.conninfo(APP_USER, APP_PASSWORD, "postgres");
        let tasks = (first..first + clients)
            .map(|writer| {
                let (stop, ok, conninfo) = (stop.clone(), ok.clone(), conninfo.clone());
                tokio::spawn(async move {
                    let connect = || async {
                        let (client, conn) =
                            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                                .await
                                .expect("connect through the proxy");
                        tokio::spawn(conn);
                        client
                    };
                    let mut client = connect().await;
                    let mut writes = Vec::new();
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let sent = Instant::now();
                        let sql = format!(
                            "INSERT INTO load VALUES ({writer}, {seq}, inet_server_port()) \
                             RETURNING port"
                        );
                        let result = match client.simple_query(&sql).await {
                            Ok(rows) => rows
                                .iter()
                                .find_map(|m| match m {
                                    SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
                                    _ => None,
                                })
                                .ok_or_else(|| "no row".to_owned()),
                            Err(e) => Err(match e.as_db_error() {
                                Some(d) => format!("{}: {}", d.code().code(), d.message()),
                                None => e.to_string(),
                            }),
                        };
                        if result.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else if client.is_closed() {
                            client = connect().await;
                        }
                        writes.push(Write {
                            writer,
                            seq,
                            sent,
                            result,
                        });
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    writes
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    /// Waits until `n` writes succeeded in all.
    async fn wait_ok(&self, n: usize) {
        let ok = common::eventually(Duration::from_secs(30), || async {
            self.ok.load(std::sync::atomic::Ordering::Relaxed) >= n
        })
        .await;
        assert!(ok, "the load's writes succeed");
    }

    /// Stops the clients; every write each one made.
    async fn stop(self) -> Vec<Vec<Write>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.push(t.await.unwrap());
        }
        all
    }
}

/// Prints what a load saw; returns the failures per client.
fn summary(step: &str, writes: &[Vec<Write>]) -> Vec<usize> {
    let failures: Vec<usize> = writes
        .iter()
        .map(|w| w.iter().filter(|w| w.result.is_err()).count())
        .collect();
    let total: usize = writes.iter().map(Vec::len).sum();
    eprintln!(
        "{step}: {total} writes by {} clients, failed per client {failures:?}",
        writes.len()
    );
    for w in writes.iter().flatten() {
        if let Err(e) = &w.result {
            eprintln!("  writer {} #{}: {e}", w.writer, w.seq);
        }
    }
    failures
}

/// Every acknowledged `(writer, seq)` of `writes` is in table `load` (read on the primary).
async fn assert_no_write_lost(proxy: &common::Proxy, writes: &[Vec<Write>]) {
    let rows = proxy
        .connect()
        .await
        .simple_query("/* causeway:primary */ SELECT writer, seq FROM load")
        .await
        .expect("read the load table");
    let stored: std::collections::HashSet<(i32, i32)> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap().parse().unwrap(),
                r.get(1).unwrap().parse().unwrap(),
            )),
            _ => None,
        })
        .collect();
    let lost: Vec<(i32, i32)> = writes
        .iter()
        .flatten()
        .filter(|w| w.result.is_ok() && !stored.contains(&(w.writer, w.seq)))
        .map(|w| (w.writer, w.seq))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// Writes through `proxy` until one lands on a port `wanted` accepts (reconnecting when the
/// connection is lost); when it did, and where.
async fn first_write_where(
    proxy: &common::Proxy,
    wanted: impl Fn(u16) -> bool,
    limit: Duration,
) -> Result<(Instant, u16), String> {
    let deadline = Instant::now() + limit;
    let mut client = proxy.connect().await;
    let mut last = String::from("no write tried");
    while Instant::now() < deadline {
        match write(&client).await {
            Ok(p) if wanted(p) => return Ok((Instant::now(), p)),
            Ok(p) => last = format!("the last write landed on port {p}"),
            Err(e) => {
                last = format!(
                    "the last write failed: {}",
                    e.as_db_error().map_or_else(
                        || e.to_string(),
                        |d| format!("{} {}", d.code().code(), d.message())
                    )
                );
                if client.is_closed() {
                    client = proxy.connect().await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = proxy.app.topology().load();
    let nodes: Vec<String> = t
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} role {:?} healthy {} fenced {} removed {} timeline {:?} no_reads {}",
                n.addr, n.role, n.healthy, n.fenced, n.removed, n.timeline, n.no_reads
            )
        })
        .collect();
    Err(format!(
        "{last}; topology: primary {:?}, role source {:?}, nodes:\n  {}",
        t.primary,
        t.role_source,
        nodes.join("\n  ")
    ))
}

/// When one of `members`' PostgreSQL first answers `pg_is_in_recovery() = false` (asked
/// directly every 10 ms), and which.
async fn promoted(
    c: &PatroniCluster,
    members: Vec<usize>,
    limit: Duration,
) -> Option<(Instant, usize)> {
    let deadline = Instant::now() + limit;
    let mut clients: Vec<Option<tokio_postgres::Client>> = members.iter().map(|_| None).collect();
    while Instant::now() < deadline {
        for (i, &n) in members.iter().enumerate() {
            if clients[i].as_ref().is_none_or(|c| c.is_closed()) {
                let info = format!(
                    "host=127.0.0.1 port={} user=postgres password=pg dbname=postgres \
                     connect_timeout=1",
                    c.pg_ports[n]
                );
                clients[i] = match tokio_postgres::connect(&info, tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(conn);
                        Some(client)
                    }
                    Err(_) => None,
                };
            }
            if let Some(client) = &clients[i] {
                if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                    if !row.get::<_, bool>(0) {
                        return Some((Instant::now(), n));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// When `proxy`'s snapshot first names a primary other than `old`.
async fn primary_moved(proxy: &common::Proxy, old: usize, limit: Duration) -> Option<Instant> {
    proxy
        .app
        .topology()
        .wait_until(limit, |t| t.primary.is_some_and(|p| p != old))
        .await
        .then(Instant::now)
}

/// Reads `inet_server_port()` `n` times through `proxy` on one connection that never wrote.
async fn read_ports(proxy: &common::Proxy, n: usize) -> Vec<u16> {
    let client = proxy.connect().await;
    let mut ports = Vec::new();
    for _ in 0..n {
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("a read")
            .get(0);
        ports.push(port as u16);
    }
    ports
}

/// One Patroni cluster, two causeway instances in front, in steps (starting Patroni is slow):
/// a switchover under write load, a crash of the leader's PostgreSQL (Patroni fails over), a
/// `noloadbalance` tag on a member, every Patroni API unreachable, and a fourth member that
/// joins and leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_patroni_through_switchover_crash_tags_and_outage() {
    // The proxies' log is shown when the test fails (the test writer is captured otherwise).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "causeway=info".into()),
        )
        .with_test_writer()
        .try_init();
    if !installed("patroni") || !installed("patronictl") {
        eprintln!(
            "skipped: patroni/patronictl not installed \
             (apt-get install patroni python3-pysyncobj)"
        );
        return;
    }
    if !Path::new(BIN_DIR).join("postgres").exists() {
        eprintln!("skipped: no PostgreSQL 15 binaries in {BIN_DIR}");
        return;
    }
    let c = Arc::new(
        tokio::task::spawn_blocking(PatroniCluster::start)
            .await
            .unwrap(),
    );
    let ready = common::eventually(Duration::from_secs(90), || async {
        let m = members(&c).await;
        leader(&c).await.is_some()
            && m.len() == 3
            && m.iter()
                .all(|m| m.state == "running" || m.state == "streaming")
    })
    .await;
    assert!(ready, "Patroni bootstraps three members:\n{}", c.logs());
    let first = leader(&c).await.unwrap();
    c.psql(
        first,
        &format!(
            "CREATE ROLE {MONITOR_USER} LOGIN PASSWORD '{MONITOR_PASSWORD}' IN ROLE pg_monitor; \
             CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'; \
             CREATE TABLE t (port int); GRANT ALL ON t TO {APP_USER}; \
             CREATE TABLE load (writer int, seq int, port int); GRANT ALL ON load TO {APP_USER}"
        ),
    )
    .expect("create roles and tables");

    let a = common::start_proxy_from(proxy_config(&c)).await;
    let b = common::start_proxy_from(proxy_config(&c)).await;
    for p in [&a, &b] {
        assert_eq!(p.app.topology().load().primary, Some(first));
        assert_eq!(p.app.topology().load().role_source, RoleSource::Patroni);
        let port = write(&p.connect().await).await.expect("a write");
        assert_eq!(port, c.pg_ports[first], "writes go to Patroni's leader");
    }
    let lag_since = |since: Instant| move |t: Instant| t.saturating_duration_since(since);

    // === 1. `patronictl switchover` under write load ===
    let load = Load::start(&a, 4, 0);
    load.wait_ok(20).await;
    let candidate = (first + 1) % 3;
    let c2 = c.clone();
    let switchover = tokio::task::spawn_blocking(move || {
        c2.patronictl(&[
            "switchover",
            "--leader",
            &format!("n{first}"),
            "--candidate",
            &format!("n{candidate}"),
            "--force",
        ])
    });
    let new_port = c.pg_ports[candidate];
    let limit = Duration::from_secs(60);
    let (leader_at, a_at, b_at, a_moved, b_moved, promoted_at) = tokio::join!(
        async {
            common::eventually(limit, || async { leader(&c).await == Some(candidate) })
                .await
                .then(Instant::now)
        },
        first_write_where(&a, |p| p == new_port, limit),
        first_write_where(&b, |p| p == new_port, limit),
        primary_moved(&a, first, limit),
        primary_moved(&b, first, limit),
        promoted(&c, vec![candidate], limit),
    );
    let out = switchover.await.unwrap();
    let leader_at =
        leader_at.unwrap_or_else(|| panic!("Patroni switches over: {out}\n{}", c.logs()));
    let (a_at, _) = a_at.unwrap_or_else(|e| {
        panic!(
            "a write through instance A reaches the new leader: {e}\n\
             the candidate left recovery (member, how long ago): {:?}\n{}",
            promoted_at.map(|(t, n)| (n, t.elapsed())),
            c.logs()
        )
    });
    let (b_at, _) = b_at.unwrap_or_else(|e| {
        panic!(
            "a write through instance B reaches the new leader: {e}\n\
             the candidate left recovery (member, how long ago): {:?}\n{}",
            promoted_at.map(|(t, n)| (n, t.elapsed())),
            c.logs()
        )
    });
    // Keep the load on the new leader for a moment: its clients carry on.
    let resumed = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_ok(resumed + 20).await;
    let writes = load.stop().await;
    // The proxies may be faster than this poll of Patroni's API (which runs every 50 ms).
    let lag = lag_since(leader_at);
    eprintln!(
        "switchover: Patroni's new leader in /cluster -> first write through causeway: \
         A {:?}, B {:?} (their snapshots switched after {:?}, {:?}; the new leader left \
         recovery after {:?})",
        lag(a_at),
        lag(b_at),
        a_moved.map(lag),
        b_moved.map(lag),
        promoted_at.map(|(t, _)| t
            .checked_duration_since(leader_at)
            .map_or_else(|| format!("-{:?}", leader_at - t), |d| format!("{d:?}"))),
    );
    if let Some((t, _)) = promoted_at {
        let since = lag_since(t);
        eprintln!(
            "  from the new leader leaving recovery: snapshot A {:?}, B {:?}; first write A {:?}, B {:?}",
            a_moved.map(since),
            b_moved.map(since),
            since(a_at),
            since(b_at)
        );
    }
    for (name, t) in [("A", a_at), ("B", b_at)] {
        assert!(
            lag(t) <= Duration::from_secs(5),
            "instance {name} wrote to the new leader {:?} after Patroni named it",
            lag(t)
        );
    }
    // Only a write in flight when the old leader stopped may fail: one per client at most.
    let failures = summary("switchover under load", &writes);
    assert!(
        failures.iter().all(|f| *f <= 1),
        "more failed writes than in-flight ones: {failures:?}"
    );
    let last = writes.iter().filter_map(|w| w.last()).collect::<Vec<_>>();
    assert!(
        last.iter().all(|w| w.result == Ok(new_port)),
        "every client writes on the new leader in the end"
    );
    assert_no_write_lost(&a, &writes).await;
    for p in [&a, &b] {
        assert_eq!(p.app.topology().load().primary, Some(candidate));
        let port = write(&p.connect().await).await.expect("a write");
        assert_eq!(port, new_port);
    }

    // === 2. The leader's PostgreSQL crashes: Patroni fails over ===
    // `primary_start_timeout: 0` (see `member_yaml`): Patroni fails over at once when the
    // leader's PostgreSQL crashes (and a replica is fit), instead of restarting it in place.
    let old = candidate;
    let old_port = c.pg_ports[old];
    let load = Load::start(&a, 4, 100);
    load.wait_ok(20).await;
    c.kill_postmaster(old);
    let others: Vec<usize> = (0..3).filter(|n| *n != old).collect();
    let (leader_at, a_new, b_new, a_moved, b_moved, promoted_at) = tokio::join!(
        async {
            common::eventually(limit, || async {
                leader(&c).await.is_some_and(|l| l != old)
            })
            .await
            .then(Instant::now)
        },
        first_write_where(&a, |p| p != old_port, limit),
        first_write_where(&b, |p| p != old_port, limit),
        primary_moved(&a, old, limit),
        primary_moved(&b, old, limit),
        promoted(&c, others, limit),
    );
    let leader_at =
        leader_at.unwrap_or_else(|| panic!("Patroni fails over after the crash\n{}", c.logs()));
    let new = leader(&c).await.expect("the new leader");
    let new_port = c.pg_ports[new];
    let (a_at, a_port) = a_new.unwrap_or_else(|e| {
        panic!(
            "a write through instance A reaches the new leader: {e}\n{}",
            c.logs()
        )
    });
    let (b_at, b_port) = b_new.unwrap_or_else(|e| {
        panic!(
            "a write through instance B reaches the new leader: {e}\n{}",
            c.logs()
        )
    });
    assert_eq!(
        (a_port, b_port),
        (new_port, new_port),
        "writes go to Patroni's new leader"
    );
    let resumed = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_ok(resumed + 20).await;
    let writes = load.stop().await;
    let lag = lag_since(leader_at);
    eprintln!(
        "crash failover: Patroni's new leader in /cluster -> first write through causeway: \
         A {:?}, B {:?} (their snapshots switched after {:?}, {:?}; the new leader left \
         recovery after {:?})",
        lag(a_at),
        lag(b_at),
        a_moved.map(lag),
        b_moved.map(lag),
        promoted_at.map(|(t, _)| t
            .checked_duration_since(leader_at)
            .map_or_else(|| format!("-{:?}", leader_at - t), |d| format!("{d:?}"))),
    );
    if let Some((t, _)) = promoted_at {
        let since = lag_since(t);
        eprintln!(
            "  from the new leader leaving recovery: snapshot A {:?}, B {:?}; first write A {:?}, B {:?}",
            a_moved.map(since),
            b_moved.map(since),
            since(a_at),
            since(b_at)
        );
    }
    summary("leader crash under load", &writes);
    // Once Patroni named another leader, no write lands on the crashed one.
    let stray: Vec<(i32, i32)> = writes
        .iter()
        .flatten()
        .filter(|w| w.sent >= leader_at && w.result == Ok(old_port))
        .map(|w| (w.writer, w.seq))
        .collect();
    assert!(stray.is_empty(), "writes on the crashed leader: {stray:?}");
    // No bound on failures here: a crash kills every pooled connection to the leader, and
    // until causeway's next check sees it (one check interval) a client may be handed another
    // of them and fail again (57P01, seen twice in a row for one client). A switchover
    // (step 1) stops the leader cleanly, and there only the in-flight write may fail.
    // The old leader comes back as a replica of the new one, and still gets no writes.
    // (Patroni may restart it more than once: crash recovery, pg_rewind, then as a replica.)
    let rejoined = common::eventually(Duration::from_secs(90), || async {
        members(&c).await.iter().any(|m| {
            m.port == old_port
                && m.role == causeway::topology::patroni::MemberRole::Replica
                && (m.state == "running" || m.state == "streaming")
        }) && c.psql(old, "SELECT pg_is_in_recovery()").as_deref() == Ok("t")
    })
    .await;
    assert!(
        rejoined,
        "the crashed leader rejoins as a replica\n{}",
        c.logs()
    );
    for p in [&a, &b] {
        assert_eq!(p.app.topology().load().primary, Some(new));
        let port = write(&p.connect().await).await.expect("a write");
        assert_eq!(port, new_port);
    }

    // === 3. `noloadbalance` on a member: no reads reach it ===
    // The tag goes on the crashed leader of step 2: Patroni lists it as a running replica, but
    // whether its PostgreSQL streams again depends on Patroni's pg_rewind (a crash under write
    // load leaves it with WAL the new leader never had; once, its WAL receiver kept failing
    // for minutes while Patroni said "following a leader"), and causeway rightly sends no
    // read to a standby that does not replay. The third member was a replica all along
    // (Patroni promotes the most advanced one), so it follows the new leader: reads go there.
    let tagged = old;
    let other = (0..3).find(|i| *i != new && *i != old).unwrap();
    let other_port = c.pg_ports[other];
    c.tag_noloadbalance(tagged);
    let tag_seen = common::eventually(Duration::from_secs(120), || async {
        let t = a.app.topology().load();
        t.nodes[tagged].no_reads && t.nodes[other].is_eligible_standby()
    })
    .await;
    assert!(
        tag_seen,
        "the tag reaches causeway, the other replica serves reads\n{}",
        c.logs()
    );
    let ports = read_ports(&a, 40).await;
    assert!(
        !ports.contains(&c.pg_ports[tagged]),
        "a read on the noloadbalance member: {ports:?}"
    );
    assert!(
        ports.contains(&other_port),
        "reads go to the other replica: {ports:?}"
    );

    // === 4. Every Patroni API unreachable (the Patroni processes stopped, PostgreSQL runs) ===
    c.signal_patroni("STOP");
    let mut lost_primary = false;
    let fell_back = common::eventually(Duration::from_secs(30), || {
        let t = a.app.topology().load_full();
        lost_primary |= t.primary != Some(new);
        async move { t.role_source == RoleSource::PatroniUnreachable }
    })
    .await;
    let json = causeway::admin::http::topology_json(&a.app.topology().load());
    let after = (write(&a.connect().await).await, read_ports(&a, 20).await);
    let held = a.app.topology().load_full();
    c.signal_patroni("CONT");
    assert!(fell_back, "causeway notices Patroni is unreachable");
    assert!(
        !lost_primary,
        "never \"no primary\" while Patroni is unreachable"
    );
    assert!(
        json.contains(r#""role_source":"patroni_unreachable""#),
        "/topology says so: {json}"
    );
    let (wrote, ports) = after;
    assert_eq!(
        wrote.expect("a write"),
        new_port,
        "writes still reach the leader"
    );
    assert!(
        !ports.contains(&c.pg_ports[tagged]),
        "the last known noloadbalance tag still holds: {ports:?}"
    );
    assert_eq!(held.role_source, RoleSource::PatroniUnreachable);
    assert_eq!(
        held.primary,
        Some(new),
        "the probed primary is Patroni's last leader"
    );
    assert!(
        !held.nodes[tagged].is_eligible_standby() && held.nodes[other].is_eligible_standby(),
        "the last known topology holds: {held:?}"
    );
    let back = common::eventually(Duration::from_secs(30), || async {
        a.app.topology().load().role_source == RoleSource::Patroni
    })
    .await;
    assert!(back, "following Patroni again once it answers");

    // === 5. A fourth Patroni member, not in proxy.toml, added at run time ===
    let step = Instant::now();
    let (new_pg, _, _) = c.spare_ports;
    let c2 = c.clone();
    let admitted = tokio::task::spawn_blocking(move || {
        c2.start_fourth();
        c2.admit_fourth(Duration::from_secs(30))
    })
    .await
    .unwrap();
    let Some(adds) = admitted else {
        panic!(
            "the Raft leader admits the fourth member: {:?}\n{}",
            tokio::task::spawn_blocking({
                let c = c.clone();
                move || c.raft_leader()
            })
            .await
            .unwrap(),
            c.logs()
        );
    };
    eprintln!("added member: admitted to Raft ({adds} `add` sent to the Raft leader by the test)");
    let replica = |m: &causeway::topology::patroni::Member| {
        m.port == new_pg
            && m.role == causeway::topology::patroni::MemberRole::Replica
            && (m.state == "running" || m.state == "streaming")
    };
    let limit = Duration::from_secs(120);
    let (listed_at, read_at) = tokio::join!(
        async {
            common::eventually(limit, || async { members(&c).await.iter().any(replica) })
                .await
                .then(Instant::now)
        },
        async {
            let client = a.connect().await;
            common::eventually(limit, || async {
                let port: i32 = client
                    .query_one("SELECT inet_server_port()", &[])
                    .await
                    .expect("a read")
                    .get(0);
                port as u16 == new_pg
            })
            .await
            .then(Instant::now)
        },
    );
    let Some(listed_at) = listed_at else {
        panic!(
            "Patroni lists the fourth member as a running replica: {:?}\n{}",
            members(&c).await,
            c.logs()
        );
    };
    let read_at =
        read_at.unwrap_or_else(|| panic!("a read reaches the fourth member\n{}", c.logs()));
    eprintln!(
        "added member: started -> running replica in /cluster {:?}; -> first read through \
         causeway it answered {:?} (from the /cluster listing: {})",
        listed_at - step,
        read_at - step,
        read_at.checked_duration_since(listed_at).map_or_else(
            || format!("-{:?}", listed_at - read_at),
            |d| format!("{d:?}")
        ),
    );
    assert!(
        !proxy_config(&c).contains(&format!(":{new_pg}\"")),
        "the fourth member is not in proxy.toml"
    );
    for p in [&a, &b] {
        let seen = common::eventually(Duration::from_secs(10), || async {
            p.app.topology().load().current().any(|n| n.port == new_pg)
        })
        .await;
        let json = causeway::admin::http::topology_json(&p.app.topology().load());
        assert!(
            seen && json.contains(&format!("\"address\":\"127.0.0.1:{new_pg}\"")),
            "/topology lists the fourth member: {json}"
        );
    }
    // It stops (SIGTERM to its Patroni, which stops its PostgreSQL and leaves the member
    // list): causeway removes it, and no read reaches it.
    let c2 = c.clone();
    let stopped = tokio::task::spawn_blocking(move || c2.stop_fourth())
        .await
        .unwrap();
    assert!(stopped, "the fourth member's Patroni exits on SIGTERM");
    let stopped_at = Instant::now();
    let left = common::eventually(Duration::from_secs(30), || async {
        let m = members(&c).await;
        !m.is_empty() && !m.iter().any(|m| m.port == new_pg)
    })
    .await;
    assert!(
        left,
        "the fourth member leaves Patroni's member list\n{}",
        c.logs()
    );
    let left_at = Instant::now();
    for p in [&a, &b] {
        let gone = common::eventually(Duration::from_secs(10), || async {
            !p.app.topology().load().current().any(|n| n.port == new_pg)
        })
        .await;
        assert!(gone, "causeway removes the member that left");
        let ports = read_ports(p, 20).await;
        assert!(
            !ports.contains(&new_pg),
            "a read on the member that left: {ports:?}"
        );
    }
    eprintln!(
        "added member step: {:?} in all (its Patroni stopped in {:?}; out of /cluster {:?} \
         later; out of both snapshots, 40 reads checked {:?} after that)",
        step.elapsed(),
        stopped_at - read_at,
        left_at - stopped_at,
        left_at.elapsed(),
    );
}

/// A `/cluster` body for the shared test cluster: `leader` holds the key, `noloadbalance`
/// members carry that tag.
fn cluster_json(leader: usize, noloadbalance: &[usize]) -> String {
    let c = common::cluster();
    let members: Vec<String> = (0..c.node_count())
        .map(|n| {
            let role = if n == leader { "leader" } else { "replica" };
            let tags = if noloadbalance.contains(&n) {
                r#", "tags": {"noloadbalance": true}"#
            } else {
                ""
            };
            format!(
                r#"{{"name": "n{n}", "role": "{role}", "state": "running", "host": "127.0.0.1", "port": {port}, "timeline": 1{tags}}}"#,
                port = c.port(n).unwrap()
            )
        })
        .collect();
    format!(
        r#"{{"members": [{}], "scope": "test"}}"#,
        members.join(", ")
    )
}

/// With the shared cluster (node 0 the real primary) and a stand-in Patroni API: a
/// `noloadbalance` member gets no reads; a leader key on a standby means no primary (writes
/// wait, and fail after `primary_wait` with 57P03); with the API gone the probes decide again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_tags_leader_key_and_unreachable_api() {
    let c = common::cluster();
    common::connect_direct(0)
        .await
        .batch_execute(
            "create table if not exists patroni_w (x int); grant all on patroni_w to app",
        )
        .await
        .unwrap();
    let fake = FakePatroni::start(cluster_json(0, &[2])).await;
    let extra = format!(
        "[topology]\nsource = \"patroni\"\npatroni = [\"{}\"]\n",
        fake.url
    );
    let proxy = common::start_proxy_from(common::routing_config_toml(
        "consistency = \"eventual\"\nprimary_wait = \"1s\"",
        &extra,
    ))
    .await;
    let no_lb_port = c.port(2).unwrap();
    // Reads spread over the standbys, but never node 2. (A generous deadline: the real
    // Patroni test of this file may load the machine meanwhile.)
    let ok = common::eventually(Duration::from_secs(30), || async {
        let t = proxy.app.topology().load();
        t.nodes[1].is_eligible_standby() && !t.nodes[2].is_eligible_standby()
    })
    .await;
    assert!(
        ok,
        "node 1 reads, node 2 (noloadbalance) does not: {:?}",
        proxy.app.topology().load()
    );
    assert_eq!(proxy.app.topology().load().role_source, RoleSource::Patroni);
    let client = proxy.connect().await;
    for _ in 0..20 {
        let port = client
            .query_one("select inet_server_port()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0);
        assert_ne!(
            port,
            i32::from(no_lb_port),
            "a read on the noloadbalance member"
        );
    }
    // Patroni puts the leader key on node 1, still a standby: no primary, writes wait and fail.
    fake.set(cluster_json(1, &[]));
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            proxy.app.topology().load().primary.is_none()
        })
        .await,
        "no primary while Patroni's leader is in recovery"
    );
    let e = client
        .batch_execute("insert into patroni_w values (1)")
        .await
        .expect_err("a write with no usable leader fails after primary_wait");
    assert_eq!(common::sqlstate(&e), Some("57P03"), "{e:?}");
    // Every Patroni URL unreachable: the probes decide alone, node 0 is the primary again.
    drop(fake);
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            proxy.app.topology().load().primary == Some(0)
        })
        .await,
        "back to the probed primary with Patroni unreachable"
    );
    let json = causeway::admin::http::topology_json(&proxy.app.topology().load());
    assert!(
        json.contains(r#""role_source":"patroni_unreachable""#),
        "/topology says the probes decide: {json}"
    );
    let port: i32 = client
        .query_one(
            "insert into patroni_w values (2) returning inet_server_port()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(c.port(0).unwrap()));
}
