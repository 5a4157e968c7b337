//! Typed, validated configuration: `proxy.toml` plus `CAUSEWAY_*` environment overrides.
//!
//! Loading is strict and reports everything at once. The document is parsed into a tree that
//! remembers where every key was written, the environment overrides are laid over it, and the
//! tree is then walked against the schema by hand: every unknown key, wrong type, invalid value
//! and inconsistent combination becomes one [`Problem`] with the file line and the full key path.
//! `causeway check` prints them all; [`Config::load`] fails with all of them.
//!
//! Keys that are accepted but belong to features that are not built yet are listed once, in
//! [`NOT_YET_IMPLEMENTED`]; a file that sets one of them explicitly loads fine and gets a
//! [`Notice`].
//!
//! Passwords are held in [`Secret`], whose `Debug` and `Display` print `***`; problems about a
//! password name the key, never the value.
//!
//! The meaning and default of every key is documented in `docs/CONFIG.md` and in the example
//! `proxy.toml` at the repository root.

mod raw;
mod values;
mod walk;

#[cfg(test)]
mod consumers;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A password or password verifier. `Debug` and `Display` print `***`, so a `Secret` can sit in
/// any struct that gets logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for the code that actually authenticates. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An enum whose values are written as fixed words in `proxy.toml`.
pub(crate) trait Keyword: Copy + 'static {
    /// Every accepted word and the value it stands for.
    const CHOICES: &'static [(&'static str, Self)];
}

/// Declares a public enum spelled as fixed words in `proxy.toml`, with `as_str`, `Display` and
/// the [`Keyword`] table the loader uses.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// How this value is written in `proxy.toml`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $word, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Keyword for $name {
            const CHOICES: &'static [(&'static str, Self)] = &[ $( ($word, Self::$variant), )+ ];
        }
    };
}

keyword_enum! {
    /// When a server connection goes back to the pool.
    pub enum PoolMode {
        /// After the transaction ends (`ReadyForQuery` with status idle).
        Transaction = "transaction",
        /// When the client disconnects.
        Session = "session",
    }
}

keyword_enum! {
    /// Who decides each node's role (`[topology] source`).
    pub enum TopologySource {
        /// The nodes themselves: `pg_is_in_recovery()` and timelines, probed directly.
        Probe = "probe",
        /// Patroni's `GET /cluster` (its DCS leader), with the nodes still probed for positions.
        Patroni = "patroni",
    }
}

keyword_enum! {
    /// How log lines are written to stderr.
    pub enum LogFormat {
        /// One human-readable line per event (colour only when stderr is a terminal).
        Text = "text",
        /// One JSON object per line, for log shippers.
        Json = "json",
    }
}

keyword_enum! {
    /// What a client may observe after its own writes.
    pub enum Consistency {
        /// Read-your-writes: after a write, the session's reads go to the primary or to a
        /// standby that has replayed that write.
        Session = "session",
        /// Reads may go to any standby within the lag limits, even one that has not replayed
        /// the session's latest write yet.
        Eventual = "eventual",
    }
}

keyword_enum! {
    /// Where transactions started with `BEGIN READ ONLY` (or `SET TRANSACTION READ ONLY`) run.
    pub enum ReadOnlyTransactions {
        /// On a standby, like plain reads.
        Standby = "standby",
        /// On the primary.
        Primary = "primary",
    }
}

keyword_enum! {
    /// Whether the primary serves plain reads.
    pub enum PrimaryReads {
        /// Never: a plain read with no eligible standby fails (57P03).
        Never = "never",
        /// Only when no standby is eligible and `routing.fallback` is `"primary"`.
        Fallback = "fallback",
        /// Always: the primary takes part in read balancing with its weight.
        Always = "always",
    }
}

keyword_enum! {
    /// How reads are spread over the eligible nodes.
    pub enum Balance {
        /// The node with the fewest statements in flight, relative to its weight.
        LeastOutstanding = "least_outstanding",
        /// Weighted round robin.
        RoundRobin = "round_robin",
        /// Weighted random choice.
        Random = "random",
    }
}

keyword_enum! {
    /// What happens to a statement that must run on a standby when no standby is eligible.
    pub enum Fallback {
        /// Run it on the primary.
        Primary = "primary",
        /// Fail it with an error to the client.
        Error = "error",
    }
}

