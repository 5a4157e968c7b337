//! Scanning queries and expressions: what in a `SELECT` (or in the expressions of a
//! data-modifying statement, or in `EXECUTE` arguments) makes it a write, and which `name(`
//! are function calls.
//!
//! A scan does not parse: it walks tokens tracking the parenthesis depth, a few per-depth
//! facts (a `WITH` list open, grouping items listed, a group after which an expression
//! starts) and the two previous tokens. That is enough to see locking clauses, `SELECT
//! INTO`, data-modifying CTEs, and to tell a call from the keyword syntax, alias lists and
//! type modifiers that also put a `(` after a name. Anything it cannot balance is unknown.

use super::{lower, Analyzer};
use crate::router::classify::builtins::{
    BUILTIN_WRITE_FUNCTIONS, KNOWN_READ_ONLY_FUNCTIONS, SESSION_ADVISORY_LOCKS,
};
use crate::router::classify::names::{ident_is, simple_ident, sorted_contains};
use crate::router::classify::{push_doubling, FunctionRef, PinReason, RouteClass, Span};
use crate::router::lexer::{keyword_category, KeywordCategory, Token, TokenKind};

// === Scan state ===

/// How a query-like token run is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanMode {
    /// `SELECT`/`VALUES`/`TABLE`/`WITH`: look for locking clauses, `INTO`, data-modifying
    /// CTEs, and calls.
    Query,
    /// `INSERT`/`UPDATE`/`DELETE`/`MERGE` and `EXECUTE` arguments: calls only (for pins).
    Calls,
}

/// What the previous token of a scan was, as far as "is `name(` a call?" cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev<'a> {
    /// Nothing yet, an operator, `[`, `.`, or the end of a group after which an expression
    /// starts (`DISTINCT ON (…)`, `OPERATOR(…)`): an expression may start here.
    Open,
    /// `(`: an expression may start here.
    Paren,
    /// `,`.
    Comma,
    /// An unquoted word (keyword or not).
    Word(&'a [u8]),
    /// A quoted or qualified name.
    Name,
    /// A constant, or a cast's type.
    Term,
    /// `)` or `]` ending an operand.
    Close,
}

/// Deepest parenthesis nesting tracked; deeper text is [`RouteClass::Unknown`].
const MAX_DEPTH: u32 = 127;

/// State of one scan over a query-like statement.
#[derive(Debug)]
struct Scan<'a> {
    /// Current parenthesis depth, relative to where the scan started.
    depth: u32,
    /// Bit `d`: the group at depth `d` was opened by `DISTINCT ON` or `OPERATOR`, so an
    /// expression starts after its `)`.
    expr_groups: u128,
    /// Bit `d`: a `WITH` list is open at depth `d` (a `name(` after `,` is a CTE's columns).
    cte_lists: u128,
    /// Bit `d`: grouping items are listed at depth `d`, in a `GROUP BY` clause or a
    /// `GROUPING SETS (…)` group: `CUBE (`, `ROLLUP (` starting an item there are syntax.
    group_by: u128,
    /// Set by `GROUPING SETS` for the `(` that follows.
    pending_grouping_group: bool,
    /// Set by `DISTINCT ON` / `OPERATOR` for the `(` that follows.
    pending_expr_group: bool,
    /// The previous token.
    prev: Prev<'a>,
    /// The token before that.
    prev2: Prev<'a>,
    /// The class so far.
    route: RouteClass,
    /// What is scanned.
    mode: ScanMode,
}

