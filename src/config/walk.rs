//! Walks the parsed document against the schema, building the typed [`Config`] and collecting
//! every problem on the way: unknown keys, wrong types, invalid values, then the checks that
//! involve several keys.
//!
//! Invalid or missing values are replaced by their defaults (or skipped) so the walk can go on;
//! the caller discards the result when there is any problem.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{At, Entry, Lines, Raw};
use super::values::{
    check_scram_verifier, edit_distance, parse_duration, parse_host_port, password_kind,
    PasswordKind,
};
use super::{
    AuthMethod, AuthQueryConfig, Balance, ClientCertMode, ClientTlsConfig, ClientTlsMode, Config,
    Consistency, DatabaseConfig, Fallback, Keyword, LogFormat, MonitorConfig, NodeConfig,
    NodeTlsConfig, PoolConfig, PoolMode, PrimaryReads, Problem, ProxyConfig, ReadOnlyTransactions,
    RoutingConfig, Secret, ServerTlsConfig, ServerTlsMode, TopologyConfig, TopologySource,
    UserConfig,
};

/// Every table and the keys it accepts: the one schema both the walk and the "did you mean"
/// suggestions use.
pub(crate) const SCHEMA: &[(&str, &[&str])] = &[
    (
        "proxy",
        &[
            "listen",
            "http_listen",
            "pool_mode",
            "max_client_connections",
            "max_startup_connections",
            "max_message_size",
            "startup_timeout",
            "client_idle_timeout",
            "idle_transaction_timeout",
            "tcp_keepalive",
            "shutdown_timeout",
            "admin_users",
            "tcp_nodelay",
            "worker_threads",
            "log_level",
            "log_format",
        ],
    ),
    (
        "pool",
        &[
            "max_server_connections",
            "pool_size",
            "min_idle",
            "server_idle_timeout",
            "server_lifetime",
            "pool_timeout",
            "server_connect_timeout",
            "server_reset_query",
        ],
    ),
    (
        "routing",
        &[
            "check_interval",
            "max_lag_bytes",
            "max_lag",
            "consistency",
            "read_only_transactions",
            "primary_reads",
            "balance",
            "primary_wait",
            "fallback",
            "causal_wait",
            "health_threshold",
            "readonly_database_suffix",
            "write_functions",
            "read_functions",
            "volatility_refresh",
        ],
    ),
    (
        "monitor",
        &[
            "user",
            "password",
            "database",
            "connect_timeout",
            "query_timeout",
        ],
    ),
    ("client_tls", &["mode", "cert", "key", "ca", "client_cert"]),
    ("server_tls", &["mode", "ca", "allow_cleartext_without_tls"]),
    ("topology", &["source", "patroni"]),
    (
        "nodes",
        &[
            "address",
            "weight",
            "role",
            "name",
            "tls_mode",
            "tls_ca",
            "tls_server_name",
        ],
    ),
    (
        "users",
        &[
            "name",
            "password",
            "server_password",
            "auth",
            "max_connections",
            "pool_mode",
            "default_route",
            "consistency",
            "require_tls",
        ],
    ),
    ("databases", &["name", "default_route", "consistency"]),
    (
        "auth_query",
        &[
            "user",
            "password",
            "query",
            "database",
            "cache_size",
            "cache_ttl",
            "negative_ttl",
        ],
    ),
];

mod checks;

const TOP_LEVEL: &[&str] = &[
    "proxy",
    "pool",
    "routing",
    "monitor",
    "client_tls",
    "server_tls",
    "topology",
    "nodes",
    "users",
    "databases",
    "auth_query",
];

fn keys_of(table: &str) -> &'static [&'static str] {
    SCHEMA
        .iter()
        .find(|(name, _)| *name == table)
        .map_or(&[], |(_, keys)| keys)
}

/// Whether zero is a meaningful duration for a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// Zero is allowed.
    Allowed,
    /// Zero makes no sense; it is a problem.
    Rejected,
}

