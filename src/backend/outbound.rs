//! Turning a client's batch into what one particular server connection must receive, and the
//! proxy's own requests that keep the connection in line with the client (parameters,
//! statement deallocation).
//!
//! - Named prepared statements are renamed to the connection's own names; a statement the
//!   client prepared elsewhere is prepared here first, in front of the batch (its ParseComplete
//!   is swallowed on the way back). Close of a named statement only forgets the client's name:
//!   the server-side statement may serve other clients, so the Close sent on is aimed at a name
//!   that never exists, which PostgreSQL answers with a plain CloseComplete.
//! - The unnamed statement keeps its name; a Bind or Describe of it in a later request than its
//!   Parse finds the connection's unnamed statement different from the client's (another
//!   connection, or a simple Query of the proxy's dropped it) and prepares the client's in
//!   front of the batch, as for a named one.
//! - Session parameters are brought in line with the client's (`RESET` / `set_config`) by a
//!   query the proxy adds in front, whose reply is swallowed.
//!
//! Messages without statement names go through byte for byte.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::connection::ServerParams;
use super::replies::SentParse;
use super::statements::{ClientStatements, StatementDef, UnnamedStatement};
use super::{BackendError, ServerConn};
use crate::protocol::backend::ErrorFields;
use crate::protocol::batch::Passthrough;
use crate::protocol::codec::{put_cstr, put_frame_parts, put_frame_with};
use crate::protocol::frontend::{self, tag as ftag, Target};
use crate::protocol::{Batch, FrameRef, ProtocolError};

/// A statement name that never exists on a server: Close aimed at it is a no-op.
const NO_SUCH_STATEMENT: &[u8] = b"causeway_no_such_statement";

impl ServerConn {
    /// Appends the client's `batch` to the write buffer, rewritten for this connection, as the
    /// next client request (its replies are announced with
    /// [`ServerConn::expect_client_reply`]). `client` is the client's named statements,
    /// `unnamed` its unnamed one.
    pub fn write_batch(
        &mut self,
        batch: &Batch,
        client: &mut ClientStatements,
        unnamed: &mut UnnamedStatement,
    ) -> Result<(), ProtocolError> {
        let seq = self.track.next_seq;
        let mut clients = ClientSide { client, unnamed };
        write_batch(batch, &mut clients, self, seq)
    }

    /// Deallocates the statements evicted from the connection's cache or found stale, with a
    /// request of the proxy's own; only while nothing else runs on the connection.
    pub fn queue_pending_closes(&mut self) {
        if self.status.is_in_transaction() || self.statements.pending_close_len() == 0 {
            return;
        }
        let names = self.statements.take_pending_close();
        close_statements(&mut self.wbuf, &names);
        self.pending.push_back(super::replies::ReplyOwner::Proxy);
    }

    /// The query that brings the connection's session parameters in line with the client's
    /// (`desired`, whose fingerprint is `desired_id`); `None` when they already match (the
    /// common case, answered without building anything when the fingerprint matches). The
    /// bookkeeping counts the query as applied: if it fails, the connection must be marked
    /// broken.
    pub fn param_sync_query(
        &mut self,
        desired: &[(String, String)],
        desired_id: u64,
    ) -> Option<String> {
        param_sync_sql(desired, desired_id, &mut self.params)
    }

    /// Applies the client's parameters now and waits for the result (at startup, where a bad
    /// parameter must fail the connection as PostgreSQL would). `Ok(Err(_))`: the server
    /// refused a value; the connection is then marked broken.
    pub async fn sync_params_now(
        &mut self,
        desired: &[(String, String)],
        desired_id: u64,
        timeout: std::time::Duration,
    ) -> Result<Result<(), ErrorFields>, BackendError> {
        let Some(sql) = param_sync_sql(desired, desired_id, &mut self.params) else {
            return Ok(Ok(()));
        };
        let r = self.run_internal(&sql, timeout).await?;
        if r.is_err() {
            self.broken = true;
        }
        Ok(r)
    }

