//! The statements that are neither queries, settings nor transaction control: DDL and other
//! writes (skipped to their end, watched for temporary objects), `EXPLAIN`, `COPY`, SQL
//! `PREPARE` / `EXECUTE` / `DEALLOCATE`, cursors, `LISTEN` / `UNLISTEN`. Several wrap another
//! statement (`EXPLAIN ANALYZE`, `PREPARE … AS`, `COPY (query)`, `DECLARE … FOR`) and take
//! its route.

use super::scan::ScanMode;
use super::{lower, Analyzer};
use crate::router::classify::command::{parse_bool, simple_value};
use crate::router::classify::{PinReason, RouteClass, Span, StatementKind};
use crate::router::lexer::TokenKind;

impl Analyzer<'_> {
    /// Consumes a statement of the write kind to its end. `CREATE RULE … (a; b)` has `;`
    /// inside parentheses, so they do not end the statement there.
    pub(super) fn skip_write(&mut self) {
        let mut depth = 0u32;
        while let Some(t) = self.peek() {
            match t.kind {
                TokenKind::Semicolon if depth == 0 => return,
                TokenKind::LParen => depth += 1,
                TokenKind::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            self.bump();
        }
    }

    /// `CREATE …`: a write; pins for temporary objects. A SQL-standard function body
    /// (`BEGIN ATOMIC … END`) contains `;`s that do not end the statement.
    pub(super) fn create(&mut self) {
        let mut depth = 0u32;
        let mut temp = false;
        let mut atomic = false;
        let mut case_depth = 0u32;
        let mut leading = true; // still in `CREATE [OR REPLACE] [GLOBAL|LOCAL] [TEMP] …`
        self.bump(); // CREATE
        while let Some(t) = self.peek() {
            match t.kind {
                TokenKind::Semicolon if depth == 0 && !atomic => break,
                TokenKind::LParen => depth += 1,
                TokenKind::RParen => depth = depth.saturating_sub(1),
                TokenKind::Word => {
                    let mut buf = [0u8; 24];
                    match lower(Some(t), &mut buf) {
                        b"temp" | b"temporary" if leading => temp = true,
                        b"or" | b"replace" | b"global" | b"local" | b"unlogged" if leading => {}
                        b"pg_temp" if self.peek_at(1).is_some_and(|d| d.kind == TokenKind::Dot) => {
                            temp = true;
                        }
                        b"on" if self.peek_at(1).is_some_and(|c| c.is_word("commit")) => {
                            temp = true; // ON COMMIT exists only for temporary tables
                        }
                        b"begin" if self.peek_at(1).is_some_and(|a| a.is_word("atomic")) => {
                            atomic = true;
                        }
                        b"case" if atomic => case_depth += 1,
                        b"end" if atomic => {
                            if case_depth == 0 {
                                atomic = false;
                            } else {
                                case_depth -= 1;
                            }
                        }
                        _ => leading = false,
                    }
                }
                _ => leading = false,
            }
            self.bump();
        }
        if temp {
            self.pin(PinReason::TempObject);
        }
    }

    /// `EXPLAIN [ANALYZE] [VERBOSE] statement`, `EXPLAIN (option [value], …) statement`.
    pub(super) fn explain(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        self.bump(); // EXPLAIN
        let options_list = self.peek_kind() == Some(TokenKind::LParen) && {
            let mut buf = [0u8; 24];
            let w = lower(self.peek_at(1), &mut buf);
            !w.is_empty() && !matches!(w, b"select" | b"values" | b"table" | b"with")
        };
        let analyze = if options_list {
            let Some(analyze) = self.explain_options() else {
                return (K::Unknown, RouteClass::Unknown);
            };
            analyze
        } else {
            let analyze = self.eat_word("analyze") || self.eat_word("analyse");
            self.eat_word("verbose");
            analyze
        };
        if self.peek_is_word("execute") {
            // Whether or not it runs, the prepared statement must exist where this goes.
            return self.execute();
        }
        if !analyze {
            // Nothing runs: any explainable statement is a read.
            let mut buf = [0u8; 24];
            let explainable = self.peek_kind() == Some(TokenKind::LParen)
                || matches!(
                    lower(self.peek(), &mut buf),
                    b"select"
                        | b"values"
                        | b"table"
                        | b"with"
                        | b"insert"
                        | b"update"
                        | b"delete"
                        | b"merge"
                        | b"declare"
                        | b"create"
                        | b"refresh"
                );
            self.skip_rest();
            return if explainable {
                (K::Explain { analyze }, RouteClass::Read)
            } else {
                (K::Unknown, RouteClass::Unknown)
            };
        }
        let (inner, route) = self.statement(1);
        match inner {
            K::Query
            | K::Insert
            | K::Update
            | K::Delete
            | K::Merge
            | K::DeclareCursor { .. }
            | K::Write => (K::Explain { analyze }, route),
            _ => (K::Unknown, RouteClass::Unknown),
        }
    }

    /// The `(option [value], …)` list after `EXPLAIN`, from its `(`: whether the statement
    /// is executed (`ANALYZE` with no value or a true one; the last mention wins). `None` if
    /// the list does not read as one.
    fn explain_options(&mut self) -> Option<bool> {
        self.bump(); // (
        let mut analyze = false;
        loop {
            let option = self.bump().filter(|t| t.kind == TokenKind::Word)?;
            let is_analyze = option.is_word("analyze") || option.is_word("analyse");
            let mut value = true;
            if !matches!(self.peek_kind(), Some(TokenKind::Comma | TokenKind::RParen)) {
                let v = self.bump()?;
                let off = v.is_word("false") || v.is_word("off") || v.text == b"0";
                value = !(off || matches!(simple_value(v.text).and_then(parse_bool), Some(false)));
            }
            if is_analyze {
                analyze = value;
            }
            match self.bump().map(|t| t.kind) {
                Some(TokenKind::Comma) => continue,
                Some(TokenKind::RParen) => return Some(analyze),
                _ => return None,
            }
        }
    }

    /// `COPY table [(cols)] {FROM | TO} …`, `COPY (query) TO …`.
    pub(super) fn copy(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        self.bump(); // COPY
        self.eat_word("binary"); // the pre-7.3 syntax
        let mut route = RouteClass::Read;
        if self.peek_kind() == Some(TokenKind::LParen) {
            self.bump();
            let mut buf = [0u8; 24];
            let mode = match lower(self.peek(), &mut buf) {
                b"select" | b"values" | b"table" | b"with" => ScanMode::Query,
                b"" if self.peek_kind() == Some(TokenKind::LParen) => ScanMode::Query,
                b"insert" | b"update" | b"delete" | b"merge" => {
                    route = RouteClass::Primary;
                    ScanMode::Calls
                }
                _ => return (K::Unknown, RouteClass::Unknown),
            };
            route = route.combine(self.scan(mode, true));
            if !self.eat_word("to") {
                return (K::Unknown, RouteClass::Unknown);
            }
        } else {
            if self.eat_dotted_name().is_none() {
                return (K::Unknown, RouteClass::Unknown);
            }
            if self.peek_kind() == Some(TokenKind::LParen) && !self.skip_group() {
                return (K::Unknown, RouteClass::Unknown);
            }
            if self.eat_word("from") {
                self.skip_rest();
                return (K::CopyFrom, RouteClass::Primary);
            }
            if !self.eat_word("to") {
                return (K::Unknown, RouteClass::Unknown);
            }
        }
        // To the client is a read; to a server file or program writes on whichever server runs
        // it, which must be the primary's file system.
        if !self.eat_word("stdout") {
            route = route.combine(RouteClass::Primary);
        }
        self.skip_rest();
        (K::CopyTo, route)
    }

    /// `PREPARE name [(types)] AS statement`, `PREPARE TRANSACTION 'gid'`.
    pub(super) fn prepare(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        self.bump(); // PREPARE
        if self.peek_is_word("transaction")
            && self.peek_at(1).is_some_and(|t| t.kind == TokenKind::String)
        {
            self.bump();
            self.bump();
            return (K::PrepareTransaction, RouteClass::Primary);
        }
        let Some(name) = self.eat_name() else {
            return (K::Unknown, RouteClass::Unknown);
        };
        if self.peek_kind() == Some(TokenKind::LParen) && !self.skip_group() {
            return (K::Unknown, RouteClass::Unknown);
        }
        if !self.eat_word("as") {
            return (K::Unknown, RouteClass::Unknown);
        }
        let body_start = self.peek().map_or(self.last_end, |t| t.offset);
        let (inner, route) = self.statement(1);
        match inner {
            K::Query | K::Insert | K::Update | K::Delete | K::Merge => {
                let name = Span::of(&name);
                let body = Span::new(body_start, self.last_end);
                (K::Prepare { name, body }, route)
            }
            _ => (K::Unknown, RouteClass::Unknown),
        }
    }

    /// `EXECUTE name [(args)]`.
    pub(super) fn execute(&mut self) -> (StatementKind, RouteClass) {
        self.bump(); // EXECUTE
        let Some(name) = self.eat_name() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        let mut route = RouteClass::Primary;
        if self.peek_kind() == Some(TokenKind::LParen) {
            self.bump();
            route = route.combine(self.scan(ScanMode::Calls, true));
        }
        let name = Span::of(&name);
        (StatementKind::Execute { name }, route)
    }

    /// `DEALLOCATE [PREPARE] name | ALL`.
    pub(super) fn deallocate(&mut self) -> (StatementKind, RouteClass) {
        self.bump();
        self.eat_word("prepare");
        if self.eat_word("all") {
            return (StatementKind::Deallocate { name: None }, RouteClass::Read);
        }
        match self.eat_name() {
            Some(name) => {
                let name = Some(Span::of(&name));
                (StatementKind::Deallocate { name }, RouteClass::Read)
            }
            None => (StatementKind::Unknown, RouteClass::Unknown),
        }
    }

    /// `DECLARE name [BINARY] [[A]SENSITIVE | INSENSITIVE] [[NO] SCROLL] CURSOR
    /// [{WITH | WITHOUT} HOLD] FOR query`.
    pub(super) fn declare(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        self.bump();
        let Some(name) = self.eat_name() else {
            return (K::Unknown, RouteClass::Unknown);
        };
        loop {
            let mut buf = [0u8; 24];
            match lower(self.bump(), &mut buf) {
                b"binary" | b"asensitive" | b"insensitive" | b"no" | b"scroll" => {}
                b"cursor" => break,
                _ => return (K::Unknown, RouteClass::Unknown),
            }
        }
        let mut hold = false;
        if self.eat_word("with") {
            hold = true;
            if !self.eat_word("hold") {
                return (K::Unknown, RouteClass::Unknown);
            }
        } else if self.eat_word("without") && !self.eat_word("hold") {
            return (K::Unknown, RouteClass::Unknown);
        }
        if !self.eat_word("for") {
            return (K::Unknown, RouteClass::Unknown);
        }
        let mut buf = [0u8; 24];
        let query = self.peek_kind() == Some(TokenKind::LParen)
            || matches!(
                lower(self.peek(), &mut buf),
                b"select" | b"values" | b"table" | b"with"
            );
        if !query {
            return (K::Unknown, RouteClass::Unknown);
        }
        let route = self.scan(ScanMode::Query, false);
        if hold {
            self.pin(PinReason::HoldCursor);
        }
        let name = Span::of(&name);
        (K::DeclareCursor { name, hold }, route)
    }

    /// `LISTEN channel`, `UNLISTEN channel | *`.
    pub(super) fn listen(&mut self) -> (StatementKind, RouteClass) {
        let listen = self.bump().is_some_and(|t| t.is_word("listen"));
        if !listen && self.peek().is_some_and(|t| t.text == b"*") {
            self.bump();
            return (
                StatementKind::Unlisten { channel: None },
                RouteClass::Primary,
            );
        }
        let Some(channel) = self.eat_name() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        let channel = Span::of(&channel);
        if listen {
            self.pin(PinReason::Listen);
            (StatementKind::Listen { channel }, RouteClass::Primary)
        } else {
            let channel = Some(channel);
            (StatementKind::Unlisten { channel }, RouteClass::Primary)
        }
    }
}