/// A key that was set, in the file or by the environment.
pub(crate) struct SetKey {
    /// Full path, e.g. `users[1].password`.
    path: String,
    /// Path without indices, e.g. `users.password`.
    generic: String,
    /// Where.
    at: At,
    /// For keyword keys, the word written.
    word: Option<&'static str>,
}

/// A table being walked: what is left of it, and where it is.
struct Section {
    path: String,
    generic: String,
    at: At,
    entries: Vec<Entry>,
    known: &'static [&'static str],
}

/// One key taken out of a section.
struct Field {
    path: String,
    at: At,
    value: Raw,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Collects problems and the keys that were set while building a [`Config`].
pub(crate) struct Walker<'l> {
    lines: &'l Lines,
    /// Every problem found so far.
    pub(crate) problems: Vec<Problem>,
    set: Vec<SetKey>,
}

impl<'l> Walker<'l> {
    /// A walker reporting lines of the text `lines` indexes.
    pub(crate) fn new(lines: &'l Lines) -> Self {
        Walker {
            lines,
            problems: Vec::new(),
            set: Vec::new(),
        }
    }

    fn line(&self, at: &At) -> Option<usize> {
        match at {
            At::File(span) => Some(self.lines.line_of(span.start)),
            At::Env(_) | At::Nowhere => None,
        }
    }

    fn problem(&mut self, at: &At, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let At::Env(var) = at {
            message = format!("{message} (from {var})");
        }
        self.problems.push(Problem {
            line: self.line(at),
            key: key.to_owned(),
            message,
        });
    }

