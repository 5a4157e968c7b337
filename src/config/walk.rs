//! Walks the parsed document against the schema, building the typed [`Config`] and collecting
//! every problem on the way: unknown keys, wrong types, invalid values, then the checks that
//! involve several keys.
//!
//! Invalid or missing values are replaced by their defaults (or skipped) so the walk can go on;
//! the caller discards the result when there is any problem.

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{At, Entry, Lines, Raw};
use super::values::{
    check_scram_verifier, edit_distance, parse_duration, password_kind, PasswordKind,
};
use super::{Config, DatabaseConfig, Keyword, NodeConfig, Problem, Secret, UserConfig};

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
mod sections;

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
