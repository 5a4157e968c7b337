//! Per-core event loops (`proxy.runtime = "per_core"`): `worker_threads` single-threaded tokio
//! runtimes, each on an OS thread of its own. The accept loop (on the main runtime, with the
//! watcher, the HTTP endpoints and pool maintenance) hands each client to the loop running the
//! fewest sessions; the session, the tasks it spawns and the server connections it opens stay
//! on that loop, so a query's reads, writes and wake-ups happen on one thread with no work
//! stealing and no cross-thread wake-up. What sessions share (settings, topology, pools, the
//! cancel registry, the connection limits) is the same `SessionCtx` as in the shared runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// How long a stopping loop waits for blocking work it started.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One event loop: where to spawn on it and how many sessions it runs.
struct Loop {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
}

/// The running event loops. Dropping this handle does not stop them: [`EventLoops::stop`]
/// does, once the sessions are over.
pub struct EventLoops {
    loops: Vec<Loop>,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Counts a session on its loop until dropped.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventLoops {
    /// Starts `n` event loops (at least one; 0 means one per CPU core).
    pub fn start(n: usize) -> std::io::Result<EventLoops> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            n
        };
        let stop = CancellationToken::new();
        let mut loops = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            loops.push(Loop {
                handle: runtime.handle().clone(),
                sessions: Arc::new(AtomicUsize::new(0)),
            });
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("causeway-loop-{i}"))
                    .spawn(move || {
                        runtime.block_on(stop.cancelled_owned());
                        // Blocking work still running is not waited for beyond this.
                        runtime.shutdown_timeout(SHUTDOWN_WAIT);
                    })?,
            );
        }
        Ok(EventLoops {
            loops,
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// Number of loops.
    pub fn len(&self) -> usize {
        self.loops.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.loops.is_empty()
    }

    /// Sessions running on each loop now.
    pub fn sessions(&self) -> Vec<usize> {
        self.loops
            .iter()
            .map(|l| l.sessions.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs `session` on the loop with the fewest sessions. A future runs where it is polled:
    /// what it opens at its first poll (a socket taken from `std`, server connections) is
    /// registered with that loop.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let chosen = self
            .loops
            .iter()
            .min_by_key(|l| l.sessions.load(Ordering::Relaxed))
            .expect("at least one event loop");
        chosen.sessions.fetch_add(1, Ordering::Relaxed);
        let running = Running(chosen.sessions.clone());
        chosen.handle.spawn(async move {
            let _running = running;
            session.await;
        });
    }

    /// Stops every loop (tasks still on them are dropped) and waits for their threads. Call
    /// after the sessions are over, from outside any loop.
    pub fn stop(&self) {
        self.stop.cancel();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventLoops;

    #[test]
    fn sessions_go_to_the_least_busy_loop_and_stay_on_its_thread() {
        let loops = EventLoops::start(2).unwrap();
        assert_eq!(loops.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let release = tokio_util::sync::CancellationToken::new();
        for _ in 0..4 {
            let tx = tx.clone();
            let release = release.clone();
            loops.spawn(async move {
                let before = std::thread::current().id();
                tokio::task::yield_now().await;
                tx.send((before, std::thread::current().id())).unwrap();
                release.cancelled().await;
            });
        }
        let threads: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        assert!(threads.iter().all(|(a, b)| a == b), "a session moved");
        assert_eq!(loops.sessions(), vec![2, 2]);
        let distinct: std::collections::HashSet<_> = threads.iter().map(|t| t.0).collect();
        assert_eq!(distinct.len(), 2);
        release.cancel();
        for _ in 0..200 {
            if loops.sessions() == vec![0, 0] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(loops.sessions(), vec![0, 0]);
        loops.stop();
    }
}