    /// Reads the session-level settings back from the server after the client changed some
    /// (`SET`, `RESET`, `DISCARD`): they become the connection's known state, and are returned
    /// as the client's parameters. A server error marks the connection broken.
    pub async fn read_back_params(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Option<BTreeMap<String, String>>, BackendError> {
        let mut rows = BTreeMap::new();
        let result = self
            .query_internal(REFRESH_SQL, timeout, |row| {
                if let Some((k, v)) = parse_setting_row(row) {
                    rows.insert(k, v);
                }
            })
            .await?;
        match result {
            Ok(()) => {
                self.params.applied = rows.clone();
                self.params.synced = 0;
                Ok(Some(rows))
            }
            Err(fields) => {
                tracing::warn!(error = %fields.message, "could not read session parameters back");
                self.broken = true;
                Ok(None)
            }
        }
    }
}

/// The client's prepared statements, as a batch is rewritten.
struct ClientSide<'a> {
    /// Named, by the client's name.
    client: &'a mut ClientStatements,
    /// The unnamed one.
    unnamed: &'a mut UnnamedStatement,
}

/// Appends `batch` to the connection's write buffer, rewritten for it. `seq` is the sequence
/// number of the request the batch belongs to.
fn write_batch(
    batch: &Batch,
    client: &mut ClientSide<'_>,
    server: &mut ServerConn,
    seq: u64,
) -> Result<(), ProtocolError> {
    let mut prelude = BytesMut::new();
    let mut prelude_parses = Vec::new();
    // The batch goes straight into the write buffer; statements it needs prepared first
    // (rare) are moved in front of it at the end.
    let start = server.wbuf.len();
    server.wbuf.reserve(batch.byte_len() + 64);
    let mut body = std::mem::take(&mut server.wbuf);
    let mut batch_parses = Vec::new();
    let result = rewrite_frames(
        batch,
        client,
        server,
        seq,
        &mut body,
        &mut prelude,
        &mut prelude_parses,
        &mut batch_parses,
    );
    if let Err(e) = result {
        body.truncate(start);
        server.wbuf = body;
        return Err(e);
    }
    if !prelude.is_empty() {
        let rewritten = body.split_off(start);
        body.extend_from_slice(&prelude);
        body.extend_from_slice(&rewritten);
    }
    server.wbuf = body;
    if !prelude_parses.is_empty() {
        server.track.parses.extend(prelude_parses);
    }
    if !batch_parses.is_empty() {
        server.track.parses.extend(batch_parses);
    }
    Ok(())
}

