//! Counters and latency histograms, exported in the Prometheus text format on the admin HTTP
//! endpoint `/metrics` (latency as a summary in seconds, see [`Metrics::render`]).
//!
//! Counters are prometheus-client atomics created once (the hot path touches a pre-made
//! `Counter`, never a label map; errors, off the hot path, go through a label map whose labels
//! come from a fixed set). Latency goes into one hdrhistogram per route behind a
//! `parking_lot::Mutex` (one record is a few tens of nanoseconds, and a histogram is ~100 KiB,
//! so there is one per route, not one per connection). What other parts count themselves is
//! read when scraped: reads and writes per node from the routing feedback, failovers from the
//! topology handle.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::router::feedback::Feedback;
use crate::router::Reason;
use crate::topology::{Role, TopologyHandle};

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

/// Label of an error sent to a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The SQLSTATE, from a fixed set (see [`crate::protocol::sqlstate::metric_label`]).
    pub sqlstate: &'static str,
    /// Who made the error: `proxy` or `server`.
    pub source: &'static str,
}

/// Who made an error a client was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// causeway itself (a refusal, a timeout, a lost server connection, the console...).
    Proxy,
    /// A server's ErrorResponse, passed on.
    Server,
}

impl ErrorSource {
    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Proxy => "proxy",
            ErrorSource::Server => "server",
        }
    }
}

