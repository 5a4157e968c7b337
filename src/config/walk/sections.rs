//! The walk's middle step: one reader per table of the file (`[proxy]`, `[pool]`, `[routing]`,
//! `[monitor]`, `[topology]`, the TLS tables, `[[nodes]]`, `[[users]]`, `[auth_query]`,
//! `[[databases]]`), each taking its keys through the walker's typed field readers and
//! building its part of the [`Config`](super::super::Config).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::super::values::parse_host_port;
use super::super::{
    AuthMethod, AuthQueryConfig, Balance, ClientCertMode, ClientTlsConfig, ClientTlsMode,
    Consistency, DatabaseConfig, Fallback, LogFormat, MonitorConfig, NodeConfig, NodeTlsConfig,
    PoolConfig, PoolMode, PrimaryReads, ProxyConfig, ReadOnlyTransactions, RoutingConfig,
    ServerTlsConfig, ServerTlsMode, TopologyConfig, TopologySource, UserConfig,
};
use super::{join, Section, Walker, Zero};
use crate::config::raw::{At, Raw};

impl Walker<'_> {
    pub(super) fn proxy(&mut self, s: &mut Section) -> ProxyConfig {
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

    pub(super) fn pool(&mut self, s: &mut Section) -> PoolConfig {
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

    pub(super) fn routing(&mut self, s: &mut Section) -> RoutingConfig {
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

    pub(super) fn monitor(&mut self, s: &mut Section) -> MonitorConfig {
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
    pub(super) fn topology(&mut self, s: &mut Section) -> TopologyConfig {
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
    pub(super) fn client_tls(&mut self, s: &mut Section) -> ClientTlsConfig {
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
    pub(super) fn server_tls(&mut self, s: &mut Section) -> ServerTlsConfig {
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

    pub(super) fn node(&mut self, s: &mut Section) -> Option<NodeConfig> {
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

    pub(super) fn user(&mut self, s: &mut Section) -> Option<UserConfig> {
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
    pub(super) fn auth_query(&mut self, s: &mut Section) -> Option<AuthQueryConfig> {
        let present = s.at != At::Nowhere || !s.entries.is_empty();
        let user = self.name(s, "user");
        let config = AuthQueryConfig {
            user: user.clone().unwrap_or_default(),
            password: self.secret(s, "password"),
            query: self
                .name(s, "query")
                .unwrap_or_else(|| super::super::DEFAULT_AUTH_QUERY.to_owned()),
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

    pub(super) fn database(&mut self, s: &mut Section) -> Option<DatabaseConfig> {
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
