//! The accept loop: one task per client, bounded twice. Connections that have not finished
//! startup and authentication are bounded by `max_startup_connections`; authenticated clients
//! by `max_client_connections`, counted from authentication on (as PostgreSQL counts
//! `max_connections` after it), so sockets that never log in cannot lock real clients out.
//!
//! A client over a limit still gets a proper answer (FATAL 53300, as PostgreSQL sends for
//! "too many clients") instead of a silently dropped socket, but refusing is cheap and bounded:
//! at most [`MAX_REFUSING`] refusals are under way at once, further sockets are closed at once.
//! Accept errors (for instance running out of file descriptors) are retried with a short backoff
//! instead of ending the listener. The accepted socket becomes a [`ClientStream`] here: no
//! session names `TcpStream`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::stream::{ClientStream, LINGER};
use crate::protocol::messages::ProxyError;
use crate::protocol::SqlState;
use crate::session;
use crate::session::context::SessionCtx;

/// Most refusals (an error written, then a short linger) under way at once.
const MAX_REFUSING: usize = 64;

/// A connection's places under the two limits: it holds a startup slot until it logs in, then
/// needs a client slot.
pub struct Admission {
    /// Held from accept until authentication is over.
    startup: OwnedSemaphorePermit,
    /// The authenticated clients' slots.
    clients: Arc<Semaphore>,
    /// The connection counted in `clients_active`.
    active: ActiveClient,
}

impl Admission {
    /// After authentication: gives the startup slot back and takes a client slot, held until
    /// dropped; when `max_client_connections` clients are in already, only the count in
    /// `clients_active`, held until the refusal is sent.
    pub fn logged_in(self) -> Result<ClientSlot, ActiveClient> {
        drop(self.startup);
        match self.clients.try_acquire_owned() {
            Ok(permit) => Ok(ClientSlot {
                _permit: permit,
                _active: self.active,
            }),
            Err(_) => Err(self.active),
        }
    }
}

/// An authenticated client's place under `max_client_connections`, and its count in
/// `clients_active`, until dropped.
pub struct ClientSlot {
    _permit: OwnedSemaphorePermit,
    _active: ActiveClient,
}

/// A connection counted in the `clients_active` gauge until dropped (with its session's
/// future: the task holds no other future around it, issue 17).
pub struct ActiveClient(prometheus_client::metrics::gauge::Gauge);

impl ActiveClient {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> ActiveClient {
        gauge.inc();
        ActiveClient(gauge.clone())
    }
}

impl Drop for ActiveClient {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The FATAL 53300 a client over a limit gets.
pub fn too_many_clients() -> ProxyError {
    ProxyError::fatal(
        SqlState::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    )
}

/// What the accept loop hands each connection: the two limits, the refusals under way, and
/// the socket options.
struct Gates {
    /// Authenticated clients (`max_client_connections`).
    clients: Arc<Semaphore>,
    /// Connections still logging in (`max_startup_connections`).
    startup: Arc<Semaphore>,
    /// Refusals under way (at most [`MAX_REFUSING`]).
    refusing: Arc<Semaphore>,
    /// `proxy.tcp_nodelay`.
    nodelay: bool,
    /// `proxy.tcp_keepalive`.
    keepalive: Option<Duration>,
}

/// Accepts clients until shutdown.
pub async fn run(app: SessionCtx, listener: TcpListener) {
    let settings = app.settings();
    let gates = Gates {
        clients: Arc::new(Semaphore::new(settings.config.proxy.max_client_connections)),
        startup: Arc::new(Semaphore::new(
            settings.config.proxy.max_startup_connections,
        )),
        refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        nodelay: settings.config.proxy.tcp_nodelay,
        keepalive: settings.config.proxy.tcp_keepalive,
    };
    drop(settings);
    let shutdown = app.shutdown_token().clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => {
                take_queued(&app, &listener, &gates);
                return;
            }
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        start_session(&app, socket, peer, &gates);
    }
}

/// At shutdown, takes the connections the kernel has already queued on this listener before
/// it is closed: closing would reset them, while a new process listening beside this one
/// (`SO_REUSEPORT`) has its own queue and never sees them. They are served like the rest and
/// drained (a client that has not yet sent its first request gets to run it).
///
/// The socket itself is asked (`accept` until it would block), not tokio's readiness: the
/// reactor may not yet have seen the latest connections in the queue (under load it often
/// has not, and `poll_accept` then says there are none), and whatever is left in the queue is
/// reset when the listener closes.
fn take_queued(app: &SessionCtx, listener: &TcpListener, gates: &Gates) {
    let socket = socket2::SockRef::from(listener);
    loop {
        let (accepted, addr) = match socket.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Empty (would block), or out of descriptors: nothing more to take.
            Err(_) => return,
        };
        let Some(peer) = addr.as_socket() else {
            continue;
        };
        let stream = std::net::TcpStream::from(accepted);
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
            start_session(app, stream, peer, gates);
        }
    }
}

/// Hands an accepted connection to a session task, or refuses it over the startup limit.
fn start_session(
    app: &SessionCtx,
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    gates: &Gates,
) {
    super::keepalive::set(&socket, gates.keepalive);
    let stream = ClientStream::from(socket);
    if gates.nodelay {
        let _ = stream.set_nodelay(true);
    }
    match gates.startup.clone().try_acquire_owned() {
        Ok(permit) => {
            let admission = Admission {
                startup: permit,
                clients: gates.clients.clone(),
                active: ActiveClient::new(&app.metrics().clients_active),
            };
            app.metrics().clients_accepted.inc();
            // The session's future made here, so that the task holds it and not also what
            // it was made from (an idle client's task stays small, issue 17).
            let session = session::run(app.clone(), stream, peer, admission);
            app.tasks().spawn(session);
        }
        Err(_) => {
            app.metrics().clients_refused.inc();
            // Dropping the stream closes it at once: no task, no descriptor kept.
            if let Ok(slot) = gates.refusing.clone().try_acquire_owned() {
                app.metrics().count_error(
                    crate::metrics::ErrorSource::Proxy,
                    SqlState::TOO_MANY_CONNECTIONS.code(),
                );
                app.tasks().spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
        }
    }
}

/// Answers a client over the connection limit and closes.
async fn refuse(mut stream: ClientStream) {
    use tokio::io::AsyncWriteExt;
    let e = too_many_clients();
    if tokio::time::timeout(Duration::from_secs(1), stream.write_all(&e.to_bytes()))
        .await
        .is_ok()
    {
        // The client has most likely sent its startup packet already: closing with it unread
        // would reset the connection and could destroy the error on its way.
        stream.linger(LINGER).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned_size<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A client's task is tokio's task cell around this future (and the task tracker's
    /// token): cells are sized in steps of 128 bytes, and up to about 150 bytes of future
    /// the cell takes 256 (issue 17; `--nocapture` prints the size).
    #[test]
    fn a_client_task_stays_small() {
        let task = returned_size(session::run);
        println!("session task future {task} B");
        assert!(task <= 144, "the session task's future is {task} bytes");
    }
}
