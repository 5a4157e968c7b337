//! causeway in `[topology] source = "patroni"` mode in front of a real Patroni cluster (issue
//! 18): three PostgreSQL 15 nodes managed by Patroni 3 with its built-in Raft store (no etcd),
//! all on loopback. Writes go to Patroni's leader, and after `patronictl switchover` two
//! causeway instances both follow the new leader; the time from Patroni naming the new leader
//! to the first write through each instance is printed.
//!
//! Skipped, with the reason printed, when `patroni` or `patronictl` is not installed (Debian:
//! `apt-get install patroni python3-pysyncobj`; `.ci/run` installs them).
mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use causeway::cluster::{APP_PASSWORD, APP_USER, MONITOR_PASSWORD, MONITOR_USER};
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
}

impl PatroniCluster {
    fn start() -> PatroniCluster {
        let ports = free_ports(9);
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
                member_yaml(i, &home, &cluster, raft_ports[i], &partners),
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
            let home = dir.join(format!("n{i}"));
            let log = fs::File::create(home.join("patroni.log")).unwrap();
            let mut cmd = Command::new("patroni");
            cmd.arg(home.join("patroni.yml"))
                .env("HOME", &home)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
            cluster.children.push(cmd.spawn().expect("start patroni"));
        }
        cluster
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

    fn logs(&self) -> String {
        (0..3)
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

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Patroni stops its PostgreSQL on SIGTERM.
        for child in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
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
        for i in 0..3 {
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
    c: &PatroniCluster,
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
        api = c.api_ports[i],
        pg = c.pg_ports[i],
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

/// Writes through `proxy` until one lands on `port` (reconnecting when the connection is
/// lost); when it did.
async fn first_write_on(proxy: &common::Proxy, port: u16, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    let mut client = proxy.connect().await;
    while Instant::now() < deadline {
        match write(&client).await {
            Ok(p) if p == port => return Some(Instant::now()),
            Ok(_) => {}
            Err(_) if client.is_closed() => client = proxy.connect().await,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_patroni_leader_and_switchover() {
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
             CREATE TABLE t (port int); GRANT ALL ON t TO {APP_USER}"
        ),
    )
    .expect("create roles and table");

    let a = common::start_proxy_from(proxy_config(&c)).await;
    let b = common::start_proxy_from(proxy_config(&c)).await;
    for p in [&a, &b] {
        assert_eq!(p.app.topology().load().primary, Some(first));
        let port = write(&p.connect().await).await.expect("a write");
        assert_eq!(port, c.pg_ports[first], "writes go to Patroni's leader");
    }

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
    let (leader_at, a_at, b_at) = tokio::join!(
        async {
            common::eventually(limit, || async { leader(&c).await == Some(candidate) })
                .await
                .then(Instant::now)
        },
        first_write_on(&a, new_port, limit),
        first_write_on(&b, new_port, limit),
    );
    let out = switchover.await.unwrap();
    let leader_at =
        leader_at.unwrap_or_else(|| panic!("Patroni switches over: {out}\n{}", c.logs()));
    let a_at = a_at.expect("a write through instance A reaches the new leader");
    let b_at = b_at.expect("a write through instance B reaches the new leader");
    // The proxies may be faster than this poll of Patroni's API (which runs every 50 ms).
    let lag = |t: Instant| t.saturating_duration_since(leader_at);
    eprintln!(
        "Patroni's new leader in /cluster -> first write through causeway: A {:?}, B {:?}",
        lag(a_at),
        lag(b_at)
    );
    for (name, t) in [("A", a_at), ("B", b_at)] {
        assert!(
            lag(t) <= Duration::from_secs(5),
            "instance {name} wrote to the new leader {:?} after Patroni named it",
            lag(t)
        );
    }
    for p in [&a, &b] {
        assert_eq!(p.app.topology().load().primary, Some(candidate));
        let port = write(&p.connect().await).await.expect("a write");
        assert_eq!(port, new_port);
    }
}

/// A stand-in for Patroni's REST API serving whatever `/cluster` body the test sets; dropping
/// it closes the port (every Patroni URL unreachable).
struct FakePatroni {
    url: String,
    body: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePatroni {
    async fn start(body: String) -> FakePatroni {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let body = Arc::new(std::sync::Mutex::new(body));
        let shared = body.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let body = shared.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        FakePatroni { url, body, task }
    }

    fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

impl Drop for FakePatroni {
    fn drop(&mut self) {
        self.task.abort();
    }
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
    // Reads spread over the standbys, but never node 2.
    let ok = common::eventually(Duration::from_secs(10), || async {
        let t = proxy.app.topology().load();
        t.nodes[1].is_eligible_standby() && !t.nodes[2].is_eligible_standby()
    })
    .await;
    assert!(ok, "node 1 reads, node 2 (noloadbalance) does not");
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
