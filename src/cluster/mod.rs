//! # Local PostgreSQL clusters for `causeway demo` and the integration tests
//!
//! [`LocalCluster::start`] builds a throwaway primary plus N streaming hot standbys on loopback
//! from the machine's PostgreSQL binaries (found by [`PgBinaries::discover`]), and tears them
//! down again however this process ends. Everything here is synchronous and `std::process`
//! based, so it works the same from a `#[test]`, from `demo`, and from `spawn_blocking`.
//!
//! ## Layout on disk
//!
//! ```text
//! <tmp>/causeway-cluster-<pid>-<random>/   base dir, mode 0700 (owned by `postgres` when root)
//!   node0/                                 node 0: Unix socket dir and server log
//!     node0.log                            server log (`pg_ctl -l`; appended across restarts)
//!     .s.PGSQL.<port>                      Unix socket
//!     data/                                PGDATA, mode 0700
//!       causeway.conf                      the harness's settings, included by postgresql.conf
//!   node1/ ...                             standbys, same shape
//! ```
//!
//! Node 0 is the initial primary; nodes `1..=standbys` start as its standbys, each through a
//! physical replication slot `standby_<n>`. Every node listens on `127.0.0.1` only, on a port
//! the kernel picked as free, and names itself `node<n>` in `cluster_name` (which is also the
//! `application_name` its WAL receiver shows in the upstream's `pg_stat_replication`).
//!
//! ## Roles (created on the primary, replicated everywhere)
//!
//! | role | password | notes |
//! |---|---|---|
//! | `postgres` | [`ClusterOptions::superuser_password`] (default `postgres`) | superuser, SCRAM |
//! | `causeway_monitor` | `monitor` | member of `pg_monitor`, SCRAM |
//! | `app` | `app` | SCRAM verifier; `CREATEDB`, `CREATE` on database `postgres` and schema `public` |
//! | `app_md5` | `app_md5` | password stored as an md5 hash; same grants as `app` |
//! | `app_trust` | none | trusted over TCP; same grants as `app` |
//!
//! The names and passwords are exported as constants ([`APP_USER`], [`APP_PASSWORD`], ...).
//!
//! ## `pg_hba.conf` (all nodes)
//!
//! ```text
//! local   all          all                       trust
//! host    replication  all        127.0.0.1/32   trust
//! host    all          app_trust  127.0.0.1/32   trust
//! host    all          app_md5    127.0.0.1/32   md5
//! host    all          all        127.0.0.1/32   scram-sha-256
//! ```
//!
//! ## Cleanup
//!
//! Two layers, so that no server outlives the process that started it:
//! - [`LocalCluster::shutdown`] (also run by `Drop`, including during a panic unwind) stops every
//!   node with `pg_ctl stop -m immediate` and removes the base directory.
//! - A guardian child started with the cluster (see `guardian.rs`) does the same as soon as this
//!   process is gone, which covers what `Drop` cannot: clusters in a `static` (never dropped),
//!   `process::exit`, SIGKILL and Ctrl-C. It notices through a pipe, not by polling PIDs.
//!
//! ## Running as root
//!
//! initdb refuses root, so when the effective uid is 0 every PostgreSQL binary runs as the
//! `postgres` OS user and every directory and file of the cluster belongs to it (data
//! directories mode 0700). Without that user, [`LocalCluster::start`] fails with
//! [`ClusterError::NoPostgresUser`].
//!
//! ## Example
//!
//! ```no_run
//! use causeway::cluster::{ClusterOptions, LocalCluster};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), causeway::cluster::ClusterError> {
//! let cluster = LocalCluster::start(ClusterOptions::default())?;
//! cluster.psql(0, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")?;
//! cluster.wait_caught_up(Duration::from_secs(10))?;
//! assert_eq!(cluster.psql(1, "SELECT count(*) FROM t")?, "1");
//! # Ok(())
//! # }
//! ```

mod binaries;
mod conf;
mod error;
mod guardian;
mod lifecycle;
mod process;
mod replication;
mod sql;