impl<'a> Scan<'a> {
    /// The state at the start of a scan: nothing open, an expression may start.
    fn new(mode: ScanMode) -> Self {
        Scan {
            depth: 0,
            expr_groups: 0,
            cte_lists: 0,
            group_by: 0,
            pending_expr_group: false,
            pending_grouping_group: false,
            prev: Prev::Open,
            prev2: Prev::Open,
            route: RouteClass::Read,
            mode,
        }
    }
    /// The bit of `depth` in the per-depth sets (depths past [`MAX_DEPTH`] share one).
    fn bit(depth: u32) -> u128 {
        1u128 << depth.min(MAX_DEPTH)
    }
    fn in_cte_list(&self) -> bool {
        self.cte_lists & Self::bit(self.depth) != 0
    }
    /// Whether a grouping item may start here: right after `GROUP BY [ALL | DISTINCT]`, or
    /// after `,` or `(` where grouping items are listed.
    fn at_grouping_item(&self) -> bool {
        if self.group_by & Self::bit(self.depth) == 0 {
            return false;
        }
        match self.prev {
            Prev::Comma | Prev::Paren => true,
            Prev::Word(p) => ["by", "all", "distinct"]
                .iter()
                .any(|w| p.eq_ignore_ascii_case(w.as_bytes())),
            _ => false,
        }
    }
    /// Forgets what was open at `depth` (its group closed, or it was left).
    fn clear(&mut self, depth: u32) {
        let bit = Self::bit(depth);
        self.cte_lists &= !bit;
        self.expr_groups &= !bit;
        self.group_by &= !bit;
    }
    fn set_prev(&mut self, prev: Prev<'a>) {
        self.prev2 = self.prev;
        self.prev = prev;
    }
    fn raise(&mut self, route: RouteClass) {
        self.route = self.route.combine(route);
    }
    /// After the `)` of a group at a depth above 0: an expression starts after a
    /// `DISTINCT ON (…)` or `OPERATOR(…)` group, an operand ended after any other.
    fn close_group(&mut self) {
        let expr = self.expr_groups & Self::bit(self.depth) != 0;
        self.clear(self.depth);
        self.depth -= 1;
        self.set_prev(if expr { Prev::Open } else { Prev::Close });
    }
}

/// The keywords a scan reacts to, recognised without copying or `memcmp`: one length and
/// first-letter dispatch, then one case-insensitive comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    By,
    Delete,
    Except,
    Fetch,
    For,
    Having,
    Insert,
    Intersect,
    Into,
    Limit,
    Merge,
    Offset,
    On,
    Operator,
    Order,
    Returning,
    Select,
    Sets,
    Table,
    Union,
    Update,
    Values,
    Window,
    With,
    /// Any other word.
    Other,
}

impl Kw {
    fn of(word: &[u8]) -> Kw {
        let Some(&first) = word.first() else {
            return Kw::Other;
        };
        let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
        match (word.len(), first | 0x20) {
            (2, b'b') if is(b"by") => Kw::By,
            (2, b'o') if is(b"on") => Kw::On,
            (3, b'f') if is(b"for") => Kw::For,
            (4, b'i') if is(b"into") => Kw::Into,
            (4, b's') if is(b"sets") => Kw::Sets,
            (4, b'w') if is(b"with") => Kw::With,
            (5, b'f') if is(b"fetch") => Kw::Fetch,
            (5, b'l') if is(b"limit") => Kw::Limit,
            (5, b'm') if is(b"merge") => Kw::Merge,
            (5, b'o') if is(b"order") => Kw::Order,
            (5, b't') if is(b"table") => Kw::Table,
            (5, b'u') if is(b"union") => Kw::Union,
            (6, b'd') if is(b"delete") => Kw::Delete,
            (6, b'e') if is(b"except") => Kw::Except,
            (6, b'h') if is(b"having") => Kw::Having,
            (6, b'i') if is(b"insert") => Kw::Insert,
            (6, b'o') if is(b"offset") => Kw::Offset,
            (6, b's') if is(b"select") => Kw::Select,
            (6, b'u') if is(b"update") => Kw::Update,
            (6, b'v') if is(b"values") => Kw::Values,
            (6, b'w') if is(b"window") => Kw::Window,
            (8, b'o') if is(b"operator") => Kw::Operator,
            (9, b'i') if is(b"intersect") => Kw::Intersect,
            (9, b'r') if is(b"returning") => Kw::Returning,
            _ => Kw::Other,
        }
    }
}

// === impl Analyzer: scanning ===

