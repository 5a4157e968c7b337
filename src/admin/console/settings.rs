//! `SHOW CONFIG` (every key in force: key, value, default, changeable by a reload; secrets
//! never shown), `SHOW VERSION` and `SHOW HELP`.

use super::table::{cell, Kind, Table};
use crate::session::context::SessionCtx;

/// `SHOW CONFIG`: the configuration in force (after the last reload). `default` is left
/// empty: `docs/CONFIG.md` has them. `changeable` says whether a reload applies the key
/// (else it needs a restart).
pub fn show_config(ctx: &SessionCtx) -> Table {
    let settings = ctx.settings_full();
    let rows = crate::reload::key_values(&settings.config);
    let mut t = Table::new(&[
        ("key", Kind::Text),
        ("value", Kind::Text),
        ("default", Kind::Text),
        ("changeable", Kind::Text),
    ]);
    for (key, value) in rows {
        let changeable = if crate::reload::needs_restart(key) {
            "no"
        } else {
            "yes"
        };
        t.push(vec![cell(key), cell(value), None, cell(changeable)]);
    }
    t
}

/// `SHOW VERSION`: one `version` column, as PgBouncer (and `pgbouncer_exporter`) expect.
pub fn show_version() -> Table {
    let mut t = Table::new(&[("version", Kind::Text)]);
    t.push(vec![cell(concat!("causeway ", env!("CARGO_PKG_VERSION")))]);
    t
}

/// `SHOW HELP`: the commands.
pub fn show_help() -> Table {
    let mut t = Table::new(&[("command", Kind::Text), ("what", Kind::Text)]);
    for (command, what) in [
        (
            "SHOW NODES",
            "each node: role, health, fencing, timeline, lag, read eligibility",
        ),
        (
            "SHOW POOLS",
            "per database and user: clients and server connections",
        ),
        (
            "SHOW CLIENTS",
            "each client connection (id is what KILL takes)",
        ),
        ("SHOW SERVERS", "each server connection, in use or idle"),
        (
            "SHOW STATS",
            "per route: requests, latency p50/p90/p99/p99.9 (microseconds)",
        ),
        ("SHOW STATS_TOTALS", "per route: request totals"),
        (
            "SHOW DATABASES",
            "per database: where it is served, pool limits",
        ),
        (
            "SHOW LISTS",
            "counts of databases, users, pools, clients, servers",
        ),
        ("SHOW CONFIG", "the configuration in force"),
        ("SHOW VERSION", "causeway's version"),
        ("RELOAD", "re-read the configuration file (as SIGHUP)"),
        (
            "PAUSE [db]",
            "hold new transactions, answer once running ones ended",
        ),
        ("RESUME [db]", "let held transactions go"),
        ("KILL <id>", "end one client's session (FATAL 57P01)"),
        (
            "SHUTDOWN",
            "stop as SIGTERM does: running transactions finish",
        ),
    ] {
        t.push(vec![cell(command), cell(what)]);
    }
    t
}