keyword_enum! {
    /// How clients authenticate to the proxy.
    pub enum AuthMethod {
        /// SCRAM-SHA-256 (needs a plain password or a SCRAM verifier).
        ScramSha256 = "scram-sha-256",
        /// md5 (needs a plain password or an md5 hash).
        Md5 = "md5",
        /// No password at all; only when written explicitly.
        Trust = "trust",
        /// No password: the client's TLS certificate (verified against `client_tls.ca`) is
        /// the credential, and its CN must be the user's name (PostgreSQL's `cert`).
        Cert = "cert",
    }
}

keyword_enum! {
    /// Whether clients may, or must, encrypt their connection to the proxy.
    pub enum ClientTlsMode {
        /// No TLS: an SSLRequest is answered 'N' (the default).
        Disable = "disable",
        /// TLS for clients that ask for it; plaintext clients are served too.
        Allow = "allow",
        /// TLS only: a plaintext StartupMessage gets FATAL 28000.
        Require = "require",
    }
}

keyword_enum! {
    /// What a client certificate must prove when `client_tls.ca` is set (PostgreSQL's
    /// `clientcert` option).
    pub enum ClientCertMode {
        /// The certificate must chain to `client_tls.ca` (the default).
        VerifyCa = "verify-ca",
        /// It must chain, and its CN must be the user name in the StartupMessage.
        VerifyFull = "verify-full",
    }
}

keyword_enum! {
    /// Whether, and how strictly, connections to PostgreSQL servers use TLS (libpq's
    /// `sslmode` names).
    pub enum ServerTlsMode {
        /// Never: connections are plaintext.
        Disable = "disable",
        /// TLS when the server offers it, plaintext when it answers 'N' (the default).
        Prefer = "prefer",
        /// TLS or no connection; the certificate is not checked.
        Require = "require",
        /// TLS, and the certificate must chain to `server_tls.ca`.
        VerifyCa = "verify-ca",
        /// As `verify-ca`, and the certificate must name the node's host.
        VerifyFull = "verify-full",
    }
}

keyword_enum! {
    /// Where a user's or database's statements go by default.
    pub enum Route {
        /// Decide per statement: writes and transactions to the primary, reads to standbys.
        Auto = "auto",
        /// Everything to the primary.
        Primary = "primary",
        /// Everything to standbys (a read-only workload).
        Standby = "standby",
    }
}

keyword_enum! {
    /// An operator's hint about a node's role; what the server reports always wins.
    pub enum RoleHint {
        /// Expected to be the primary.
        Primary = "primary",
        /// Expected to be a hot standby.
        Standby = "standby",
    }
}

/// The whole configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[proxy]`: the client-facing side.
    pub proxy: ProxyConfig,
    /// `[pool]`: server connections.
    pub pool: PoolConfig,
    /// `[routing]`: where statements go.
    pub routing: RoutingConfig,
    /// `[monitor]`: the topology watcher's account.
    pub monitor: MonitorConfig,
    /// `[client_tls]`: TLS between applications and the proxy.
    pub client_tls: ClientTlsConfig,
    /// `[server_tls]`: TLS between the proxy and PostgreSQL (pools, watcher, catalog).
    pub server_tls: ServerTlsConfig,
    /// `[topology]`: where roles come from.
    pub topology: TopologyConfig,
    /// `[[nodes]]`: the PostgreSQL servers; never empty.
    pub nodes: Vec<NodeConfig>,
    /// `[[users]]`: who may connect; names are unique.
    pub users: Vec<UserConfig>,
    /// `[[databases]]`: per-database overrides; names are unique.
    pub databases: Vec<DatabaseConfig>,
    /// `[auth_query]`: users not in `[[users]]` looked up on the primary; `None` when the
    /// table is absent (only configured users may log in).
    pub auth_query: Option<AuthQueryConfig>,
}