impl<'a> Analyzer<'a> {
    /// Scans a query-like statement to its end (or, with `until_close`, to the `)` that
    /// closes the group it is in, which is consumed), collecting calls and read/write signs.
    pub(super) fn scan(&mut self, mode: ScanMode, until_close: bool) -> RouteClass {
        let mut st = Scan::new(mode);
        while let Some(t) = self.peek() {
            match t.kind {
                TokenKind::Semicolon => {
                    if st.depth > 0 {
                        st.raise(RouteClass::Unknown); // `;` inside parentheses: a syntax error
                    }
                    break;
                }
                TokenKind::LParen => {
                    if !self.open_group(&mut st) {
                        break;
                    }
                }
                TokenKind::RParen => {
                    if st.depth == 0 {
                        if until_close {
                            self.bump();
                            return st.route;
                        }
                        st.raise(RouteClass::Unknown); // unbalanced
                        self.bump();
                        continue;
                    }
                    self.bump();
                    st.close_group();
                }
                TokenKind::Word | TokenKind::QuotedIdent => self.scan_name(&mut st, mode),
                TokenKind::Cast => {
                    self.bump();
                    self.skip_type();
                    st.set_prev(Prev::Term);
                }
                TokenKind::String
                | TokenKind::DollarString
                | TokenKind::Number
                | TokenKind::Param => {
                    self.bump();
                    st.set_prev(Prev::Term);
                }
                TokenKind::Comma => {
                    self.bump();
                    st.set_prev(Prev::Comma);
                }
                TokenKind::RBracket => {
                    self.bump();
                    st.set_prev(Prev::Close);
                }
                TokenKind::Operator
                | TokenKind::LBracket
                | TokenKind::Colon
                | TokenKind::Dot
                | TokenKind::Error => {
                    self.bump();
                    st.set_prev(Prev::Open);
                }
            }
        }
        if st.depth > 0 || until_close {
            st.raise(RouteClass::Unknown); // unbalanced, or the group never closed
        }
        st.route
    }

    /// At a `(` inside a scan: consumes it and opens a group. False when the nesting is too
    /// deep to track: the rest of the statement is then skipped and the scan is unknown.
    fn open_group(&mut self, st: &mut Scan<'a>) -> bool {
        self.bump();
        if st.depth >= MAX_DEPTH {
            st.raise(RouteClass::Unknown);
            self.skip_rest();
            return false;
        }
        if st.in_cte_list() && st.prev == Prev::Close {
            // `WITH a AS (…) (SELECT …)`: the main query, not another CTE.
            st.cte_lists &= !Scan::bit(st.depth);
        }
        st.depth += 1;
        st.clear(st.depth);
        if std::mem::take(&mut st.pending_expr_group) {
            st.expr_groups |= Scan::bit(st.depth);
        }
        if std::mem::take(&mut st.pending_grouping_group) {
            st.group_by |= Scan::bit(st.depth);
        }
        if self.data_modification_follows() {
            st.raise(RouteClass::Primary);
        }
        st.set_prev(Prev::Paren);
        true
    }

    /// Handles a word or quoted identifier inside a scan: keywords that matter, names, calls.
    fn scan_name(&mut self, st: &mut Scan<'a>, mode: ScanMode) {
        let Some(first) = self.bump() else { return };
        if first.kind == TokenKind::Word && self.scan_keyword(st, first.text, mode) {
            st.set_prev(Prev::Word(first.text));
            return;
        }
        // A name, possibly qualified: `f`, `s.f`, `db.s.f`, `"F"`, `t.col`, `t.*`.
        let mut last = first;
        let mut qualifier = None;
        let mut parts = 1;
        while self.peek_kind() == Some(TokenKind::Dot)
            && self.peek_at(1).is_some_and(|t| t.is_name())
        {
            self.bump();
            qualifier = Some(last);
            if let Some(t) = self.bump() {
                last = t;
            }
            parts += 1;
        }
        if self.peek_kind() == Some(TokenKind::LParen) && self.is_call(st, last, parts) {
            self.record_call(st, qualifier, last);
        }
        st.set_prev(if parts == 1 && first.kind == TokenKind::Word {
            Prev::Word(first.text)
        } else {
            Prev::Name
        });
    }

