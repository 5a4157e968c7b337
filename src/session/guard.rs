//! The misroute guard: a request that may have to run again is held back until the server has
//! clearly answered it, so that a refusal can be re-run elsewhere without the client seeing it.
//!
//! Two kinds of request are guarded:
//! - a read sent to a standby: a refusal that means "this should not have come here" (25006
//!   read-only; 0A000, such as "cannot access temporary or unlogged relations during
//!   recovery"; a recovery conflict; the standby shutting down or starting up) or a dropped
//!   connection re-runs it on the primary, and a 25006 or 0A000 teaches the router that the
//!   text must run on the primary;
//! - a request that binds prepared statements, alone on its connection outside a transaction:
//!   "cached plan must not change result type" (after DDL) prepares the statements again and
//!   re-runs it once.
//!
//! The guard decides what becomes of each frame of the guarded reply ([`Session::guard_reply`])
//! until the server answers (a row, a result, an error that is not a refusal), when what it
//! held goes out first.

use bytes::BytesMut;

use super::replies::{conn_and_sink, Sink};
use super::{Rerun, Session, SessionError, Terminator};
use crate::backend::replies::{held_until_answered, Disposition, Reply};
use crate::protocol::backend::ErrorFields;
use crate::protocol::messages::ProxyError;
use crate::protocol::SqlState;

/// Most bytes of replies a guard holds back. Past it the guard gives up (what it held goes to
/// the client, and the request will not be re-run): a request that has already produced this
/// much (a `DO` block raising notices in a loop) is answered, and held bytes would not be
/// counted by the backpressure that bounds what waits for the client.
const MAX_HELD: usize = 256 * 1024;

/// A guarded request, kept until the server clearly answers it.
#[derive(Debug)]
pub struct MisrouteGuard {
    /// The request's frames, to send again.
    pub frames: super::Batch,
    /// The request ended with Sync (extended protocol) rather than being a simple Query.
    pub term_is_sync: bool,
    /// Key of its text, learned as a write after a 25006.
    pub learn_key: u64,
    /// Replies held back so far (ParseComplete, BindComplete, ...).
    pub held: smallvec::SmallVec<[BytesMut; 2]>,
    /// The server refused it: swallow the rest of its reply.
    pub discarding: bool,
    /// The refusal's SQLSTATE.
    pub code: String,
    /// The refusal says the text must always run on the primary (a write refused as read-only,
    /// a relation only the primary can read): the router learns it.
    pub learn: bool,
    /// Why the request is guarded: a read sent to a standby (any misroute is retried), or a
    /// request that binds prepared statements (only a stale cached plan is retried).
    pub standby: bool,
    /// The error being discarded (a stale plan), sent to the client after all if the request
    /// cannot be re-run (the client pipelined more requests behind it).
    pub error: Option<BytesMut>,
}

/// The session's misroute guard, if a request is guarded: an `Option<MisrouteGuard>` whose
/// 328 bytes are allocated with the session's first guarded request and kept for the next
/// ones (one allocation per session, none per request). A client that has not sent a guarded
/// request, such as one that logged in and waits, carries 8 bytes for it (issue 17).
#[derive(Default)]
pub struct GuardSlot(Option<Box<Option<MisrouteGuard>>>);

impl GuardSlot {
    /// The guard, if a request is guarded.
    #[inline]
    pub fn as_ref(&self) -> Option<&MisrouteGuard> {
        self.0.as_deref().and_then(Option::as_ref)
    }

    /// The guard, if a request is guarded.
    #[inline]
    pub fn as_mut(&mut self) -> Option<&mut MisrouteGuard> {
        self.0.as_deref_mut().and_then(Option::as_mut)
    }

    /// Ends the guard, handing it over; the slot's allocation stays for the next one.
    #[inline]
    pub fn take(&mut self) -> Option<MisrouteGuard> {
        self.0.as_deref_mut().and_then(Option::take)
    }

