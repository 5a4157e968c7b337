//! Counters and latency histograms, exported in the Prometheus text format on the admin HTTP
//! endpoint `/metrics` (latency as quantile gauges, see [`Metrics::render`]).
//!
//! Counters are prometheus-client atomics created once (the hot path touches a pre-made
//! `Counter`, never a label map). Latency goes into one hdrhistogram per route behind a
//! `parking_lot::Mutex` (one record is a few tens of nanoseconds, and a histogram is ~100 KiB,
//! so there is one per route, not one per connection).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::router::Reason;
use crate::topology::{Role, Topology};

/// Label of a routed request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `primary` or `standby`.
    pub target: &'static str,
    /// Why: `write`, `forced`, `read`, `fallback`, `causal`.
    pub reason: &'static str,
}

/// Label of a pinned session.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PinLabels {
    /// What pinned it.
    pub reason: &'static str,
}

/// Why a request was routed where it went, as labelled in `causeway_requests`, in the order
/// of [`reason_index`].
const REASONS: [&str; 5] = ["write", "forced", "read", "fallback", "causal"];

/// Position of a routing reason in [`REASONS`].
fn reason_index(reason: Reason) -> usize {
    match reason {
        Reason::Write => 0,
        Reason::Forced => 1,
        Reason::Read => 2,
        Reason::Fallback => 3,
        Reason::Causal => 4,
    }
}

/// Index of the role a request ran on in the per-target counters and histograms: the primary,
/// or a standby (a session's connection is on one or the other; `Unknown` never serves).
fn target_index(role: Role) -> usize {
    match role {
        Role::Primary => 0,
        Role::Standby | Role::Unknown => 1,
    }
}