/// The body of [`write_batch`]: appends the rewritten frames to `body`, statements to prepare
/// first to `prelude`.
#[allow(clippy::too_many_arguments)]
fn rewrite_frames(
    batch: &Batch,
    side: &mut ClientSide<'_>,
    server: &mut ServerConn,
    seq: u64,
    body: &mut BytesMut,
    prelude: &mut BytesMut,
    prelude_parses: &mut Vec<SentParse>,
    batch_parses: &mut Vec<SentParse>,
) -> Result<(), ProtocolError> {
    let client = &mut *side.client;
    let mut out = Out {
        body,
        run: Passthrough::default(),
    };
    // Whether the batch itself parsed the unnamed statement (or dropped it) before the frame
    // at hand: its later Binds need nothing prepared.
    let mut unnamed_here = false;
    for frame in batch {
        let b = frame.body();
        match frame.tag() {
            ftag::PARSE => {
                let p = frontend::parse(b)?;
                if p.name.is_empty() {
                    // Tag, length and the name's NUL: the rest is the definition.
                    let tail = frame.bytes_from(6);
                    *side.unnamed = Some(tail.clone());
                    server.statements.unnamed = Some(tail);
                    unnamed_here = true;
                    out.copy(frame);
                    continue;
                }
                let tail = frame.bytes_from(5 + p.name.len() + 1);
                let def = StatementDef::new(tail.clone());
                let server_name = server.statements.fresh_name();
                put_frame_with(out.put(), ftag::PARSE, |o| {
                    put_cstr(o, server_name.as_bytes());
                    o.put_slice(&tail);
                });
                server.statements.insert(def.clone(), server_name.clone());
                let client_name = Bytes::copy_from_slice(p.name);
                client.insert(client_name.clone(), def.clone());
                batch_parses.push(SentParse {
                    def,
                    server_name,
                    client_name: Some(client_name),
                    seq,
                });
            }
            ftag::BIND => {
                let v = frontend::bind(b)?;
                if v.statement.is_empty() {
                    if !unnamed_here {
                        prepare_unnamed(side.unnamed, server, prelude, prelude_parses, seq);
                        unnamed_here = true;
                    }
                    out.copy(frame);
                    continue;
                }
                let Some((name, hash)) =
                    server_name_for(v.statement, client, server, prelude, prelude_parses, seq)
                else {
                    out.copy(frame);
                    continue;
                };
                server.track.binds.push_back((seq, hash));
                // The portal with its NUL, the server's name, then the client's NUL after its
                // name and the untouched rest (formats, values, result formats).
                let portal_end = v.portal.len() + 1;
                put_frame_parts(
                    out.put(),
                    ftag::BIND,
                    &[
                        &b[..portal_end],
                        name.as_bytes(),
                        &b[portal_end + v.statement.len()..],
                    ],
                );
            }
            ftag::DESCRIBE => match frontend::describe_or_close(b)? {
                Target::Statement(s) if !s.is_empty() => {
                    match server_name_for(s, client, server, prelude, prelude_parses, seq) {
                        Some((name, _)) => put_frame_with(out.put(), ftag::DESCRIBE, |o| {
                            o.put_u8(b'S');
                            put_cstr(o, name.as_bytes());
                        }),
                        None => out.copy(frame),
                    }
                }
                Target::Statement(_) => {
                    if !unnamed_here {
                        prepare_unnamed(side.unnamed, server, prelude, prelude_parses, seq);
                        unnamed_here = true;
                    }
                    out.copy(frame);
                }
                _ => out.copy(frame),
            },
            ftag::CLOSE => match frontend::describe_or_close(b)? {
                Target::Statement(s) if !s.is_empty() => {
                    client.remove(s);
                    put_frame_with(out.put(), ftag::CLOSE, |o| {
                        o.put_u8(b'S');
                        put_cstr(o, NO_SUCH_STATEMENT);
                    });
                }
                Target::Statement(_) => {
                    // Closes the server's unnamed statement, whatever it was.
                    *side.unnamed = None;
                    server.statements.unnamed = None;
                    unnamed_here = true;
                    out.copy(frame);
                }
                _ => out.copy(frame),
            },
            ftag::QUERY => {
                // A simple Query drops the unnamed statement, the client's and the server's.
                *side.unnamed = None;
                server.statements.unnamed = None;
                out.copy(frame);
            }
            _ => out.copy(frame),
        }
    }
    out.run.flush(out.body);
    Ok(())
}

/// The rewritten batch as it is written: frames copied on unchanged gather into runs (see
/// [`Passthrough`]), and a rewritten frame is written behind the run before it.
struct Out<'a, 'b> {
    body: &'b mut BytesMut,
    run: Passthrough<'a>,
}

impl<'a> Out<'a, '_> {
    /// Copies `frame` on unchanged.
    #[inline]
    fn copy(&mut self, frame: FrameRef<'a>) {
        self.run.add(frame, self.body);
    }

    /// The buffer, to write a rewritten frame into, with every frame before it written.
    #[inline]
    fn put(&mut self) -> &mut BytesMut {
        self.run.flush(self.body);
        self.body
    }
}