    /// Ends the guard where it is (what it still holds is dropped).
    #[inline]
    pub fn end(&mut self) {
        if let Some(slot) = self.0.as_deref_mut() {
            *slot = None;
        }
    }

    /// Gives the allocation back when no request is guarded (a parked session, issue 17).
    pub fn release(&mut self) {
        if self.as_ref().is_none() {
            self.0 = None;
        }
    }

    /// Guards a request (replacing any guard).
    #[inline]
    pub fn set(&mut self, guard: MisrouteGuard) {
        match self.0.as_deref_mut() {
            Some(slot) => *slot = Some(guard),
            None => self.0 = Some(Box::new(Some(guard))),
        }
    }
}

/// Whether a standby's error means "this should not have come here" and the request may be
/// re-run elsewhere: a write refused by a read-only server (25006), what PostgreSQL does not
/// do during recovery (0A000: "cannot access temporary or unlogged relations during
/// recovery", and the like), a recovery conflict (40001 with that wording), or the standby
/// going away (57P01, 57P03). 0A000 is matched by code alone (the message may be translated):
/// the guarded request is a read, so running it on the primary is always safe, and another
/// 0A000 costs one needless trip there.
fn is_misroute(e: &ErrorFields) -> bool {
    e.has_code(&[
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::FEATURE_NOT_SUPPORTED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]) || (e.code == SqlState::SERIALIZATION_FAILURE
        && e.message.contains("conflict with recovery"))
}

impl Session {
    /// The guard's decision on a frame of the reply: `Some` when the guard decided what
    /// becomes of it, `None` when the frame is handled as any other (it is not the guarded
    /// request's, or the server answers and the guard released what it held and ended).
    /// Frames that belong to no request (notices and notifications the server sends on its
    /// own, the proxy's replies) are not the guard's.
    #[inline]
    pub(super) fn guard_reply(&mut self, reply: &Reply) -> Option<Disposition> {
        let g = self.guard.as_mut()?;
        if let Reply::Async
        | Reply::LsnCaptured(_)
        | Reply::Error {
            asynchronous: true, ..
        } = reply
        {
            return None;
        }
        if g.discarding {
            return match reply {
                Reply::Ready { .. } => self.discarded_reply_done(),
                // Rows under a discarding guard cannot come after the error; as before the
                // guard, they would be the client's.
                Reply::Rows => Some(Disposition::Forward),
                _ => Some(Disposition::Drop),
            };
        }
        match reply {
            Reply::ParseComplete { for_proxy: true } => Some(Disposition::Drop),
            Reply::ParseComplete { for_proxy: false } => Some(Disposition::Hold),
            Reply::Other(t) if held_until_answered(*t) => Some(Disposition::Hold),
            Reply::Error {
                fields, stale_plan, ..
            } if (g.standby && is_misroute(fields)) || *stale_plan => {
                if *stale_plan {
                    tracing::debug!(
                        "a prepared statement's result type changed; preparing it again"
                    );
                } else {
                    tracing::debug!(code = %fields.code, "standby refused a read; retrying on the primary");
                }
                g.discarding = true;
                g.code = fields.code.clone();
                // A stale plan is the statement's, not the text's: it is not learned.
                g.learn = g.standby
                    && !*stale_plan
                    && fields.has_code(&[
                        SqlState::READ_ONLY_SQL_TRANSACTION,
                        SqlState::FEATURE_NOT_SUPPORTED,
                    ]);
                let standby = g.standby;
                let (conn, mut sink) = conn_and_sink!(self);
                let conn = conn?;
                if standby {
                    // What was held (in the buffer too) is part of the refused reply.
                    conn.settle(&mut sink);
                    if let Some(g) = sink.guard.as_mut() {
                        g.held.clear();
                    }
                    Some(Disposition::Drop)
                } else {
                    let frame = conn.take_frame(&mut sink);
                    if let Some(g) = sink.guard.as_mut() {
                        g.error = Some(frame);
                    }
                    // Taken already: dropping it drops nothing more.
                    Some(Disposition::Drop)
                }
            }
            // A prepared statement's guard: anything else of the reply means it runs.
            _ => {
                self.release_guard();
                None
            }
        }
    }