    /// Whether some problem is about `path` or something inside it.
    fn has_problem(&self, path: &str) -> bool {
        self.problems.iter().any(|p| {
            p.key == path
                || p.key
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }

    /// Where `path` was set; [`At::Nowhere`] if it was not.
    fn at_of(&self, path: &str) -> At {
        self.set
            .iter()
            .find(|k| k.path == path)
            .map_or(At::Nowhere, |k| k.at.clone())
    }

    /// Takes `key` out of `section`, remembering that it was set.
    fn take(&mut self, section: &mut Section, key: &str) -> Option<Field> {
        debug_assert!(section.known.contains(&key), "{key} missing from SCHEMA");
        let index = section.entries.iter().position(|e| e.key == key)?;
        let entry = section.entries.remove(index);
        let path = join(&section.path, key);
        self.set.push(SetKey {
            path: path.clone(),
            generic: join(&section.generic, key),
            at: entry.at.clone(),
            word: None,
        });
        Some(Field {
            path,
            at: entry.at,
            value: entry.value,
        })
    }

    /// Takes `key` and converts it. `convert` returns `Err(None)` for a wrong type (reported
    /// as "expected {expected}") and `Err(Some(message))` for an invalid value.
    fn get<T>(
        &mut self,
        section: &mut Section,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&Raw) -> Result<T, Option<String>>,
    ) -> Option<T> {
        let field = self.take(section, key)?;
        match convert(&field.value) {
            Ok(value) => Some(value),
            Err(None) => {
                let found = field.value.describe();
                self.problem(
                    &field.at,
                    &field.path,
                    format!("expected {expected}, found {found}"),
                );
                None
            }
            Err(Some(message)) => {
                self.problem(&field.at, &field.path, message);
                None
            }
        }
    }

    fn string(&mut self, section: &mut Section, key: &str) -> Option<String> {
        self.get(section, key, "a string", |v| match v {
            Raw::String(s) => Ok(s.clone()),
            _ => Err(None),
        })
    }

    fn name(&mut self, section: &mut Section, key: &str) -> Option<String> {
        self.get(section, key, "a string", |v| match v {
            Raw::String(s) if s.is_empty() => Err(Some("must not be empty".to_owned())),
            Raw::String(s) => Ok(s.clone()),
            _ => Err(None),
        })
    }

    fn boolean(&mut self, section: &mut Section, key: &str) -> Option<bool> {
        self.get(section, key, "true or false", |v| match v {
            Raw::Boolean(b) => Ok(*b),
            _ => Err(None),
        })
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        section: &mut Section,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<T> {
        self.get(section, key, "an integer", |v| match v {
            Raw::Integer(n) if (min..=max).contains(n) => {
                T::try_from(*n).map_err(|_| Some(format!("{n} is too large for this machine")))
            }
            Raw::Integer(n) if *n < min => Err(Some(format!("must be at least {min}, not {n}"))),
            Raw::Integer(n) => Err(Some(format!("must be at most {max}, not {n}"))),
            _ => Err(None),
        })
    }

    fn duration(&mut self, section: &mut Section, key: &str, zero: Zero) -> Option<Duration> {
        self.get(section, key, "a duration string like \"10s\"", |v| {
            let parsed = match v {
                Raw::String(s) => parse_duration(s).map_err(Some)?,
                Raw::Integer(0) => Duration::ZERO,
                Raw::Integer(n) => {
                    return Err(Some(format!(
                        "{n} has no unit; write a string such as \"{n}ms\" or \"{n}s\""
                    )))
                }
                _ => return Err(None),
            };
            if parsed.is_zero() && zero == Zero::Rejected {
                return Err(Some("must be greater than zero".to_owned()));
            }
            Ok(parsed)
        })
    }

    /// A duration where zero means "off" (`None`).
    fn optional_duration(
        &mut self,
        section: &mut Section,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let duration = self
            .duration(section, key, Zero::Allowed)
            .unwrap_or(default);
        (!duration.is_zero()).then_some(duration)
    }

    fn socket_addr(&mut self, section: &mut Section, key: &str) -> Option<SocketAddr> {
        self.get(
            section,
            key,
            "an address string like \"127.0.0.1:6432\"",
            |v| match v {
                Raw::String(s) => s.parse().map_err(|_| {
                    Some(format!(
                        "'{s}' is not an IP address and port, e.g. \"127.0.0.1:6432\", \
                     \"0.0.0.0:6432\" or \"[::]:6432\" (host names are not accepted here)"
                    ))
                }),
                _ => Err(None),
            },
        )
    }

    fn choice<K: Keyword>(&mut self, section: &mut Section, key: &str) -> Option<K> {
        let words = K::CHOICES
            .iter()
            .map(|(w, _)| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let found = self.get(section, key, &format!("one of {words}"), |v| match v {
            Raw::String(s) => K::CHOICES
                .iter()
                .find(|(w, _)| w == s)
                .copied()
                .ok_or_else(|| Some(format!("'{s}' is not one of {words}"))),
            _ => Err(None),
        });
        if let (Some((word, _)), Some(last)) = (found, self.set.last_mut()) {
            last.word = Some(word);
        }
        found.map(|(_, value)| value)
    }

    /// A password. Problems name the key and never quote the value.
    fn secret(&mut self, section: &mut Section, key: &str) -> Option<Secret> {
        self.get(section, key, "a string", |v| match v {
            Raw::String(s) if s.is_empty() => Err(Some(
                "must not be empty; leave the key out instead".to_owned(),
            )),
            Raw::String(s) if password_kind(s) == PasswordKind::ScramVerifier => {
                check_scram_verifier(s).map_err(Some)?;
                Ok(Secret::new(s.clone()))
            }
            Raw::String(s) => Ok(Secret::new(s.clone())),
            _ => Err(None),
        })
    }

    fn string_list(&mut self, section: &mut Section, key: &str) -> Option<Vec<String>> {
        let field = self.take(section, key)?;
        let Raw::Array(items) = field.value else {
            let found = field.value.describe();
            self.problem(
                &field.at,
                &field.path,
                format!("expected an array of strings, found {found}"),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, (at, item)) in items.into_iter().enumerate() {
            let path = format!("{}[{i}]", field.path);
            match item {
                Raw::String(s) if s.is_empty() => self.problem(&at, &path, "must not be empty"),
                Raw::String(s) if out.contains(&s) => {
                    self.problem(&at, &path, format!("'{s}' is listed twice"))
                }
                Raw::String(s) => out.push(s),
                other => {
                    let found = other.describe();
                    self.problem(&at, &path, format!("expected a string, found {found}"))
                }
            }
        }
        Some(out)
    }

    /// The table `key` of `parent`; empty if absent or not a table (a problem).
    fn table(&mut self, parent: &mut Section, key: &'static str) -> Section {
        let path = join(&parent.path, key);
        let generic = join(&parent.generic, key);
        let known = keys_of(key);
        let (at, entries) = match self.take(parent, key) {
            None => (At::Nowhere, Vec::new()),
            Some(Field {
                value: Raw::Table(entries),
                at,
                ..
            }) => (at, entries),
            Some(field) => {
                let found = field.value.describe();
                self.problem(
                    &field.at,
                    &path,
                    format!("expected a table ([{key}]), found {found}"),
                );
                (field.at, Vec::new())
            }
        };
        Section {
            path,
            generic,
            at,
            entries,
            known,
        }
    }

    /// The array of tables `key` of `parent`; elements that are not tables are problems.
    fn tables(&mut self, parent: &mut Section, key: &'static str) -> Vec<Section> {
        let generic = join(&parent.generic, key);
        let known = keys_of(key);
        let Some(field) = self.take(parent, key) else {
            return Vec::new();
        };
        let Raw::Array(items) = field.value else {
            let found = field.value.describe();
            self.problem(
                &field.at,
                &field.path,
                format!("expected an array of tables ([[{key}]]), found {found}"),
            );
            return Vec::new();
        };
        let mut sections = Vec::with_capacity(items.len());
        for (i, (at, item)) in items.into_iter().enumerate() {
            let path = format!("{}[{i}]", field.path);
            match item {
                Raw::Table(entries) => sections.push(Section {
                    path,
                    generic: generic.clone(),
                    at,
                    entries,
                    known,
                }),
                other => {
                    let found = other.describe();
                    self.problem(&at, &path, format!("expected a table, found {found}"));
                }
            }
        }
        sections
    }

    /// Reports whatever is left in `section` as unknown keys.
    fn finish(&mut self, mut section: Section) {
        for entry in std::mem::take(&mut section.entries) {
            let path = join(&section.path, &entry.key);
            let mut message = "unknown key".to_owned();
            if let Some(suggestion) = suggest(&section, &entry.key) {
                message.push_str(&format!(" (did you mean '{suggestion}'?)"));
            }
            self.problem(&entry.at, &path, message);
        }
    }

    /// Builds the configuration from the whole document, collecting problems.
    pub(crate) fn walk(&mut self, doc: Vec<Entry>) -> Config {
        let mut root = Section {
            path: String::new(),
            generic: String::new(),
            at: At::Nowhere,
            entries: doc,
            known: TOP_LEVEL,
        };
        let mut section = self.table(&mut root, "proxy");
        let proxy = self.proxy(&mut section);
        self.finish(section);

        let mut section = self.table(&mut root, "pool");
        let pool = self.pool(&mut section);
        self.finish(section);

        let mut section = self.table(&mut root, "routing");
        let routing = self.routing(&mut section);
        self.finish(section);

        let mut section = self.table(&mut root, "monitor");
        let monitor = self.monitor(&mut section);
        self.finish(section);

        let mut section = self.table(&mut root, "client_tls");
        let client_tls = self.client_tls(&mut section);
        self.finish(section);

        let mut section = self.table(&mut root, "server_tls");
        let server_tls = self.server_tls(&mut section);
        self.finish(section);

        let mut section = self.table(&mut root, "topology");
        let topology = self.topology(&mut section);
        self.finish(section);

        let mut nodes: Vec<NodeConfig> = Vec::new();
        for mut section in self.tables(&mut root, "nodes") {
            if let Some(node) = self.node(&mut section) {
                self.check_duplicate_node(&section.path, &node, &nodes);
                self.check_node_tls(&section, &node, &server_tls);
                nodes.push(node);
            }
            self.finish(section);
        }

        let mut users: Vec<UserConfig> = Vec::new();
        for mut section in self.tables(&mut root, "users") {
            if let Some(mut user) = self.user(&mut section) {
                if users.iter().any(|u| u.name == user.name) {
                    let path = join(&section.path, "name");
                    let at = self.at_of(&path);
                    self.problem(&at, &path, format!("user '{}' is listed twice", user.name));
                }
                self.check_user(&section, &mut user);
                self.check_require_tls(&section, &user, client_tls.mode);
                self.check_cert_user(&section, &user, &client_tls);
                users.push(user);
            }
            self.finish(section);
        }

        let mut databases: Vec<DatabaseConfig> = Vec::new();
        for mut section in self.tables(&mut root, "databases") {
            if let Some(db) = self.database(&mut section) {
                if databases.iter().any(|d| d.name == db.name) {
                    let path = join(&section.path, "name");
                    let at = self.at_of(&path);
                    self.problem(
                        &at,
                        &path,
                        format!("database '{}' is listed twice", db.name),
                    );
                }
                databases.push(db);
            }
            self.finish(section);
        }
        let mut section = self.table(&mut root, "auth_query");
        let auth_query = self.auth_query(&mut section);
        self.finish(section);
        self.finish(root);

        let config = Config {
            proxy,
            pool,
            routing,
            monitor,
            client_tls,
            server_tls,
            topology,
            nodes,
            users,
            databases,
            auth_query,
        };
        self.check(config)
    }

    fn proxy(&mut self, s: &mut Section) -> ProxyConfig {
        ProxyConfig {
            listen: self
                .socket_addr(s, "listen")
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 6432))),
            http_listen: self.socket_addr(s, "http_listen"),
            pool_mode: self.choice(s, "pool_mode").unwrap_or(PoolMode::Transaction),
            max_client_connections: self
                .int(s, "max_client_connections", 1, i64::from(u32::MAX))
                .unwrap_or(10_000),
            max_startup_connections: self
                .int(s, "max_startup_connections", 1, i64::from(u32::MAX))
                .unwrap_or(1000),
            max_message_size: self
                .int(s, "max_message_size", 1024, 1 << 30)
                .unwrap_or(64 << 20),
            startup_timeout: self
                .duration(s, "startup_timeout", Zero::Rejected)
                .unwrap_or(Duration::from_secs(10)),
            client_idle_timeout: self.optional_duration(s, "client_idle_timeout", Duration::ZERO),
            idle_transaction_timeout: self.optional_duration(
                s,
                "idle_transaction_timeout",
                Duration::ZERO,
            ),
            tcp_keepalive: self.optional_duration(s, "tcp_keepalive", Duration::from_secs(60)),
            shutdown_timeout: self
                .duration(s, "shutdown_timeout", Zero::Allowed)
                .unwrap_or(Duration::from_secs(30)),
            admin_users: self.string_list(s, "admin_users").unwrap_or_default(),
            tcp_nodelay: self.boolean(s, "tcp_nodelay").unwrap_or(true),
            worker_threads: self.int(s, "worker_threads", 0, 1024).unwrap_or(0),
            log_level: self
                .name(s, "log_level")
                .unwrap_or_else(|| "info".to_owned()),
            log_format: self.choice(s, "log_format").unwrap_or(LogFormat::Text),
        }
    }

    fn pool(&mut self, s: &mut Section) -> PoolConfig {
        PoolConfig {
            max_server_connections: self
                .int(s, "max_server_connections", 1, i64::from(u32::MAX))
                .unwrap_or(100),
            pool_size: self
                .int(s, "pool_size", 1, i64::from(u32::MAX))
                .unwrap_or(20),
            min_idle: self.int(s, "min_idle", 0, i64::from(u32::MAX)).unwrap_or(0),
            server_idle_timeout: self.optional_duration(
                s,
                "server_idle_timeout",
                Duration::from_secs(600),
            ),
            server_lifetime: self.optional_duration(
                s,
                "server_lifetime",
                Duration::from_secs(3600),
            ),
            pool_timeout: self.optional_duration(s, "pool_timeout", Duration::from_secs(30)),
            server_connect_timeout: self
                .duration(s, "server_connect_timeout", Zero::Rejected)
                .unwrap_or(Duration::from_secs(5)),
            server_reset_query: match self.string(s, "server_reset_query") {
                None => Some("DISCARD ALL".to_owned()),
                Some(q) if q.trim().is_empty() => None,
                Some(q) => Some(q),
            },
        }
    }

    fn routing(&mut self, s: &mut Section) -> RoutingConfig {
        RoutingConfig {
            check_interval: self
                .duration(s, "check_interval", Zero::Rejected)
                .unwrap_or(Duration::from_millis(250)),
            max_lag_bytes: match self.int::<u64>(s, "max_lag_bytes", 0, i64::MAX) {
                None => Some(16 << 20),
                Some(0) => None,
                Some(n) => Some(n),
            },
            max_lag: self.optional_duration(s, "max_lag", Duration::from_secs(1)),
            consistency: self
                .choice(s, "consistency")
                .unwrap_or(Consistency::Session),
            read_only_transactions: self
                .choice(s, "read_only_transactions")
                .unwrap_or(ReadOnlyTransactions::Standby),
            primary_reads: self
                .choice(s, "primary_reads")
                .unwrap_or(PrimaryReads::Fallback),
            balance: self
                .choice(s, "balance")
                .unwrap_or(Balance::LeastOutstanding),
            primary_wait: self
                .duration(s, "primary_wait", Zero::Allowed)
                .unwrap_or(Duration::from_secs(10)),
            fallback: self.choice(s, "fallback").unwrap_or(Fallback::Primary),
            causal_wait: self
                .duration(s, "causal_wait", Zero::Allowed)
                .unwrap_or(Duration::ZERO),
            health_threshold: self.int(s, "health_threshold", 1, 1000).unwrap_or(2),
            readonly_database_suffix: match self.string(s, "readonly_database_suffix") {
                None => Some("_ro".to_owned()),
                Some(suffix) if suffix.is_empty() => None,
                Some(suffix) => Some(suffix),
            },
            write_functions: self.string_list(s, "write_functions").unwrap_or_default(),
            read_functions: self.string_list(s, "read_functions").unwrap_or_default(),
            volatility_refresh: self.optional_duration(
                s,
                "volatility_refresh",
                Duration::from_secs(60),
            ),
        }
    }

    fn monitor(&mut self, s: &mut Section) -> MonitorConfig {
        let user = self.name(s, "user");
        if user.is_none() && !self.has_problem("monitor.user") {
            let at = s.at.clone();
            self.problem(
                &at,
                "monitor.user",
                "missing: the topology watcher needs an account on every node \
                 (set it in [monitor] or with CAUSEWAY_MONITOR_USER)",
            );
        }
        MonitorConfig {
            user: user.unwrap_or_default(),
            password: self.secret(s, "password"),
            database: self
                .name(s, "database")
                .unwrap_or_else(|| "postgres".to_owned()),
            connect_timeout: self
                .duration(s, "connect_timeout", Zero::Rejected)
                .unwrap_or(Duration::from_secs(1)),
            query_timeout: self
                .duration(s, "query_timeout", Zero::Rejected)
                .unwrap_or(Duration::from_secs(1)),
        }
    }

    /// `[topology]`: `source = "patroni"` needs at least one `http://host:port` URL.
    fn topology(&mut self, s: &mut Section) -> TopologyConfig {
        let source = self.choice(s, "source").unwrap_or(TopologySource::Probe);
        let patroni = self.string_list(s, "patroni").unwrap_or_default();
        for (i, url) in patroni.iter().enumerate() {
            let rest = url.strip_prefix("http://").unwrap_or("");
            let authority = rest.split('/').next().unwrap_or("");
            if authority
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                let path = format!("topology.patroni[{i}]");
                let at = self.at_of("topology.patroni");
                self.problem(
                    &at,
                    &path,
                    format!("'{url}' is not an http://host:port URL"),
                );
            }
        }
        if source == TopologySource::Patroni
            && patroni.is_empty()
            && !self.has_problem("topology.patroni")
        {
            let at = s.at.clone();
            self.problem(
                &at,
                "topology.patroni",
                "missing: source = \"patroni\" needs the Patroni REST URLs (http://host:8008)",
            );
        }
        TopologyConfig { source, patroni }
    }

