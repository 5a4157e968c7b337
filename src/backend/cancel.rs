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

/// Sends a CancelRequest to a server, best effort, like libpq's `PQcancel`, and waits (within
/// `timeout`) until the server closes the cancel connection: PostgreSQL does so once it has
/// signalled the process, so when this returns the cancel can no longer reach a query that
/// starts later (the caller holds the target until then; see
/// `ServerConn::cancel_in_flight`).
pub async fn send_cancel(target: &CancelTarget, timeout: Duration) {
    let work = async {
        let mut s = TcpStream::connect((target.host.as_str(), target.port)).await?;
        s.write_all(&target.key.to_request()).await?;
        s.shutdown().await?;
        // The server sends nothing back; read until it closes.
        let mut sink = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut s, &mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
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