use std::{
    collections::hash_map::RandomState,
    ffi::OsString,
    fmt, fs,
    hash::{BuildHasher, Hasher},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

/// WAL positions, shared with the proxy (`16/B374D848`, compared numerically).
pub use crate::protocol::Lsn;
pub use binaries::PgBinaries;
pub use error::ClusterError;

use conf::{quote_conninfo, quote_literal};
use guardian::Guardian;
use process::Runner;

/// The bootstrap superuser.
pub const SUPERUSER: &str = "postgres";
/// Monitoring role (member of `pg_monitor`), for the proxy's topology watcher.
pub const MONITOR_USER: &str = "causeway_monitor";
/// Password of [`MONITOR_USER`] (SCRAM).
pub const MONITOR_PASSWORD: &str = "monitor";
/// Application role authenticating with SCRAM-SHA-256.
pub const APP_USER: &str = "app";
/// Password of [`APP_USER`].
pub const APP_PASSWORD: &str = "app";
/// Application role whose password is stored as md5 and which `pg_hba.conf` sends through `md5`.
pub const APP_MD5_USER: &str = "app_md5";
/// Password of [`APP_MD5_USER`].
pub const APP_MD5_PASSWORD: &str = "app_md5";
/// Application role that `pg_hba.conf` trusts over TCP (no password).
pub const APP_TRUST_USER: &str = "app_trust";
/// Lowest supported PostgreSQL major version (`wal_keep_size`, and pg_rewind recovering a
/// crashed target by itself).
pub const MIN_VERSION: u32 = 13;

/// Database every helper connects to.
const DATABASE: &str = "postgres";
/// `pg_ctl -t` for start, stop and promote.
const PG_CTL_WAIT_SECS: u64 = 60;
/// Deadline for any other single command (initdb, pg_basebackup, psql, ...).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a new standby may take to start streaming, or a promoted node to leave recovery.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an old replication slot may stay in use after its standby was stopped.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval between checks while waiting for a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts at starting a new node on a fresh port when another program took the chosen one.
const PORT_ATTEMPTS: usize = 5;
/// Longest Unix socket directory: `sun_path` holds 108 bytes with the NUL, and PostgreSQL adds
/// `/.s.PGSQL.<port>` (at most 16 bytes).
const MAX_SOCKET_DIR_LEN: usize = 107 - 16;

type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// How [`LocalCluster::start`] builds the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Number of streaming standbys besides the primary (default 2; 0 gives a lone primary).
    pub standbys: usize,
    /// `max_connections` of every node (default 300). The same on all nodes, because a hot
    /// standby refuses to run with fewer than its primary.
    pub max_connections: u32,
    /// Password of the `postgres` superuser (default `postgres`). Must be non-empty and one line.
    pub superuser_password: String,
    /// Lines appended to the configuration of every node, e.g. `"log_statement = 'all'"`. They
    /// come after the harness's own settings, so they can override them.
    pub extra_conf: Vec<String>,
    /// Directory under which the cluster's own directory is created (default: the system temp
    /// directory). Only the created subdirectory is ever deleted. Keep it short: Unix socket
    /// paths are limited to about 100 bytes. When running as root, the `postgres` user must be
    /// able to enter it.
    pub base_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            standbys: 2,
            max_connections: 300,
            superuser_password: "postgres".to_owned(),
            extra_conf: Vec::new(),
            base_dir: None,
        }
    }
}

/// How [`LocalCluster::stop`] shuts a node down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopMode {
    /// `pg_ctl stop -m fast`: disconnect clients, checkpoint, exit cleanly.
    Fast,
    /// `pg_ctl stop -m immediate`: exit at once, like a crash; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_pg_ctl_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Fixed facts about one node.
#[derive(Debug)]
struct Node {
    /// `node<n>`: its `cluster_name`, WAL receiver `application_name` and file names.
    name: String,
    /// `<base>/node<n>`: Unix socket directory and home of the log; never deleted before
    /// shutdown.
    dir: PathBuf,
    /// `<dir>/data`: PGDATA; wiped and recreated by `rebuild_standby`.
    data: PathBuf,
    /// `<dir>/node<n>.log`: the server log.
    log: PathBuf,
}

/// What changes about a node over the cluster's life.
#[derive(Debug, Clone)]
struct NodeState {
    /// TCP port. Changes only while the cluster is being built (retry after a port clash); fixed
    /// afterwards, because standbys' `primary_conninfo` refers to it.
    port: u16,
    /// The node this one replicates from, as the harness configured it; `None` for a primary.
    upstream: Option<usize>,
    /// Lines added by [`LocalCluster::set_conf`], rewritten into `causeway.conf` every time.
    conf_lines: Vec<String>,
    /// Order of its last promotion by [`LocalCluster::promote`] (0: never promoted); breaks ties
    /// when two running nodes both claim to be primary.
    promoted: u64,
}