    /// `[client_tls]`: a mode other than `disable` needs a certificate and its key.
    fn client_tls(&mut self, s: &mut Section) -> ClientTlsConfig {
        let mode = self.choice(s, "mode").unwrap_or(ClientTlsMode::Disable);
        let path = |w: &mut Self, s: &mut Section, key| w.name(s, key).map(PathBuf::from);
        let tls = ClientTlsConfig {
            mode,
            cert: path(self, s, "cert"),
            key: path(self, s, "key"),
            ca: path(self, s, "ca"),
            client_cert: ClientCertMode::VerifyCa,
        };
        let client_cert = self.choice(s, "client_cert");
        if client_cert.is_some() && tls.ca.is_none() && !self.has_problem("client_tls.ca") {
            let at = self.at_of("client_tls.client_cert");
            self.problem(
                &at,
                "client_tls.client_cert",
                "needs client_tls.ca: client certificates are asked for and verified only \
                 against a CA",
            );
        }
        let tls = ClientTlsConfig {
            client_cert: client_cert.unwrap_or(ClientCertMode::VerifyCa),
            ..tls
        };
        if mode != ClientTlsMode::Disable {
            for (key, value) in [("cert", &tls.cert), ("key", &tls.key)] {
                let full = format!("client_tls.{key}");
                if value.is_none() && !self.has_problem(&full) {
                    let at = s.at.clone();
                    self.problem(
                        &at,
                        &full,
                        format!(
                            "missing: client_tls.mode = \"{}\" needs a PEM {}",
                            mode.as_str(),
                            if key == "cert" {
                                "certificate chain"
                            } else {
                                "private key"
                            }
                        ),
                    );
                }
            }
        }
        tls
    }