/// Latency of one route: the histogram, and the exact sum it cannot give.
struct Latency {
    /// Request latencies in microseconds.
    histogram: Histogram<u64>,
    /// Their sum, in microseconds (a summary's `_sum`).
    sum_micros: u64,
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
    /// Of those, the ones parked now: idle, holding no relay, buffers or server connection.
    pub clients_parked: Gauge,
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
    /// Total time spent in those waits, in seconds.
    pub causal_wait_seconds: Counter<f64, AtomicU64>,
    /// Reads after a write for which a standby was asked its replay position directly.
    pub causal_asks: Counter,
    /// Those asks that found the standby caught up (the read went there).
    pub causal_ask_hits: Counter,
    /// Errors sent to clients, by SQLSTATE and source.
    pub errors: Family<ErrorLabels, Counter>,
    /// Request latency per target, in the order of [`target_index`].
    latency: [Mutex<Latency>; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency() -> Mutex<Latency> {
    Mutex::new(Latency {
        // 1 us to 1 hour at 3 significant digits: constant, valid bounds.
        histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant histogram bounds are valid"),
        sum_micros: 0,
    })
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
            clients_parked: Gauge::default(),
            requests: Family::default(),
            request_counters: Default::default(),
            misroute_retries: Counter::default(),
            pinned: Family::default(),
            pool_timeouts: Counter::default(),
            lsn_captures: Counter::default(),
            causal_waits: Counter::default(),
            causal_wait_seconds: Counter::default(),
            causal_asks: Counter::default(),
            causal_ask_hits: Counter::default(),
            errors: Family::default(),
            latency: [latency(), latency()],
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
            "clients_parked",
            "Client connections parked now: idle, holding no relay, buffers or server connection",
            m.clients_parked.clone(),
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
            "causal_wait_seconds",
            "Time reads spent waiting for a standby to replay the session's writes",
            m.causal_wait_seconds.clone(),
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
        registry.register(
            "errors",
            "Errors sent to clients, by SQLSTATE (a fixed set of codes, else the class as 22XXX) and source (proxy or server)",
            m.errors.clone(),
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

    /// Counts an error sent to a client (ERROR or FATAL; notices are not errors).
    pub fn count_error(&self, source: ErrorSource, code: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                sqlstate: crate::protocol::sqlstate::metric_label(code),
                source: source.as_str(),
            })
            .inc();
    }

    /// Counts an error causeway made, if it is one (not a notice).
    pub fn count_proxy_error(&self, e: &crate::protocol::messages::ProxyError) {
        use crate::protocol::sqlstate::Severity;
        if matches!(e.severity, Severity::Error | Severity::Fatal) {
            self.count_error(ErrorSource::Proxy, &e.code);
        }
    }

    /// Records one request's latency.
    pub fn record_latency(&self, route: Role, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut l = self.latency[target_index(route)].lock();
        // Values are clamped into the histogram's range, so recording cannot fail.
        let _ = l.histogram.record(micros);
        l.sum_micros += micros;
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
        self.latency[target_index(route)].lock().histogram.mean()
    }

    /// (count, p50, p90, p99, p99.9) in microseconds for a route.
    pub fn latency_summary(&self, route: Role) -> (u64, u64, u64, u64, u64) {
        let l = self.latency[target_index(route)].lock();
        let h = &l.histogram;
        (
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
        )
    }

    /// The Prometheus text exposition: registered metrics, the latency summaries, failovers,
    /// and per node the topology snapshot's gauges and the reads and writes it served.
    pub fn render(&self, topology: &TopologyHandle, feedback: &Feedback) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = writeln!(
            out,
            "# HELP causeway_request_latency_seconds Request latency since start, from sending the request to its ReadyForQuery.\n# TYPE causeway_request_latency_seconds summary"
        );
        for route in [Role::Primary, Role::Standby] {
            let name = route.as_str();
            let (count, sum, quantiles) = {
                let l = self.latency[target_index(route)].lock();
                let h = &l.histogram;
                let q = [0.5, 0.9, 0.99, 0.999].map(|q| (q, h.value_at_quantile(q)));
                (h.len(), l.sum_micros, q)
            };
            for (q, v) in quantiles {
                let _ = writeln!(
                    out,
                    "causeway_request_latency_seconds{{target=\"{name}\",quantile=\"{q}\"}} {}",
                    seconds(v)
                );
            }
            let _ = writeln!(
                out,
                "causeway_request_latency_seconds_sum{{target=\"{name}\"}} {}\ncauseway_request_latency_seconds_count{{target=\"{name}\"}} {count}",
                seconds(sum)
            );
        }
        let _ = writeln!(
            out,
            "# HELP causeway_failovers Changes of primary seen by the topology watcher (a known primary replaced by another node).\n# TYPE causeway_failovers counter\ncauseway_failovers_total {}",
            topology.failovers()
        );
        let topology = topology.load_full();
        let _ = writeln!(out, "# HELP causeway_node_requests Requests sent to the node, by the classifier's verdict (read or write).\n# TYPE causeway_node_requests counter");
        for n in &topology.nodes {
            let served = feedback.served(n.id);
            for (kind, v) in [("read", served.reads), ("write", served.writes)] {
                let _ = writeln!(
                    out,
                    "causeway_node_requests_total{{node=\"{}\",kind=\"{kind}\"}} {v}",
                    n.addr
                );
            }
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

/// Microseconds as seconds, for the exposition.
fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
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
        m.record_latency(Role::Primary, Duration::from_micros(250));
        m.count_error(ErrorSource::Server, "22012");
        m.count_error(ErrorSource::Server, "22018");
        m.count_error(ErrorSource::Server, "22019");
        m.count_proxy_error(&crate::protocol::messages::ProxyError::error(
            crate::protocol::SqlState::TOO_MANY_CONNECTIONS,
            "full",
        ));
        let feedback = Feedback::new(2);
        feedback.count_served(1, crate::router::Class::Read);
        feedback.count_served(1, crate::router::Class::ReadOnlyBegin);
        feedback.count_served(0, crate::router::Class::Write);
        let t = TopologyHandle::new(crate::topology::Topology::initial(&[
            "a:1".into(),
            "b:2".into(),
        ]));
        let text = m.render(&t, &feedback);
        for line in [
            "causeway_requests_total{target=\"standby\",reason=\"read\"} 2",
            "causeway_node_up{node=\"b:2\"} 0",
            "causeway_request_latency_seconds_count{target=\"primary\"} 2",
            "causeway_request_latency_seconds_sum{target=\"primary\"} 0.0004",
            "causeway_request_latency_seconds{target=\"primary\",quantile=\"0.99\"} 0.00025",
            "causeway_errors_total{sqlstate=\"22012\",source=\"server\"} 1",
            "causeway_errors_total{sqlstate=\"22XXX\",source=\"server\"} 2",
            "causeway_errors_total{sqlstate=\"53300\",source=\"proxy\"} 1",
            "causeway_failovers_total 0",
            "causeway_node_requests_total{node=\"b:2\",kind=\"read\"} 2",
            "causeway_node_requests_total{node=\"a:1\",kind=\"write\"} 1",
            "causeway_node_requests_total{node=\"a:1\",kind=\"read\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