/// `[proxy]`: the client-facing side.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Where clients connect (`listen`, default `127.0.0.1:6432`).
    pub listen: SocketAddr,
    /// Where `/metrics`, `/live`, `/ready` and `/topology` are served (`http_listen`); `None`
    /// (the default) serves nothing.
    pub http_listen: Option<SocketAddr>,
    /// Default pool mode (`pool_mode`, default transaction).
    pub pool_mode: PoolMode,
    /// Most client connections at once (`max_client_connections`, default 10000); counted
    /// from authentication on.
    pub max_client_connections: usize,
    /// Most connections at once that have not finished startup and authentication
    /// (`max_startup_connections`, default 1000); further ones are refused with 53300.
    pub max_startup_connections: usize,
    /// Largest message accepted from an authenticated client, in bytes, header included
    /// (`max_message_size`, default 64 MiB); larger ones get FATAL 08P01.
    pub max_message_size: usize,
    /// Time a client has to finish startup and authentication (`startup_timeout`, default 10s).
    pub startup_timeout: Duration,
    /// Idle clients are disconnected after this long (`client_idle_timeout`); `None` (the
    /// default, written `"0"`) never disconnects them.
    pub client_idle_timeout: Option<Duration>,
    /// Clients idle inside a transaction this long are disconnected with 25P03 and their
    /// transaction rolled back (`idle_transaction_timeout`); `None` (the default, `"0"`) never.
    pub idle_transaction_timeout: Option<Duration>,
    /// Idle time before TCP keepalive probes on client and server sockets
    /// (`tcp_keepalive`, default 60s); `None` (`"0"`) leaves keepalive off.
    pub tcp_keepalive: Option<Duration>,
    /// How long a graceful shutdown waits for clients to finish (`shutdown_timeout`, default
    /// 30s); zero closes everything at once.
    pub shutdown_timeout: Duration,
    /// Users allowed on the admin console (`admin_users`, default none); each is a `[[users]]`
    /// entry.
    pub admin_users: Vec<String>,
    /// Set `TCP_NODELAY` on client and server sockets (`tcp_nodelay`, default true).
    pub tcp_nodelay: bool,
    /// What is logged (`log_level`, default `info`): a `tracing` filter such as `info` or
    /// `warn,causeway::topology=debug`; `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// How log lines are written (`log_format`, default text).
    pub log_format: LogFormat,
    /// Threads that run sessions (`worker_threads`): 0 (the default) is one per CPU core; 1 is
    /// a single-threaded event loop.
    pub worker_threads: usize,
}

/// `[pool]`: server connections.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Most server connections to one node, over all pools (`max_server_connections`, default
    /// 100).
    pub max_server_connections: usize,
    /// Most server connections in one (node, database, user) pool (`pool_size`, default 20);
    /// at most `max_server_connections`.
    pub pool_size: usize,
    /// Idle connections each pool keeps open (`min_idle`, default 0); at most `pool_size`.
    pub min_idle: usize,
    /// Idle server connections are closed after this long (`server_idle_timeout`, default
    /// 10m); `None` (written `"0"`) keeps them.
    pub server_idle_timeout: Option<Duration>,
    /// Server connections are closed when returned after this age (`server_lifetime`, default
    /// 1h); `None` (written `"0"`) lets them live forever.
    pub server_lifetime: Option<Duration>,
    /// How long a client waits for a server connection from a full pool before it gets an
    /// error (`pool_timeout`, default 30s); `None` (written `"0"`) waits indefinitely.
    pub pool_timeout: Option<Duration>,
    /// Time allowed to connect and authenticate to a server (`server_connect_timeout`, default
    /// 5s).
    pub server_connect_timeout: Duration,
    /// Sent on a server connection before another client gets it (`server_reset_query`, default
    /// `DISCARD ALL`); `None` (written `""`) sends nothing.
    pub server_reset_query: Option<String>,
}