    /// `[server_tls]`: the `verify-*` modes need the CA to verify against.
    fn server_tls(&mut self, s: &mut Section) -> ServerTlsConfig {
        let mode = self.choice(s, "mode").unwrap_or(ServerTlsMode::Prefer);
        let ca = self.name(s, "ca").map(PathBuf::from);
        let allow_cleartext_without_tls = self
            .boolean(s, "allow_cleartext_without_tls")
            .unwrap_or(false);
        let verify = matches!(mode, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull);
        if verify && ca.is_none() && !self.has_problem("server_tls.ca") {
            let at = s.at.clone();
            self.problem(
                &at,
                "server_tls.ca",
                format!(
                    "missing: server_tls.mode = \"{}\" needs the PEM CA certificates to verify \
                     the servers against",
                    mode.as_str()
                ),
            );
        }
        ServerTlsConfig {
            mode,
            ca,
            allow_cleartext_without_tls,
        }
    }

    fn node(&mut self, s: &mut Section) -> Option<NodeConfig> {
        let address = self.get(s, "address", "a \"host:port\" string", |v| match v {
            Raw::String(a) => parse_host_port(a).map_err(Some),
            _ => Err(None),
        });
        let path = join(&s.path, "address");
        if address.is_none() && !self.has_problem(&path) {
            let at = s.at.clone();
            self.problem(&at, &path, "missing: every node needs \"host:port\"");
        }
        let weight = self.int(s, "weight", 0, i64::from(u32::MAX)).unwrap_or(1);
        let role = self.choice(s, "role");
        let name = self.name(s, "name");
        let tls = NodeTlsConfig {
            mode: self.choice(s, "tls_mode"),
            ca: self.name(s, "tls_ca").map(PathBuf::from),
            server_name: self.name(s, "tls_server_name"),
        };
        let (host, port) = address?;
        Some(NodeConfig {
            host,
            port,
            weight,
            role,
            name,
            tls,
        })
    }

