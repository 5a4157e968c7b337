//! The analyzer: one pass over a text's tokens that fills an [`Analysis`](super::Analysis).
//!
//! This file holds its state, the token lookahead, the driver that cuts the text into
//! statements, and the dispatch on a statement's first word. The statement forms live beside
//! it, one file per concern: `scan.rs` (queries and the calls in any expression: locking
//! clauses, `INTO`, data-modifying CTEs, which `name(` is a call), `settings.rs` (`SET`,
//! `SHOW`, `RESET`, `DISCARD`), `transactions.rs` (`BEGIN`, `COMMIT`, `ROLLBACK`,
//! savepoints), `statements.rs` (the other statements: DDL, `EXPLAIN`, `COPY`, `PREPARE`,
//! `EXECUTE`, cursors, `LISTEN`).
//!
//! Each statement method consumes its statement's tokens and returns its kind and route. One
//! that meets something it does not expect returns `Unknown` and stops; the driver then
//! skips to the `;`, so one odd statement never shifts how the next one is read.

mod scan;
mod settings;
mod statements;
mod transactions;

use smallvec::SmallVec;

use super::{
    push_doubling, DefaultReadOnly, FunctionRef, FunctionRefs, PinReason, RouteClass, Span,
    Statement, StatementKind, Statements,
};
use crate::router::lexer::{LexOptions, Lexer, Token, TokenKind};
use scan::ScanMode;

/// Walks the tokens of a text statement by statement. Lookahead is a small queue of tokens.
pub(super) struct Analyzer<'a> {
    /// The text.
    sql: &'a [u8],
    /// The token source.
    pub(super) lexer: Lexer<'a>,
    /// Tokens read ahead: a ring of `look_len` tokens from `look_head`, next first.
    look: [Option<Token<'a>>; 4],
    /// Where the next token is in `look`.
    look_head: usize,
    /// How many tokens are read ahead.
    look_len: usize,
    /// Offset past the last token consumed.
    last_end: usize,
    /// The lexer hit something PostgreSQL would reject; everything is unknown.
    lex_failed: bool,
    /// The class so far.
    pub(super) route: RouteClass,
    /// Statements so far.
    pub(super) statements: Statements,
    /// Functions so far.
    pub(super) functions: FunctionRefs,
    /// The first pin reason.
    pub(super) pin: Option<PinReason>,
    /// The last default read-only change.
    pub(super) default_read_only: Option<DefaultReadOnly>,
}

/// Lower-cases a word token into `buf` for matching; empty if not a word or too long to be
/// any keyword matched here.
fn lower<'b>(token: Option<Token<'_>>, buf: &'b mut [u8; 24]) -> &'b [u8] {
    match token {
        Some(t) if t.kind == TokenKind::Word && t.text.len() <= buf.len() => {
            let out = &mut buf[..t.text.len()];
            for (d, s) in out.iter_mut().zip(t.text) {
                *d = s.to_ascii_lowercase();
            }
            out
        }
        _ => &[],
    }
}

impl<'a> Analyzer<'a> {
    /// An analyzer at the start of `sql`, lexing it with `options`. `#[inline]`: called for
    /// every request from [`analyze`](super::analyze), which may be in another codegen unit;
    /// inlined there, the analyzer is built in place rather than copied.
    #[inline]
    pub(super) fn new(sql: &'a [u8], options: LexOptions) -> Self {
        Analyzer {
            sql,
            lexer: Lexer::with_options(sql, options),
            look: [None; 4],
            look_head: 0,
            look_len: 0,
            last_end: 0,
            lex_failed: false,
            route: RouteClass::Read,
            statements: SmallVec::new(),
            functions: SmallVec::new(),
            pin: None,
            default_read_only: None,
        }
    }

    // --- token access ---

