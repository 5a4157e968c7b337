//! The walk's last step: checks that involve more than one key or table (duplicate nodes,
//! admin users that must be configured users, each user's secret against its method, pool
//! limits against the node limits), run once every table has been read.

use super::super::values::{password_kind, PasswordKind};
use super::super::{
    AuthMethod, ClientTlsConfig, ClientTlsMode, Config, NodeConfig, Notice, ServerTlsConfig,
    ServerTlsMode, UserConfig, NOT_YET_IMPLEMENTED,
};
use super::{join, Section, Walker};
use crate::config::raw::At;

impl Walker<'_> {
    /// The checks that involve more than one table.
    pub(super) fn check(&mut self, config: Config) -> Config {
        self.check_nodes(&config);
        self.check_admins(&config);
        self.check_pool(&config);

        let auth_query_password = config.auth_query.as_ref().and_then(|a| a.password.as_ref());
        if let Some(password) = auth_query_password {
            if password_kind(password.expose()) != PasswordKind::Plain {
                let at = self.at_of("auth_query.password");
                self.problem(
                    &at,
                    "auth_query.password",
                    "must be the plain password: the lookup logs in to PostgreSQL with it, \
                     which a SCRAM verifier or md5 hash cannot do",
                );
            }
        }

        if let Some(password) = &config.monitor.password {
            if password_kind(password.expose()) != PasswordKind::Plain {
                let at = self.at_of("monitor.password");
                self.problem(
                    &at,
                    "monitor.password",
                    "must be the plain password: the watcher logs in to PostgreSQL with it, \
                     which a SCRAM verifier or md5 hash cannot do",
                );
            }
        }

        for function in &config.routing.read_functions {
            if config.routing.write_functions.contains(function) {
                let at = self.at_of("routing.read_functions");
                self.problem(
                    &at,
                    "routing.read_functions",
                    format!("'{function}' is also in routing.write_functions; pick one"),
                );
            }
        }

        config
    }

    fn check_nodes(&mut self, config: &Config) {
        if config.nodes.is_empty() && !self.has_problem("nodes") {
            let at = self.at_of("nodes");
            self.problem(
                &at,
                "nodes",
                "no nodes: add at least one [[nodes]] entry with an address, \
                 or set CAUSEWAY_NODES",
            );
        }
    }

    /// Reports `node` (at `path`, `nodes[i]`) if an earlier node has its address or name.
    pub(super) fn check_duplicate_node(
        &mut self,
        path: &str,
        node: &NodeConfig,
        earlier: &[NodeConfig],
    ) {
        if earlier
            .iter()
            .any(|n| n.port == node.port && n.host.eq_ignore_ascii_case(&node.host))
        {
            let path = join(path, "address");
            let at = self.at_of(&path);
            self.problem(&at, &path, format!("{} is listed twice", node.address()));
        }
        if let Some(name) = &node.name {
            if earlier.iter().any(|n| n.name.as_ref() == Some(name)) {
                let path = join(path, "name");
                let at = self.at_of(&path);
                self.problem(&at, &path, format!("node name '{name}' is used twice"));
            }
        }
    }

    /// A node whose TLS settings (its overrides over `[server_tls]`, in `section`) verify
    /// certificates needs a CA from one or the other.
    pub(super) fn check_node_tls(
        &mut self,
        section: &Section,
        node: &NodeConfig,
        server_tls: &ServerTlsConfig,
    ) {
        let Some(mode) = node.tls.mode else {
            return;
        };
        let verify = matches!(mode, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull);
        if verify && node.tls.ca.is_none() && server_tls.ca.is_none() {
            let path = join(&section.path, "tls_ca");
            let at = section.at.clone();
            self.problem(
                &at,
                &path,
                format!(
                    "missing: tls_mode = \"{}\" needs the PEM CA certificates to verify this \
                     node against (tls_ca, or server_tls.ca)",
                    mode.as_str()
                ),
            );
        }
    }

    /// A user who must use TLS (in `section`) cannot log in at all when causeway offers none.
    pub(super) fn check_require_tls(
        &mut self,
        section: &Section,
        user: &UserConfig,
        client_tls: ClientTlsMode,
    ) {
        if user.require_tls && client_tls == ClientTlsMode::Disable {
            let path = join(&section.path, "require_tls");
            let at = self.at_of(&path);
            self.problem(
                &at,
                &path,
                format!(
                    "user '{}' requires TLS but client_tls.mode is \"disable\": set it to \
                     \"allow\" or \"require\" (with cert and key), or drop require_tls",
                    user.name
                ),
            );
        }
    }

    /// A certificate user (`auth = "cert"`, in `section`) needs client certificates to be
    /// asked for (`client_tls` on, with `ca`) and a way to log in to PostgreSQL: with no
    /// password of its own, only `server_password` gives one.
    pub(super) fn check_cert_user(
        &mut self,
        section: &Section,
        user: &UserConfig,
        client_tls: &ClientTlsConfig,
    ) {
        if user.auth != AuthMethod::Cert {
            return;
        }
        let auth_path = join(&section.path, "auth");
        if client_tls.mode == ClientTlsMode::Disable || client_tls.ca.is_none() {
            let at = self.at_of(&auth_path);
            self.problem(
                &at,
                &auth_path,
                format!(
                    "user '{}' logs in with a client certificate (auth = \"cert\") but \
                     causeway asks for none: set client_tls.mode to \"allow\" or \
                     \"require\" and client_tls.ca to the CA that signs client certificates",
                    user.name
                ),
            );
        }
        if user.server_password.is_none() {
            let path = join(&section.path, "server_password");
            let at = section.at.clone();
            self.problem(
                &at,
                &path,
                format!(
                    "missing: user '{}' has auth = \"cert\", so no client password reaches \
                     the proxy to log in to PostgreSQL with; set server_password (when the \
                     servers trust this user they never ask for it, and any value does)",
                    user.name
                ),
            );
        }
    }

    fn check_admins(&mut self, config: &Config) {
        // Named by value, not index: invalid elements were dropped from the list.
        for admin in &config.proxy.admin_users {
            if config.user(admin).is_none() {
                let at = self.at_of("proxy.admin_users");
                let message = format!("'{admin}' is not a [[users]] entry");
                self.problem(&at, "proxy.admin_users", message);
            }
        }
    }

    /// Password and authentication checks for one user, in `section`. Fills in the
    /// `server_password` default.
    pub(super) fn check_user(&mut self, section: &Section, user: &mut UserConfig) {
        let base = section.path.as_str();
        let password_path = format!("{base}.password");
        let password_at = self.at_of(&password_path);
        let kind = user.password.as_ref().map(|p| password_kind(p.expose()));
        match (user.auth, kind) {
            (AuthMethod::Trust, _) | (AuthMethod::Cert, None) => {}
            (AuthMethod::Cert, Some(_)) => self.problem(
                &password_at,
                &password_path,
                "is not used with auth = \"cert\": the client's certificate is the \
                 credential; drop password and give server_password, the plain password the \
                 proxy logs in to PostgreSQL with",
            ),
            (_, None) if !self.has_problem(&password_path) => {
                let at = section.at.clone();
                self.problem(
                    &at,
                    &password_path,
                    "missing: set a password, or write auth = \"trust\" to let this user \
                     in without one",
                );
            }
            (AuthMethod::Md5, Some(PasswordKind::ScramVerifier)) => self.problem(
                &password_at,
                &password_path,
                "is a SCRAM-SHA-256 verifier, which cannot answer md5 authentication \
                 (md5 needs the plain password or its md5 hash); use auth = \"scram-sha-256\" \
                 or give the plain password",
            ),
            (AuthMethod::ScramSha256, Some(PasswordKind::Md5Hash)) => self.problem(
                &password_at,
                &password_path,
                "is an md5 hash, which cannot answer SCRAM-SHA-256 authentication \
                 (SCRAM needs the plain password or a SCRAM verifier); use auth = \"md5\" \
                 or give the plain password",
            ),
            _ => {}
        }

        let server_path = format!("{base}.server_password");
        if let Some(server) = &user.server_password {
            if password_kind(server.expose()) != PasswordKind::Plain {
                let at = self.at_of(&server_path);
                self.problem(
                    &at,
                    &server_path,
                    "must be the plain password: the proxy logs in to PostgreSQL with it, \
                     which a SCRAM verifier or md5 hash cannot do",
                );
            }
        } else {
            // A verifier or hash without server_password is pass-through: the proxy logs in
            // to PostgreSQL with the keys the client's SCRAM login reveals, or with the md5
            // hash itself, which works when the servers hold the same verifier or hash.
            if kind == Some(PasswordKind::Plain) {
                user.server_password = user.password.clone();
            }
        }
    }

    fn check_pool(&mut self, config: &Config) {
        let pool = &config.pool;
        if pool.pool_size > pool.max_server_connections
            && !self.has_problem("pool.pool_size")
            && !self.has_problem("pool.max_server_connections")
        {
            let mut at = self.at_of("pool.pool_size");
            if at == At::Nowhere {
                at = self.at_of("pool.max_server_connections");
            }
            self.problem(
                &at,
                "pool.pool_size",
                format!(
                    "{} is more than pool.max_server_connections ({}); one pool could never \
                     fill up",
                    pool.pool_size, pool.max_server_connections
                ),
            );
        }
        if pool.min_idle > pool.pool_size
            && !self.has_problem("pool.min_idle")
            && !self.has_problem("pool.pool_size")
        {
            let at = self.at_of("pool.min_idle");
            self.problem(
                &at,
                "pool.min_idle",
                format!(
                    "{} is more than pool.pool_size ({})",
                    pool.min_idle, pool.pool_size
                ),
            );
        }
    }

    /// A notice for every [`NOT_YET_IMPLEMENTED`] entry that was set.
    pub(crate) fn notices(&self) -> Vec<Notice> {
        NOT_YET_IMPLEMENTED
            .iter()
            .filter_map(|u| {
                let set = self.set.iter().find(|k| {
                    let key_matches = k.generic == u.key
                        || k.generic
                            .strip_prefix(u.key)
                            .is_some_and(|rest| rest.starts_with('.'));
                    key_matches && (u.value.is_none() || k.word == u.value)
                })?;
                Some(Notice {
                    key: u.key,
                    value: u.value,
                    line: self.line(&set.at),
                    note: u.note,
                })
            })
            .collect()
    }
}
