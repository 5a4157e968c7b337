//! Reading a server's replies on behalf of a session.
//!
//! Every request sent on a connection owes one reply, ended by ReadyForQuery. The connection
//! keeps who owns each one, in order ([`ReplyOwner`]: the client's request, or one of the
//! proxy's own queries), and does its own bookkeeping as the bytes arrive: transaction status,
//! Parses answered or rolled back, reported parameters, COPY state, the statements a stale plan
//! invalidates, the WAL position of the read-your-writes probe. Replies the proxy owns are
//! swallowed here. The session sees only what it must act on, as [`Reply`] events, and answers
//! each with a [`Disposition`]: forward the frame, hold it back (a misroute guard), or drop it.
//!
//! Frames stay in the read buffer while they are looked at. The first `fwd` bytes of the
//! buffer are the client's and the `held` bytes after them a guard's; both leave the buffer in
//! one split each when the session settles ([`ServerConn::settle`]), so a whole reply to a
//! small query is one split, not one per frame.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;

use super::statements::StatementDef;
use super::{BackendError, ServerConn};
use crate::protocol::backend::{self as be, tag as btag, ErrorFields, Step, TxStatus};
use crate::protocol::codec::Header;
use crate::protocol::{
    messages, Lsn, ProtocolError, SqlState, DEFAULT_MAX_MESSAGE_LEN, HEADER_LEN,
};

/// The proxy's read-your-writes probe. The insert position is at or past the end of every
/// record already inserted, the session's commit record included, even before it is flushed.
const LSN_SQL: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()";

/// Who is waiting for the reply that ends at the next ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOwner {
    /// The client: forward the reply.
    Client {
        /// The request ended with Sync (extended protocol) rather than being a simple Query; it
        /// matters when COPY swallows the Sync.
        sync: bool,
        /// Sequence number of the request on this connection (see [`SentParse::seq`]).
        seq: u64,
        /// When the request was sent, for latency.
        sent: Instant,
    },
    /// The proxy itself (parameter sync, statement deallocation): swallow the reply.
    Proxy,
    /// The proxy's `SELECT pg_current_wal_insert_lsn()` after a write (read-your-writes):
    /// capture the value, swallow the reply.
    Lsn,
}

/// A Parse sent to the server whose ParseComplete has not arrived yet.
#[derive(Debug, Clone)]
pub struct SentParse {
    /// The statement's definition.
    pub def: Arc<StatementDef>,
    /// Its name on this server.
    pub server_name: Arc<str>,
    /// The client's name for it; `None` when the proxy added the Parse (its ParseComplete is
    /// swallowed).
    pub client_name: Option<Bytes>,
    /// The request it belongs to: at that request's ReadyForQuery, a Parse still waiting for
    /// its ParseComplete has failed (an error skipped it) and is rolled back.
    pub seq: u64,
}

/// Bookkeeping for requests in flight on a connection.
#[derive(Debug, Default)]
pub struct RequestTrack {
    /// Parses awaiting ParseComplete, oldest first.
    pub(super) parses: VecDeque<SentParse>,
    /// Sequence number the next client request gets.
    pub(super) next_seq: u64,
    /// Frames were forwarded since the last Sync or Query (after a Flush, or a large partial
    /// batch): the connection owes replies without a ReadyForQuery in sight.
    pub(super) unsynced: bool,
    /// The WAL position captured by a [`ReplyOwner::Lsn`] reply, until its ReadyForQuery.
    pub(super) captured_lsn: Option<Lsn>,
    /// The server is in COPY FROM STDIN, waiting for data: `Some(true)` when the COPY was
    /// started through the extended protocol (ending it then needs a Sync too).
    pub(super) copy_in: Option<bool>,
    /// Named statements bound by requests in flight: (request sequence number, definition
    /// hash). A request that fails with "cached plan must not change result type" invalidates
    /// the statements it bound.
    pub(super) binds: VecDeque<(u64, u64)>,
    /// Client statements whose Parse an error skipped (rolled back at their request's
    /// ReadyForQuery): the session forgets the client's name for them.
    pub(super) rolled_back: Vec<(Bytes, Arc<StatementDef>)>,
}

impl RequestTrack {
    /// A ParseComplete arrived: takes its Parse off the queue and says whether the proxy sent
    /// it itself (a statement prepared for this connection, which the client must not see
    /// answered).
    fn parse_completed_for_proxy(&mut self) -> bool {
        self.parses
            .pop_front()
            .is_some_and(|p| p.client_name.is_none())
    }
}

