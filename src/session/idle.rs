//! `proxy.client_idle_timeout`: a client that stays idle (between requests, outside a
//! transaction, nothing in flight) that long is told FATAL 57P05 and disconnected.
//! `proxy.idle_transaction_timeout`: one idle inside a transaction that long is told FATAL
//! 25P03, what PostgreSQL's `idle_in_transaction_session_timeout` sends, and disconnected; its
//! transaction is rolled back on the server connection, which goes back to the pool clean (the
//! end of every session does that), so a client that vanished mid-transaction holds no locks.
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

/// Which kind of idleness a session is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
    /// Between requests, outside a transaction.
    Session,
    /// Between requests, inside a transaction.
    Transaction,
}

/// The idle timer of one session.
pub(super) struct IdleTimer {
    /// How long the client may stay idle outside a transaction, if limited.
    session: Option<Duration>,
    /// How long the client may stay idle inside a transaction, if limited.
    transaction: Option<Duration>,
    /// Fires when the current idleness has lasted its limit; meaningful only while `armed`.
    sleep: Pin<Box<Sleep>>,
    /// The idleness seen at the last wait, so the deadline still runs from when it began (a
    /// NOTIFY relayed to an idle client does not restart it).
    armed: Option<Idle>,
}

impl IdleTimer {
    /// A timer for the two limits; `None` (no timer at all) when both keys are off.
    pub(super) fn new(
        session: Option<Duration>,
        transaction: Option<Duration>,
    ) -> Option<Box<IdleTimer>> {
        let first = session.or(transaction)?;
        Some(Box::new(IdleTimer {
            session,
            transaction,
            sleep: Box::pin(tokio::time::sleep(first)),
            armed: None,
        }))
    }

    /// Called before each wait with the session's idleness (`None`: busy): the sleep to poll
    /// during that wait, only while idle in a way that has a limit. Becoming idle, or moving
    /// between the two kinds, starts the deadline over.
    pub(super) fn arm(&mut self, idle: Option<Idle>) -> Option<Pin<&mut Sleep>> {
        let limit = match idle {
            Some(Idle::Session) => self.session,
            Some(Idle::Transaction) => self.transaction,
            None => None,
        };
        let Some(limit) = limit else {
            self.armed = None;
            return None;
        };
        if self.armed != idle {
            self.armed = idle;
            self.sleep.as_mut().reset(Instant::now() + limit);
        }
        Some(self.sleep.as_mut())
    }
}

/// What the client is told when its time is up.
pub(super) fn timeout_error(idle: Idle) -> ProxyError {
    match idle {
        Idle::Session => ProxyError::fatal(
            SqlState::IDLE_SESSION_TIMEOUT,
            "terminating connection due to idle-session timeout (client_idle_timeout)",
        ),
        Idle::Transaction => ProxyError::fatal(
            SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
            "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_runs_from_when_the_session_became_idle() {
        assert!(IdleTimer::new(None, None).is_none());
        let limit = Duration::from_millis(100);
        let idle = Some(Idle::Session);
        let mut t = IdleTimer::new(Some(limit), None).unwrap();
        assert!(t.arm(None).is_none(), "busy: nothing to poll");
        assert!(
            t.arm(Some(Idle::Transaction)).is_none(),
            "no limit in a transaction"
        );
        let before = Instant::now();
        let first = t.arm(idle).unwrap().deadline();
        assert!(first >= before + limit);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let kept = t.arm(idle).unwrap().deadline();
        assert_eq!(kept, first, "wake-ups while idle keep the deadline");
        assert!(t.arm(None).is_none());
        let again = t.arm(idle).unwrap().deadline();
        assert!(again > first, "a request in between starts it over");
        t.arm(idle).unwrap().await;
        assert!(Instant::now() >= again);
    }

    #[tokio::test]
    async fn each_kind_of_idleness_has_its_own_limit() {
        let short = Duration::from_millis(10);
        let long = Duration::from_secs(100);
        let mut t = IdleTimer::new(Some(long), Some(short)).unwrap();
        let before = Instant::now();
        let in_session = t.arm(Some(Idle::Session)).unwrap().deadline();
        assert!(in_session >= before + long);
        let in_tx = t.arm(Some(Idle::Transaction)).unwrap().deadline();
        assert!(in_tx < in_session, "moving into a transaction starts over");
        t.arm(Some(Idle::Transaction)).unwrap().await;
    }
}
