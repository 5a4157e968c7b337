//! Reload: `SIGHUP` and the admin console's `RELOAD` read the configuration file again,
//! validate it, build the settings, and put them in force with one store (the settings
//! `ArcSwap` every session, login and checkout reads). On any error the running
//! configuration stays and the error is logged (and returned to `RELOAD`).
//!
//! What a reload changes, and when it is seen:
//! - users added, removed, re-passworded: at the next login; a removed user's sessions end
//!   with 57P01 when they are idle (as at shutdown), a removed admin's console sessions too;
//! - pool settings (`[pool]` but `max_server_connections`) and a user's server password: pools
//!   made with the old ones are retired (idle connections closed, the others closed when
//!   given back, none cut) and the next checkout makes a new pool;
//! - routing and lag settings: at the next request; the watcher's check interval, timeouts
//!   and lag limits at its next check;
//! - per-user and per-database defaults, timeouts: for new sessions;
//! - `proxy.log_level`: at once (unless `RUST_LOG` is set);
//! - `[client_tls]` (its keys, or new contents in the same certificate files): for new
//!   connections; clients already connected over TLS keep their session;
//! - `[server_tls]` (its keys, or a new CA file under the same name): pools are retired as
//!   above, so new server connections verify with the new settings; the watcher's next
//!   connections too.
//! - `[[nodes]]`: through the watcher, at once: an added node is probed and serves reads
//!   after its health checks pass; a removed one gets no new traffic, its probe stops, and
//!   its pools are retired by the next pool maintenance pass (within a second): idle
//!   connections close, connections in use (a running transaction) close when their client
//!   is done, none is cut. A changed `weight` applies at once.
//!
//! Keys in [`RESTART_ONLY`] (the listen addresses, `[monitor]`, `[topology]`, ...) are read
//! once at start: a file that changes one is refused as a whole, with a message naming the
//! key.

use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::session::cancel::Stop;
use crate::session::context::SessionCtx;
use crate::settings::{Settings, SettingsError};

/// Keys (as [`key_values`] names them) a reload cannot apply; `monitor` and `topology` stand
/// for their whole tables.
pub const RESTART_ONLY: &[&str] = &[
    "proxy.listen",
    "proxy.http_listen",
    "proxy.worker_threads",
    "proxy.max_client_connections",
    "proxy.tcp_nodelay",
    "proxy.log_format",
    "pool.max_server_connections",
    "routing.health_threshold",
    "routing.volatility_refresh",
    "monitor",
    "topology",
];

/// Whether a key needs a restart to change.
pub fn needs_restart(key: &str) -> bool {
    RESTART_ONLY
        .iter()
        .any(|k| *k == key || key.strip_prefix(k).is_some_and(|r| r.starts_with('.')))
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was built from a configuration in memory, not a file.
    #[error("no configuration file to reload")]
    NoFile,
    /// The file cannot be read or is not a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration cannot be turned into settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Keys that are read only at start changed.
    #[error(
        "{} changed; restart causeway to apply it (nothing was reloaded)",
        keys.join(", ")
    )]
    NeedsRestart {
        /// The keys.
        keys: Vec<String>,
    },
}

/// What a reload changed: the keys (as [`key_values`] names them) and the users.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys whose value changed, and users added, removed or changed (`users.<name>`).
    pub changed: Vec<String>,
}

/// Reads the configuration file again and puts it in force (see the module doc).
pub fn reload(ctx: &SessionCtx) -> Result<Reloaded, ReloadError> {
    let result = ctx
        .config_path()
        .ok_or(ReloadError::NoFile)
        .and_then(|path| Ok(Config::load(path)?))
        .and_then(|loaded| {
            for n in &loaded.notices {
                tracing::warn!("{n}");
            }
            apply(ctx, loaded.config)
        });
    match &result {
        Ok(r) if r.changed.is_empty() => tracing::info!("reload: nothing changed"),
        Ok(r) => tracing::info!(changed = %r.changed.join(", "), "reload: configuration applied"),
        Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays"),
    }
    result
}

