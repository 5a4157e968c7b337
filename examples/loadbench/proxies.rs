//! The three proxies under test: their configuration files (in the run's temp directory),
//! how each is started by hand as a tracked child, and how the harness knows it is ready.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use causeway::cluster::{self, LocalCluster};

use crate::procs;
use crate::tls::CertFiles;

/// The user pgbench and the idle clients log in as (SCRAM-SHA-256 on every node).
pub const USER: &str = cluster::APP_USER;
/// Its password.
pub const PASSWORD: &str = cluster::APP_PASSWORD;
/// The database.
pub const DATABASE: &str = "postgres";
/// PgBouncer's alias of [`DATABASE`] in session mode (for pgbench `-M prepared`).
pub const SESSION_DATABASE: &str = "postgres_session";

pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
pub const PGPOOL: &str = "/usr/sbin/pgpool";

/// A started proxy.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub port: u16,
    pub pid: u32,
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An OS account by numeric ids.
#[derive(Debug, Clone, Copy)]
pub struct OsUser {
    pub uid: u32,
    pub gid: u32,
}

/// Whether this process runs as root (`Uid:` line of /proc/self/status, no `unsafe`).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The `postgres` OS account from /etc/passwd (PgBouncer refuses to run as root).
pub fn postgres_account() -> Option<OsUser> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() <= 3 || f[0] != "postgres" {
            return None;
        }
        Some(OsUser {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

/// Creates `dir` (mode 0755) owned by `owner` if given.
pub fn make_dir(dir: &Path, owner: Option<OsUser>) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    if let Some(u) = owner {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

/// Writes a file readable by its owner only, owned by `owner` if given.
fn write_private(path: &Path, text: &str, owner: Option<OsUser>) -> std::io::Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    if let Some(u) = owner {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

/// A command with no `PG*` variables from our environment, so nothing points it elsewhere.
pub fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C").stdin(Stdio::null());
    cmd
}

/// Waits until `psql` can run `SELECT 1` through `port` as [`USER`] on `database`.
pub fn wait_ready(
    cluster: &LocalCluster,
    name: &str,
    port: u16,
    database: &str,
    pid: u32,
    log: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if !procs::alive(pid) {
            return Err(format!(
                "{name} exited during start-up; its log ({}):\n{}",
                log.display(),
                tail(log)
            ));
        }
        let out = clean_command(&cluster.bin().path("psql"))
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-A", "-t", "-q", "-c", "SELECT 1", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", USER, "-d", database])
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "{name} did not accept connections within {timeout:?} (last psql error: {last}); its log \
         ({}):\n{}",
        log.display(),
        tail(log)
    ))
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// === causeway ===

/// Settings of one causeway instance.
pub struct CausewaySettings {
    pub pool_size: usize,
    pub max_server_connections: usize,
    pub max_client_connections: usize,
    /// `pool.pool_timeout`; "0" waits forever (the idle-client mode parks clients this way).
    pub pool_timeout: &'static str,
    /// `[client_tls] mode = "allow"` with this certificate (plaintext clients still served).
    pub tls: Option<CertFiles>,
}

/// causeway's `proxy.toml` for the cluster.
pub fn causeway_config(
    cluster: &LocalCluster,
    port: u16,
    s: &CausewaySettings,
) -> Result<String, String> {
    let nodes = cluster.nodes_toml().map_err(|e| e.to_string())?;
    let tls = s.tls.as_ref().map_or_else(String::new, |t| {
        format!(
            "[client_tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\n",
            t.cert.display(),
            t.key.display()
        )
    });
    Ok(format!(
        r#"# Written by examples/loadbench.
[proxy]
listen = "127.0.0.1:{port}"
pool_mode = "transaction"
max_client_connections = {max_clients}

[pool]
pool_size = {pool_size}
max_server_connections = {max_server}
pool_timeout = "{pool_timeout}"

[monitor]
user = "{monitor}"
password = "{monitor_password}"

{tls}
{nodes}
[[users]]
name = "{user}"
password = "{password}"
"#,
        max_clients = s.max_client_connections,
        pool_size = s.pool_size,
        max_server = s.max_server_connections,
        pool_timeout = s.pool_timeout,
        monitor = cluster::MONITOR_USER,
        monitor_password = cluster::MONITOR_PASSWORD,
        user = USER,
        password = PASSWORD,
    ))
}