/// A throwaway PostgreSQL primary and its streaming hot standbys, on loopback.
///
/// Nodes are numbered `0..node_count()`: node 0 is the initial primary and `1..=standbys` its
/// standbys; failover methods can change who is primary, never the numbering. All methods take
/// `&self` so one cluster can be shared between test threads (e.g. in a `static OnceLock`);
/// methods that change a node are not meant to be called on the same node from two threads at
/// once.
pub struct LocalCluster {
    /// The binaries every node runs.
    bin: PgBinaries,
    /// Spawns commands as the cluster's OS account.
    runner: Runner,
    /// The cluster's own directory; removed by `shutdown`.
    base: PathBuf,
    /// Password of [`SUPERUSER`].
    superuser_password: String,
    /// `max_connections` of every node.
    max_connections: u32,
    /// `ClusterOptions::extra_conf`.
    extra_conf: Vec<String>,
    /// One entry per node, index = node number.
    nodes: Vec<Node>,
    /// Mutable node facts, same indexing as `nodes`. A std mutex: it is held only for memory
    /// updates, never across a command.
    state: Mutex<Vec<NodeState>>,
    /// Counter behind `NodeState::promoted`.
    promotions: AtomicU64,
    /// The guardian child; `None` once dismissed by `shutdown`.
    guardian: Mutex<Option<Guardian>>,
    /// Set by the first `shutdown`; every later node operation fails with `ShutDown`.
    shut_down: AtomicBool,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<u16> = self.state().iter().map(|s| s.port).collect();
        f.debug_struct("LocalCluster")
            .field("base", &self.base)
            .field("bindir", &self.bin.bindir())
            .field("ports", &ports)
            .field("shut_down", &self.shut_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

// === construction ===

impl LocalCluster {
    /// Builds and starts the cluster: initdb and start the primary, create the roles,
    /// pg_basebackup and start each standby, and return once every standby is streaming.
    ///
    /// On error everything created so far is stopped and removed before returning.
    ///
    /// # Errors
    /// Missing or too old binaries, no `postgres` user when root, invalid options, a failing
    /// PostgreSQL command (with its stderr and the server log), or a standby that does not
    /// start streaming within 60 s.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        let started = Instant::now();
        validate_options(&opts)?;
        let bin = PgBinaries::discover()?;
        if bin.version() < MIN_VERSION {
            return Err(ClusterError::UnsupportedVersion {
                found: bin.version(),
                required: MIN_VERSION,
            });
        }
        let user = process::postgres_account()?;
        let parent = opts.base_dir.clone().unwrap_or_else(std::env::temp_dir);
        let base = create_base_dir(&parent, &Runner::new(user, parent.clone()))?;
        let runner = Runner::new(user, base.clone());

        let node_count = opts.standbys + 1;
        let nodes: Vec<Node> = (0..node_count)
            .map(|n| {
                let name = format!("node{n}");
                let dir = base.join(&name);
                Node {
                    data: dir.join("data"),
                    log: dir.join(format!("{name}.log")),
                    dir,
                    name,
                }
            })
            .collect();
        let ports = match nodes.last().map(|n| n.dir.as_os_str().len()) {
            Some(len) if len > MAX_SOCKET_DIR_LEN => Err(ClusterError::Invalid(format!(
                "base directory {} is too long for Unix socket paths; choose a shorter \
                 ClusterOptions::base_dir",
                base.display()
            ))),
            _ => process::free_ports(node_count),
        };
        let data_dirs: Vec<PathBuf> = nodes.iter().map(|n| n.data.clone()).collect();
        let guardian = ports.and_then(|ports| {
            Guardian::spawn(&runner, &base, &bin.path("pg_ctl"), &data_dirs).map(|g| (g, ports))
        });
        let (guardian, ports) = match guardian {
            Ok(ok) => ok,
            Err(e) => {
                let _ = fs::remove_dir_all(&base);
                return Err(e);
            }
        };

        // From here on, dropping `cluster` (e.g. by `?`) cleans up whatever was created.
        let cluster = LocalCluster {
            bin,
            runner,
            base,
            superuser_password: opts.superuser_password,
            max_connections: opts.max_connections,
            extra_conf: opts.extra_conf,
            nodes,
            state: Mutex::new(
                ports
                    .into_iter()
                    .enumerate()
                    .map(|(n, port)| NodeState {
                        port,
                        upstream: (n > 0).then_some(0),
                        conf_lines: Vec::new(),
                        promoted: 0,
                    })
                    .collect(),
            ),
            promotions: AtomicU64::new(0),
            guardian: Mutex::new(Some(guardian)),
            shut_down: AtomicBool::new(false),
        };
        tracing::debug!(base = %cluster.base.display(), version = cluster.bin.version(), "building local cluster");
        cluster.init_primary()?;
        // Standbys are independent of each other, and most of a base backup's time is spent
        // waiting (checkpoint, end-of-backup WAL), so build them side by side.
        let shared = &cluster;
        thread::scope(|scope| {
            let builders: Vec<_> = (1..node_count)
                .map(|n| scope.spawn(move || shared.create_standby(n, 0)))
                .collect();
            builders.into_iter().try_for_each(|builder| {
                builder.join().unwrap_or_else(|_| {
                    Err(ClusterError::Invalid(
                        "a thread building a standby panicked".to_owned(),
                    ))
                })
            })
        })?;
        tracing::info!(
            base = %cluster.base.display(),
            ports = ?cluster.state().iter().map(|s| s.port).collect::<Vec<_>>(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local cluster ready"
        );
        Ok(cluster)
    }

    /// initdb, configuration, start, roles.
    fn init_primary(&self) -> Result<()> {
        let node = &self.nodes[0];
        self.runner.create_private_dir(&node.dir)?;
        let pwfile = self.base.join("superuser.pw");
        self.runner
            .write_file(&pwfile, &format!("{}\n", self.superuser_password))?;
        let mut pwfile_arg = OsString::from("--pwfile=");
        pwfile_arg.push(&pwfile);
        let mut cmd = self.runner.command(&self.bin.path("initdb"));
        cmd.arg("-D")
            .arg(&node.data)
            .args(["-U", SUPERUSER])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            // C locale: works whatever locales the machine has, and sorts fast.
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .arg(pwfile_arg);
        let result = process::run_ok(&mut cmd, COMMAND_TIMEOUT);
        // The password file must not outlive initdb, whether it succeeded or not.
        let _ = fs::remove_file(&pwfile);
        result?;

        self.runner
            .write_file(&node.data.join("pg_hba.conf"), conf::PG_HBA)?;
        self.runner
            .append_file(&node.data.join("postgresql.conf"), conf::INCLUDE_LINE)?;
        self.start_new_node(0)?;
        if self.bin.version() < 14 {
            // Before 14, initdb hashed the password with md5, which SCRAM-only pg_hba rejects;
            // causeway.conf sets password_encryption to SCRAM for this statement.
            self.psql(
                0,
                &format!(
                    "ALTER ROLE {SUPERUSER} PASSWORD {}",
                    quote_literal(&self.superuser_password)
                ),
            )?;
        }
        self.psql(0, &conf::roles_sql())?;
        Ok(())
    }

    /// Builds node `n` as a new standby of `from` and waits until it streams.
    fn create_standby(&self, n: usize, from: usize) -> Result<()> {
        self.runner.create_private_dir(&self.nodes[n].dir)?;
        self.base_backup(n, from)?;
        self.start_new_node(n)?;
        self.wait_streaming(n, from)
    }

    /// Writes the node's configuration and starts it, moving it to a new port if another program
    /// took the chosen one in the meantime. Only for nodes nothing refers to yet.
    fn start_new_node(&self, n: usize) -> Result<()> {
        for attempt in 1..=PORT_ATTEMPTS {
            self.write_node_conf(n)?;
            match self.pg_ctl_start(n) {
                Err(ClusterError::CommandFailed { stderr, .. })
                    if attempt < PORT_ATTEMPTS && is_port_clash(&stderr) =>
                {
                    let port = process::free_ports(1)?[0];
                    tracing::debug!(node = n, port, "port taken by another program; retrying");
                    self.state()[n].port = port;
                }
                other => return other,
            }
        }
        Ok(())
    }
}

/// Rejects options that would only fail later, less clearly.
fn validate_options(opts: &ClusterOptions) -> Result<()> {
    let password = &opts.superuser_password;
    if password.is_empty() || password.contains(['\n', '\r']) {
        return Err(ClusterError::Invalid(
            "superuser_password must be a non-empty single line".to_owned(),
        ));
    }
    if opts.max_connections == 0 {
        return Err(ClusterError::Invalid(
            "max_connections must be at least 1".to_owned(),
        ));
    }
    if let Some(line) = opts.extra_conf.iter().find(|l| l.contains(['\n', '\r'])) {
        return Err(ClusterError::Invalid(format!(
            "extra_conf entries must be single lines: {line:?}"
        )));
    }
    Ok(())
}

/// Creates `<parent>/causeway-cluster-<pid>-<random>` with mode 0700 for the account.
fn create_base_dir(parent: &Path, runner: &Runner) -> Result<PathBuf> {
    fs::create_dir_all(parent)
        .map_err(ClusterError::io(format!("creating {}", parent.display())))?;
    let mut last_error = None;
    for _ in 0..16 {
        let dir = parent.join(format!(
            "causeway-cluster-{}-{:08x}",
            std::process::id(),
            random_u32()
        ));
        match runner.create_private_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(ClusterError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                last_error = Some(source);
            }
            Err(e) => return Err(e),
        }
    }
    Err(ClusterError::Io {
        context: format!("no unused directory name under {}", parent.display()),
        source: last_error.unwrap_or_else(|| std::io::Error::other("name collisions")),
    })
}

/// Randomness from std alone: `RandomState` is seeded randomly per process and varies per call.
fn random_u32() -> u32 {
    let mut hasher = RandomState::new().build_hasher();
    if let Ok(since_epoch) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    hasher.finish() as u32
}

/// Whether a failed start (pg_ctl's stderr plus the server log) was caused by a taken port.
fn is_port_clash(text: &str) -> bool {
    text.contains("Address already in use") || text.contains("could not create any TCP/IP sockets")
}

// === accessors ===

impl LocalCluster {
    /// Number of nodes: 1 + standbys.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// TCP port of node `n` on 127.0.0.1.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`], or [`ClusterError::ShutDown`].
    pub fn port(&self, n: usize) -> Result<u16> {
        self.node(n)?;
        Ok(self.state()[n].port)
    }

