//! Query cancellation across the proxy.
//!
//! Each client gets its own (pid, secret) from causeway. The session keeps its [`CancelSlot`]
//! pointed at the server process currently running its requests; a CancelRequest carrying the
//! client's key is forwarded to exactly that server process, on whichever node it is.
//!
//! In session mode the pid is the real one of the client's server process (see
//! `Session::begin`), so pids of different nodes, and the proxy's own, may be equal: clients
//! are registered by their whole key, pid and secret (the secret is always the proxy's random
//! one).
//!
//! The slot is updated by its own session only, so its lock is uncontended except while a cancel
//! is being looked up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

pub use crate::backend::cancel::{send_cancel, CancelTarget};
use crate::protocol::startup::CancelKey;

/// Who a registered client is: what the admin console shows (`SHOW CLIENTS`) and selects by
/// (`KILL`, a user removed by a reload). Set once when the session registers.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Role name.
    pub user: Arc<str>,
    /// Database name as the client asked for it.
    pub database: Arc<str>,
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The `application_name` the client sent at startup, if any.
    pub application_name: Option<String>,
    /// When the session registered.
    pub connected: std::time::SystemTime,
    /// An admin console session (not a proxied client).
    pub console: bool,
    /// The user was found by `auth_query`, not in `[[users]]`.
    pub auth_query: bool,
}

impl ClientInfo {
    /// What a client that just logged in tells about itself, now.
    pub fn of(
        accepted: &super::startup::Accepted,
        peer: std::net::SocketAddr,
        console: bool,
    ) -> ClientInfo {
        ClientInfo {
            user: accepted.user.clone(),
            database: accepted.database.clone(),
            peer,
            application_name: accepted
                .params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.clone()),
            connected: std::time::SystemTime::now(),
            console,
            auth_query: accepted.auth_query,
        }
    }
}

/// One client's cancel routing.
#[derive(Debug)]
pub struct CancelSlot {
    /// The secret the client must present.
    secret: i32,
    /// Who the client is.
    info: ClientInfo,
    /// The server process running the client's requests, when there is one.
    target: Mutex<Option<Arc<CancelTarget>>>,
    /// How far the proxy's shutdown has gone, as seen by this session.
    stop: AtomicU8,
    /// The session's task, woken when `stop` rises.
    waker: AtomicWaker,
    /// `waker` holds the session task's waker and no signal has taken it since: polling again
    /// need not register it again (the slot is polled by its own session task only, whose
    /// waker does not change).
    registered: AtomicBool,
    /// The client sent something since the registry's last idle sweep (see
    /// [`CancelRegistry::trim_idle`]).
    active: AtomicBool,
}

/// How far the proxy's shutdown has gone, for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Running.
    None = 0,
    /// Not a stop: the client has sent nothing for a sweep interval; an idle session gives
    /// back its buffers and parks (issue 17). Below the stop levels, so a session waiting
    /// for those alone does not wake for it.
    Trim = 1,
    /// Shutting down: end the session when it is idle.
    Drain = 2,
    /// The grace period is over: end the session now.
    Kill = 3,
}

impl CancelSlot {
    /// Who the client is.
    pub fn info(&self) -> &ClientInfo {
        &self.info
    }

    /// The server process running the client's requests now, if any.
    pub fn target(&self) -> Option<Arc<CancelTarget>> {
        self.target.lock().clone()
    }

    /// Points cancels at a server process (or at nothing).
    pub fn set(&self, target: Option<Arc<CancelTarget>>) {
        *self.target.lock() = target;
    }

    /// Raises the session's stop level and wakes its task.
    pub fn signal(&self, level: Stop) {
        self.stop.fetch_max(level as u8, Ordering::AcqRel);
        self.registered.store(false, Ordering::Release);
        self.waker.wake();
    }