/// The server-side name for the client's statement `name` on this connection, preparing it in
/// `prelude` if needed, and the statement's definition hash. `None` when the client has no
/// such statement (the message goes on unchanged and the server reports the error with the
/// client's own name).
fn server_name_for(
    name: &[u8],
    client: &ClientStatements,
    server: &mut ServerConn,
    prelude: &mut BytesMut,
    prelude_parses: &mut Vec<SentParse>,
    seq: u64,
) -> Option<(std::sync::Arc<str>, u64)> {
    let def = client.get(name)?;
    if let Some(n) = server.statements.name_of(def) {
        return Some((n.clone(), def.hash));
    }
    let server_name = server.statements.fresh_name();
    put_frame_with(prelude, ftag::PARSE, |o| {
        put_cstr(o, server_name.as_bytes());
        o.put_slice(&def.body);
    });
    server.statements.insert(def.clone(), server_name.clone());
    prelude_parses.push(SentParse {
        def: def.clone(),
        server_name: server_name.clone(),
        client_name: None,
        seq,
    });
    Some((server_name, def.hash))
}

/// Prepares the client's unnamed statement (`unnamed`) in `prelude` when the connection's is
/// not the same: it was parsed in an earlier request, which may have run elsewhere. Nothing
/// when the client has none (the server reports the error, or finds its own).
fn prepare_unnamed(
    unnamed: &UnnamedStatement,
    server: &mut ServerConn,
    prelude: &mut BytesMut,
    prelude_parses: &mut Vec<SentParse>,
    seq: u64,
) {
    let Some(tail) = unnamed else {
        return;
    };
    if server.statements.unnamed.as_ref() == Some(tail) {
        return;
    }
    put_frame_with(prelude, ftag::PARSE, |o| {
        put_cstr(o, b"");
        o.put_slice(tail);
    });
    server.statements.unnamed = Some(tail.clone());
    prelude_parses.push(SentParse {
        def: StatementDef::new(tail.clone()),
        server_name: std::sync::Arc::from(""),
        client_name: None,
        seq,
    });
}

/// Appends Close for each server-side statement name, then Sync: the proxy's own request that
/// deallocates statements evicted from (or invalidated in) a connection's cache. Closing a
/// statement that does not exist is not an error, so one that never got prepared costs
/// nothing. The replies (CloseComplete, ReadyForQuery) are the proxy's.
fn close_statements(out: &mut BytesMut, names: &[std::sync::Arc<str>]) {
    for name in names {
        put_frame_with(out, ftag::CLOSE, |o| {
            o.put_u8(b'S');
            put_cstr(o, name.as_bytes());
        });
    }
    put_frame_with(out, ftag::SYNC, |_| {});
}

/// SQL that makes a connection's session parameters equal to `desired` (sorted by name, names
/// unique), and the bookkeeping that assumes it succeeded; `None` when nothing differs.
///
/// Parameters the proxy set earlier and the client does not want are `RESET` (back to the
/// server default); differing ones are set with `set_config`, which takes the raw value exactly
/// as a startup packet would (a `SET x = '...'` would turn a list such as `search_path` into one
/// quoted name). A parameter never set on the connection is skipped when the server already
/// reports the wanted value.
fn param_sync_sql(
    desired: &[(String, String)],
    desired_id: u64,
    server: &mut ServerParams,
) -> Option<String> {
    if desired_id != 0 && server.synced == desired_id {
        return None;
    }
    server.synced = desired_id;
    let mut sql = String::new();
    let resets: Vec<String> = server
        .applied
        .keys()
        .filter(|k| {
            desired
                .binary_search_by(|(name, _)| name.as_str().cmp(k.as_str()))
                .is_err()
        })
        .cloned()
        .collect();
    for k in resets {
        sql.push_str("RESET ");
        sql.push_str(&quote_ident(&k));
        sql.push_str("; ");
        server.applied.remove(&k);
    }
    let mut calls = Vec::new();
    for (name, value) in desired {
        match server.applied.get(name) {
            Some(v) if v == value => continue,
            Some(_) => {}
            None => {
                let reported = server
                    .reported
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v);
                if reported == Some(value) {
                    continue;
                }
            }
        }
        calls.push(format!(
            "pg_catalog.set_config({}, {}, false)",
            quote_literal(name),
            quote_literal(value)
        ));
        server.applied.insert(name.clone(), value.clone());
    }
    if !calls.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&calls.join(", "));
    }
    if sql.is_empty() {
        None
    } else {
        Some(sql)
    }
}