/// `[routing]`: where statements go.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingConfig {
    /// How often each node's role and replay position are checked (`check_interval`, default
    /// 250ms, never zero).
    pub check_interval: Duration,
    /// Standbys further behind the primary than this many bytes of WAL get no reads
    /// (`max_lag_bytes`, default 16 MiB); `None` (written `0`) sets no byte limit.
    pub max_lag_bytes: Option<u64>,
    /// Standbys further behind than this get no reads (`max_lag`, default 1s); `None` (written
    /// `"0"`) sets no time limit.
    pub max_lag: Option<Duration>,
    /// Default consistency (`consistency`, default session).
    pub consistency: Consistency,
    /// Where read-only transactions run (`read_only_transactions`, default standby).
    pub read_only_transactions: ReadOnlyTransactions,
    /// Whether the primary serves plain reads (`primary_reads`, default fallback).
    pub primary_reads: PrimaryReads,
    /// How reads are spread (`balance`, default least_outstanding).
    pub balance: Balance,
    /// How long a statement that needs the primary waits for one during a failover
    /// (`primary_wait`, default 10s); zero fails at once.
    pub primary_wait: Duration,
    /// What happens when a statement must run on a standby and none is eligible (`fallback`,
    /// default primary).
    pub fallback: Fallback,
    /// With session consistency, how long a read after a write may wait for a standby to replay
    /// that write before it goes to the primary instead (`causal_wait`, default 0ms).
    pub causal_wait: Duration,
    /// Consecutive checks that must agree before a node flips healthy/unhealthy or within/over
    /// the lag limits (`health_threshold`, default 2).
    pub health_threshold: u32,
    /// A client connecting to database `<db><suffix>` reads from standbys only
    /// (`readonly_database_suffix`, default `_ro`); `None` (written `""`) turns this off.
    pub readonly_database_suffix: Option<String>,
    /// Functions whose calls make a statement a write (`write_functions`, default none).
    pub write_functions: Vec<String>,
    /// Functions that are safe on a standby whatever their volatility (`read_functions`,
    /// default none).
    pub read_functions: Vec<String>,
    /// How often function volatility is reloaded from the primary (`volatility_refresh`,
    /// default 60s); `None` (written `"0"`) loads it once.
    pub volatility_refresh: Option<Duration>,
}

/// `[monitor]`: the account the topology watcher uses on every node.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorConfig {
    /// User name (`user`, required; `CAUSEWAY_MONITOR_USER`).
    pub user: String,
    /// Password, plain text (`password`; `CAUSEWAY_MONITOR_PASSWORD`); `None` when the nodes
    /// trust the monitor.
    pub password: Option<Secret>,
    /// Database the watcher connects to (`database`, default `postgres`).
    pub database: String,
    /// Time allowed to connect and authenticate (`connect_timeout`, default 1s).
    pub connect_timeout: Duration,
    /// Time allowed for one check query (`query_timeout`, default 1s).
    pub query_timeout: Duration,
}

/// `[auth_query]`: how users that are not in `[[users]]` are looked up on the primary
/// (PgBouncer's `auth_user` + `auth_query`).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthQueryConfig {
    /// The role the lookup logs in as (`user`, required); never the client's.
    pub user: String,
    /// Its password, plain text (`password`); `None` when the servers trust it.
    pub password: Option<Secret>,
    /// The query; `$1` is the user name, and it returns the name and the stored secret
    /// (`query`, default [`DEFAULT_AUTH_QUERY`]).
    pub query: String,
    /// The database the lookup connects to (`database`, default `postgres`).
    pub database: String,
    /// Most users remembered, found and not found each (`cache_size`, default 1000).
    pub cache_size: usize,
    /// How long a user found is trusted before the next login looks it up again
    /// (`cache_ttl`, default 60s; `"0"` looks up every login).
    pub cache_ttl: Duration,
    /// How long a name not found stays not found without a new lookup (`negative_ttl`,
    /// default 5s).
    pub negative_ttl: Duration,
}

/// `auth_query.query`'s default: PgBouncer's, over `pg_shadow` (which only superusers can
/// read; docs/SECURITY.md recommends a SECURITY DEFINER function instead).
pub const DEFAULT_AUTH_QUERY: &str =
    "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1";

/// `[topology]`: where the watcher takes each node's role from.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyConfig {
    /// `source`: `"probe"` (default) or `"patroni"`.
    pub source: TopologySource,
    /// `patroni`: Patroni REST API base URLs (`http://host:port`), all asked each check (the
    /// answer whose leader has the newest timeline wins); required (non-empty) when
    /// `source = "patroni"`.
    pub patroni: Vec<String>,
}

/// `[[nodes]]`: one PostgreSQL server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Share of reads relative to other nodes (`weight`, default 1); 0 never receives reads.
    pub weight: u32,
    /// The operator's expectation; the server's own answer wins (`role`).
    pub role: Option<RoleHint>,
    /// A label for logs and metrics (`name`).
    pub name: Option<String>,
    /// `tls_mode`, `tls_ca`, `tls_server_name`: this node's overrides of `[server_tls]`.
    pub tls: NodeTlsConfig,
}

