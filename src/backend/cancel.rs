//! Cancelling a query on a server: where the CancelRequest goes and how it is sent.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::startup::CancelKey;

/// Where a cancel for one client must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The server process's own key.
    pub key: CancelKey,
}

/// Sends a CancelRequest to a server, best effort, like libpq's `PQcancel`.
pub async fn send_cancel(target: &CancelTarget, timeout: Duration) {
    let work = async {
        let mut s = TcpStream::connect((target.host.as_str(), target.port)).await?;
        s.write_all(&target.key.to_request()).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(host = %target.host, port = target.port, error = %e, "cancel request failed")
        }
        Err(_) => {
            tracing::warn!(host = %target.host, port = target.port, "cancel request timed out")
        }
    }
}
