//! TCP keepalive on client and server sockets (`proxy.tcp_keepalive`).
//!
//! A peer that vanished without closing (a laptop lid shut, a NAT entry expired, a crashed
//! host) is otherwise noticed only when something is written to it: a client gone while idle
//! inside a transaction would hold its server connection, and the locks of its transaction,
//! forever. With keepalive the kernel probes an idle connection after `idle`, then every
//! `idle / 3` (at least a second), and reports the connection dead after [`PROBES`] unanswered
//! probes: a dead peer is found within about twice `idle`.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Unanswered probes before the connection counts as dead (Linux's default is 9, which with
/// its 75 s interval takes over 11 minutes).
pub const PROBES: u32 = 3;

/// Turns keepalive on for `stream` with `idle` before the first probe, or leaves it off for
/// `None`. Best effort, like `TCP_NODELAY`: a socket without it still works.
pub fn set(stream: &TcpStream, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return;
    };
    let interval = (idle / 3).max(Duration::from_secs(1));
    let params = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(PROBES);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&params) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_reaches_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (on, off) = tokio::join!(TcpStream::connect(addr), TcpStream::connect(addr));
        let (on, off) = (on.unwrap(), off.unwrap());
        set(&on, Some(Duration::from_secs(30)));
        set(&off, None);
        let s = SockRef::from(&on);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), PROBES);
        assert!(!SockRef::from(&off).keepalive().unwrap());
    }
}
