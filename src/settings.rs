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
use crate::auth_query::AuthQuery;
use crate::backend::connection::{ConnectTarget, ServerAuth};
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
    /// What the proxy logs in to the servers with: the server password, the md5 hash
    /// (pass-through), or `None`: nothing, or (a SCRAM verifier without `server_password`) the
    /// keys each client's login reveals.
    pub server_auth: ServerAuth,
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
    /// Users not in `[[users]]`, looked up on the primary (`[auth_query]`), with its cache;
    /// `None` when off.
    pub auth_query: Option<Arc<AuthQuery>>,
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
        let server_tls = Arc::new(ServerTls::load(&config.server_tls, &config.nodes)?);
        let auth_query = config.auth_query.as_ref().map(|auth_query| {
            let timeout = config.pool.server_connect_timeout;
            Arc::new(AuthQuery::new(auth_query, server_tls.clone(), timeout))
        });
        Ok(Settings {
            config,
            users,
            policy,
            function_overrides,
            client_tls,
            server_tls,
            auth_query,
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

    /// Where a pool for `user` on `database` at node `node` (the topology's slot, at
    /// `host:port`) connects. `login` is what the client's authentication gave for
    /// pass-through (SCRAM keys, or an `auth_query` user's secret); it is used when the
    /// configuration has nothing for the user.
    pub fn connect_target(
        &self,
        (node, host, port): (NodeId, &str, u16),
        database: &str,
        user: &str,
        login: Option<&ServerAuth>,
    ) -> ConnectTarget {
        let auth = match (self.users.get(user).map(|u| &u.server_auth), login) {
            (Some(ServerAuth::None) | None, Some(login)) => login.clone(),
            (Some(configured), _) => configured.clone(),
            (None, None) => ServerAuth::None,
        };
        ConnectTarget {
            node,
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            database: database.to_owned(),
            auth,
            nodelay: self.config.proxy.tcp_nodelay,
            keepalive: self.config.proxy.tcp_keepalive,
            tls: self.server_tls.clone(),
        }
    }

    /// Whether a pool of `user` whose connections log in with `auth` may go on under these
    /// settings (a reload): a configured user whose server secret is unchanged (for SCRAM
    /// pass-through: keys of the same verifier), or an `auth_query` user while `auth_query`
    /// is on (a newer login replaces a stale pool, see `Pools::get`).
    pub fn keeps_server_auth(&self, user: &str, auth: &ServerAuth) -> bool {
        match self.users.get(user) {
            Some(u) => match (&u.server_auth, auth) {
                (ServerAuth::None, ServerAuth::PassThrough { secret, .. }) => {
                    let verifier = u.secret.as_ref().and_then(|s| s.stored_verifier());
                    match (secret.scram_keys(), verifier) {
                        (Some(keys), Some(verifier)) => keys.matches(verifier),
                        _ => false,
                    }
                }
                (configured, auth) => configured.same_secret(auth),
            },
            None => self.auth_query.is_some() && matches!(auth, ServerAuth::PassThrough { .. }),
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
        // No password exchange either: the session's startup lets such a user in only with a
        // verified client certificate whose CN is the user's name (`session::startup`).
        AuthMethod::Cert => auth::Method::Trust,
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
    let server_auth = match (&user.server_password, &secret) {
        (Some(p), _) => ServerAuth::Password(p.expose().to_owned()),
        (None, Some(s)) => match s.md5_hash() {
            Some(hash) => ServerAuth::pass_through(auth::PassThrough::Md5(hash)),
            None => ServerAuth::None,
        },
        (None, None) => ServerAuth::None,
    };
    Ok(UserEntry {
        config: user.clone(),
        secret,
        method,
        server_auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PassThrough, ScramKeys, ScramServer, ScramVerifier, SCRAM_SHA_256};

    /// Settings for `users` (TOML `[[users]]` entries) and `extra` tables.
    fn settings(users: &str) -> Settings {
        let text = format!("[monitor]\nuser = \"m\"\n[[nodes]]\naddress = \"h:1\"\n{users}");
        let loaded = Config::from_toml(&text, "test", &|_| None).unwrap();
        Settings::new(loaded.config).unwrap()
    }

    /// The keys a login with `password` against `verifier` reveals.
    fn keys(verifier: &ScramVerifier, password: &str) -> ScramKeys {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut server = ScramServer::new(verifier.clone(), [1; 18]);
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&first).unwrap();
        server.client_final(client.message()).unwrap();
        server.learned_keys().unwrap()
    }

    #[test]
    fn pass_through_targets_and_what_a_reload_keeps() {
        let verifier = ScramVerifier::from_password("pw");
        let text = format!(
            "[[users]]\nname = \"v\"\npassword = \"{}\"\n\
             [[users]]\nname = \"h\"\nauth = \"md5\"\npassword = \"md50123456789abcdef0123456789abcdef\"\n\
             [[users]]\nname = \"p\"\npassword = \"plain\"\n",
            verifier.to_postgres_string()
        );
        let s = settings(&text);
        let login = ServerAuth::pass_through(PassThrough::Scram(keys(&verifier, "pw")));
        // A verifier user connects with its login's keys, a hash user with the hash, a plain
        // user with its password whatever the login gave.
        let auth = |user, login| {
            s.connect_target((0, "127.0.0.1", 5432), "db", user, login)
                .auth
        };
        assert!(auth("v", Some(&login)).same_secret(&login));
        assert!(matches!(auth("v", None), ServerAuth::None));
        assert!(matches!(
            auth("h", Some(&login)),
            ServerAuth::PassThrough { .. }
        ));
        assert!(matches!(auth("p", Some(&login)), ServerAuth::Password(_)));
        assert!(auth("nobody", Some(&login)).same_secret(&login));

        // A reload keeps a pool whose keys belong to the user's verifier, not another's.
        assert!(s.keeps_server_auth("v", &login));
        let other = ScramVerifier::from_password("pw");
        let stale = ServerAuth::pass_through(PassThrough::Scram(keys(&other, "pw")));
        assert!(!s.keeps_server_auth("v", &stale));
        assert!(s.keeps_server_auth("h", &auth("h", None)));
        assert!(s.keeps_server_auth("p", &ServerAuth::Password("plain".into())));
        assert!(!s.keeps_server_auth("p", &ServerAuth::Password("old".into())));
        // Users not configured: only with auth_query on.
        assert!(!s.keeps_server_auth("nobody", &login));
        let with_aq = settings(&format!("{text}[auth_query]\nuser = \"l\"\n"));
        assert!(with_aq.keeps_server_auth("nobody", &login));

        // A newer, different secret supersedes; the same one, or an older one, does not.
        let newer = ServerAuth::pass_through(PassThrough::Scram(keys(&other, "pw")));
        assert!(login.is_superseded_by(&newer));
        assert!(!newer.is_superseded_by(&login));
        let again = ServerAuth::pass_through(PassThrough::Scram(keys(&verifier, "pw")));
        assert!(!login.is_superseded_by(&again));
    }
}
