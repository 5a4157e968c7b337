//! A transaction that died with its server connection while the client had it open. The
//! client still believes it is open: until it ends it, the session answers as PostgreSQL
//! answers in a failed transaction block, so that nothing the client sends next runs outside
//! the transaction it meant (a retried statement that autocommits, then a `COMMIT` that
//! "succeeds", would make half a transaction look committed).
//!
//! - Requests in flight when the connection died fail with the reason; unless one of them
//!   ended the transaction (`COMMIT`, `ROLLBACK`), ReadyForQuery says `E` (`server_lost`).
//! - With nothing in flight, the first request that runs something fails with the reason (the
//!   server's own, say `57P01`, or `08006`) and ReadyForQuery says `E`.
//! - Later requests fail with `25P02` (current transaction is aborted) while the block lasts.
//! - `ROLLBACK` / `ABORT` ends it: `ROLLBACK`, ReadyForQuery `I`. `COMMIT` / `END` ends it
//!   too: with the reason if the client has not heard it yet (its transaction did not
//!   commit), else `ROLLBACK` as PostgreSQL answers a COMMIT of a failed block.
//! - A Close + Sync is answered as usual (see `Session::closes_only`), as a Close is in a
//!   failed block.
//!
//! Nothing here takes a server connection: the block has none.

use bytes::BytesMut;

use super::dispatch::Terminator;
use super::Session;
use crate::protocol::backend::TxStatus;
use crate::protocol::frontend::{self, tag as ftag, Target as DescribeTarget};
use crate::protocol::messages::{self, command_complete, ProxyError};
use crate::protocol::SqlState;
use crate::router::classify::StatementKind;

/// The state of a transaction the client still believes open after its server died.
#[derive(Debug)]
pub(super) struct LostTransaction {
    /// Why it was lost, until the client has been told.
    reason: Option<ProxyError>,
}

impl LostTransaction {
    pub(super) fn new(reason: ProxyError) -> LostTransaction {
        LostTransaction {
            reason: Some(reason),
        }
    }

    /// One whose reason the client has already been told (its requests in flight failed).
    pub(super) fn reported() -> LostTransaction {
        LostTransaction { reason: None }
    }
}

/// How a text ends a transaction block, if it does (every statement in it must).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    No,
    Commit,
    Rollback,
}