/// Validates `config` against the running one, builds its settings and puts them in force.
pub fn apply(ctx: &SessionCtx, config: Config) -> Result<Reloaded, ReloadError> {
    let old = ctx.settings_full();
    let before = key_values(&old.config);
    let after = key_values(&config);
    let mut changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.to_owned())
        .collect();
    let restart: Vec<String> = changed
        .iter()
        .filter(|k| needs_restart(k))
        .cloned()
        .collect();
    if !restart.is_empty() {
        return Err(ReloadError::NeedsRestart { keys: restart });
    }
    if old.config.databases != config.databases {
        changed.push("databases".to_owned());
    }
    let new = std::sync::Arc::new(Settings::new(config)?);
    let removed: Vec<String> = old
        .config
        .users
        .iter()
        .filter(|u| !new.users.contains_key(&u.name))
        .map(|u| u.name.clone())
        .collect();
    for user in &new.config.users {
        match old.config.users.iter().find(|u| u.name == user.name) {
            Some(u) if u == user => {}
            _ => changed.push(format!("users.{}", user.name)),
        }
    }
    changed.extend(removed.iter().map(|u| format!("users.{u}")));
    // The one store: from here on, logins, new sessions and checkouts see `new`.
    ctx.store_settings(new.clone());
    // Certificate files are read again by `Settings::new`: new contents under the same names
    // are a change too. New client handshakes use the new certificate at once; sessions
    // already in keep theirs.
    let client_certs = |s: &Settings| s.client_tls.as_ref().map(|t| t.certs_digest);
    if old.config.client_tls != new.config.client_tls || client_certs(&old) != client_certs(&new) {
        changed.push("client_tls".to_owned());
    }
    let server_ca_changed = old.server_tls.ca_digest != new.server_tls.ca_digest;
    if server_ca_changed && old.config.server_tls == new.config.server_tls {
        changed.push("server_tls.ca (file contents)".to_owned());
    }
    // A pool connects with the target it was made with: changed TLS settings (or CA file
    // contents) need new pools.
    // Nodes' overrides of `[server_tls]` (`tls_*` in `[[nodes]]`) count too.
    let node_tls = |s: &Settings| {
        let nodes = s.config.nodes.iter().filter(|n| n.tls.is_set());
        nodes
            .map(|n| (n.address(), n.tls.clone()))
            .collect::<Vec<_>>()
    };
    let same_tls = old.config.server_tls == new.config.server_tls
        && node_tls(&old) == node_tls(&new)
        && !server_ca_changed;
    let retired = ctx.pools().reconfigure(new.pool_settings(), |pool| {
        let key = pool.key();
        same_tls && new.keeps_server_auth(&key.user, pool.server_auth())
    });
    if retired > 0 {
        tracing::info!(
            pools = retired,
            "reload: pools with changed settings retired"
        );
    }
    ctx.publish_watcher_settings(new.watcher_settings());
    if old.config.proxy.log_level != new.config.proxy.log_level {
        // Checked by `Settings::new`: this fails only if logging itself is gone.
        if let Err(e) = ctx.set_log_level(&new.config.proxy.log_level) {
            tracing::warn!(error = %e, "reload: the new log level could not be applied");
        }
    }
    end_sessions_of_removed_users(ctx, &new);
    Ok(Reloaded { changed })
}

/// Ends (when idle, 57P01) the sessions of users no longer configured, and the console
/// sessions of users no longer admins.
fn end_sessions_of_removed_users(ctx: &SessionCtx, settings: &Settings) {
    let admins = &settings.config.proxy.admin_users;
    for (pid, slot) in ctx.cancels().clients() {
        let info = slot.info();
        // A user `auth_query` found stays while it is on (its next lookup decides).
        let looked_up = info.auth_query && settings.auth_query.is_some();
        let gone = (!settings.users.contains_key(&*info.user) && !looked_up)
            || (info.console && !admins.iter().any(|a| *a == *info.user));
        if gone {
            tracing::info!(client = pid, user = %info.user, "reload: ending the session of a removed user");
            slot.signal(Stop::Drain);
        }
    }
}

/// A duration as `proxy.toml` takes it.
fn duration(d: Duration) -> String {
    format!("{d:?}")
}

/// An optional duration (`"0"` for off, as the file writes it).
fn opt_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "0".to_owned(), duration)
}

