//! `SHOW NODES` (the topology as the watcher last saw it) and `SHOW DATABASES` (PgBouncer's
//! per-database view: where the database is served, its pool limits and connections).

use std::collections::BTreeSet;

use super::table::{cell, Kind, Table};
use crate::session::context::SessionCtx;

/// `SHOW NODES`: one row per node of the cluster now (configured, or added by Patroni's member
/// list; removed nodes are not listed). `node` is the node's slot, which stays the same while
/// the proxy runs.
pub fn show_nodes(ctx: &SessionCtx) -> Table {
    let topology = ctx.topology().load_full();
    let load = &**ctx.feedback();
    let mut t = Table::new(&[
        ("node", Kind::Int),
        ("address", Kind::Text),
        ("role", Kind::Text),
        ("healthy", Kind::Text),
        ("fenced", Kind::Text),
        ("timeline", Kind::Int),
        ("lsn", Kind::Text),
        ("lag_bytes", Kind::Int),
        ("lag_ms", Kind::Int),
        ("within_lag", Kind::Text),
        ("eligible_for_reads", Kind::Text),
        ("requests_in_flight", Kind::Int),
        ("reads_served", Kind::Int),
        ("writes_served", Kind::Int),
        ("role_epoch", Kind::Int),
    ]);
    let yes_no = |b: bool| cell(if b { "yes" } else { "no" });
    for n in topology.current() {
        let served = load.served(n.id);
        let role = if topology.primary == Some(n.id) {
            "primary"
        } else {
            n.role.as_str()
        };
        t.push(vec![
            cell(n.id),
            cell(&n.addr),
            cell(role),
            yes_no(n.healthy),
            yes_no(n.fenced),
            n.timeline.map(|v| v.to_string()),
            n.lsn.map(|l| l.to_string()),
            n.lag_bytes.map(|v| v.to_string()),
            n.lag.map(|l| l.as_millis().to_string()),
            yes_no(n.within_lag),
            yes_no(n.is_eligible_standby()),
            cell(crate::router::Load::outstanding(load, n.id)),
            cell(served.reads),
            cell(served.writes),
            cell(n.role_epoch),
        ]);
    }
    t
}

/// `SHOW DATABASES`: one row per database that is configured (`[[databases]]`) or in use,
/// with PgBouncer's columns. `host` and `port` are the primary's (where writes go); causeway
/// has no reserve pool or per-database connection limit, so those are 0.
pub fn show_databases(ctx: &SessionCtx) -> Table {
    let settings = ctx.settings_full();
    let cfg = &settings.config;
    let topology = ctx.topology().load_full();
    let primary = topology.primary.and_then(|p| topology.nodes.get(p));
    let pools = ctx.pools().all();
    let mut names: BTreeSet<String> = cfg.databases.iter().map(|d| d.name.clone()).collect();
    names.extend(pools.iter().map(|p| p.key().database.clone()));
    names.extend(
        ctx.cancels()
            .clients()
            .iter()
            .filter(|(_, s)| !s.info().console)
            .map(|(_, s)| s.info().database.to_string()),
    );
    let mut t = Table::new(&[
        ("name", Kind::Text),
        ("host", Kind::Text),
        ("port", Kind::Int),
        ("database", Kind::Text),
        ("force_user", Kind::Text),
        ("pool_size", Kind::Int),
        ("min_pool_size", Kind::Int),
        ("reserve_pool", Kind::Int),
        ("server_lifetime", Kind::Int),
        ("pool_mode", Kind::Text),
        ("max_connections", Kind::Int),
        ("current_connections", Kind::Int),
        ("paused", Kind::Int),
        ("disabled", Kind::Int),
    ]);
    for name in names {
        let current: usize = pools
            .iter()
            .filter(|p| p.key().database == name)
            .map(|p| p.in_use() + p.idle_count())
            .sum();
        t.push(vec![
            cell(&name),
            primary.map(|n| n.host.clone()),
            primary.map(|n| n.port.to_string()),
            cell(&name),
            None,
            cell(cfg.pool.pool_size),
            cell(cfg.pool.min_idle),
            cell(0),
            cell(cfg.pool.server_lifetime.map_or(0, |l| l.as_secs())),
            cell(cfg.proxy.pool_mode.as_str()),
            cell(0),
            cell(current),
            cell(u8::from(ctx.pools().is_paused(&name))),
            cell(0),
        ]);
    }
    t
}