/// What the session is looking for in the replies, beyond what the connection reads for
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Nothing more: replies stream through.
    Replies,
    /// A read sent to a standby is guarded and the standby has not answered yet: the frames
    /// that say nothing yet about whether it can run there ([`held_until_answered`]) are held
    /// back here, counted in place; every other frame of the reply is reported.
    HoldUntilAnswered,
    /// Every frame of the reply is reported (a refused standby read being discarded).
    EveryFrame,
    /// A request that binds prepared statements is guarded against a stale cached plan: the
    /// frames such a guard holds back are reported, and so is the first run of rows.
    GuardedFrames,
}

/// A frame (or run of frames) of a reply the session must act on. The frame is still at the
/// front of what has not been looked at; the session answers with a [`Disposition`].
#[derive(Debug)]
pub enum Reply {
    /// Rows or other undecoded bytes of the client's reply (only under
    /// [`Watch::GuardedFrames`]): the request runs.
    Rows,
    /// ReadyForQuery ending a client request; the connection's status is updated and the Parses
    /// the request's error skipped are rolled back (see [`ServerConn::take_rolled_back`]).
    Ready {
        /// The transaction status.
        status: TxStatus,
        /// When the request was sent.
        sent: Instant,
    },
    /// The read-your-writes probe answered with this position (the reply is swallowed).
    LsnCaptured(Lsn),
    /// CommandComplete of a client request: what its tag means for the session.
    CommandComplete {
        /// `SET`, `RESET`, `DISCARD`: the session's parameters may have changed.
        changes_params: bool,
        /// `DISCARD ALL` / `DEALLOCATE ALL`: every prepared statement is gone (the
        /// connection's own are already forgotten).
        drops_statements: bool,
        /// Why the client must keep this connection from now on, if it must.
        pins: Option<&'static str>,
    },
    /// ParseComplete; `for_proxy` when it answers a Parse the proxy added (the client must not
    /// see it).
    ParseComplete {
        /// The proxy sent the Parse.
        for_proxy: bool,
    },
    /// ErrorResponse of a client request (or an asynchronous one). A FATAL one has already
    /// marked the connection broken.
    Error {
        /// The error.
        fields: Box<ErrorFields>,
        /// "cached plan must not change result type" for a request that bound statements the
        /// proxy prepared: they are invalidated here (the pool hears of it at the next sync).
        stale_plan: bool,
        /// Not part of any request's reply (the server reports it on its own, such as a
        /// FATAL at its shutdown).
        asynchronous: bool,
    },
    /// CopyInResponse: the server waits for the client's COPY data.
    CopyIn,
    /// CopyBothResponse (replication protocol), which the proxy cannot relay.
    CopyBoth,
    /// Any other frame of a request's reply the session asked to see (guards), with its tag.
    Other(u8),
    /// A frame that belongs to no request's reply (a notice, a notification, a parameter
    /// change the server reports on its own), under a guard: it goes to the client as is.
    Async,
}

/// What becomes of the frame a [`Reply`] was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The client gets it.
    Forward,
    /// A guard holds it back (see [`ReplySink::held`]).
    Hold,
    /// Nobody gets it.
    Drop,
}

/// Where the bytes the connection hands out go: the client, or a guard holding them back.
pub trait ReplySink {
    /// Bytes for the client, in order.
    fn client(&mut self, bytes: BytesMut);
    /// Bytes a guard holds back, in order.
    fn held(&mut self, bytes: BytesMut);
    /// The server answers the request a guard held back (under [`Watch::HoldUntilAnswered`]):
    /// what the guard held from earlier reads goes to the client, and the guard ends. The
    /// bytes held in the buffer follow as the client's.
    fn answered(&mut self);
}

/// The connection's reply-reading state.
#[derive(Debug, Default)]
pub(super) struct ReplyCursor {
    /// Bytes at the front of the read buffer that are the client's, not split off yet.
    fwd: usize,
    /// Bytes after `fwd` that a guard holds back, not split off yet.
    held: usize,
    /// Length of the frame (or run) the last [`Reply`] was about, awaiting its disposition.
    at: usize,
}