    /// A word inside a scan (just consumed): if it is a keyword the scan reacts to here,
    /// updates the scan for it and returns true; the caller then records it as the previous
    /// word. False for any other word, which is read as a name.
    fn scan_keyword(&mut self, st: &mut Scan<'a>, word: &[u8], mode: ScanMode) -> bool {
        match Kw::of(word) {
            Kw::For if mode == ScanMode::Query => {
                st.group_by &= !Scan::bit(st.depth);
                if self.locking_clause_follows() {
                    st.raise(RouteClass::Primary);
                }
            }
            Kw::Into if mode == ScanMode::Query => {
                // `SELECT … INTO t` creates a table.
                st.raise(RouteClass::Primary);
                if self.temp_target_follows() {
                    self.pin(PinReason::TempObject);
                }
            }
            Kw::With => {
                if self.cte_follows() {
                    st.cte_lists |= Scan::bit(st.depth);
                }
            }
            Kw::Select | Kw::Values | Kw::Table => {
                // The main query of a WITH list at this depth starts here.
                st.cte_lists &= !Scan::bit(st.depth);
            }
            w @ (Kw::Insert | Kw::Update | Kw::Delete | Kw::Merge)
                if st.in_cte_list() && self.data_modification_shape(w) =>
            {
                // `WITH … DELETE FROM …`: the main statement modifies data.
                st.cte_lists &= !Scan::bit(st.depth);
                st.raise(RouteClass::Primary);
            }
            Kw::On => {
                if matches!(st.prev, Prev::Word(p) if p.eq_ignore_ascii_case(b"distinct"))
                    && self.peek_kind() == Some(TokenKind::LParen)
                {
                    st.pending_expr_group = true;
                }
            }
            Kw::By if matches!(st.prev, Prev::Word(p) if p.eq_ignore_ascii_case(b"group")) => {
                st.group_by |= Scan::bit(st.depth);
            }
            Kw::Having
            | Kw::Window
            | Kw::Order
            | Kw::Limit
            | Kw::Offset
            | Kw::Fetch
            | Kw::For
            | Kw::Union
            | Kw::Intersect
            | Kw::Except
            | Kw::Returning => {
                // The next clause: whatever was open at this depth has ended.
                st.group_by &= !Scan::bit(st.depth);
            }
            Kw::Sets
                if matches!(st.prev, Prev::Word(p) if p.eq_ignore_ascii_case(b"grouping"))
                    && self.peek_kind() == Some(TokenKind::LParen) =>
            {
                st.pending_grouping_group = true;
            }
            Kw::Operator if self.peek_kind() == Some(TokenKind::LParen) => {
                // `a OPERATOR(pg_catalog.+) b`: not a call; an operand follows the group.
                st.pending_expr_group = true;
            }
            _ => return false,
        }
        true
    }