/// One node's overrides of `[server_tls]`, for nodes that differ (another CA, TLS off on a
/// local node, an address whose certificate names a host). Unset keys take `[server_tls]`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTlsConfig {
    /// `tls_mode`: overrides `server_tls.mode`.
    pub mode: Option<ServerTlsMode>,
    /// `tls_ca`: overrides `server_tls.ca`.
    pub ca: Option<PathBuf>,
    /// `tls_server_name`: the name `verify-full` checks the certificate against (and sends
    /// as SNI) instead of the host in `address`.
    pub server_name: Option<String>,
}

impl NodeTlsConfig {
    /// Whether any key is set (the node then gets TLS settings of its own).
    pub fn is_set(&self) -> bool {
        self.mode.is_some() || self.ca.is_some() || self.server_name.is_some()
    }
}

impl NodeConfig {
    /// `host:port`, with brackets around an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `[[users]]`: one user who may connect through the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct UserConfig {
    /// User name, as clients send it and as the proxy logs in to PostgreSQL.
    pub name: String,
    /// What clients must prove they know: a plain password, a `SCRAM-SHA-256$...` verifier or
    /// an `md5<hex>` hash. `None` only with `auth = "trust"`.
    pub password: Option<Secret>,
    /// Plain password the proxy uses towards PostgreSQL. After loading it is set whenever
    /// `password` is plain text (it defaults to `password`); `None` means the servers must let
    /// this user in without a password.
    pub server_password: Option<Secret>,
    /// How clients authenticate (`auth`, default scram-sha-256).
    pub auth: AuthMethod,
    /// Most client connections this user may have at once (`max_connections`); `None` is no
    /// per-user limit.
    pub max_connections: Option<usize>,
    /// Overrides `proxy.pool_mode` for this user.
    pub pool_mode: Option<PoolMode>,
    /// Overrides the default routing for this user.
    pub default_route: Option<Route>,
    /// Overrides `routing.consistency` for this user.
    pub consistency: Option<Consistency>,
    /// `require_tls`: this user never logs in over a plaintext connection (28000 before any
    /// password exchange), whatever `client_tls.mode` allows for others.
    pub require_tls: bool,
}

/// `[[databases]]`: overrides for one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// Database name as clients send it.
    pub name: String,
    /// Overrides the default routing for this database.
    pub default_route: Option<Route>,
    /// Overrides `routing.consistency` for this database.
    pub consistency: Option<Consistency>,
}

/// `[client_tls]`: the proxy's TLS towards its clients. Paths are as written (relative ones
/// are relative to the proxy's working directory); the files are read when settings are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// `disable`, `allow` or `require`.
    pub mode: ClientTlsMode,
    /// PEM certificate chain, leaf first (required unless the mode is `disable`).
    pub cert: Option<PathBuf>,
    /// PEM private key of the leaf certificate.
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to; when set, every TLS client
    /// must present one.
    pub ca: Option<PathBuf>,
    /// `client_cert`: `verify-ca` (default) or `verify-full` (the certificate's CN must be
    /// the user name). Meaningful only with `ca`.
    pub client_cert: ClientCertMode,
}

/// `[server_tls]`: the proxy's TLS towards PostgreSQL servers. The CA file is read when
/// settings are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsConfig {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub mode: ServerTlsMode,
    /// PEM CA certificates the servers' certificates must chain to (required by the
    /// `verify-*` modes).
    pub ca: Option<PathBuf>,
    /// Send a password in clear text (the server's `password` method) over a connection that
    /// is not TLS; off by default, as libpq's `require_auth` can refuse it.
    pub allow_cleartext_without_tls: bool,
}

/// A key that is accepted but belongs to a feature that is not built yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unimplemented {
    /// Key path without array indices (`users.consistency`); a table name (`databases`) covers
    /// every key in it.
    pub key: &'static str,
    /// Only this value is unimplemented (`proxy.pool_mode = "transaction"`); `None` means any.
    pub value: Option<&'static str>,
    /// What is missing, completing "... is accepted but has no effect yet: ".
    pub note: &'static str,
}

/// Keys that load but do nothing yet. Shrink this list as features land; the `consumers` test
/// fails for a key that is neither on it nor read outside this module.
pub const NOT_YET_IMPLEMENTED: &[Unimplemented] = &[
    Unimplemented {
        key: "nodes.role",
        value: None,
        note: "roles come only from what each server reports",
    },
    Unimplemented {
        key: "nodes.name",
        value: None,
        note: "logs, metrics and /topology name nodes by address",
    },
];