impl ServerConn {
    /// Reads the next thing in the server's bytes the session must act on. Passthrough bytes
    /// of the client's replies are counted for it; the proxy's own replies are consumed here.
    /// `None`: nothing more until more bytes arrive. The session must answer a `Some` with
    /// [`Self::dispose`] before calling again.
    #[inline]
    pub fn next_reply(
        &mut self,
        mut watch: Watch,
        sink: &mut impl ReplySink,
    ) -> Result<Option<Reply>, BackendError> {
        // `max_message_size` limits what clients send. Messages the proxy reads whole from a
        // server get the server-side limit, never a smaller one: a long error message or
        // parameter value is not a reason to kill the session.
        let max_inspect = DEFAULT_MAX_MESSAGE_LEN;
        loop {
            debug_assert_eq!(self.cursor.at, 0, "a reply was not disposed of");
            let owner = self.pending.front().copied();
            let want_parse_complete = !self.track.parses.is_empty();
            let capture_lsn = owner == Some(ReplyOwner::Lsn);
            // A notification that arrives while the proxy's own reply is being read is still
            // the client's.
            let proxy_reply = matches!(owner, Some(ReplyOwner::Proxy | ReplyOwner::Lsn));
            let start = self.cursor.fwd + self.cursor.held;
            let step = self
                .scanner
                .step(&self.rbuf[start..], max_inspect, |t| {
                    matches!(watch, Watch::EveryFrame | Watch::HoldUntilAnswered)
                        || (watch == Watch::GuardedFrames
                            && matches!(
                                t,
                                btag::BIND_COMPLETE
                                    | btag::CLOSE_COMPLETE
                                    | btag::PARAMETER_DESCRIPTION
                                    | btag::NO_DATA
                                    | btag::NOTICE_RESPONSE
                                    | btag::PARSE_COMPLETE
                            ))
                        || matches!(
                            t,
                            btag::READY_FOR_QUERY
                                | btag::PARAMETER_STATUS
                                | btag::ERROR_RESPONSE
                                | btag::COMMAND_COMPLETE
                                | btag::COPY_IN_RESPONSE
                                | btag::COPY_BOTH_RESPONSE
                        )
                        || (t == btag::PARSE_COMPLETE && want_parse_complete)
                        || (t == btag::DATA_ROW && capture_lsn)
                        || (t == btag::NOTIFICATION_RESPONSE && proxy_reply)
                })
                .map_err(|e| self.proto(e))?;
            // Replies with no owner are asynchronous (NOTIFY, notices): they are the client's.
            let for_client = !proxy_reply;
            match step {
                Step::NeedMore => return Ok(None),
                Step::Passthrough(n) if !for_client => self.swallow(n, sink),
                Step::Passthrough(n) => {
                    if watch == Watch::GuardedFrames && owner.is_some() {
                        self.cursor.at = n;
                        return Ok(Some(Reply::Rows));
                    }
                    self.forward(n, sink);
                }
                Step::Inspect(h) if !for_client => {
                    if let Some(reply) = self.proxy_frame(h, sink)? {
                        // The frame is gone already: nothing to dispose of.
                        return Ok(Some(reply));
                    }
                }
                Step::Inspect(h)
                    if watch == Watch::HoldUntilAnswered
                        && owner.is_some()
                        && held_until_answered(h.tag) =>
                {
                    self.hold_unanswered(h, sink)?;
                }
                Step::Inspect(h)
                    if watch == Watch::HoldUntilAnswered
                        && owner.is_some()
                        && matches!(
                            h.tag,
                            btag::DATA_ROW | btag::COMMAND_COMPLETE | btag::READY_FOR_QUERY
                        ) =>
                {
                    // The standby answers: the guard releases what it held, in order, and the
                    // rest of the reply streams as any other.
                    let c = &mut self.cursor;
                    if c.fwd > 0 {
                        sink.client(self.rbuf.split_to(std::mem::take(&mut c.fwd)));
                    }
                    sink.answered();
                    c.fwd = std::mem::take(&mut c.held);
                    watch = Watch::Replies;
                    if h.tag == btag::DATA_ROW {
                        self.cursor.fwd += h.frame_len;
                    } else if let Some(reply) =
                        self.client_frame(h, owner, watch == Watch::Replies)?
                    {
                        self.cursor.at = h.frame_len;
                        return Ok(Some(reply));
                    } else {
                        self.forward(h.frame_len, sink);
                    }
                }
                Step::Inspect(h) => {
                    if let Some(reply) = self.client_frame(h, owner, watch == Watch::Replies)? {
                        self.cursor.at = h.frame_len;
                        return Ok(Some(reply));
                    }
                    self.forward(h.frame_len, sink);
                }
            }
        }
    }

