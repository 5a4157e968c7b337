//! A deliberately small HTTP/1.1 server for the operational endpoints: one GET per connection,
//! bounded request size and time, `Connection: close`. It needs no HTTP framework: four fixed
//! paths, no bodies in, small bodies out.
//!
//! - `/live`: 200 while the process runs.
//! - `/ready`: 200 when the proxy can serve: a primary is known, or at least one standby is
//!   eligible for reads; 503 otherwise.
//! - `/metrics`: Prometheus text format.
//! - `/topology`: the current snapshot as JSON.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::router::feedback::Feedback;
use crate::topology::{Topology, TopologyHandle};

/// What the endpoints are handed.
#[derive(Clone)]
pub struct Handles {
    /// The topology snapshot (`/ready`, `/topology`, the node gauges of `/metrics`).
    pub topology: Arc<TopologyHandle>,
    /// The metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// The routing feedback: reads and writes served per node (`/metrics`).
    pub feedback: Arc<Feedback>,
    /// Fires when the proxy shuts down.
    pub shutdown: CancellationToken,
    /// Where each connection's task is tracked.
    pub tasks: TaskTracker,
}

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// Serves until shutdown.
pub async fn run(app: Handles, listener: TcpListener) {
    let shutdown = app.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        app.tasks.clone().spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), serve(app, stream)).await;
        });
    }
}

async fn serve(app: Handles, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let (status, content_type, body) = if method != b"GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else {
        // An `Arc`, not a guard: the response is written while it is alive.
        let topology = app.topology.load_full();
        match path {
            b"/live" => ("200 OK", "text/plain", "live\n".to_owned()),
            b"/ready" => {
                if is_ready(&topology) {
                    ("200 OK", "text/plain", "ready\n".to_owned())
                } else {
                    (
                        "503 Service Unavailable",
                        "text/plain",
                        "no primary and no eligible standby\n".to_owned(),
                    )
                }
            }
            b"/metrics" => (
                "200 OK",
                "text/plain; version=0.0.4",
                app.metrics.render(&app.topology, &app.feedback),
            ),
            b"/topology" => ("200 OK", "application/json", topology_json(&topology)),
            _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Ready: writes can go somewhere, or at least reads can.
pub fn is_ready(t: &Topology) -> bool {
    t.primary.is_some() || t.current().any(|n| n.is_eligible_standby())
}

/// The snapshot as JSON.
pub fn topology_json(t: &Topology) -> String {
    // Removed nodes (out of `[[nodes]]`, or no longer Patroni members) are not listed.
    let nodes: Vec<serde_json::Value> = t
        .current()
        .map(|n| {
            serde_json::json!({
                "address": n.addr,
                "role": n.role.as_str(),
                "healthy": n.healthy,
                "primary": t.primary == Some(n.id),
                "eligible_for_reads": n.is_eligible_standby(),
                "fenced": n.fenced,
                "lsn": n.lsn.map(|l| l.to_string()),
                "timeline": n.timeline,
                "lag_bytes": n.lag_bytes,
                "lag_ms": n.lag.map(|l| l.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    serde_json::json!({
        "epoch": t.epoch,
        "primary": t.primary.map(|p| t.nodes[p].addr.clone()),
        "role_source": t.role_source.as_str(),
        "nodes": nodes,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Lsn;

    #[test]
    fn topology_json_prints_positions_as_postgres_does() {
        let mut t = Topology::initial(&["a:1".into(), "b:2".into()]);
        t.epoch = 7;
        t.primary = Some(0);
        t.nodes[0].role = crate::topology::Role::Primary;
        t.nodes[0].healthy = true;
        t.nodes[0].lsn = Some(Lsn::from(0x16_B374_D848));
        t.nodes[0].timeline = Some(3);
        t.nodes[1].role = crate::topology::Role::Standby;
        t.nodes[1].healthy = true;
        t.nodes[1].within_lag = true;
        t.nodes[1].lsn = Some(Lsn::from(0x300_0060));
        t.nodes[1].lag_bytes = Some(0x16_B374_D848 - 0x300_0060);
        t.nodes[1].lag = Some(std::time::Duration::from_micros(1500));
        // The exact text of before `Lsn` existed: monitoring scripts parse it.
        assert_eq!(
            topology_json(&t),
            r#"{"epoch":7,"nodes":[{"address":"a:1","eligible_for_reads":false,"fenced":false,"healthy":true,"lag_bytes":null,"lag_ms":null,"lsn":"16/B374D848","primary":true,"role":"primary","timeline":3},{"address":"b:2","eligible_for_reads":true,"fenced":false,"healthy":true,"lag_bytes":97449727976,"lag_ms":1.5,"lsn":"0/3000060","primary":false,"role":"standby","timeline":null}],"primary":"a:1","role_source":"probe"}"#
        );
    }

    #[test]
    fn json_names_the_primary() {
        let mut t = Topology::initial(&["a:1".into()]);
        assert!(!is_ready(&t));
        t.primary = Some(0);
        assert!(is_ready(&t));
        let j: serde_json::Value = serde_json::from_str(&topology_json(&t)).unwrap();
        assert_eq!(j["primary"], "a:1");
    }
}