/// The query that reads back a connection's session-level settings after the client changed
/// some: one row per parameter, name and value as `set_config` accepts it.
const REFRESH_SQL: &str =
    "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'";

/// Quotes a string as an escape-string literal, safe whatever `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Extracts (name, setting) from a DataRow of [`REFRESH_SQL`].
pub fn parse_setting_row(body: &[u8]) -> Option<(String, String)> {
    let mut columns = crate::protocol::backend::data_row_columns(body).ok()?;
    if columns.len() != 2 {
        return None;
    }
    let mut text = || Some(String::from_utf8_lossy(columns.next()??).into_owned());
    Some((text()?, text()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("a'b\\c"), r"E'a''b\\c'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn sync_sql_resets_sets_and_skips() {
        let mut server = ServerParams::default();
        server
            .reported
            .insert("client_encoding".into(), "UTF8".into());
        server.applied.insert("search_path".into(), "a".into());
        server.applied.insert("work_mem".into(), "4096".into());
        let mut desired = BTreeMap::new();
        desired.insert("client_encoding".to_owned(), "UTF8".to_owned());
        desired.insert("work_mem".to_owned(), "8192".to_owned());
        let desired: Vec<_> = desired.into_iter().collect();
        let sql = param_sync_sql(&desired, 0, &mut server).unwrap();
        assert_eq!(
            sql,
            "RESET \"search_path\"; SELECT pg_catalog.set_config(E'work_mem', E'8192', false)"
        );
        assert!(
            param_sync_sql(&desired, 0, &mut server).is_none(),
            "now in line"
        );
    }

    #[test]
    fn sync_fingerprint_skips_only_the_same_parameters() {
        let mut server = ServerParams::default();
        let mut a = BTreeMap::new();
        a.insert("work_mem".to_owned(), "8192".to_owned());
        let mut b = BTreeMap::new();
        b.insert("work_mem".to_owned(), "1024".to_owned());
        let (a, b): (Vec<_>, Vec<_>) = (a.into_iter().collect(), b.into_iter().collect());
        assert!(param_sync_sql(&a, 7, &mut server).is_some());
        assert_eq!(server.synced, 7);
        assert!(param_sync_sql(&a, 7, &mut server).is_none());
        // Another client's parameters are compared, and the connection follows them.
        let sql = param_sync_sql(&b, 9, &mut server).unwrap();
        assert!(sql.contains("'1024'"), "{sql}");
        assert_eq!(server.synced, 9);
        // Back to the first: compared again, not trusted from an older sync.
        let sql = param_sync_sql(&a, 7, &mut server).unwrap();
        assert!(sql.contains("'8192'"), "{sql}");
    }

    #[test]
    fn setting_rows_parse() {
        let mut b = Vec::new();
        b.extend_from_slice(&2i16.to_be_bytes());
        for c in ["search_path", "a, b"] {
            b.extend_from_slice(&(c.len() as i32).to_be_bytes());
            b.extend_from_slice(c.as_bytes());
        }
        assert_eq!(
            parse_setting_row(&b),
            Some(("search_path".into(), "a, b".into()))
        );
        assert_eq!(parse_setting_row(&b[..5]), None);
    }
}
