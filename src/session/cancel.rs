//! Query cancellation across the proxy.
//!
//! Each client gets its own (pid, secret) from causeway. The session keeps its [`CancelSlot`]
//! pointed at the server process currently running its requests; a CancelRequest carrying the
//! client's key is forwarded to exactly that server process, on whichever node it is.
//!
//! The slot is updated by its own session only, so its lock is uncontended except while a cancel
//! is being looked up.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub use crate::backend::cancel::{send_cancel, CancelTarget};
use crate::protocol::startup::CancelKey;

/// One client's cancel routing.
#[derive(Debug)]
pub struct CancelSlot {
    /// The secret the client must present.
    secret: i32,
    /// The server process running the client's requests, when there is one.
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    /// Points cancels at a server process (or at nothing).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.target.lock() = target;
    }
}

/// Registered clients by the pid causeway gave them.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    slots: Arc<Mutex<HashMap<i32, Arc<CancelSlot>>>>,
}

/// Removes a client's slot from the registry when the session ends.
pub struct Registration {
    slots: Arc<Mutex<HashMap<i32, Arc<CancelSlot>>>>,
    pid: i32,
    slot: Arc<CancelSlot>,
}

impl Registration {
    /// The slot to update as the session moves between server connections.
    pub fn slot(&self) -> &Arc<CancelSlot> {
        &self.slot
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Registers a client key.
    pub fn register(&self, key: CancelKey) -> Registration {
        let slot = Arc::new(CancelSlot {
            secret: key.secret,
            target: Mutex::new(None),
        });
        self.slots.lock().insert(key.pid, slot.clone());
        Registration {
            slots: self.slots.clone(),
            pid: key.pid,
            slot,
        }
    }

    /// The server process a client key currently maps to, if the key is valid.
    pub fn lookup(&self, key: CancelKey) -> Option<CancelTarget> {
        let slot = self.slots.lock().get(&key.pid).cloned()?;
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
            let r = reg.register(key);
            assert_eq!(reg.lookup(key), None, "no server yet");
            r.slot().set(Some(target.clone()));
            assert_eq!(reg.lookup(key), Some(target));
            assert_eq!(reg.lookup(CancelKey { pid: 7, secret: 41 }), None);
        }
        assert_eq!(reg.lookup(key), None);
    }
}
