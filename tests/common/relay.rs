//! A loopback TCP relay for failover tests: listens on `127.0.0.1:<free port>` and forwards
//! every accepted connection to one target address, both ways. On command it turns into a
//! black hole: connections (old and new) stay open, but not a byte moves in either direction
//! until forwarding is switched back on; then whatever waited in the socket buffers flows
//! again, as after a healed network partition. That is what a hung or partitioned node looks
//! like to a client: the TCP connection is fine, answers never come.
//!
//! Dropping the [`Relay`] closes the listener and every relayed connection.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running relay; see the module documentation.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    forwarding: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Starts a relay to `target` (which must be on loopback) in the current tokio runtime,
    /// forwarding.
    pub async fn start(target: SocketAddr) -> io::Result<Relay> {
        if !target.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the test relay only forwards to loopback addresses",
            ));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (forwarding, rx) = watch::channel(true);
        let accept = tokio::spawn(accept_loop(listener, target, rx));
        Ok(Relay {
            addr,
            target,
            forwarding,
            accept,
        })
    }

    /// Where the relay listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the relay listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops forwarding in both directions; connections stay open and new ones are accepted.
    pub fn black_hole(&self) {
        self.forwarding.send_replace(false);
    }

    /// Forwards again (also what was held back meanwhile).
    pub fn restore(&self) {
        self.forwarding.send_replace(true);
    }

    /// Whether the relay forwards right now.
    pub fn is_forwarding(&self) -> bool {
        *self.forwarding.borrow()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks: aborting it drops the set,
        // which aborts them and closes their sockets.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, forwarding: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                conns.spawn(relay_one(client, target, forwarding.clone()));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn relay_one(client: TcpStream, target: SocketAddr, forwarding: watch::Receiver<bool>) {
    let _ = client.set_nodelay(true);
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    // Each direction ends at EOF or error; the connection is done when both are.
    tokio::join!(
        pump(client_r, server_w, forwarding.clone()),
        pump(server_r, client_w, forwarding),
    );
}

/// Copies `from` to `to` while forwarding is on; while it is off, neither reads nor writes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut forwarding: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !until(&mut forwarding, true).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // Switched to black hole while waiting for bytes: stop reading (reads are
            // cancel-safe, nothing is lost).
            still = until(&mut forwarding, false) => {
                if !still {
                    return;
                }
                continue;
            }
        };
        // Bytes read just before a switch are held until forwarding resumes.
        if !until(&mut forwarding, true).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until forwarding is `on`; false when the relay is gone.
async fn until(forwarding: &mut watch::Receiver<bool>, on: bool) -> bool {
    forwarding.wait_for(|f| *f == on).await.is_ok()
}