    /// Whether `name(` (name's last part `last`, `parts` parts) is a function call, given
    /// what came before it. False for keyword syntax (`IN (`, `EXISTS (`, `CAST(`,
    /// `numeric(10,2)`, `OVER (`…), alias column lists (`AS t(a, b)`, `FROM t x(a)`), CTE
    /// column lists (`WITH t(a) AS`), `TABLESAMPLE method(…)` and `INSERT INTO t(cols)`.
    fn is_call(&self, st: &Scan<'a>, last: Token<'a>, parts: usize) -> bool {
        let word_in = |prev: Prev<'_>, words: &[&str]| match prev {
            Prev::Word(p) => words.iter().any(|w| p.eq_ignore_ascii_case(w.as_bytes())),
            _ => false,
        };
        let prev_is = |words: &[&str]| word_in(st.prev, words);
        let prev2_is = |words: &[&str]| word_in(st.prev2, words);
        if parts == 1 && last.kind == TokenKind::Word {
            if matches!(
                keyword_category(last.text),
                Some(KeywordCategory::Reserved | KeywordCategory::ColumnName)
            ) {
                // Not valid as a function name without a schema: this is SQL syntax
                // (`coalesce(`, `exists (`, `values (`, `substring(`, `varchar(20)`…).
                return false;
            }
            let mut buf = [0u8; 24];
            let syntax = match lower(Some(last), &mut buf) {
                // `ORDER BY (`, `SEARCH DEPTH FIRST BY (`…
                b"by" => {
                    prev_is(&["order", "group", "partition"])
                        || (prev_is(&["first"]) && prev2_is(&["depth", "breadth"]))
                }
                b"sets" => prev_is(&["grouping"]),
                b"varying" => prev_is(&["character", "char", "bit", "nchar"]),
                b"materialized" => prev_is(&["not"]) && prev2_is(&["as"]),
                b"zone" => prev_is(&["time"]) && prev2_is(&["at", "with", "without"]),
                // `INTERVAL SECOND(3)`, `DAY TO SECOND(3)`.
                b"second" => {
                    prev_is(&["interval"])
                        || (prev_is(&["to"]) && prev2_is(&["day", "hour", "minute"]))
                }
                // Grouping syntax as a GROUP BY item; elsewhere, calls (the cube extension).
                b"cube" | b"rollup" => st.at_grouping_item(),
                b"first" | b"next" => prev_is(&["fetch"]),
                // `INSERT … ON CONFLICT (a)`; only data-modifying statements have it.
                b"conflict" => st.mode == ScanMode::Calls && prev_is(&["on"]),
                // `t LEFT JOIN (…)`, `data JOIN (…)`, `a NOT LIKE (…)`: after an operand,
                // these words are syntax; a call to them needs an expression start before it.
                w @ (b"join" | b"like" | b"ilike" | b"similar") => {
                    let join_type = [
                        "left", "right", "full", "inner", "outer", "cross", "natural",
                    ];
                    (w == b"join" && prev_is(&join_type))
                        || ends_operand(st.prev)
                        || (prev_is(&["not"]) && ends_operand(st.prev2))
                }
                _ => false,
            };
            if syntax {
                return false;
            }
        }
        match st.prev {
            // `f(x) OVER (`, `(SELECT …) AS x(`, `'1' SECOND(3)`, `FROM t x(a)`.
            Prev::Close | Prev::Term | Prev::Name => false,
            Prev::Word(p) => match keyword_category(p) {
                None => false, // an alias after a table name
                Some(_) => !prev_is(&["as", "tablesample", "into", "with", "recursive"]),
            },
            Prev::Comma => !st.in_cte_list(),
            Prev::Open | Prev::Paren => true,
        }
    }

    /// Records a call: write-list functions raise the route, session locks and `set_config`
    /// pin, known read-only built-ins are dropped, the rest is reported once.
    fn record_call(&mut self, st: &mut Scan<'a>, qualifier: Option<Token<'a>>, name: Token<'a>) {
        let builtin_schema = qualifier.is_none_or(|q| ident_is(&q, "pg_catalog"));
        if builtin_schema {
            let mut buf = [0u8; 64];
            if let Some(n) = simple_ident(&name, &mut buf) {
                if sorted_contains(KNOWN_READ_ONLY_FUNCTIONS, n) {
                    return;
                }
                if sorted_contains(BUILTIN_WRITE_FUNCTIONS, n) {
                    st.raise(RouteClass::Primary);
                }
                if SESSION_ADVISORY_LOCKS.iter().any(|l| l.as_bytes() == n) {
                    self.pin(PinReason::AdvisoryLock);
                } else if n == b"set_config" {
                    self.pin(PinReason::SetConfig);
                }
            }
        }
        let schema = qualifier.map(|q| Span::of(&q));
        let duplicate = self.functions.as_slice().iter().any(|f| {
            self.sql[f.name.range()].eq_ignore_ascii_case(name.text)
                && match (f.schema, qualifier) {
                    (None, None) => true,
                    (Some(a), Some(b)) => self.sql[a.range()].eq_ignore_ascii_case(b.text),
                    _ => false,
                }
        });
        if !duplicate {
            push_doubling(
                &mut self.functions,
                FunctionRef {
                    schema,
                    name: Span::of(&name),
                },
            );
        }
    }

    /// After `(`: whether a data-modifying statement starts here (`(INSERT INTO`,
    /// `(UPDATE t`, `(DELETE FROM`, `(MERGE INTO`).
    fn data_modification_follows(&mut self) -> bool {
        match self.peek() {
            Some(t) if t.kind == TokenKind::Word => {
                let kw = Kw::of(t.text);
                matches!(kw, Kw::Insert | Kw::Update | Kw::Delete | Kw::Merge)
                    && self.data_modification_shape_at(kw, 1)
            }
            _ => false,
        }
    }

    /// After the word `kw` (insert/update/delete/merge, just consumed): whether what follows
    /// has the shape of that statement rather than of a column named like it.
    fn data_modification_shape(&mut self, kw: Kw) -> bool {
        self.data_modification_shape_at(kw, 0)
    }

    /// Whether the token `k` places ahead continues a `kw` statement.
    fn data_modification_shape_at(&mut self, kw: Kw, k: usize) -> bool {
        let Some(next) = self.peek_at(k) else {
            return false;
        };
        match kw {
            Kw::Insert | Kw::Merge => next.is_word("into"),
            Kw::Delete => next.is_word("from"),
            _ => next.is_name(),
        }
    }

    /// After `FOR`: `UPDATE`, `SHARE`, `NO KEY UPDATE`, `KEY SHARE`.
    fn locking_clause_follows(&mut self) -> bool {
        let mut buf = [0u8; 24];
        match lower(self.peek(), &mut buf) {
            b"update" | b"share" => true,
            b"no" => {
                self.peek_at(1).is_some_and(|t| t.is_word("key"))
                    && self.peek_at(2).is_some_and(|t| t.is_word("update"))
            }
            b"key" => self.peek_at(1).is_some_and(|t| t.is_word("share")),
            _ => false,
        }
    }

    /// After `INTO` in a query: whether the new table is temporary (`TEMP`, `TEMPORARY`,
    /// `LOCAL TEMP`, or a `pg_temp.` name).
    fn temp_target_follows(&mut self) -> bool {
        for k in 0..3 {
            let Some(t) = self.peek_at(k) else {
                return false;
            };
            if t.is_word("temp") || t.is_word("temporary") {
                return true;
            }
            if ident_is(&t, "pg_temp")
                && self
                    .peek_at(k + 1)
                    .is_some_and(|d| d.kind == TokenKind::Dot)
            {
                return true;
            }
        }
        false
    }

    /// After `WITH`: whether a CTE list starts (`RECURSIVE`, `name AS (`, `name AS
    /// [NOT] MATERIALIZED`, `name (cols)`), as opposed to `WITH ORDINALITY`, `WITH TIME
    /// ZONE`, `WITH TIES`…
    fn cte_follows(&mut self) -> bool {
        let Some(name) = self.peek() else {
            return false;
        };
        if name.is_word("recursive") {
            return true;
        }
        if !name.is_name() {
            return false;
        }
        match self.peek_at(1) {
            Some(t) if t.kind == TokenKind::LParen => true,
            Some(t) if t.is_word("as") => self.peek_at(2).is_some_and(|t| {
                t.kind == TokenKind::LParen || t.is_word("materialized") || t.is_word("not")
            }),
            _ => false,
        }
    }

    /// After `::`: consumes the type name, including multi-word types (`double precision`,
    /// `timestamp(3) with time zone`), type modifiers (`numeric(10,2)`) and array bounds.
    fn skip_type(&mut self) {
        if self.eat_dotted_name().is_none() {
            return;
        }
        loop {
            match self.peek_kind() {
                Some(TokenKind::LParen | TokenKind::LBracket) => {
                    if !self.skip_group() {
                        return;
                    }
                }
                Some(TokenKind::Word) => {
                    let mut buf = [0u8; 24];
                    match lower(self.peek(), &mut buf) {
                        b"varying" | b"precision" | b"with" | b"without" | b"time" | b"zone"
                        | b"to" | b"year" | b"month" | b"day" | b"hour" | b"minute" | b"second" => {
                            self.bump();
                        }
                        _ => return,
                    }
                }
                _ => return,
            }
        }
    }
}