    /// A causeway configuration's `[[nodes]]` entries for every node, in node order:
    /// `[[nodes]]\naddress = "127.0.0.1:<port>"\n` each.
    ///
    /// # Errors
    /// [`ClusterError::ShutDown`].
    pub fn nodes_toml(&self) -> Result<String> {
        let mut nodes = String::new();
        for n in 0..self.node_count() {
            nodes.push_str(&format!(
                "[[nodes]]\naddress = \"127.0.0.1:{}\"\n",
                self.port(n)?
            ));
        }
        Ok(nodes)
    }

    /// Ports of the initial standbys, nodes `1..node_count()`, whatever their role is now (see
    /// [`primary`](Self::primary) for the current one).
    pub fn standby_ports(&self) -> Vec<u16> {
        self.state().iter().skip(1).map(|s| s.port).collect()
    }

    /// The node that is primary now, found by asking every node `pg_is_in_recovery()`; nodes
    /// that do not answer are skipped. If several running nodes are out of recovery (an old
    /// primary still up after a promotion), the one promoted most recently by
    /// [`promote`](Self::promote) wins, then the lowest number.
    ///
    /// # Errors
    /// [`ClusterError::Invalid`] if no node answers as a primary.
    pub fn primary(&self) -> Result<usize> {
        self.check_live()?;
        let mut best: Option<(u64, usize)> = None;
        for n in 0..self.node_count() {
            if let Ok(false) = self.is_in_recovery(n) {
                let promoted = self.state()[n].promoted;
                if best.is_none_or(|(p, _)| promoted > p) {
                    best = Some((promoted, n));
                }
            }
        }
        best.map(|(_, n)| n)
            .ok_or_else(|| ClusterError::Invalid("no running node is a primary".to_owned()))
    }