    /// Reads one token from the lexer; an error token ends the input.
    fn lex(&mut self) -> Option<Token<'a>> {
        match self.lexer.next_token() {
            Some(t) if t.kind == TokenKind::Error => {
                self.lex_failed = true;
                None
            }
            other => other,
        }
    }

    /// The token `k` places ahead (0 = next), without consuming.
    fn peek_at(&mut self, k: usize) -> Option<Token<'a>> {
        if k >= self.look.len() {
            return None;
        }
        const MASK: usize = 3; // look.len() - 1
        while self.look_len <= k {
            let t = self.lex();
            self.look[(self.look_head + self.look_len) & MASK] = t;
            self.look_len += 1;
        }
        self.look[(self.look_head + k) & MASK]
    }

    fn peek(&mut self) -> Option<Token<'a>> {
        self.peek_at(0)
    }

    fn peek_kind(&mut self) -> Option<TokenKind> {
        self.peek().map(|t| t.kind)
    }

    fn peek_is_word(&mut self, keyword: &str) -> bool {
        self.peek().is_some_and(|t| t.is_word(keyword))
    }

    /// Consumes and returns the next token.
    fn bump(&mut self) -> Option<Token<'a>> {
        let t = self.peek()?;
        self.look_head = (self.look_head + 1) & 3;
        self.look_len -= 1;
        self.last_end = t.end();
        Some(t)
    }

    /// Consumes the next token if it is the word `keyword`.
    fn eat_word(&mut self, keyword: &str) -> bool {
        let yes = self.peek_is_word(keyword);
        if yes {
            self.bump();
        }
        yes
    }

    /// Whether the statement ends here (`;` or end of text).
    fn at_end(&mut self) -> bool {
        matches!(self.peek_kind(), None | Some(TokenKind::Semicolon))
    }

    /// Consumes a name (word or quoted identifier).
    fn eat_name(&mut self) -> Option<Token<'a>> {
        if self.peek().is_some_and(|t| t.is_name()) {
            self.bump()
        } else {
            None
        }
    }

    /// Consumes a dotted name (`a`, `a.b`, `"A".b.c`); returns its span and its parts (the
    /// first four).
    fn eat_dotted_name(&mut self) -> Option<(Span, [Option<Token<'a>>; 4], usize)> {
        let first = self.eat_name()?;
        let mut parts = [Some(first), None, None, None];
        let mut n = 1;
        while self.peek_kind() == Some(TokenKind::Dot)
            && self.peek_at(1).is_some_and(|t| t.is_name())
        {
            self.bump();
            let part = self.bump();
            if n < parts.len() {
                parts[n] = part;
            }
            n += 1;
        }
        Some((Span::new(first.offset, self.last_end), parts, n))
    }

    /// Consumes everything up to the statement's end; returns the span of what it consumed.
    fn skip_rest(&mut self) -> Span {
        let start = self.peek().map_or(self.last_end, |t| t.offset);
        while !self.at_end() {
            self.bump();
        }
        Span::new(start, self.last_end.max(start))
    }

    /// Consumes a balanced `(…)` or `[…]` group without looking inside. Stops early (without
    /// consuming it) at a `;`, which cannot be inside a group in valid SQL.
    fn skip_group(&mut self) -> bool {
        let mut depth = 0u32;
        while let Some(t) = self.peek() {
            match t.kind {
                TokenKind::Semicolon => return false,
                TokenKind::LParen | TokenKind::LBracket => depth += 1,
                TokenKind::RParen | TokenKind::RBracket => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.bump();
                        return true;
                    }
                }
                _ => {}
            }
            self.bump();
        }
        false
    }

    // --- driver ---

    /// Analyses every statement of the text.
    pub(super) fn run(&mut self) {
        loop {
            while self.peek_kind() == Some(TokenKind::Semicolon) {
                self.bump();
            }
            let Some(first) = self.peek() else { break };
            let (mut kind, mut route) = self.statement(0);
            if !self.at_end() {
                // The statement parser stopped on something it did not expect.
                kind = StatementKind::Unknown;
                route = RouteClass::Unknown;
                self.skip_rest();
            }
            if self.lex_failed {
                route = RouteClass::Unknown;
            }
            self.route = self.route.combine(route);
            push_doubling(
                &mut self.statements,
                Statement {
                    kind,
                    route,
                    span: Span::new(first.offset, self.last_end),
                },
            );
        }
        if self.lex_failed {
            self.route = RouteClass::Unknown;
        }
    }

    /// Notes why the client must keep its server connection; the first reason found stays.
    fn pin(&mut self, reason: PinReason) {
        self.pin.get_or_insert(reason);
    }

    /// Analyses one statement starting at the next token. `nested` counts enclosing
    /// statements (`EXPLAIN`, `PREPARE`): a second level is refused.
    fn statement(&mut self, nested: u8) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        let unknown = (K::Unknown, RouteClass::Unknown);
        let Some(first) = self.peek() else {
            return unknown;
        };
        if first.kind == TokenKind::LParen {
            return (K::Query, self.scan(ScanMode::Query, false));
        }
        let mut buf = [0u8; 24];
        match lower(Some(first), &mut buf) {
            b"select" | b"values" | b"table" | b"with" => {
                (K::Query, self.scan(ScanMode::Query, false))
            }
            b"insert" | b"update" | b"delete" | b"merge" => {
                let kind = match first.text[0].to_ascii_lowercase() {
                    b'i' => K::Insert,
                    b'u' => K::Update,
                    b'd' => K::Delete,
                    _ => K::Merge,
                };
                self.bump();
                let route = self.scan(ScanMode::Calls, false);
                (kind, route.combine(RouteClass::Primary))
            }
            b"show" => self.show(),
            b"set" => self.set(),
            b"reset" => self.reset(),
            b"begin" | b"start" => self.begin(),
            b"commit" | b"end" | b"rollback" | b"abort" => self.end_transaction(),
            b"savepoint" | b"release" => self.savepoint(),
            b"explain" if nested == 0 => self.explain(),
            b"copy" => self.copy(),
            b"prepare" if nested == 0 => self.prepare(),
            b"execute" => self.execute(),
            b"deallocate" => self.deallocate(),
            b"discard" => self.discard(),
            b"declare" => self.declare(),
            b"fetch" | b"move" | b"close" => {
                self.skip_rest();
                (K::Cursor, RouteClass::Read)
            }
            b"listen" | b"unlisten" => self.listen(),
            b"load" => {
                self.skip_rest();
                self.pin(PinReason::Load);
                (K::Load, RouteClass::Primary)
            }
            b"create" => {
                self.create();
                (K::Write, RouteClass::Primary)
            }
            b"alter" | b"analyse" | b"analyze" | b"call" | b"checkpoint" | b"cluster"
            | b"comment" | b"do" | b"drop" | b"grant" | b"import" | b"lock" | b"notify"
            | b"reassign" | b"refresh" | b"reindex" | b"revoke" | b"security" | b"truncate"
            | b"vacuum" => {
                self.skip_write();
                (K::Write, RouteClass::Primary)
            }
            _ => {
                self.skip_rest();
                unknown
            }
        }
    }
}

/// A plain string had a backslash before a quote. A server with `standard_conforming_strings
/// = off` would read the text differently from there on (`'\'' ; DELETE …` is one string
/// there and a statement here, or the other way round). Reads the text that way too: if it
/// lexes and is a read calling no other functions, the first reading stands; otherwise the
/// request goes to the primary. (If it does not lex that way, such a server rejects the whole
/// request before running any of it, which is harmless.)
pub(super) fn reread_with_backslash_escapes(first: &Analyzer<'_>) -> RouteClass {
    let mut other = Analyzer::new(
        first.sql,
        LexOptions {
            backslash_escapes: true,
        },
    );
    other.run();
    if other.lex_failed {
        return RouteClass::Read;
    }
    let known = |f: &FunctionRef| {
        first
            .functions
            .as_slice()
            .iter()
            .any(|g| first.sql[g.name.range()].eq_ignore_ascii_case(&other.sql[f.name.range()]))
    };
    if other.route == RouteClass::Read && other.functions.as_slice().iter().all(known) {
        RouteClass::Read
    } else {
        RouteClass::Primary
    }
}