impl Session {
    /// Answers a request of a client whose transaction was lost (see the module comment).
    pub(super) fn answer_lost_transaction(&mut self, term: Terminator) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let mut out = BytesMut::new();
        // How the statement last parsed or bound in this batch ends the block.
        let mut last = Ends::No;
        // After an error, the rest of an extended request is skipped up to its Sync.
        let mut skipping = false;
        for f in &batch {
            if skipping && f.tag() != ftag::SYNC {
                continue;
            }
            let body = f.body();
            match f.tag() {
                ftag::QUERY => {
                    let ends = frontend::query_text(body).map_or(Ends::No, |t| self.ends(t));
                    match ends {
                        Ends::No => {
                            self.fail_in_block(&mut out);
                        }
                        end => self.end_block(end, &mut out),
                    }
                    messages::ready_for_query(&mut out, self.tx_status);
                }
                ftag::PARSE => match frontend::parse(body) {
                    Ok(p) if self.lost.is_some() && self.ends(p.query) != Ends::No => {
                        last = self.ends(p.query);
                        self.remember_parsed_here(f, p.name);
                        messages::parse_complete(&mut out);
                    }
                    _ => skipping = self.fail_in_block(&mut out),
                },
                ftag::BIND => {
                    let ends = match frontend::bind(body) {
                        Ok(b) if b.statement.is_empty() => last,
                        Ok(b) => self.named_ends(b.statement),
                        Err(_) => Ends::No,
                    };
                    if self.lost.is_some() && ends != Ends::No {
                        last = ends;
                        messages::bind_complete(&mut out);
                    } else {
                        skipping = self.fail_in_block(&mut out);
                    }
                }
                ftag::DESCRIBE if self.lost.is_some() && last != Ends::No => {
                    if let Ok(DescribeTarget::Statement(_)) = frontend::describe_or_close(body) {
                        messages::parameter_description(&mut out, &[]);
                    }
                    messages::no_data(&mut out);
                }
                ftag::EXECUTE if self.lost.is_some() && last != Ends::No => {
                    self.end_block(last, &mut out);
                    last = Ends::No;
                }
                ftag::CLOSE => {
                    if let Ok(DescribeTarget::Statement(name)) = frontend::describe_or_close(body) {
                        if !name.is_empty() {
                            self.state.statements.remove(name);
                        }
                    }
                    messages::close_complete(&mut out);
                }
                ftag::SYNC => {
                    skipping = false;
                    messages::ready_for_query(&mut out, self.tx_status);
                }
                // A Flush asks for nothing more than what is written here anyway.
                ftag::FLUSH => {}
                _ => skipping = self.fail_in_block(&mut out),
            }
        }
        if skipping && !term.is_complete() {
            self.skip_until_sync = true;
        }
        self.client.push(out);
    }

    /// Fails one message of the failed block: with the reason the first time, then `25P02`
    /// (what PostgreSQL says in a failed transaction block). Once the block has ended (a
    /// `ROLLBACK` earlier in the same request), what follows it in that request fails too:
    /// it would need a server connection, which this answer does not take. Returns true (the
    /// rest of an extended request is skipped).
    fn fail_in_block(&mut self, out: &mut BytesMut) -> bool {
        let e = match self.lost.as_deref_mut().and_then(|l| l.reason.take()) {
            Some(e) => e,
            None if self.lost.is_some() => ProxyError::error(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            )
            .with_detail("Its server connection was lost; ROLLBACK ends it."),
            None => ProxyError::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "a statement sent after the ROLLBACK of a lost transaction in the same request is not run; send it again",
            ),
        };
        if self.lost.is_some() {
            self.tx_status = TxStatus::Failed;
        }
        self.ctx.metrics().count_proxy_error(&e);
        e.encode(out);
        true
    }

    /// A `COMMIT` or `ROLLBACK` of the failed block: the block ends.
    fn end_block(&mut self, ends: Ends, out: &mut BytesMut) {
        let Some(lost) = self.lost.take() else {
            // Already ended earlier in this request.
            self.fail_in_block(out);
            return;
        };
        match (ends, lost.reason) {
            // The client learns here that its transaction did not commit.
            (Ends::Commit, Some(e)) => {
                self.ctx.metrics().count_proxy_error(&e);
                e.encode(out);
            }
            _ => command_complete(out, "ROLLBACK"),
        }
        self.tx_status = TxStatus::Idle;
    }

    /// How `text` ends a transaction block: every statement must be a `COMMIT`/`END` or a
    /// `ROLLBACK`/`ABORT` without `AND CHAIN` (a chained one opens a new block, which needs a
    /// server).
    fn ends(&self, text: &[u8]) -> Ends {
        let a = self.ctx.classifier().analyze(text);
        let mut ends = Ends::No;
        for s in a.statements() {
            ends = match (s.kind, ends) {
                (StatementKind::Commit { chain: false }, _) => Ends::Commit,
                (StatementKind::Rollback { chain: false }, Ends::Commit) => Ends::Commit,
                (StatementKind::Rollback { chain: false }, _) => Ends::Rollback,
                _ => return Ends::No,
            };
        }
        ends
    }

    /// How the client's named statement `name` ends a block.
    fn named_ends(&self, name: &[u8]) -> Ends {
        let Some(def) = self.state.statements.get(name) else {
            return Ends::No;
        };
        let query = def.body.split(|&c| c == 0).next().unwrap_or(&[]);
        self.ends(query)
    }
}