    fn user(&mut self, s: &mut Section) -> Option<UserConfig> {
        let name = self.name(s, "name");
        let path = join(&s.path, "name");
        if name.is_none() && !self.has_problem(&path) {
            let at = s.at.clone();
            self.problem(&at, &path, "missing: every user needs a name");
        }
        // Every key is taken (and checked) even when the name is missing.
        let user = UserConfig {
            name: String::new(),
            password: self.secret(s, "password"),
            server_password: self.secret(s, "server_password"),
            auth: self.choice(s, "auth").unwrap_or(AuthMethod::ScramSha256),
            max_connections: self.int(s, "max_connections", 1, i64::from(u32::MAX)),
            pool_mode: self.choice(s, "pool_mode"),
            default_route: self.choice(s, "default_route"),
            consistency: self.choice(s, "consistency"),
            require_tls: self.boolean(s, "require_tls").unwrap_or(false),
        };
        Some(UserConfig {
            name: name?,
            ..user
        })
    }

    /// `[auth_query]`: present means on, and then `user` is required.
    fn auth_query(&mut self, s: &mut Section) -> Option<AuthQueryConfig> {
        let present = s.at != At::Nowhere || !s.entries.is_empty();
        let user = self.name(s, "user");
        let config = AuthQueryConfig {
            user: user.clone().unwrap_or_default(),
            password: self.secret(s, "password"),
            query: self
                .name(s, "query")
                .unwrap_or_else(|| super::DEFAULT_AUTH_QUERY.to_owned()),
            database: self
                .name(s, "database")
                .unwrap_or_else(|| "postgres".to_owned()),
            cache_size: self.int(s, "cache_size", 1, 1_000_000).unwrap_or(1000),
            cache_ttl: self
                .duration(s, "cache_ttl", Zero::Allowed)
                .unwrap_or(Duration::from_secs(60)),
            negative_ttl: self
                .duration(s, "negative_ttl", Zero::Allowed)
                .unwrap_or(Duration::from_secs(5)),
        };
        if !present {
            return None;
        }
        if user.is_none() && !self.has_problem("auth_query.user") {
            let at = s.at.clone();
            self.problem(
                &at,
                "auth_query.user",
                "missing: the lookup logs in to the primary as this dedicated role \
                 (never as the client)",
            );
        }
        if !config.query.contains("$1") && !self.has_problem("auth_query.query") {
            let at = self.at_of("auth_query.query");
            self.problem(
                &at,
                "auth_query.query",
                "must use $1 for the user name (and return the name and the stored secret)",
            );
        }
        Some(config)
    }