/// All the proxy's metrics.
pub struct Metrics {
    registry: Registry,
    /// Client connections accepted.
    pub clients_accepted: Counter,
    /// Client connections refused at the connection limit.
    pub clients_refused: Counter,
    /// Client connections open now.
    pub clients_active: Gauge,
    /// Requests by target and reason.
    pub requests: Family<RouteLabels, Counter>,
    /// The counters of `requests`, made in advance: `[target][reason]`, in the order of
    /// [`REASONS`] (counting a request hashes no labels).
    request_counters: [[Counter; REASONS.len()]; 2],
    /// Requests answered by a standby with a misroute error and re-run elsewhere.
    pub misroute_retries: Counter,
    /// Sessions pinned to one server connection, by reason.
    pub pinned: Family<PinLabels, Counter>,
    /// Checkouts that gave up after `pool_timeout`.
    pub pool_timeouts: Counter,
    /// Writes after which the primary's WAL position was captured (read-your-writes).
    pub lsn_captures: Counter,
    /// Reads that waited for a standby to replay the session's writes.
    pub causal_waits: Counter,
    /// Total time spent in those waits, in microseconds.
    pub causal_wait_micros: Counter,
    /// Reads after a write for which a standby was asked its replay position directly.
    pub causal_asks: Counter,
    /// Those asks that found the standby caught up (the read went there).
    pub causal_ask_hits: Counter,
    /// Request latency on the primary, in microseconds.
    latency_primary: Mutex<Histogram<u64>>,
    /// Request latency on standbys, in microseconds.
    latency_standby: Mutex<Histogram<u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 us to 1 hour at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("causeway");
        let m = Metrics {
            clients_accepted: Counter::default(),
            clients_refused: Counter::default(),
            clients_active: Gauge::default(),
            requests: Family::default(),
            request_counters: Default::default(),
            misroute_retries: Counter::default(),
            pinned: Family::default(),
            pool_timeouts: Counter::default(),
            lsn_captures: Counter::default(),
            causal_waits: Counter::default(),
            causal_wait_micros: Counter::default(),
            causal_asks: Counter::default(),
            causal_ask_hits: Counter::default(),
            latency_primary: Mutex::new(histogram()),
            latency_standby: Mutex::new(histogram()),
            registry: Registry::default(),
        };
        registry.register(
            "clients_accepted",
            "Client connections accepted",
            m.clients_accepted.clone(),
        );
        registry.register(
            "clients_refused",
            "Client connections refused at max_client_connections",
            m.clients_refused.clone(),
        );
        registry.register(
            "clients_active",
            "Client connections open now",
            m.clients_active.clone(),
        );
        registry.register(
            "requests",
            "Requests by where they ran and why",
            m.requests.clone(),
        );
        registry.register(
            "misroute_retries",
            "Requests a standby refused (read-only, recovery conflict, shutdown) that were re-run elsewhere",
            m.misroute_retries.clone(),
        );
        registry.register(
            "pinned_sessions",
            "Sessions pinned to one server connection, by reason",
            m.pinned.clone(),
        );
        registry.register(
            "pool_timeouts",
            "Checkouts that gave up after pool_timeout",
            m.pool_timeouts.clone(),
        );
        registry.register(
            "lsn_captures",
            "Writes after which the primary's WAL position was captured for read-your-writes",
            m.lsn_captures.clone(),
        );
        registry.register(
            "causal_waits",
            "Reads that waited for a standby to replay the session's writes",
            m.causal_waits.clone(),
        );
        registry.register(
            "causal_wait_microseconds",
            "Time reads spent waiting for a standby to replay the session's writes",
            m.causal_wait_micros.clone(),
        );
        registry.register(
            "causal_asks",
            "Reads after a write for which a standby was asked its replay position directly",
            m.causal_asks.clone(),
        );
        registry.register(
            "causal_ask_hits",
            "Asked standbys that had replayed the session's writes (the read went there)",
            m.causal_ask_hits.clone(),
        );
        let request_counters = [Role::Primary, Role::Standby].map(|role| {
            REASONS.map(|reason| {
                m.requests
                    .get_or_create(&RouteLabels {
                        target: role.as_str(),
                        reason,
                    })
                    .clone()
            })
        });
        Metrics {
            registry,
            request_counters,
            ..m
        }
    }

    /// Counts a routed request.
    pub fn count_request(&self, target: Role, reason: Reason) {
        self.request_counters[target_index(target)][reason_index(reason)].inc();
    }

    /// Counts a pinned session.
    pub fn count_pin(&self, reason: &'static str) {
        self.pinned.get_or_create(&PinLabels { reason }).inc();
    }

    /// Records one request's latency.
    pub fn record_latency(&self, route: Role, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
        let h = match target_index(route) {
            0 => &self.latency_primary,
            _ => &self.latency_standby,
        };
        // Values are clamped into the histogram's range, so recording cannot fail.
        let _ = h.lock().record(micros);
    }

    /// Requests routed to a role since start, all reasons together.
    pub fn requests_on(&self, route: Role) -> u64 {
        self.request_counters[target_index(route)]
            .iter()
            .map(Counter::get)
            .sum()
    }

    /// Mean request latency on a route since start, in microseconds (0 before the first).
    pub fn latency_mean(&self, route: Role) -> f64 {
        match target_index(route) {
            0 => self.latency_primary.lock().mean(),
            _ => self.latency_standby.lock().mean(),
        }
    }

    /// (count, p50, p90, p99, p99.9) in microseconds for a route.
    pub fn latency_summary(&self, route: Role) -> (u64, u64, u64, u64, u64) {
        let h = match target_index(route) {
            0 => self.latency_primary.lock(),
            _ => self.latency_standby.lock(),
        };
        (
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
        )
    }

    /// The Prometheus text exposition: registered metrics, latency quantiles, and one gauge set
    /// per node from the topology snapshot.
    pub fn render(&self, topology: &Topology) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = writeln!(
            out,
            "# HELP causeway_request_latency_microseconds Request latency quantiles since start.\n# TYPE causeway_request_latency_microseconds gauge"
        );
        for (route, name) in [(Role::Primary, "primary"), (Role::Standby, "standby")] {
            let (count, p50, p90, p99, p999) = self.latency_summary(route);
            for (q, v) in [("0.5", p50), ("0.9", p90), ("0.99", p99), ("0.999", p999)] {
                let _ = writeln!(
                    out,
                    "causeway_request_latency_microseconds{{target=\"{name}\",quantile=\"{q}\"}} {v}"
                );
            }
            let _ = writeln!(
                out,
                "causeway_request_latency_microseconds_count{{target=\"{name}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP causeway_node_up Node is healthy (1) or not (0).\n# TYPE causeway_node_up gauge");
        for n in topology.current() {
            let _ = writeln!(
                out,
                "causeway_node_up{{node=\"{}\"}} {}",
                n.addr,
                u8::from(n.healthy)
            );
        }
        let _ = writeln!(out, "# HELP causeway_node_is_primary Node is the primary (1) or not (0).\n# TYPE causeway_node_is_primary gauge");
        for n in topology.current() {
            let _ = writeln!(
                out,
                "causeway_node_is_primary{{node=\"{}\"}} {}",
                n.addr,
                u8::from(topology.primary == Some(n.id))
            );
        }
        let _ = writeln!(out, "# HELP causeway_node_lag_bytes Standby replay lag in bytes.\n# TYPE causeway_node_lag_bytes gauge");
        for n in topology.current().filter(|n| n.role == Role::Standby) {
            if let Some(b) = n.lag_bytes {
                let _ = writeln!(out, "causeway_node_lag_bytes{{node=\"{}\"}} {b}", n.addr);
            }
        }
        let _ = writeln!(out, "# HELP causeway_node_lag_seconds Standby replay lag in time.\n# TYPE causeway_node_lag_seconds gauge");
        for n in topology.current().filter(|n| n.role == Role::Standby) {
            if let Some(l) = n.lag {
                let _ = writeln!(
                    out,
                    "causeway_node_lag_seconds{{node=\"{}\"}} {}",
                    n.addr,
                    l.as_secs_f64()
                );
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_latency_and_nodes() {
        let m = Metrics::new();
        m.count_request(Role::Standby, Reason::Read);
        m.count_request(Role::Standby, Reason::Read);
        m.record_latency(Role::Primary, Duration::from_micros(150));
        let t = Topology::initial(&["a:1".into(), "b:2".into()]);
        let text = m.render(&t);
        assert!(
            text.contains("causeway_requests_total{target=\"standby\",reason=\"read\"} 2"),
            "{text}"
        );
        assert!(text.contains("causeway_node_up{node=\"b:2\"} 0"));
        assert!(text.contains("causeway_request_latency_microseconds_count{target=\"primary\"} 1"));
    }
}
