//! A loopback TCP relay standing in for a node that misbehaves: listens on
//! `127.0.0.1:<free port>` and forwards every accepted connection to one target address, both
//! ways. On command ([`Mode`]) it turns into:
//! - a black hole: connections (old and new) stay open, but not a byte moves in either
//!   direction until forwarding is switched back on; then whatever waited in the socket buffers
//!   flows again, as after a healed network partition. That is what a hung or partitioned node
//!   looks like to a client: the TCP connection is fine, answers never come;
//! - a node refusing new connections while the ones it has keep working;
//! - a node that is down: the port refuses connections and every relayed connection is cut.
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

/// What the relay does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Keep every connection open, accept new ones, move no byte.
    BlackHole,
    /// Keep forwarding on the connections made so far; close new ones at once.
    RefuseNew,
    /// Stop listening (connection refused) and cut every connection.
    Down,
}

/// A running relay; see the module documentation.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
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
        let (mode, rx) = watch::channel(Mode::Pass);
        let accept = tokio::spawn(accept_loop(listener, addr, target, rx));
        Ok(Relay {
            addr,
            target,
            mode,
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

    /// Switches to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Stops forwarding in both directions; connections stay open and new ones are accepted.
    pub fn black_hole(&self) {
        self.set(Mode::BlackHole);
    }

    /// Forwards again (also what was held back meanwhile).
    pub fn restore(&self) {
        self.set(Mode::Pass);
    }

    /// Whether the relay forwards right now.
    pub fn is_forwarding(&self) -> bool {
        *self.mode.borrow() == Mode::Pass
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks: aborting it drops the set,
        // which aborts them and closes their sockets.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        let now = *mode.borrow_and_update();
        if now == Mode::Down {
            // Refused from now on; the connections see `Down` and end.
            listener = None;
        } else if listener.is_none() {
            // Up again, on the same port (which may take a moment to be free).
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            r = mode.changed() => if r.is_err() { return },
            accepted = async {
                match &listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                let Ok((client, _)) = accepted else { continue };
                // RefuseNew: the accepted socket is dropped, closing it at once.
                if now != Mode::RefuseNew {
                    conns.spawn(relay_one(client, target, mode.clone()));
                }
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn relay_one(client: TcpStream, target: SocketAddr, mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    // Each direction ends at EOF, error or `Down`; the connection is done when both are.
    tokio::join!(
        pump(client_r, server_w, mode.clone()),
        pump(server_r, client_w, mode),
    );
}

/// Copies `from` to `to` while the relay forwards (`Pass` or `RefuseNew`); in a black hole,
/// neither reads nor writes; at `Down` (or when the relay is gone) it ends, dropping both
/// halves.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !until_forwarding(&mut mode).await {
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
            // Switched away from forwarding while waiting for bytes: stop reading (reads are
            // cancel-safe, nothing is lost).
            gone = async { mode.wait_for(|m| !forwards(*m)).await.is_err() } => {
                if gone {
                    return;
                }
                continue;
            }
        };
        // Bytes read just before a switch are held until forwarding resumes.
        if !until_forwarding(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn forwards(m: Mode) -> bool {
    matches!(m, Mode::Pass | Mode::RefuseNew)
}

/// Waits until the relay forwards; false when it is down or gone.
async fn until_forwarding(mode: &mut watch::Receiver<Mode>) -> bool {
    mode.wait_for(|m| forwards(*m) || *m == Mode::Down)
        .await
        .is_ok_and(|m| *m != Mode::Down)
}
