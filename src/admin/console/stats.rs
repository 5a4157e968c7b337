//! `SHOW STATS` and `SHOW STATS_TOTALS`: per route (primary, standby), the requests routed
//! there and the latency percentiles from the hdrhistograms in `metrics`.
//!
//! causeway counts per route, not per database: the route's name is in the `database`
//! column, so tools that read PgBouncer's rows by that column still get one row each.

use super::table::{cell, Kind, Table};
use crate::session::context::SessionCtx;
use crate::topology::Role;

/// The routes, as named in the rows.
const ROUTES: [(Role, &str); 2] = [(Role::Primary, "primary"), (Role::Standby, "standby")];

/// `SHOW STATS`: counts, mean and percentiles (microseconds).
pub fn show_stats(ctx: &SessionCtx) -> Table {
    let m = ctx.metrics();
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("total_query_count", Kind::Int),
        ("total_query_time", Kind::Int),
        ("avg_query_time", Kind::Int),
        ("latency_count", Kind::Int),
        ("p50_us", Kind::Int),
        ("p90_us", Kind::Int),
        ("p99_us", Kind::Int),
        ("p99_9_us", Kind::Int),
    ]);
    for (role, name) in ROUTES {
        let (count, p50, p90, p99, p999) = m.latency_summary(role);
        let mean = m.latency_mean(role);
        t.push(vec![
            cell(name),
            cell(m.requests_on(role)),
            cell((mean * count as f64).round() as u64),
            cell(mean.round() as u64),
            cell(count),
            cell(p50),
            cell(p90),
            cell(p99),
            cell(p999),
        ]);
    }
    t
}

/// `SHOW STATS_TOTALS`: PgBouncer's totals columns that causeway counts.
pub fn show_stats_totals(ctx: &SessionCtx) -> Table {
    let m = ctx.metrics();
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("query_count", Kind::Int),
        ("query_time", Kind::Int),
    ]);
    for (role, name) in ROUTES {
        let (count, ..) = m.latency_summary(role);
        let total = (m.latency_mean(role) * count as f64).round() as u64;
        t.push(vec![cell(name), cell(m.requests_on(role)), cell(total)]);
    }
    t
}