    /// Ends the guard if it holds more than [`MAX_HELD`] bytes (called once the bytes read so
    /// far are handed out, so what is held is all in the guard).
    pub(super) fn bound_guard(&mut self) {
        let over = self.guard.as_ref().is_some_and(|g| {
            !g.discarding && g.held.iter().map(|b| b.len()).sum::<usize>() > MAX_HELD
        });
        if over {
            tracing::debug!("a guarded request's held replies reached {MAX_HELD} bytes; no re-run");
            self.release_guard();
        }
    }

    /// The server answers the guarded request: what the guard held goes out first, and the
    /// guard ends.
    fn release_guard(&mut self) {
        self.end_guard(false);
    }

    /// Ends the guard: the client's bytes so far go out, then what the guard held (and, with
    /// `with_error`, the stale-plan error it kept back), then the rest of the reply.
    fn end_guard(&mut self, with_error: bool) {
        let Some(mut g) = self.guard.take() else {
            return;
        };
        let error = if with_error { g.error.take() } else { None };
        if error.is_some() {
            self.ctx
                .metrics()
                .count_error(crate::metrics::ErrorSource::Server, &g.code);
        }
        let Session {
            server,
            client,
            guard,
            ..
        } = self;
        if let Some(conn) = server.as_deref_mut() {
            let mut sink = Sink { client, guard };
            conn.release_held(&mut sink, g.held.drain(..).chain(error));
        }
    }

    /// The ReadyForQuery of a refused, discarded reply: re-run the request, unless the client
    /// pipelined more requests behind it (a stale plan's error then goes to the client after
    /// all).
    fn discarded_reply_done(&mut self) -> Option<Disposition> {
        let rerun_ok = self.guard.as_ref().is_some_and(|g| g.standby)
            || self
                .server
                .as_deref()
                .is_some_and(|c| c.is_only_client_request());
        if rerun_ok {
            self.retry_now = self.guard.take().map(Box::new);
            return Some(Disposition::Drop);
        }
        // Give up the re-run: the client gets the reply as it was.
        self.end_guard(true);
        None
    }

    /// Re-runs a request a standby refused, on the primary, or one whose prepared statement's
    /// plan went stale. After a read-only refusal (the classifier took a write for a read, say
    /// a function created after the catalog was loaded), or a read the standby cannot serve (an
    /// unlogged table), the text is remembered, so it goes to the primary directly from then
    /// on.
    pub(super) async fn retry_on_primary(&mut self, g: MisrouteGuard) -> Result<(), SessionError> {
        let stale = !g.standby;
        let term = if g.term_is_sync {
            Terminator::Sync
        } else {
            Terminator::Query
        };
        if stale {
            tracing::debug!("prepared statement's result type changed; re-running the request");
        } else {
            self.ctx.metrics().misroute_retries.inc();
        }
        if g.learn {
            self.ctx.learn_write(g.learn_key);
        }
        // The standby's connection is done with this request.
        self.maybe_release();
        if self.server.is_some() && !stale {
            // Still held (should not happen outside a transaction): fail rather than guess.
            self.fail_request(
                &ProxyError::error(
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                    "request refused by a standby",
                ),
                term,
            );
            return Ok(());
        }
        // Frames of a following request may already be waiting in the batch: they go after.
        let later = std::mem::replace(&mut self.batch, g.frames);
        let later_len = std::mem::replace(&mut self.batch_len, self.batch.byte_len());
        // A misroute goes to the primary; a stale plan where the router sends it (or on the
        // connection still held), and is not re-run a second time.
        self.rerun = if stale {
            Rerun::StalePlan
        } else {
            Rerun::OnPrimary
        };
        let r = self.dispatch(term).await;
        self.batch = later;
        self.batch_len = later_len;
        r
    }
}