    /// Port of the node that is primary now, as [`primary`](Self::primary) determines it (by
    /// asking, not from the initial layout; `port(0)` is the initial primary's).
    ///
    /// # Errors
    /// As [`primary`](Self::primary).
    pub fn primary_port(&self) -> Result<u16> {
        let n = self.primary()?;
        self.port(n)
    }

    /// The node `n` replicates from as the harness configured it (`None` for a primary).
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`], or [`ClusterError::ShutDown`].
    pub fn upstream(&self, n: usize) -> Result<Option<usize>> {
        self.node(n)?;
        Ok(self.state()[n].upstream)
    }

    /// The cluster's own directory (removed on shutdown).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// PGDATA of node `n`.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`], or [`ClusterError::ShutDown`].
    pub fn data_dir(&self, n: usize) -> Result<&Path> {
        Ok(&self.node(n)?.data)
    }

    /// Server log of node `n`, useful when a test fails.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`], or [`ClusterError::ShutDown`].
    pub fn log_file(&self, n: usize) -> Result<&Path> {
        Ok(&self.node(n)?.log)
    }

    /// The binaries the cluster runs; [`PgBinaries::path`] gives psql, pgbench, pg_rewind...
    pub fn bin(&self) -> &PgBinaries {
        &self.bin
    }

