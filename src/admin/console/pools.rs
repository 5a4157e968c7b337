//! `SHOW POOLS` (per database and user, PgBouncer's columns), `SHOW SERVERS` (each server
//! connection) and `SHOW LISTS` (PgBouncer's counts).
//!
//! causeway keeps one pool per node × database × user; `SHOW POOLS` adds a database and user's
//! pools on every node into one row, because tools key PgBouncer's rows by database and user
//! (`pgbouncer_exporter` would see duplicate series otherwise). `SHOW SERVERS` shows the node.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use super::table::{cell, timestamp, Kind, Table};
use crate::session::context::SessionCtx;

/// One database and user's pools and clients, added up.
#[derive(Default)]
struct PoolRow {
    /// Clients connected as this user to this database.
    clients: usize,
    /// Server connections checked out.
    active: usize,
    /// Server connections idle in the pool.
    idle: usize,
    /// Checkouts waiting for a server connection.
    waiting: usize,
}

/// `SHOW POOLS`.
pub fn show_pools(ctx: &SessionCtx) -> Table {
    let settings = ctx.settings_full();
    let mut rows: BTreeMap<(String, String), PoolRow> = BTreeMap::new();
    for pool in ctx.pools().all() {
        let key = pool.key();
        let row = rows
            .entry((key.database.clone(), key.user.clone()))
            .or_default();
        row.active += pool.in_use();
        row.idle += pool.idle_count();
        row.waiting += pool.waiting();
    }
    for (_, slot) in ctx.cancels().clients() {
        let info = slot.info();
        if !info.console {
            let key = (info.database.to_string(), info.user.to_string());
            rows.entry(key).or_default().clients += 1;
        }
    }
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("cl_active", Kind::Int),
        ("cl_waiting", Kind::Int),
        ("cl_active_cancel_req", Kind::Int),
        ("cl_waiting_cancel_req", Kind::Int),
        ("sv_active", Kind::Int),
        ("sv_active_cancel", Kind::Int),
        ("sv_being_canceled", Kind::Int),
        ("sv_idle", Kind::Int),
        ("sv_used", Kind::Int),
        ("sv_tested", Kind::Int),
        ("sv_login", Kind::Int),
        ("maxwait", Kind::Int),
        ("maxwait_us", Kind::Int),
        ("pool_mode", Kind::Text),
    ]);
    for ((database, user), row) in rows {
        let mode = settings
            .users
            .get(&user)
            .and_then(|u| u.config.pool_mode)
            .unwrap_or(settings.config.proxy.pool_mode);
        let zero = || cell(0);
        t.push(vec![
            cell(database),
            cell(user),
            cell(row.clients.saturating_sub(row.waiting)),
            cell(row.waiting),
            zero(),
            zero(),
            cell(row.active),
            zero(),
            zero(),
            cell(row.idle),
            zero(),
            zero(),
            zero(),
            zero(),
            zero(),
            cell(mode.as_str()),
        ]);
    }
    t
}

/// `SHOW SERVERS`: server connections in use (found through the clients they serve) and
/// idle in a pool. A connection in use shows its client's pid in `link`.
pub fn show_servers(ctx: &SessionCtx) -> Table {
    let mut t = Table::new(&[
        ("type", Kind::Text),
        ("user", Kind::Text),
        ("database", Kind::Text),
        ("state", Kind::Text),
        ("addr", Kind::Text),
        ("port", Kind::Int),
        ("node", Kind::Int),
        ("connect_time", Kind::Text),
        ("request_time", Kind::Text),
        ("remote_pid", Kind::Int),
        ("link", Kind::Int),
    ]);
    for (pid, slot) in ctx.cancels().clients() {
        let Some(target) = slot.target() else {
            continue;
        };
        let info = slot.info();
        t.push(vec![
            cell("S"),
            cell(&info.user),
            cell(&info.database),
            cell("active"),
            cell(&target.host),
            cell(target.port),
            None,
            None,
            None,
            cell(target.key.pid),
            cell(pid),
        ]);
    }
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    for pool in ctx.pools().all() {
        let key = pool.key();
        let addr = pool.addr();
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), ""));
        for s in pool.idle_servers(now) {
            t.push(vec![
                cell("S"),
                cell(&key.user),
                cell(&key.database),
                cell("idle"),
                cell(host.trim_start_matches('[').trim_end_matches(']')),
                cell(port),
                cell(key.node),
                cell(timestamp(wall - s.age)),
                cell(timestamp(wall - s.idle)),
                cell(s.pid),
                None,
            ]);
        }
    }
    t
}

/// `SHOW LISTS`: PgBouncer's two-column counts (`list`, `items`).
pub fn show_lists(ctx: &SessionCtx) -> Table {
    let settings = ctx.settings_full();
    let pools = ctx.pools().all();
    let clients = ctx.cancels().clients();
    let mut databases: BTreeSet<&str> = settings
        .config
        .databases
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    databases.extend(pools.iter().map(|p| p.key().database.as_str()));
    let pool_keys: BTreeSet<(&str, &str)> = pools
        .iter()
        .map(|p| (p.key().database.as_str(), p.key().user.as_str()))
        .collect();
    let used_clients = clients.iter().filter(|(_, s)| !s.info().console).count();
    let used_servers: usize = pools.iter().map(|p| p.in_use()).sum();
    let free_servers: usize = pools.iter().map(|p| p.idle_count()).sum();
    let mut t = Table::new(&[("list", Kind::Text), ("items", Kind::Int)]);
    for (list, items) in [
        ("databases", databases.len()),
        ("users", settings.users.len()),
        ("peers", 0),
        ("pools", pool_keys.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", 0),
        ("free_servers", free_servers),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.push(vec![cell(list), cell(items)]);
    }
    t
}