    /// Carries out the session's answer to the last [`Reply`].
    #[inline]
    pub fn dispose(&mut self, d: Disposition, sink: &mut impl ReplySink) {
        let n = std::mem::take(&mut self.cursor.at);
        match d {
            Disposition::Forward => self.forward(n, sink),
            Disposition::Hold => self.cursor.held += n,
            Disposition::Drop => self.swallow(n, sink),
        }
    }

    /// Takes the frame the last [`Reply`] was about out of the buffer, for the session to keep
    /// (an error a guard may still have to deliver); what was counted before it is settled.
    pub fn take_frame(&mut self, sink: &mut impl ReplySink) -> BytesMut {
        self.settle(sink);
        let n = std::mem::take(&mut self.cursor.at);
        self.rbuf.split_to(n)
    }

    /// Hands out what was counted: the client's bytes to the client, then the held bytes to
    /// the guard.
    #[inline]
    pub fn settle(&mut self, sink: &mut impl ReplySink) {
        let c = &mut self.cursor;
        if c.fwd > 0 {
            sink.client(self.rbuf.split_to(std::mem::take(&mut c.fwd)));
        }
        if c.held > 0 {
            sink.held(self.rbuf.split_to(std::mem::take(&mut c.held)));
        }
    }

    /// The guard ends because the server answers: the client's bytes so far go out, then
    /// `earlier` (what the guard held from earlier reads), and the bytes held in the buffer
    /// become the client's.
    pub fn release_held(
        &mut self,
        sink: &mut impl ReplySink,
        earlier: impl IntoIterator<Item = BytesMut>,
    ) {
        let c = &mut self.cursor;
        if c.fwd > 0 {
            sink.client(self.rbuf.split_to(std::mem::take(&mut c.fwd)));
        }
        for b in earlier {
            sink.client(b);
        }
        c.fwd = std::mem::take(&mut c.held);
    }

    /// Counts `n` bytes at the cursor as the client's. The client's bytes must be contiguous
    /// at the front of the buffer: what a guard holds is handed to it first.
    #[inline]
    fn forward(&mut self, n: usize, sink: &mut impl ReplySink) {
        if self.cursor.held > 0 {
            self.settle(sink);
        }
        self.cursor.fwd += n;
    }

    /// Drops `n` bytes at the cursor (settling what was counted before them).
    fn swallow(&mut self, n: usize, sink: &mut impl ReplySink) {
        self.settle(sink);
        self.rbuf.advance(n);
    }

    /// The body of the frame `h` at the cursor.
    fn body_at(&self, h: Header) -> &[u8] {
        let start = self.cursor.fwd + self.cursor.held;
        &self.rbuf[start + HEADER_LEN..start + h.frame_len]
    }

    /// A frame of the proxy's own reply: consumed here (a notification still goes to the
    /// client).
    fn proxy_frame(
        &mut self,
        h: Header,
        sink: &mut impl ReplySink,
    ) -> Result<Option<Reply>, BackendError> {
        match h.tag {
            btag::NOTIFICATION_RESPONSE => {
                self.forward(h.frame_len, sink);
                return Ok(None);
            }
            btag::READY_FOR_QUERY => {
                self.status = be::ready_for_query(self.body_at(h)).map_err(|e| self.proto(e))?;
                if self.pending.pop_front() == Some(ReplyOwner::Lsn) {
                    self.swallow(h.frame_len, sink);
                    return Ok(self.track.captured_lsn.take().map(Reply::LsnCaptured));
                }
            }
            btag::DATA_ROW => {
                self.track.captured_lsn = parse_lsn_row(self.body_at(h));
            }
            btag::PARAMETER_STATUS => self.record_parameter_at(h)?,
            btag::ERROR_RESPONSE => {
                let fields = be::error_fields(self.body_at(h)).map_err(|e| self.proto(e))?;
                // The proxy's own query failed: a parameter sync rolled back as a whole, so the
                // connection may hold another client's settings while the bookkeeping says the
                // sync applied. It is closed once its client is done with it, never pooled.
                self.broken = true;
                self.params.synced = 0;
                tracing::warn!(server = %self.addr(), error = %fields.message, "internal query failed; the server connection will be closed");
            }
            btag::PARSE_COMPLETE => {
                self.track.parses.pop_front();
            }
            _ => {}
        }
        self.swallow(h.frame_len, sink);
        Ok(None)
    }