    /// Password of the `postgres` superuser.
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// A libpq key/value connection string for node `n` over TCP, database `postgres`, e.g.
    /// `host=127.0.0.1 port=54321 user=app password=app dbname=postgres`. Values are quoted
    /// when needed.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`], or [`ClusterError::ShutDown`].
    pub fn conninfo(&self, n: usize, user: &str, password: Option<&str>) -> Result<String> {
        let port = self.port(n)?;
        let mut text = format!("host=127.0.0.1 port={port} user={}", quote_conninfo(user));
        if let Some(password) = password {
            text.push_str(" password=");
            text.push_str(&quote_conninfo(password));
        }
        text.push_str(" dbname=");
        text.push_str(DATABASE);
        Ok(text)
    }

    fn node(&self, n: usize) -> Result<&Node> {
        self.check_live()?;
        self.nodes.get(n).ok_or(ClusterError::NoSuchNode {
            node: n,
            count: self.nodes.len(),
        })
    }

    fn check_live(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            Err(ClusterError::ShutDown)
        } else {
            Ok(())
        }
    }

    fn state(&self) -> MutexGuard<'_, Vec<NodeState>> {
        // Poisoning only means another thread panicked mid-update of plain data; the data is
        // still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Calls `check` every [`POLL_INTERVAL`] until it yields a value, failing with
/// [`ClusterError::Timeout`] once `timeout` has passed. `check` runs at least once.
fn poll_until<T>(
    what: impl FnOnce() -> String,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if started.elapsed() >= timeout {
            return Err(ClusterError::Timeout {
                what: what(),
                after: timeout,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

// === shutdown ===

impl LocalCluster {
    /// Stops every node (`pg_ctl stop -m immediate`), removes the base directory and releases
    /// the guardian. Idempotent; `Drop` calls it. Afterwards node operations fail with
    /// [`ClusterError::ShutDown`].
    ///
    /// # Errors
    /// The first failure; the remaining steps still run.
    pub fn shutdown(&self) -> Result<()> {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut first_error = None;
        for node in &self.nodes {
            // Any node that ever started has (or had) a pid file; a stale one makes pg_ctl
            // report "no server running", which is harmless.
            if !node.data.join("postmaster.pid").exists() {
                continue;
            }
            let mut cmd = self.pg_ctl();
            cmd.arg("stop")
                .arg("-D")
                .arg(&node.data)
                .args(["-m", "immediate", "-w", "-t"])
                .arg(PG_CTL_WAIT_SECS.to_string());
            if let Err(e) = process::run_ok(&mut cmd, COMMAND_TIMEOUT) {
                tracing::warn!(node = %node.name, error = %e, "stopping node failed");
                first_error.get_or_insert(e);
            }
        }
        // Even if a server would not stop: a postmaster whose lock file vanished shuts itself
        // down, so removing the directory is still right.
        if let Err(e) = fs::remove_dir_all(&self.base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                first_error.get_or_insert(ClusterError::Io {
                    context: format!("removing {}", self.base.display()),
                    source: e,
                });
            }
        }
        let guardian = self
            .guardian
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(guardian) = guardian {
            guardian.dismiss(Duration::from_secs(10));
        }
        tracing::debug!(base = %self.base.display(), "local cluster shut down");
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(base = %self.base.display(), error = %e, "local cluster cleanup failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_clash_is_recognised_in_server_log() {
        let log = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                   WARNING:  could not create listen socket for \"127.0.0.1\"\n\
                   FATAL:  could not create any TCP/IP sockets";
        assert!(is_port_clash(log));
        assert!(!is_port_clash("FATAL:  data directory has wrong ownership"));
    }

    #[test]
    fn options_are_validated() {
        let bad = [
            ClusterOptions {
                superuser_password: String::new(),
                ..ClusterOptions::default()
            },
            ClusterOptions {
                superuser_password: "a\nb".to_owned(),
                ..ClusterOptions::default()
            },
            ClusterOptions {
                max_connections: 0,
                ..ClusterOptions::default()
            },
            ClusterOptions {
                extra_conf: vec!["a = 1\nb = 2".to_owned()],
                ..ClusterOptions::default()
            },
        ];
        for opts in bad {
            assert!(matches!(
                validate_options(&opts),
                Err(ClusterError::Invalid(_))
            ));
        }
        assert!(validate_options(&ClusterOptions::default()).is_ok());
    }
}