// === Operands ===

/// Whether an operand (a value, a name, a parenthesised group) ends with this token, so an
/// operator may follow. Keywords that rather start an expression (`BETWEEN`, `BY`, `ESCAPE`,
/// `AT TIME ZONE`…) do not end one.
fn ends_operand(prev: Prev<'_>) -> bool {
    match prev {
        Prev::Close | Prev::Term | Prev::Name => true,
        Prev::Open | Prev::Paren | Prev::Comma => false,
        Prev::Word(w) => match keyword_category(w) {
            None => true,
            Some(KeywordCategory::Reserved) => is_value_keyword(w),
            Some(KeywordCategory::TypeFunctionName) => w.eq_ignore_ascii_case(b"current_schema"),
            Some(KeywordCategory::ColumnName) => !w.eq_ignore_ascii_case(b"between"),
            Some(KeywordCategory::Unreserved) => ![
                "by",
                "escape",
                "first",
                "following",
                "groups",
                "next",
                "passing",
                "preceding",
                "range",
                "rows",
                "set",
                "value",
                "zone",
            ]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(k.as_bytes())),
        },
    }
}

/// Reserved keywords that are values (`NULL`, `TRUE`, `CURRENT_DATE`…) or end one (`END`).
fn is_value_keyword(word: &[u8]) -> bool {
    const VALUES: &[&str] = &[
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "end",
        "false",
        "localtime",
        "localtimestamp",
        "null",
        "session_user",
        "system_user",
        "true",
        "user",
    ];
    VALUES
        .iter()
        .any(|v| word.eq_ignore_ascii_case(v.as_bytes()))
}