    /// The connection's own bookkeeping for a frame of the client's reply (or an asynchronous
    /// one); what the session must hear of it, if anything (else it is forwarded).
    #[inline]
    ///
    /// `quiet`: no guard watches the reply, so frames that change nothing for the session (a
    /// CommandComplete whose tag means nothing to it, a ParseComplete of the client's own
    /// Parse) are forwarded without a [`Reply`].
    fn client_frame(
        &mut self,
        h: Header,
        owner: Option<ReplyOwner>,
        quiet: bool,
    ) -> Result<Option<Reply>, BackendError> {
        let seq = match owner {
            Some(ReplyOwner::Client { seq, .. }) => Some(seq),
            _ => None,
        };
        let reply = match h.tag {
            btag::READY_FOR_QUERY => {
                let status = be::ready_for_query(self.body_at(h)).map_err(|e| self.proto(e))?;
                let (Some(seq), Some(ReplyOwner::Client { sent, .. })) = (seq, owner) else {
                    // A ReadyForQuery nobody asked for: the protocol is broken.
                    return Err(self.proto(ProtocolError::Unexpected {
                        tag: 'Z',
                        context: "without a pending request",
                    }));
                };
                self.status = status;
                self.pending.pop_front();
                self.rollback_unanswered_parses(seq);
                Reply::Ready { status, sent }
            }
            btag::COMMAND_COMPLETE => {
                let tag = self.body_at(h);
                let (changes_params, drops_statements, pins) = (
                    tag_changes_params(tag),
                    tag_drops_statements(tag),
                    tag_pins(tag),
                );
                if quiet && !changes_params && !drops_statements && pins.is_none() {
                    return Ok(None);
                }
                let reply = Reply::CommandComplete {
                    changes_params,
                    drops_statements,
                    pins,
                };
                if matches!(
                    reply,
                    Reply::CommandComplete {
                        drops_statements: true,
                        ..
                    }
                ) {
                    self.statements.clear();
                    self.track.parses.clear();
                }
                reply
            }
            btag::PARSE_COMPLETE => {
                let for_proxy = self.track.parse_completed_for_proxy();
                if quiet && !for_proxy {
                    return Ok(None);
                }
                Reply::ParseComplete { for_proxy }
            }
            btag::PARAMETER_STATUS => {
                self.record_parameter_at(h)?;
                if owner.is_none() {
                    Reply::Async
                } else {
                    Reply::Other(h.tag)
                }
            }
            btag::ERROR_RESPONSE => {
                let fields = be::error_fields(self.body_at(h)).map_err(|e| self.proto(e))?;
                let stale_plan = seq.is_some_and(|s| self.is_stale_plan(&fields, s));
                if stale_plan {
                    // The client sees this error at most once; the statement is prepared
                    // again at its next use.
                    self.invalidate_bound_statements(seq.unwrap_or_default());
                }
                // An error ends COPY IN on the server side.
                self.track.copy_in = None;
                if fields.is_fatal() {
                    self.broken = true;
                }
                Reply::Error {
                    fields: Box::new(fields),
                    stale_plan,
                    asynchronous: owner.is_none(),
                }
            }
            btag::COPY_IN_RESPONSE => {
                // In the extended protocol the Sync that followed Execute is ignored by the
                // server during COPY; the client sends another one after CopyDone, which is
                // the one that gets a ReadyForQuery.
                let extended = matches!(owner, Some(ReplyOwner::Client { sync: true, .. }));
                if extended {
                    self.pending.pop_front();
                }
                self.track.copy_in = Some(extended);
                Reply::CopyIn
            }
            btag::COPY_BOTH_RESPONSE => Reply::CopyBoth,
            btag::DATA_ROW if owner.is_none() => return Ok(None),
            _ if owner.is_none() => Reply::Async,
            t => Reply::Other(t),
        };
        Ok(Some(reply))
    }