/// Starts causeway as this executable with `--serve-proxy <config>` (see `serve_proxy`), so its
/// CPU and memory are its own process's.
pub fn start_causeway(
    cluster: &LocalCluster,
    dir: &Path,
    settings: &CausewaySettings,
) -> Result<Proxy, String> {
    make_dir(dir, None).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let port = free_port().map_err(|e| e.to_string())?;
    let config = dir.join("proxy.toml");
    write_private(&config, &causeway_config(cluster, port, settings)?, None)
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let log = dir.join("causeway.log");
    let log_file = fs::File::create(&log).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // `CAUSEWAY_BENCH_WRAP="valgrind --tool=massif"` runs the proxy under that command
    // (a heap profile of the idle-client mode, for instance).
    let wrap = std::env::var("CAUSEWAY_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut cmd = clean_command(Path::new(program));
            cmd.args(words).arg(&exe);
            cmd
        }
        None => clean_command(&exe),
    };
    cmd.arg("--serve-proxy")
        .arg(&config)
        // Its stdin is a pipe we hold: when the harness dies, it sees EOF and exits.
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .env(
            "RUST_LOG",
            std::env::var("CAUSEWAY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let pid =
        procs::spawn("causeway", cmd, "INT").map_err(|e| format!("starting causeway: {e}"))?;
    wait_ready(
        cluster,
        "causeway",
        port,
        DATABASE,
        pid,
        &log,
        Duration::from_secs(30),
    )?;
    Ok(Proxy { port, pid })
}

// === PgBouncer ===

/// Settings of one PgBouncer instance.
pub struct PgBouncerSettings {
    pub default_pool_size: usize,
    /// `pool_size` of the session-mode database entry: session pooling holds one server
    /// connection per client, so it must cover the largest client count or clients starve.
    pub session_pool_size: usize,
    pub max_client_conn: usize,
    /// `client_tls_sslmode = allow` with this certificate (plaintext clients still served).
    pub tls: Option<CertFiles>,
}

/// `app`'s SCRAM verifier from the primary's catalog: with it in `auth_file`, PgBouncer checks
/// clients without running PBKDF2 per login and logs in to PostgreSQL with the client's proof
/// (SCRAM pass-through), as it is deployed in production.
pub fn scram_verifier(cluster: &LocalCluster) -> Result<String, String> {
    cluster
        .psql(
            0,
            &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'"),
        )
        .map_err(|e| e.to_string())
}

pub fn pgbouncer_ini(
    cluster: &LocalCluster,
    dir: &Path,
    port: u16,
    s: &PgBouncerSettings,
) -> Result<String, String> {
    let primary = cluster.port(0).map_err(|e| e.to_string())?;
    let tls = s.tls.as_ref().map_or_else(String::new, |t| {
        format!(
            "client_tls_sslmode = allow\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
            t.cert.display(),
            t.key.display()
        )
    });
    Ok(format!(
        "; Written by examples/loadbench.
[databases]
{DATABASE} = host=127.0.0.1 port={primary} dbname={DATABASE}
{SESSION_DATABASE} = host=127.0.0.1 port={primary} dbname={DATABASE} pool_mode=session pool_size={session_pool}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = {max_clients}
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
{tls}",
        dir = dir.display(),
        session_pool = s.session_pool_size,
        pool = s.default_pool_size,
        max_clients = s.max_client_conn,
    ))
}

/// Starts PgBouncer (as OS user `postgres` when we are root) in the foreground.
pub fn start_pgbouncer(
    cluster: &LocalCluster,
    dir: &Path,
    s: &PgBouncerSettings,
) -> Result<Proxy, String> {
    let owner = if is_root() {
        Some(postgres_account().ok_or("running as root but there is no `postgres` OS user")?)
    } else {
        None
    };
    make_dir(dir, owner).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let port = free_port().map_err(|e| e.to_string())?;
    let verifier = scram_verifier(cluster)?;
    write_private(
        &dir.join("userlist.txt"),
        &format!("\"{USER}\" \"{verifier}\"\n"),
        owner,
    )
    .map_err(|e| e.to_string())?;
    let ini = dir.join("pgbouncer.ini");
    write_private(&ini, &pgbouncer_ini(cluster, dir, port, s)?, owner)
        .map_err(|e| e.to_string())?;
    let log = dir.join("pgbouncer.log");
    let stderr = fs::File::create(dir.join("pgbouncer.stderr")).map_err(|e| e.to_string())?;
    let mut cmd = clean_command(Path::new(PGBOUNCER));
    cmd.arg(&ini)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(u) = owner {
        cmd.uid(u.uid).gid(u.gid);
    }
    let pid =
        procs::spawn("pgbouncer", cmd, "INT").map_err(|e| format!("starting PgBouncer: {e}"))?;
    wait_ready(
        cluster,
        "PgBouncer",
        port,
        DATABASE,
        pid,
        &log,
        Duration::from_secs(30),
    )?;
    Ok(Proxy { port, pid })
}

// === pgpool-II ===

pub struct PgpoolSettings {
    pub num_init_children: usize,
}

pub fn pgpool_conf(
    cluster: &LocalCluster,
    dir: &Path,
    port: u16,
    s: &PgpoolSettings,
) -> Result<String, String> {
    let d = dir.display();
    let mut backends = String::new();
    for n in 0..cluster.node_count() {
        let p = cluster.port(n).map_err(|e| e.to_string())?;
        let _ = write!(
            backends,
            "backend_hostname{n} = '127.0.0.1'\nbackend_port{n} = {p}\nbackend_weight{n} = 1\n\
             backend_flag{n} = 'DISALLOW_TO_FAILOVER'\nbackend_application_name{n} = 'node{n}'\n"
        );
    }
    Ok(format!(
        "# Written by examples/loadbench.
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = {port}
socket_dir = '{d}'
pcp_listen_addresses = ''
pcp_socket_dir = '{d}'
wd_ipc_socket_dir = '{d}'
pid_file_name = '{d}/pgpool.pid'
logdir = '{d}'
{backends}
enable_pool_hba = off
pool_passwd = '{d}/pool_passwd'
allow_clear_text_frontend_auth = off
num_init_children = {children}
max_pool = 1
reserved_connections = 0
child_life_time = 0
child_max_connections = 0
connection_life_time = 0
client_idle_limit = 0
connection_cache = on
load_balance_mode = on
statement_level_load_balance = off
sr_check_period = 10
sr_check_user = '{monitor}'
sr_check_password = '{monitor_pw}'
sr_check_database = 'postgres'
delay_threshold = 0
health_check_period = 10
health_check_timeout = 5
health_check_user = '{monitor}'
health_check_password = '{monitor_pw}'
health_check_database = 'postgres'
health_check_max_retries = 3
health_check_retry_delay = 1
failover_on_backend_error = off
failover_command = ''
use_watchdog = off
memory_cache_enabled = off
log_destination = 'stderr'
log_min_messages = warning
log_connections = off
log_statement = off
",
        children = s.num_init_children,
        monitor = cluster::MONITOR_USER,
        monitor_pw = cluster::MONITOR_PASSWORD,
    ))
}

/// Starts pgpool-II in the foreground (`-n`), discarding any old node status (`-D`).
pub fn start_pgpool(
    cluster: &LocalCluster,
    dir: &Path,
    s: &PgpoolSettings,
) -> Result<Proxy, String> {
    make_dir(dir, None).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let port = free_port().map_err(|e| e.to_string())?;
    let conf = dir.join("pgpool.conf");
    write_private(&conf, &pgpool_conf(cluster, dir, port, s)?, None).map_err(|e| e.to_string())?;
    // Plain-text entries ("TEXT" prefix): pgpool needs the password itself to answer the
    // backends' SCRAM challenges, and checks clients against it with SCRAM too.
    write_private(
        &dir.join("pool_passwd"),
        &format!(
            "{USER}:TEXT{PASSWORD}\n{}:TEXT{}\n",
            cluster::MONITOR_USER,
            cluster::MONITOR_PASSWORD
        ),
        None,
    )
    .map_err(|e| e.to_string())?;
    write_private(&dir.join("pcp.conf"), "", None).map_err(|e| e.to_string())?;
    write_private(
        &dir.join("pool_hba.conf"),
        "host all all 127.0.0.1/32 scram-sha-256\n",
        None,
    )
    .map_err(|e| e.to_string())?;
    let log = dir.join("pgpool.log");
    let log_file = fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = clean_command(Path::new(PGPOOL));
    cmd.arg("-n")
        .arg("-D")
        .arg("-f")
        .arg(&conf)
        .arg("-F")
        .arg(dir.join("pcp.conf"))
        .arg("-a")
        .arg(dir.join("pool_hba.conf"))
        .current_dir(dir)
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file);
    // SIGINT is pgpool's fast shutdown (its children exit too).
    let pid = procs::spawn("pgpool", cmd, "INT").map_err(|e| format!("starting pgpool-II: {e}"))?;
    wait_ready(
        cluster,
        "pgpool-II",
        port,
        DATABASE,
        pid,
        &log,
        Duration::from_secs(60),
    )?;
    Ok(Proxy { port, pid })
}
