//! `proxy.client_idle_timeout`: a client that stays idle (between requests, outside a
//! transaction, nothing in flight) that long is told FATAL 57P05 and disconnected.
//!
//! 57P05 (`idle_session_timeout`) is what PostgreSQL 14+ sends for its own
//! `idle_session_timeout`, the same situation seen from the server, so drivers and poolers
//! that already handle it (reconnect and go on) need nothing new; the message names the key, as
//! PgBouncer's `client_idle_timeout` error does. 08006 would say the connection broke, which it
//! did not.
//!
//! The relay's wait (`Session::next_event`) is the hot path, so the timer costs nothing when
//! the key is off (the default): the session holds no timer and reads no clock. When it is on,
//! the session owns one `Sleep`, made once, whose deadline moves (one clock read) only when
//! the session becomes idle, not on every wake-up, and which is polled only while idle.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::protocol::messages::ProxyError;
use crate::protocol::SqlState;

/// The idle timer of one session.
pub(super) struct IdleTimer {
    /// How long the client may stay idle.
    limit: Duration,
    /// Fires `limit` after the session last became idle; meaningful only while `armed`.
    sleep: Pin<Box<Sleep>>,
    /// The session was idle at the last wait, so the deadline still runs from when it became
    /// idle (a NOTIFY relayed to an idle client does not restart it).
    armed: bool,
}

impl IdleTimer {
    /// A timer for `limit`; `None` (no timer at all) when the key is off.
    pub(super) fn new(limit: Option<Duration>) -> Option<Box<IdleTimer>> {
        limit.map(|limit| {
            Box::new(IdleTimer {
                limit,
                sleep: Box::pin(tokio::time::sleep(limit)),
                armed: false,
            })
        })
    }

    /// Called before each wait with whether the session is idle: the sleep to poll during
    /// that wait, only while idle. Becoming idle starts the deadline over.
    pub(super) fn arm(&mut self, idle: bool) -> Option<Pin<&mut Sleep>> {
        if !idle {
            self.armed = false;
            return None;
        }
        if !self.armed {
            self.armed = true;
            self.sleep.as_mut().reset(Instant::now() + self.limit);
        }
        Some(self.sleep.as_mut())
    }
}

/// What the client is told when its time is up.
pub(super) fn timeout_error() -> ProxyError {
    ProxyError::fatal(
        SqlState::IDLE_SESSION_TIMEOUT,
        "terminating connection due to idle-session timeout (client_idle_timeout)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_runs_from_when_the_session_became_idle() {
        assert!(IdleTimer::new(None).is_none());
        let limit = Duration::from_millis(100);
        let mut t = IdleTimer::new(Some(limit)).unwrap();
        assert!(t.arm(false).is_none(), "busy: nothing to poll");
        let before = Instant::now();
        let first = t.arm(true).unwrap().deadline();
        assert!(first >= before + limit);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let kept = t.arm(true).unwrap().deadline();
        assert_eq!(kept, first, "wake-ups while idle keep the deadline");
        assert!(t.arm(false).is_none());
        let again = t.arm(true).unwrap().deadline();
        assert!(again > first, "a request in between starts it over");
        t.arm(true).unwrap().await;
        assert!(Instant::now() >= again);
    }
}