    /// Ready, with the level reached, once the stop level is at least `level`. While nothing
    /// was signalled, polling costs two atomic loads: the waker is registered once, not at
    /// every poll of the relay (a quarter of a percent of a query's instructions otherwise);
    /// unlike a shared `Notify`, no lock that every session contends for.
    pub fn poll_stop(&self, cx: &mut Context<'_>, level: Stop) -> Poll<Stop> {
        if let Some(reached) = self.reached(level) {
            return Poll::Ready(reached);
        }
        if self.registered.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Marked before registering: a signal in between clears the mark again, so the next
        // poll registers anew rather than trusting a waker the signal consumed.
        self.registered.store(true, Ordering::Release);
        self.waker.register(cx.waker());
        match self.reached(level) {
            Some(reached) => Poll::Ready(reached),
            None => Poll::Pending,
        }
    }

    fn reached(&self, level: Stop) -> Option<Stop> {
        match self.stop.load(Ordering::Acquire) {
            l if l < level as u8 => None,
            0 => Some(Stop::None),
            1 => Some(Stop::Trim),
            2 => Some(Stop::Drain),
            _ => Some(Stop::Kill),
        }
    }

    /// Notes that the client sent something (its session is not idle).
    #[inline]
    pub fn touch(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// Asks the session to trim (see [`Stop::Trim`]) and wakes it, unless it was asked
    /// already or is stopping.
    fn request_trim(&self) {
        if self
            .stop
            .compare_exchange(0, Stop::Trim as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.registered.store(false, Ordering::Release);
            self.waker.wake();
        }
    }

    /// The session acted on a trim request (or is no longer idle): clears it, leaving a
    /// stop level alone.
    pub fn clear_trim(&self) {
        let _ =
            self.stop
                .compare_exchange(Stop::Trim as u8, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// How often [`CancelRegistry::trim_idle`] runs.
pub const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Registered clients by the key causeway gave them.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    slots: Arc<Mutex<HashMap<CancelKey, Arc<CancelSlot>>>>,
}

/// Removes a client's slot from the registry when the session ends.
pub struct Registration {
    slots: Arc<Mutex<HashMap<CancelKey, Arc<CancelSlot>>>>,
    key: CancelKey,
    slot: Arc<CancelSlot>,
}

impl Registration {
    /// The slot to update as the session moves between server connections.
    pub fn slot(&self) -> &Arc<CancelSlot> {
        &self.slot
    }

    /// Registers the same slot under another pid (the client's real server pid, in session
    /// mode), before the client is told its key; the secret stays.
    pub fn set_pid(&mut self, pid: i32) {
        let key = CancelKey {
            pid,
            secret: self.key.secret,
        };
        let mut slots = self.slots.lock();
        slots.remove(&self.key);
        slots.insert(key, self.slot.clone());
        self.key = key;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.key);
    }
}

impl CancelRegistry {
    /// Registers a client key.
    pub fn register(&self, key: CancelKey, info: ClientInfo) -> Registration {
        let slot = Arc::new(CancelSlot {
            secret: key.secret,
            info,
            target: Mutex::new(None),
            stop: AtomicU8::new(Stop::None as u8),
            waker: AtomicWaker::new(),
            registered: AtomicBool::new(false),
            active: AtomicBool::new(false),
        });
        self.slots.lock().insert(key, slot.clone());
        Registration {
            slots: self.slots.clone(),
            key,
            slot,
        }
    }

    /// Raises every registered session's stop level (shutdown). A session registered after
    /// this call must check the proxy's shutdown state itself (see `Session::new`).
    pub fn signal_all(&self, level: Stop) {
        let slots: Vec<Arc<CancelSlot>> = self.slots.lock().values().cloned().collect();
        for s in slots {
            s.signal(level);
        }
    }

    /// The idle sweep: asks every session whose client has sent nothing since the last
    /// sweep to trim (see [`Stop::Trim`]); called every [`TRIM_INTERVAL`], so a client idle
    /// for one to two intervals gives back what it holds for requests. Sessions already
    /// asked are not woken again.
    pub fn trim_idle(&self) {
        let idle: Vec<Arc<CancelSlot>> = self
            .slots
            .lock()
            .values()
            .filter(|s| {
                !s.active.swap(false, Ordering::Relaxed)
                    && s.stop.load(Ordering::Acquire) == Stop::None as u8
            })
            .cloned()
            .collect();
        for s in idle {
            s.request_trim();
        }
    }

    /// Every registered client by the pid it was given, in pid order (for the admin console).
    pub fn clients(&self) -> Vec<(i32, Arc<CancelSlot>)> {
        let mut v: Vec<_> = self
            .slots
            .lock()
            .iter()
            .map(|(key, s)| (key.pid, s.clone()))
            .collect();
        v.sort_by_key(|(pid, _)| *pid);
        v
    }

    /// Raises the stop level of the client given `pid`; false if there is none.
    pub fn signal_pid(&self, pid: i32, level: Stop) -> bool {
        let slot = self
            .slots
            .lock()
            .iter()
            .find(|(key, _)| key.pid == pid)
            .map(|(_, s)| s.clone());
        slot.map(|s| s.signal(level)).is_some()
    }

    /// The server process a client key currently maps to, if the key is valid.
    pub fn lookup(&self, key: CancelKey) -> Option<Arc<CancelTarget>> {
        let slot = self.slots.lock().get(&key).cloned()?;
        if slot.secret != key.secret {
            return None;
        }
        let target = slot.target.lock().clone();
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            user: "u".into(),
            database: "d".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            application_name: None,
            connected: std::time::SystemTime::now(),
            console: false,
            auth_query: false,
        }
    }

    #[test]
    fn lookup_needs_the_right_secret_and_ends_with_the_session() {
        let reg = CancelRegistry::default();
        let key = CancelKey { pid: 7, secret: 42 };
        let target = CancelTarget {
            host: "h".into(),
            port: 1,
            key: CancelKey { pid: 99, secret: 1 },
        };
        {
            let info = ClientInfo {
                user: "u".into(),
                database: "d".into(),
                peer: "127.0.0.1:1".parse().unwrap(),
                application_name: None,
                connected: std::time::SystemTime::now(),
                console: false,
                auth_query: false,
            };
            let r = reg.register(key, info);
            assert_eq!(reg.lookup(key), None, "no server yet");
            r.slot().set(Some(Arc::new(target.clone())));
            assert_eq!(reg.lookup(key).as_deref(), Some(&target));
            assert_eq!(reg.lookup(CancelKey { pid: 7, secret: 41 }), None);
        }
        assert_eq!(reg.lookup(key), None);
    }

    #[test]
    fn a_slot_moves_to_its_real_pid_and_equal_pids_do_not_collide() {
        let reg = CancelRegistry::default();
        let target = |pid| CancelTarget {
            host: "h".into(),
            port: 1,
            key: CancelKey { pid, secret: 1 },
        };
        let mut a = reg.register(CancelKey { pid: 7, secret: 42 }, info());
        a.slot().set(Some(Arc::new(target(1))));
        a.set_pid(500);
        assert_eq!(reg.lookup(CancelKey { pid: 7, secret: 42 }), None);
        let moved = reg.lookup(CancelKey {
            pid: 500,
            secret: 42,
        });
        assert_eq!(moved.as_deref(), Some(&target(1)));
        // Another node's server process with the same pid, another client.
        let b = reg.register(
            CancelKey {
                pid: 500,
                secret: 43,
            },
            info(),
        );
        b.slot().set(Some(Arc::new(target(2))));
        drop(b);
        let still = reg.lookup(CancelKey {
            pid: 500,
            secret: 42,
        });
        assert_eq!(still.as_deref(), Some(&target(1)));
    }

    #[test]
    fn an_idle_slot_is_asked_to_trim_once_and_stops_outrank_it() {
        let reg = CancelRegistry::default();
        let r = reg.register(CancelKey { pid: 1, secret: 2 }, info());
        let slot = r.slot().clone();
        assert_eq!(slot.reached(Stop::Trim), None);
        slot.touch();
        reg.trim_idle();
        assert_eq!(
            slot.reached(Stop::Trim),
            None,
            "active since the last sweep"
        );
        reg.trim_idle();
        assert_eq!(slot.reached(Stop::Trim), Some(Stop::Trim));
        assert_eq!(slot.reached(Stop::Drain), None, "a trim is not a stop");
        slot.clear_trim();
        assert_eq!(slot.reached(Stop::Trim), None);
        slot.signal(Stop::Drain);
        slot.clear_trim();
        reg.trim_idle();
        assert_eq!(slot.reached(Stop::Trim), Some(Stop::Drain));
    }
}