    /// A frame of a guarded standby read that says nothing yet about whether the standby can
    /// run it: held back in place (a ParseComplete answering the proxy's own Parse is dropped,
    /// a ParameterStatus recorded first).
    #[inline]
    fn hold_unanswered(
        &mut self,
        h: Header,
        sink: &mut impl ReplySink,
    ) -> Result<(), BackendError> {
        match h.tag {
            btag::PARSE_COMPLETE if self.track.parse_completed_for_proxy() => {
                self.swallow(h.frame_len, sink);
                return Ok(());
            }
            btag::PARAMETER_STATUS => self.record_parameter_at(h)?,
            _ => {}
        }
        self.cursor.held += h.frame_len;
        Ok(())
    }

    /// Records the ParameterStatus frame `h` at the cursor.
    fn record_parameter_at(&mut self, h: Header) -> Result<(), BackendError> {
        let start = self.cursor.fwd + self.cursor.held;
        let body = &self.rbuf[start + HEADER_LEN..start + h.frame_len];
        match self.params.record(body) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.proto(e)),
        }
    }

    /// Client statements whose Parse an error skipped: the session forgets its names for them
    /// (if they still mean the same definitions).
    pub fn take_rolled_back(&mut self) -> Vec<(Bytes, Arc<StatementDef>)> {
        std::mem::take(&mut self.track.rolled_back)
    }

    /// Parses of request `seq` (and earlier) still unanswered at its ReadyForQuery were skipped
    /// after an error: they do not exist on the server, nor for the client. Also forgets the
    /// statements bound by those requests (see [`RequestTrack::binds`]).
    fn rollback_unanswered_parses(&mut self, seq: u64) {
        while self.track.binds.front().is_some_and(|(s, _)| *s <= seq) {
            self.track.binds.pop_front();
        }
        while self.track.parses.front().is_some_and(|p| p.seq <= seq) {
            if let Some(p) = self.track.parses.pop_front() {
                if p.server_name.is_empty() {
                    // The unnamed statement the proxy prepared again was not.
                    self.statements.unnamed = None;
                }
                self.statements.remove(&p.def, &p.server_name);
                if let Some(name) = p.client_name {
                    self.track.rolled_back.push((name, p.def));
                }
            }
        }
    }

    /// Whether an error is PostgreSQL's "cached plan must not change result type" (0A000) for a
    /// request `seq` that bound statements the proxy prepared: DDL changed a statement's result
    /// type after it was prepared on this connection. The code alone is checked (the message
    /// may be translated); another 0A000 for such a request costs one needless re-prepare.
    fn is_stale_plan(&self, e: &ErrorFields, seq: u64) -> bool {
        e.code == SqlState::FEATURE_NOT_SUPPORTED && self.track.binds.iter().any(|(s, _)| *s == seq)
    }

    /// Forgets (and queues for deallocation) the statements request `seq` bound, so their next
    /// use prepares them again; the pool hears of it at the next sync.
    fn invalidate_bound_statements(&mut self, seq: u64) {
        let hashes: smallvec::SmallVec<[u64; 4]> = self
            .track
            .binds
            .iter()
            .filter(|(s, _)| *s == seq)
            .map(|(_, h)| *h)
            .collect();
        for h in hashes {
            self.statements.invalidate(h);
            self.statements.newly_stale.push(h);
        }
    }

    // === the request side of the queue ===

    /// The sequence number the next client request on this connection gets.
    pub fn next_seq(&self) -> u64 {
        self.track.next_seq
    }

    /// A client request ending with Query or Sync was written: its reply is the client's.
    pub fn expect_client_reply(&mut self, sync: bool, sent: Instant) {
        let seq = self.track.next_seq;
        self.pending
            .push_back(ReplyOwner::Client { sync, seq, sent });
        self.track.next_seq += 1;
        self.track.unsynced = false;
    }

    /// Part of a client request was written without Sync (Flush, or a large batch sent on):
    /// replies are owed with no ReadyForQuery in sight.
    pub fn expect_unsynced(&mut self) {
        self.track.unsynced = true;
    }

    /// Writes one of the proxy's own simple queries; its reply is swallowed.
    pub fn send_proxy_query(&mut self, sql: &str) {
        // A simple Query drops the server's unnamed statement.
        self.statements.unnamed = None;
        messages::query(&mut self.wbuf, sql);
        self.pending.push_back(ReplyOwner::Proxy);
    }

    /// Writes the read-your-writes probe: the primary's WAL position, captured from its reply.
    pub fn send_lsn_probe(&mut self) {
        self.statements.unnamed = None;
        messages::query(&mut self.wbuf, LSN_SQL);
        self.pending.push_back(ReplyOwner::Lsn);
        self.track.captured_lsn = None;
    }

    /// Whether replies are owed to requests already sent (a reply pending, or frames sent
    /// without a Sync).
    pub fn owes_replies(&self) -> bool {
        !self.pending.is_empty() || self.track.unsynced
    }

    /// Whether every request sent has been answered in full.
    pub fn replies_done(&self) -> bool {
        self.pending.is_empty() && self.scanner.at_boundary()
    }

    /// Whether a client request still waits for its reply (or frames were sent without Sync).
    pub fn owes_client_reply(&self) -> bool {
        self.track.unsynced
            || self
                .pending
                .iter()
                .any(|o| matches!(o, ReplyOwner::Client { .. }))
    }

    /// How many client requests (each ended by Sync or Query) still wait for their
    /// ReadyForQuery: a client may pipeline several on one connection, and if it dies each one
    /// needs an answer.
    pub fn client_replies_owed(&self) -> usize {
        self.pending
            .iter()
            .filter(|o| matches!(o, ReplyOwner::Client { .. }))
            .count()
    }

    /// Whether frames were sent since the last Sync or Query (after a Flush, or a large
    /// partial batch).
    pub fn is_unsynced(&self) -> bool {
        self.track.unsynced
    }

    /// Whether the connection owes only the proxy's own replies (a probe sent behind the
    /// client's last request): they are already on their way.
    pub fn owes_only_proxy_replies(&self) -> bool {
        !self.pending.is_empty()
            && !self.track.unsynced
            && self
                .pending
                .iter()
                .all(|o| !matches!(o, ReplyOwner::Client { .. }))
    }

    /// Whether the request whose reply is being read is the only client request owed (a
    /// guarded request can be re-run unseen only then).
    pub fn is_only_client_request(&self) -> bool {
        !self.track.unsynced
            && self
                .pending
                .iter()
                .all(|o| !matches!(o, ReplyOwner::Client { .. }))
    }

    /// Whether the server is in COPY FROM STDIN, waiting for the client's data.
    pub fn is_copy_in(&self) -> bool {
        self.track.copy_in.is_some()
    }

    /// Whether the COPY FROM STDIN the server waits in was started through the extended
    /// protocol.
    pub fn is_copy_in_extended(&self) -> bool {
        self.track.copy_in == Some(true)
    }

    /// The client ended (or failed) the COPY it was sending.
    pub fn copy_in_done(&mut self) {
        self.track.copy_in = None;
    }
}