    fn database(&mut self, s: &mut Section) -> Option<DatabaseConfig> {
        let name = self.name(s, "name");
        let path = join(&s.path, "name");
        if name.is_none() && !self.has_problem(&path) {
            let at = s.at.clone();
            self.problem(
                &at,
                &path,
                "missing: every [[databases]] entry needs a name",
            );
        }
        let default_route = self.choice(s, "default_route");
        let consistency = self.choice(s, "consistency");
        Some(DatabaseConfig {
            name: name?,
            default_route,
            consistency,
        })
    }
}

/// The nearest known key in the same table, else the nearest key of another table.
fn suggest(section: &Section, key: &str) -> Option<String> {
    let limit = if key.len() < 5 { 1 } else { 2 };
    let nearest = |keys: &[&'static str]| {
        keys.iter()
            .map(|k| (edit_distance(key, k), *k))
            .filter(|(d, _)| *d <= limit)
            .min_by_key(|(d, _)| *d)
    };
    if let Some((_, k)) = nearest(section.known) {
        return Some(k.to_owned());
    }
    SCHEMA
        .iter()
        .filter(|(table, _)| *table != section.generic)
        .filter_map(|(table, keys)| nearest(keys).map(|(d, k)| (d, format!("{table}.{k}"))))
        .min_by_key(|(d, _)| *d)
        .map(|(_, path)| path)
}