/// An environment variable that overrides one key, applied after the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvOverride {
    /// The variable.
    pub var: &'static str,
    /// The key it replaces.
    pub key: &'static str,
    /// The key takes an integer: a variable that reads as one is passed on as one.
    pub integer: bool,
}

/// Every environment override. An unset or empty variable changes nothing.
/// `CAUSEWAY_NODES` is a comma-separated `host:port` list that replaces all `[[nodes]]`.
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "CAUSEWAY_LISTEN",
        key: "proxy.listen",
        integer: false,
    },
    EnvOverride {
        var: "CAUSEWAY_HTTP_LISTEN",
        key: "proxy.http_listen",
        integer: false,
    },
    EnvOverride {
        var: "CAUSEWAY_POOL_MODE",
        key: "proxy.pool_mode",
        integer: false,
    },
    EnvOverride {
        var: "CAUSEWAY_WORKER_THREADS",
        key: "proxy.worker_threads",
        integer: true,
    },
    EnvOverride {
        var: "CAUSEWAY_MONITOR_USER",
        key: "monitor.user",
        integer: false,
    },
    EnvOverride {
        var: "CAUSEWAY_MONITOR_PASSWORD",
        key: "monitor.password",
        integer: false,
    },
    EnvOverride {
        var: "CAUSEWAY_NODES",
        key: "nodes",
        integer: false,
    },
];

/// A key set (in the file or the environment) that has no effect yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The key as listed in [`NOT_YET_IMPLEMENTED`], e.g. `routing.consistency`.
    pub key: &'static str,
    /// The value the notice is about, for value-specific entries.
    pub value: Option<&'static str>,
    /// Line of the first place the key is set; `None` when set by the environment.
    pub line: Option<usize>,
    /// What is missing.
    pub note: &'static str,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(value) => write!(f, "`{} = \"{}\"`", self.key, value)?,
            None => write!(f, "`{}`", self.key)?,
        }
        write!(f, " is accepted but has no effect yet: {}", self.note)
    }
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file; `None` for values from the environment, defaults and missing
    /// keys.
    pub line: Option<usize>,
    /// Full key path, e.g. `routing.max_lag` or `users[1].password`; empty for syntax errors.
    pub key: String,
    /// What is wrong. Never contains a secret.
    pub message: String,
}

impl Problem {
    /// `origin:line: key: message`, the form `causeway check` prints.
    pub fn render(&self, origin: &str) -> String {
        let mut out = String::from(origin);
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(": ");
        out.push_str(&self.to_string());
        out
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

fn render_problems(origin: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.render(origin))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration. Displays one problem per line, as
    /// `origin:line: key: message`.
    #[error("{}", render_problems(.origin, .problems))]
    Invalid {
        /// The file name (or whatever name the text was loaded under).
        origin: String,
        /// Every problem found, in line order; the ones without a line come last.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found; empty for [`ConfigError::Read`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// A loaded configuration and what the operator should know about it.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Keys that are set but have no effect yet, in [`NOT_YET_IMPLEMENTED`] order.
    pub notices: Vec<Notice>,
}

impl Config {
    /// Loads `path` and applies the process environment's `CAUSEWAY_*` overrides.
    pub fn load(path: impl AsRef<Path>) -> Result<Loaded, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        Self::from_toml(&text, &origin, &|var| std::env::var(var).ok())
    }

    /// Parses and validates `text`, applying the overrides that `env` returns (pass `&|_| None`
    /// for none). `origin` names the text in problems, e.g. `proxy.toml`.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let invalid = |mut problems: Vec<Problem>| {
            problems.sort_by_key(|p| (p.line.is_none(), p.line));
            ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            }
        };
        let lines = raw::Lines::new(text);
        let mut doc = raw::parse(text).map_err(|(span, message)| {
            invalid(vec![Problem {
                line: span.map(|s| lines.line_of(s.start)),
                key: String::new(),
                message,
            }])
        })?;
        raw::overlay_env(&mut doc, env);
        let mut walker = walk::Walker::new(&lines);
        let config = walker.walk(doc);
        if !walker.problems.is_empty() {
            return Err(invalid(walker.problems));
        }
        let notices = walker.notices();
        Ok(Loaded { config, notices })
    }

    /// The `[[users]]` entry called `name`.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The `[[databases]]` entry called `name`.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }
}
