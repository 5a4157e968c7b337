//! The accept loop: one task per client, bounded by `max_client_connections`.
//!
//! A client over the limit still gets a proper answer (FATAL 53300, as PostgreSQL sends for
//! "too many clients") instead of a silently dropped socket. Accept errors (for instance running
//! out of file descriptors) are retried with a short backoff instead of ending the listener.
//! The accepted socket becomes a [`ClientStream`] here: no session names `TcpStream`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::stream::{ClientStream, LINGER};
use crate::protocol::messages::ProxyError;
use crate::protocol::SqlState;
use crate::session;
use crate::session::context::SessionCtx;

/// Accepts clients until shutdown.
pub async fn run(app: SessionCtx, listener: TcpListener) {
    let settings = app.settings();
    let limit = Arc::new(Semaphore::new(settings.config.proxy.max_client_connections));
    let nodelay = settings.config.proxy.tcp_nodelay;
    drop(settings);
    let shutdown = app.shutdown_token().clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => {
                take_queued(&app, &listener, &limit, nodelay);
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
        start_session(&app, socket, peer, &limit, nodelay);
    }
}

/// At shutdown, takes the connections the kernel has already queued on this listener before
/// it is closed: closing would reset them, while a new process listening beside this one
/// (`SO_REUSEPORT`) has its own queue and never sees them. They are served like the rest and
/// drained (a client that has not yet sent its first request gets to run it).
fn take_queued(app: &SessionCtx, listener: &TcpListener, limit: &Arc<Semaphore>, nodelay: bool) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while let std::task::Poll::Ready(Ok((socket, peer))) = listener.poll_accept(&mut cx) {
        start_session(app, socket, peer, limit, nodelay);
    }
}

/// Hands an accepted connection to a session task, or refuses it over the limit.
fn start_session(
    app: &SessionCtx,
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    limit: &Arc<Semaphore>,
    nodelay: bool,
) {
    let stream = ClientStream::from(socket);
    if nodelay {
        let _ = stream.set_nodelay(true);
    }
    match limit.clone().try_acquire_owned() {
        Ok(permit) => {
            let app = app.clone();
            app.metrics().clients_accepted.inc();
            app.metrics().clients_active.inc();
            app.tasks().clone().spawn(async move {
                session::run(app.clone(), stream, peer).await;
                app.metrics().clients_active.dec();
                drop(permit);
            });
        }
        Err(_) => {
            app.metrics().clients_refused.inc();
            app.tasks().spawn(refuse(stream));
        }
    }
}

/// Answers a client over the connection limit and closes.
async fn refuse(mut stream: ClientStream) {
    use tokio::io::AsyncWriteExt;
    let e = ProxyError::fatal(
        SqlState::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    );
    if tokio::time::timeout(Duration::from_secs(1), stream.write_all(&e.to_bytes()))
        .await
        .is_ok()
    {
        // The client has most likely sent its startup packet already: closing with it unread
        // would reset the connection and could destroy the error on its way.
        stream.linger(LINGER).await;
    }
}