/// Replies a misroute guard holds back until it knows the server will answer the request: they
/// say nothing yet about whether it can run there.
pub fn held_until_answered(tag: u8) -> bool {
    matches!(
        tag,
        btag::BIND_COMPLETE
            | btag::ROW_DESCRIPTION
            | btag::CLOSE_COMPLETE
            | btag::PARAMETER_DESCRIPTION
            | btag::NO_DATA
            | btag::NOTICE_RESPONSE
            | btag::PARAMETER_STATUS
            | btag::PARSE_COMPLETE
    )
}

/// Whether a CommandComplete tag says the session's parameters may have changed.
pub fn tag_changes_params(tag: &[u8]) -> bool {
    tag == b"SET\0" || tag == b"RESET\0" || tag.starts_with(b"DISCARD")
}

/// Whether a CommandComplete tag says every prepared statement of the connection is gone.
pub fn tag_drops_statements(tag: &[u8]) -> bool {
    tag == b"DISCARD ALL\0" || tag == b"DEALLOCATE ALL\0"
}

/// Why a CommandComplete tag pins the client to its server connection, if it does.
pub fn tag_pins(tag: &[u8]) -> Option<&'static str> {
    if tag == b"LISTEN\0" {
        Some("LISTEN")
    } else if tag == b"PREPARE\0" {
        Some("SQL PREPARE")
    } else if tag == b"LOAD\0" {
        Some("LOAD")
    } else {
        None
    }
}

/// The WAL position in a one-column text DataRow (`16/B374D848`).
pub fn parse_lsn_row(body: &[u8]) -> Option<Lsn> {
    let mut columns = be::data_row_columns(body).ok()?;
    if columns.len() != 1 {
        return None;
    }
    Lsn::parse(columns.next()??).ok()
}