/// An optional value (`""` for unset).
fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// Every scalar key of a configuration with its value as text (secrets as `***`), in a fixed
/// order: what `SHOW CONFIG` lists and what a reload compares. `[[nodes]]` is one entry
/// (addresses and weights), `[[users]]` one entry of names (compared in full separately).
pub fn key_values(c: &Config) -> Vec<(&'static str, String)> {
    let (p, pool, r, m) = (&c.proxy, &c.pool, &c.routing, &c.monitor);
    let nodes: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{}*{}", n.address(), n.weight))
        .collect();
    let mut users: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
    users.sort_unstable();
    let secret = |s: &Option<crate::config::Secret>| if s.is_some() { "***" } else { "" };
    let mut rows = vec![
        ("proxy.listen", p.listen.to_string()),
        ("proxy.http_listen", opt(p.http_listen)),
        ("proxy.pool_mode", p.pool_mode.to_string()),
        (
            "proxy.max_client_connections",
            p.max_client_connections.to_string(),
        ),
        ("proxy.max_message_size", p.max_message_size.to_string()),
        ("proxy.startup_timeout", duration(p.startup_timeout)),
        (
            "proxy.client_idle_timeout",
            opt_duration(p.client_idle_timeout),
        ),
        ("proxy.shutdown_timeout", duration(p.shutdown_timeout)),
        ("proxy.admin_users", p.admin_users.join(",")),
        ("proxy.tcp_nodelay", p.tcp_nodelay.to_string()),
        ("proxy.worker_threads", p.worker_threads.to_string()),
        ("proxy.log_level", p.log_level.clone()),
        ("proxy.log_format", p.log_format.to_string()),
        (
            "pool.max_server_connections",
            pool.max_server_connections.to_string(),
        ),
        ("pool.pool_size", pool.pool_size.to_string()),
        ("pool.min_idle", pool.min_idle.to_string()),
        (
            "pool.server_idle_timeout",
            opt_duration(pool.server_idle_timeout),
        ),
        ("pool.server_lifetime", opt_duration(pool.server_lifetime)),
        ("pool.pool_timeout", opt_duration(pool.pool_timeout)),
        (
            "pool.server_connect_timeout",
            duration(pool.server_connect_timeout),
        ),
        (
            "pool.server_reset_query",
            opt(pool.server_reset_query.as_ref()),
        ),
        ("routing.check_interval", duration(r.check_interval)),
        ("routing.max_lag_bytes", opt(r.max_lag_bytes)),
        ("routing.max_lag", opt_duration(r.max_lag)),
        ("routing.consistency", r.consistency.to_string()),
        (
            "routing.read_only_transactions",
            r.read_only_transactions.to_string(),
        ),
        ("routing.primary_reads", r.primary_reads.to_string()),
        ("routing.balance", r.balance.to_string()),
        ("routing.primary_wait", duration(r.primary_wait)),
        ("routing.fallback", r.fallback.to_string()),
        ("routing.causal_wait", duration(r.causal_wait)),
        ("routing.health_threshold", r.health_threshold.to_string()),
        (
            "routing.readonly_database_suffix",
            opt(r.readonly_database_suffix.as_ref()),
        ),
        ("routing.write_functions", r.write_functions.join(",")),
        ("routing.read_functions", r.read_functions.join(",")),
        (
            "routing.volatility_refresh",
            opt_duration(r.volatility_refresh),
        ),
        ("monitor.user", m.user.clone()),
        // Compared in full: a changed password is a change even though both print `***`.
        ("monitor.password", secret(&m.password).to_owned()),
        ("monitor.database", m.database.clone()),
        ("monitor.connect_timeout", duration(m.connect_timeout)),
        ("monitor.query_timeout", duration(m.query_timeout)),
        ("server_tls.mode", c.server_tls.mode.to_string()),
        (
            "server_tls.ca",
            c.server_tls
                .ca
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "server_tls.allow_cleartext_without_tls",
            c.server_tls.allow_cleartext_without_tls.to_string(),
        ),
        ("topology.source", c.topology.source.to_string()),
        ("topology.patroni", c.topology.patroni.join(",")),
        ("nodes", nodes.join(",")),
        ("users", users.join(",")),
    ];
    // `[auth_query]`: empty values when it is off.
    let aq = c.auth_query.as_ref();
    let aq_text = |f: fn(&crate::config::AuthQueryConfig) -> String| aq.map(f).unwrap_or_default();
    rows.extend([
        ("auth_query.user", aq_text(|a| a.user.clone())),
        (
            "auth_query.password",
            aq_text(|a| if a.password.is_some() { "***" } else { "" }.to_owned()),
        ),
        ("auth_query.query", aq_text(|a| a.query.clone())),
        ("auth_query.database", aq_text(|a| a.database.clone())),
        (
            "auth_query.cache_size",
            aq_text(|a| a.cache_size.to_string()),
        ),
        ("auth_query.cache_ttl", aq_text(|a| duration(a.cache_ttl))),
        (
            "auth_query.negative_ttl",
            aq_text(|a| duration(a.negative_ttl)),
        ),
    ]);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_and_tables() {
        assert!(needs_restart("proxy.listen"));
        assert!(needs_restart("monitor.user"));
        assert!(!needs_restart("nodes"), "nodes come and go at run time");
        assert!(!needs_restart("pool.pool_size"));
        assert!(!needs_restart("routing.max_lag"));
        assert!(!needs_restart("users"));
        assert!(!needs_restart("proxy.listen_x"));
    }
}
