//! The `App` handle: builds the proxy, starts its tasks (watcher, pool maintenance, HTTP
//! endpoints, listener) and stops them. Each task is handed the few handles it needs: sessions a
//! [`SessionCtx`], the HTTP endpoints their own `Handles`. There are no global statics, so
//! several proxies can run in one process (the integration tests do).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::config::Config;
use crate::session::cancel::Stop;
pub use crate::session::context::{SessionCtx, UserSlot};
pub use crate::settings::{Settings, SettingsError, UserEntry};
use crate::topology::watcher;

/// Errors while building or starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration cannot be turned into settings (a user's password is not usable).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How long [`App::shutdown`] waits for sessions to close once the grace period is over (they
/// tell their client, then cancel or roll back on the server).
const KILL_WAIT: Duration = Duration::from_secs(3);

/// Until shutdown, asks the sessions of clients idle for a while to give back their buffers
/// and park (see `CancelRegistry::trim_idle`).
async fn trim_idle_sessions(ctx: SessionCtx) {
    let shutdown = ctx.shutdown_token().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::session::cancel::TRIM_INTERVAL) => {}
        }
        ctx.cancels().trim_idle();
    }
}

/// Keeps the pools in shape until shutdown: idle connections past `server_idle_timeout` or
/// `server_lifetime` are closed, `min_idle` connections are kept open, and the pools of nodes
/// removed from the topology are retired.
async fn maintain_pools(ctx: SessionCtx) {
    let every = ctx.pools().maintenance_interval();
    let shutdown = ctx.shutdown_token().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let topology = ctx.topology().load_full();
        let nodes: Vec<(u64, bool)> = topology
            .nodes
            .iter()
            .map(|n| (n.role_epoch, n.healthy))
            .collect();
        // Nodes no longer in the cluster: their pools drain (connections in use are closed
        // when given back, never cut).
        let retired = ctx
            .pools()
            .retire_nodes(|node| topology.nodes.get(node).is_some_and(|n| n.removed));
        if retired > 0 {
            tracing::info!(pools = retired, "pools of removed nodes retired");
        }
        drop(topology);
        let pass = ctx
            .pools()
            .maintain(|node| nodes.get(node).copied().unwrap_or((0, false)));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pass => {}
        }
    }
}

/// Connections the kernel queues for a listener before it accepts them.
const LISTEN_BACKLOG: u32 = 1024;

/// Opens a listening socket that another causeway process may open beside it
/// (`SO_REUSEPORT`): a new version starts listening on the same address while the old one
/// drains, so a restart refuses no connection (docs/ADMIN.md, "Restart and upgrade"). The
/// kernel only lets processes of the same user share the port.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Port 0 asks for a port of its own: no later process can name it, and a shared one
    // could be handed out twice.
    if addr.port() != 0 {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Cheap-to-clone handle to the running proxy: how it starts and stops. What sessions share
/// is its [`SessionCtx`], which the listener hands to every session (and `App` derefs to, for
/// tests and tools that look inside a running proxy).
#[derive(Clone)]
pub struct App {
    ctx: SessionCtx,
}

impl std::ops::Deref for App {
    type Target = SessionCtx;

    fn deref(&self) -> &SessionCtx {
        &self.ctx
    }
}

impl App {
    /// Builds the proxy from a configuration without starting anything.
    pub fn new(config: Config) -> Result<App, AppError> {
        Ok(App {
            ctx: SessionCtx::new(Settings::new(config)?),
        })
    }

    /// What sessions share.
    pub fn ctx(&self) -> &SessionCtx {
        &self.ctx
    }

    /// Starts the topology watcher and the listener; returns the address actually bound (the
    /// configuration may ask for port 0).
    pub async fn start(&self) -> Result<SocketAddr, AppError> {
        let settings = self.settings_full();
        let cfg = &settings.config;
        let listener = bind_shared(cfg.proxy.listen).map_err(|source| AppError::Listen {
            addr: cfg.proxy.listen,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| AppError::Listen {
            addr: cfg.proxy.listen,
            source,
        })?;
        watcher::spawn(
            self.watcher_settings(),
            self.topology().clone(),
            self.tasks(),
            self.shutdown_token().clone(),
        );
        if let Some(http) = cfg.proxy.http_listen {
            let l = bind_shared(http).map_err(|source| AppError::Listen { addr: http, source })?;
            tracing::info!(addr = %http, "HTTP endpoints listening");
            self.tasks().spawn(crate::admin::http::run(
                crate::admin::http::Handles {
                    topology: self.topology().clone(),
                    metrics: self.metrics().clone(),
                    feedback: self.feedback().clone(),
                    shutdown: self.shutdown_token().clone(),
                    tasks: self.tasks().clone(),
                },
                l,
            ));
        }
        self.tasks().spawn(maintain_pools(self.ctx.clone()));
        self.tasks().spawn(trim_idle_sessions(self.ctx.clone()));
        self.tasks()
            .spawn(crate::net::listener::run(self.ctx.clone(), listener));
        tracing::info!(%local, "causeway listening");
        Ok(local)
    }

    /// Asks every task to stop and waits up to `grace` for sessions to finish. Sessions still
    /// relaying after that are ended (FATAL 57P01 to the client; the running request cancelled
    /// or the open transaction rolled back on the server, as when a client leaves), and waited
    /// for a little longer.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown_token().cancel();
        self.cancels().signal_all(Stop::Drain);
        self.tasks().close();
        if tokio::time::timeout(grace, self.tasks().wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing remaining connections");
            self.kill_token().cancel();
            self.cancels().signal_all(Stop::Kill);
            if tokio::time::timeout(KILL_WAIT, self.tasks().wait())
                .await
                .is_err()
            {
                tracing::warn!("some connections did not close within {KILL_WAIT:?}");
            }
        }
        self.pools().close_idle().await;
    }
}

/// Waits until the proxy is asked to stop: SIGTERM or the admin console's `SHUTDOWN`
/// (graceful: returns false), SIGINT / Ctrl-C (fast: returns true). Meanwhile each SIGHUP
/// reloads the configuration file (see [`crate::reload`]) instead of ending the process, which
/// is the signal's default action.
pub async fn wait_for_stop_signal(ctx: &SessionCtx) -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return true;
        }
    };
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with the admin console");
            None
        }
    };
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping after running transactions finish");
                return false;
            }
            _ = ctx.stop_requested().cancelled() => {
                tracing::info!("SHUTDOWN: stopping after running transactions finish");
                return false;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: stopping now");
                return true;
            }
            _ = hangup => {
                tracing::info!("SIGHUP: reloading the configuration");
                // Logged by `reload` either way; the proxy goes on.
                let _ = crate::reload::reload(ctx);
            }
        }
    }
}

/// The runtime that runs the proxy (`proxy.worker_threads`): one worker thread per core for 0,
/// a single-threaded event loop for 1 (no work stealing or cross-thread wake-ups: the least CPU
/// per query, at most one core), else that many workers.
pub fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn worker_threads_picks_the_runtime() {
        let flavor = |n| super::build_runtime(n).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
        let rt = super::build_runtime(3).unwrap();
        assert_eq!(rt.metrics().num_workers(), 3);
    }
}
