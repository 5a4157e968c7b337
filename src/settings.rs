//! The settings builder: the one place where the validated [`Config`] becomes what the running
//! proxy uses (parsed user secrets, the router's policy, pool, watcher and catalog settings,
//! connect targets).
//!
//! `config` only parses and validates (it is the operators' contract and depends on nothing);
//! this module knows the runtime types on the other side. A key that needs more than being
//! read where it is used gets its derivation here, so every key has one visible consumer (the
//! `consumers` test in `config` fails for a key read nowhere). See "Adding a key" in
//! `docs/CONFIG.md`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::{self, StoredSecret};
use crate::backend::connection::ConnectTarget;
use crate::backend::pool::PoolSettings;
use crate::catalog::CatalogSettings;
use crate::config::{AuthMethod, Config, TopologySource, UserConfig};
use crate::net::server_tls::{ServerTls, ServerTlsError};
use crate::net::tls::{ClientTls, TlsError};
use crate::router::functions::FunctionOverrides;
use crate::router::Policy;
use crate::topology::watcher::WatcherSettings;
use crate::topology::{NodeId, NodeSpec};

/// Why a configuration cannot be turned into settings (what validation cannot see).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A user's password in the configuration is not usable.
    #[error("user {user:?}: {source}")]
    Secret {
        /// The user.
        user: String,
        /// Why.
        source: auth::AuthError,
    },
    /// `[client_tls]` names a file that cannot be used.
    #[error(transparent)]
    ClientTls(#[from] TlsError),
    /// `[server_tls]` names a CA file that cannot be used.
    #[error(transparent)]
    ServerTls(#[from] ServerTlsError),
    /// `proxy.log_level` is not a valid `tracing` filter.
    #[error("proxy.log_level {level:?}: {message}")]
    LogLevel {
        /// The value.
        level: String,
        /// Why it does not parse.
        message: String,
    },
}

/// A configured user, with its secret parsed once at load time.
#[derive(Debug)]
pub struct UserEntry {
    /// The user's configuration.
    pub config: UserConfig,
    /// The client-facing secret; `None` for trust.
    pub secret: Option<StoredSecret>,
    /// How the client must authenticate.
    pub method: auth::Method,
}

/// Configuration plus what is derived from it; replaced as a whole on reload.
#[derive(Debug)]
pub struct Settings {
    /// The validated configuration.
    pub config: Config,
    /// Users by name.
    pub users: HashMap<String, UserEntry>,
    /// Routing settings in the router's terms.
    pub policy: Policy,
    /// Function-name overrides (`write_functions` / `read_functions`).
    pub function_overrides: FunctionOverrides,
    /// TLS towards clients, its certificate and key read from their files; `None` when
    /// `client_tls.mode` is `disable`.
    pub client_tls: Option<ClientTls>,
    /// TLS towards servers, its CA read from its file; shared by every connect target, the
    /// watcher and the catalog loader.
    pub server_tls: Arc<ServerTls>,
}

impl Settings {
    /// Derives the settings from a configuration (parses and prepares every user's secret).
    pub fn new(config: Config) -> Result<Settings, SettingsError> {
        log_filter(&config.proxy.log_level)?;
        let mut users = HashMap::new();
        for user in &config.users {
            users.insert(user.name.clone(), user_entry(user)?);
        }
        let policy = Policy {
            primary_reads: config.routing.primary_reads,
            fallback: config.routing.fallback,
            read_only_transactions: config.routing.read_only_transactions,
            balance: config.routing.balance,
        };
        let lower = |v: &Vec<String>| v.iter().map(|f| f.to_ascii_lowercase()).collect();
        let function_overrides = FunctionOverrides {
            writes: lower(&config.routing.write_functions),
            reads: lower(&config.routing.read_functions),
        };
        let client_tls = client_tls(&config)?;
        let server_tls = Arc::new(ServerTls::load(&config.server_tls)?);
        Ok(Settings {
            config,
            users,
            policy,
            function_overrides,
            client_tls,
            server_tls,
        })
    }

    /// Every configured node (address and read weight), in configuration order: the
    /// topology's first node slots, and what a reload hands the watcher.
    pub fn node_specs(&self) -> Vec<NodeSpec> {
        self.config
            .nodes
            .iter()
            .map(|node| NodeSpec {
                host: node.host.clone(),
                port: node.port,
                weight: node.weight,
            })
            .collect()
    }

    /// What each pool is built with.
    pub fn pool_settings(&self) -> PoolSettings {
        let pool = &self.config.pool;
        PoolSettings {
            pool_size: pool.pool_size,
            pool_timeout: pool.pool_timeout,
            connect_timeout: pool.server_connect_timeout,
            idle_timeout: pool.server_idle_timeout,
            lifetime: pool.server_lifetime,
            reset_query: pool.server_reset_query.clone(),
            internal_timeout: pool.server_connect_timeout,
            min_idle: pool.min_idle,
        }
    }

    /// What the topology watcher is started with.
    pub fn watcher_settings(&self) -> WatcherSettings {
        let cfg = &self.config;
        WatcherSettings {
            nodes: self.node_specs(),
            user: cfg.monitor.user.clone(),
            password: cfg.monitor.password.as_ref().map(|p| p.expose().to_owned()),
            database: cfg.monitor.database.clone(),
            check_interval: cfg.routing.check_interval,
            connect_timeout: cfg.monitor.connect_timeout,
            query_timeout: cfg.monitor.query_timeout,
            health_threshold: cfg.routing.health_threshold,
            max_lag_bytes: cfg.routing.max_lag_bytes,
            max_lag: cfg.routing.max_lag,
            tls: self.server_tls.clone(),
            patroni: match cfg.topology.source {
                TopologySource::Probe => Vec::new(),
                TopologySource::Patroni => cfg.topology.patroni.clone(),
            },
        }
    }

    /// What the function catalogs are loaded with (the monitor's account).
    pub fn catalog_settings(&self) -> CatalogSettings {
        let cfg = &self.config;
        CatalogSettings {
            user: cfg.monitor.user.clone(),
            password: cfg.monitor.password.as_ref().map(|p| p.expose().to_owned()),
            timeout: cfg
                .monitor
                .connect_timeout
                .max(std::time::Duration::from_secs(1)),
            refresh: cfg.routing.volatility_refresh,
            tls: self.server_tls.clone(),
        }
    }

    /// The password `user`'s server connections log in with, if any.
    pub fn server_password(&self, user: &str) -> Option<&str> {
        self.users
            .get(user)
            .and_then(|u| u.config.server_password.as_ref())
            .map(|p| p.expose())
    }

    /// Where a pool for `user` on `database` at node `node` (the topology's slot, at
    /// `host:port`) connects.
    pub fn connect_target(
        &self,
        (node, host, port): (NodeId, &str, u16),
        database: &str,
        user: &str,
    ) -> ConnectTarget {
        let password = self.server_password(user).map(str::to_owned);
        ConnectTarget {
            node,
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            database: database.to_owned(),
            password,
            nodelay: self.config.proxy.tcp_nodelay,
            keepalive: self.config.proxy.tcp_keepalive,
            tls: self.server_tls.clone(),
        }
    }
}

/// `[client_tls]` with its files read (the one place that reads them, at load and reload).
fn client_tls(config: &Config) -> Result<Option<ClientTls>, TlsError> {
    ClientTls::load(&config.client_tls)
}

/// The `tracing` filter a `proxy.log_level` value stands for (what `main` installs and a
/// reload swaps in).
pub fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, SettingsError> {
    tracing_subscriber::EnvFilter::try_new(level).map_err(|e| SettingsError::LogLevel {
        level: level.to_owned(),
        message: e.to_string(),
    })
}

/// One user's entry: its authentication method and its secret, parsed (and for SCRAM, its
/// verifier built) now rather than on the first login.
fn user_entry(user: &UserConfig) -> Result<UserEntry, SettingsError> {
    let method = match user.auth {
        AuthMethod::ScramSha256 => auth::Method::ScramSha256,
        AuthMethod::Md5 => auth::Method::Md5,
        AuthMethod::Trust => auth::Method::Trust,
    };
    let secret = match (&user.password, method) {
        (_, auth::Method::Trust) | (None, _) => None,
        (Some(p), _) => {
            let s = StoredSecret::parse(p.expose()).map_err(|source| SettingsError::Secret {
                user: user.name.clone(),
                source,
            })?;
            s.prepare();
            Some(s)
        }
    };
    Ok(UserEntry {
        config: user.clone(),
        secret,
        method,
    })
}
