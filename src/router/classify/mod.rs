//! The statement classifier: may a request run on a hot standby, or must it go to the primary?
//! And what does it do to the session (transaction control, `SET`, prepared statements, pins,
//! proxy commands and hints)?
//!
//! [`analyze`] reads the text of one simple `Query` (possibly several statements separated by
//! `;`) or of one extended-protocol `Parse`, and returns an [`Analysis`]: a [`RouteClass`] for
//! the whole text, one [`Statement`] per statement, the functions it calls (for the router's
//! volatility check against `pg_proc`), a [`PinReason`] if the client must keep its server
//! connection, the leading-comment hints, and session read-only changes.
//!
//! The rule everywhere is "unsure → primary": anything not recognised, anything that does not
//! lex (unterminated literal, invalid UTF-8, a NUL byte), any syntax outside what is understood
//! becomes [`RouteClass::Unknown`], which the router sends to the primary. `docs/CLASSIFIER.md`
//! lists what is recognised and the known conservative cases.
//!
//! It is lexical, not a parser: a token stream from [`super::lexer`], parentheses depth, and a
//! handful of grammar facts (which keywords are reserved, what may precede a call). It runs on
//! the hot path, so it allocates nothing for ordinary requests: names and values are [`Span`]s
//! into the analysed text, and the statement and function lists keep their first few entries
//! inline. [`ClassifierCache`] remembers analyses by statement text, so repeated statements
//! cost one hash and one comparison. The cache holds the lexical analysis only: the router's
//! verdict on functions can change when `pg_proc` is reloaded, so it is not cached here.
//!
//! # The pieces
//!
//! - this file: the public types ([`Analysis`], [`Statement`], [`StatementKind`]…) and the
//!   entry point [`analyze`];
//! - `analyzer/`: the token walk that fills an analysis: lookahead, the driver and the
//!   dispatch on a statement's first word (`mod.rs`); query scanning and function calls
//!   (`scan.rs`); `SET`, `SHOW`, `RESET`, `DISCARD` (`settings.rs`); transaction control
//!   (`transactions.rs`); every other statement form (`statements.rs`);
//! - `hints.rs`: the `/* causeway:… */` comments before the first token;
//! - `command.rs`: `SET`/`SHOW`/`RESET causeway.*` and the setting-value parsers;
//! - `builtins.rs`: the built-in functions the classifier knows by name;
//! - `names.rs`: identifiers, normalised as PostgreSQL does;
//! - `cache.rs`: [`ClassifierCache`]; `template.rs`: its keys with integer literals left out;
//! - `corpus.rs` (the statement corpus, shared with the oracle test) and `tests.rs`.

mod analyzer;
mod builtins;
mod cache;
mod command;
mod hints;
mod names;
mod template;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ops::Range;
use std::time::Duration;

use smallvec::SmallVec;

use crate::config::Route;
use crate::router::lexer::{LexOptions, Token};

pub use builtins::{
    BUILTIN_READ_VOLATILE_FUNCTIONS, BUILTIN_WRITE_FUNCTIONS, KNOWN_READ_ONLY_FUNCTIONS,
};
pub use cache::{CacheLimits, CacheStats, ClassifierCache};
pub use command::{parse_duration, parse_lsn, ProxyCommand, ProxyError, ProxySetting};
pub use names::{normalize_ident, normalize_name};

use analyzer::Analyzer;
use hints::parse_hints;

// === Public types ===

/// Where a request may run, as far as its text tells. Ordered from least to most
/// restrictive, so combining two is taking the larger ([`RouteClass::combine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RouteClass {
    /// May run on a standby: plain reads, and statements harmless anywhere (`SET`, `SHOW`,
    /// `COMMIT`, `DEALLOCATE`…). The router still checks [`Analysis::functions`] against
    /// `pg_proc` and sends a call to a function not known to be read-only to the primary.
    #[default]
    Read,
    /// Must run on the primary: it writes, locks, starts a read-write transaction, or needs
    /// something only the primary has.
    Primary,
    /// Not recognised (or not lexable); goes to the primary like [`RouteClass::Primary`], and
    /// is counted separately.
    Unknown,
}

impl RouteClass {
    /// The class of two parts of one request: the more restrictive.
    pub fn combine(self, other: RouteClass) -> RouteClass {
        self.max(other)
    }

    /// Whether this class must go to the primary.
    pub fn needs_primary(self) -> bool {
        self != RouteClass::Read
    }

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Read => "read",
            RouteClass::Primary => "primary",
            RouteClass::Unknown => "unknown",
        }
    }
}

/// A byte range of the analysed text (names, values, statement bodies). Resolve it with
/// [`Analysis::text`] or [`Analysis::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// Offset of the first byte.
    start: u32,
    /// Offset past the last byte.
    end: u32,
}

impl Span {
    /// The span as a range of byte offsets.
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Whether the span covers no bytes.
    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }

    fn new(start: usize, end: usize) -> Span {
        // `analyze` refuses texts longer than u32::MAX, so offsets fit.
        Span {
            start: start as u32,
            end: end.max(start) as u32,
        }
    }

    fn of(token: &Token<'_>) -> Span {
        Span::new(token.offset, token.end())
    }
}

/// The name of a configuration parameter in `SET`, `RESET` and `SHOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamName {
    /// Written out (`work_mem`, `"Work_Mem"`, `myext.opt`); resolve with [`Analysis::name`].
    Written(Span),
    /// Implied by a special form: `SET TIME ZONE` is `timezone`, `SET SCHEMA` is
    /// `search_path`, `SET NAMES` is `client_encoding`, `SET ROLE` is `role`, `SET SESSION
    /// AUTHORIZATION` is `session_authorization`, `SET XML OPTION` is `xmloption`, `RESET
    /// TRANSACTION ISOLATION LEVEL` is `transaction_isolation`, `SHOW ALL` is `all`.
    Builtin(&'static str),
}

/// `SET` (session) or `SET LOCAL` (until the end of the transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetScope {
    /// `SET` or `SET SESSION`: part of the session state, to replay on other connections.
    Session,
    /// `SET LOCAL`: ends with the transaction; not session state.
    Local,
}

/// The access mode a `BEGIN` / `START TRANSACTION` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxAccess {
    /// Not said: the session's `default_transaction_read_only` decides.
    Default,
    /// `READ ONLY`.
    ReadOnly,
    /// `READ WRITE`.
    ReadWrite,
}

/// A transaction isolation level named by `BEGIN` / `START TRANSACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IsolationLevel {
    /// `READ UNCOMMITTED`.
    ReadUncommitted,
    /// `READ COMMITTED`.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`: refused by hot standbys, so such a transaction goes to the primary
    /// even when read-only.
    Serializable,
}

/// What `DISCARD` discards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscardTarget {
    /// `DISCARD ALL`: the whole session state (also `RESET ALL`, `DEALLOCATE ALL`…).
    All,
    /// `DISCARD PLANS`.
    Plans,
    /// `DISCARD SEQUENCES`.
    Sequences,
    /// `DISCARD TEMP` / `DISCARD TEMPORARY`.
    Temp,
}

/// A change of the session's default transaction access mode
/// (`default_transaction_read_only`); the router decides what it means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefaultReadOnly {
    /// `SET default_transaction_read_only = on`, or `SET SESSION CHARACTERISTICS AS
    /// TRANSACTION READ ONLY`.
    On,
    /// `SET default_transaction_read_only = off`, or `... READ WRITE`.
    Off,
    /// Back to the server's default: `RESET default_transaction_read_only`, `SET ... TO
    /// DEFAULT`, `RESET ALL`, `DISCARD ALL`.
    Reset,
}

/// Why a client must keep its server connection for the rest of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// `LISTEN`: notifications arrive on the connection that listens.
    Listen,
    /// A temporary table, view or sequence (`CREATE TEMP …`, `CREATE … ON COMMIT`,
    /// `pg_temp.` names, `SELECT … INTO TEMP`): it exists only in that server session.
    TempObject,
    /// A session advisory lock (`pg_advisory_lock`, `pg_try_advisory_lock`, shared
    /// variants; not the `_xact_` ones, which end with the transaction).
    AdvisoryLock,
    /// `DECLARE … WITH HOLD`: the cursor outlives the transaction.
    HoldCursor,
    /// `LOAD`: a library loaded into that server session.
    Load,
    /// `SET ROLE` / `SET SESSION AUTHORIZATION`: the identity of the server session.
    Role,
    /// `set_config(…)`: changes a setting the proxy cannot see to replay it.
    SetConfig,
}

/// What one statement is. Spans point into the analysed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StatementKind {
    /// `SELECT`, `VALUES`, `TABLE`, `WITH … SELECT`, a parenthesised query. Its route says
    /// whether it locks rows, creates a table (`SELECT INTO`) or modifies data in a CTE.
    Query,
    /// `SHOW name`.
    Show {
        /// The parameter shown.
        name: ParamName,
    },
    /// `EXPLAIN [ANALYZE] statement`. Without `ANALYZE` nothing is executed, so it is a read
    /// whatever the statement; with it, the route is the statement's.
    Explain {
        /// Whether the statement is executed (`ANALYZE`, `(ANALYZE)`, `(ANALYZE true)`).
        analyze: bool,
    },
    /// `COPY … TO`: a read when to `STDOUT` from a table or a read query.
    CopyTo,
    /// `COPY … FROM`: a write; the client then streams data in.
    CopyFrom,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// Any other statement that changes data, the catalog or the server: DDL, `VACUUM`,
    /// `ANALYZE`, `LOCK`, `CALL`, `DO`, `GRANT`, `TRUNCATE`, `CHECKPOINT`, `NOTIFY`…
    Write,
    /// `BEGIN` / `START TRANSACTION`.
    Begin {
        /// The access mode asked for.
        access: TxAccess,
        /// The isolation level asked for, if any.
        isolation: Option<IsolationLevel>,
    },
    /// `COMMIT` / `END`.
    Commit {
        /// `AND CHAIN`: a new transaction starts at once, on the same server.
        chain: bool,
    },
    /// `ROLLBACK` / `ABORT` (not `ROLLBACK TO`).
    Rollback {
        /// `AND CHAIN`.
        chain: bool,
    },
    /// `SAVEPOINT name`.
    Savepoint {
        /// The savepoint's name.
        name: Span,
    },
    /// `RELEASE [SAVEPOINT] name`.
    ReleaseSavepoint {
        /// The savepoint's name.
        name: Span,
    },
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`.
    RollbackToSavepoint {
        /// The savepoint's name.
        name: Span,
    },
    /// `PREPARE TRANSACTION 'gid'` (two-phase commit; primary).
    PrepareTransaction,
    /// `COMMIT PREPARED 'gid'` (primary).
    CommitPrepared,
    /// `ROLLBACK PREPARED 'gid'` (primary).
    RollbackPrepared,
    /// `SET [LOCAL | SESSION] TRANSACTION …` / `SET TRANSACTION SNAPSHOT …`: this
    /// transaction only.
    SetTransaction,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION …`: session state; replay the statement's
    /// text. Read-only changes are also in [`Analysis::default_read_only`].
    SetSessionCharacteristics,
    /// `SET [SESSION | LOCAL] name {= | TO} value` and the special forms (`TIME ZONE`,
    /// `SCHEMA`, `NAMES`, `ROLE`, `SESSION AUTHORIZATION`, `XML OPTION`).
    Set {
        /// Session or transaction scope.
        scope: SetScope,
        /// The parameter.
        name: ParamName,
        /// The value exactly as written (`'a', b`, `DEFAULT`, `LOCAL`…); empty only for
        /// `SET NAMES` without a value (meaning `DEFAULT`).
        value: Span,
    },
    /// `RESET name` (`None`: `RESET ALL`).
    Reset {
        /// The parameter, or `None` for all of them.
        name: Option<ParamName>,
    },
    /// `SET CONSTRAINTS …` (this transaction only).
    SetConstraints,
    /// `DISCARD …`.
    Discard(DiscardTarget),
    /// SQL `PREPARE name [(types)] AS statement`. The route is the inner statement's.
    Prepare {
        /// The prepared statement's name.
        name: Span,
        /// The inner statement's text (to re-analyse or replay).
        body: Span,
    },
    /// SQL `EXECUTE name [(args)]` (also under `EXPLAIN`). Its route is
    /// [`RouteClass::Primary`] because the text does not say what runs; a router that keeps
    /// the session's `PREPARE` bodies may use the prepared statement's route instead (and
    /// this statement's function calls, from the arguments).
    Execute {
        /// The prepared statement's name.
        name: Span,
    },
    /// `DEALLOCATE [PREPARE] name | ALL`.
    Deallocate {
        /// The prepared statement's name, or `None` for `ALL`.
        name: Option<Span>,
    },
    /// `DECLARE name … CURSOR … FOR query`; the route is the query's.
    DeclareCursor {
        /// The cursor's name.
        name: Span,
        /// `WITH HOLD`: the cursor outlives the transaction (a pin).
        hold: bool,
    },
    /// `FETCH`, `MOVE`, `CLOSE`: use a cursor where it was declared.
    Cursor,
    /// `LISTEN channel` (primary, and a pin).
    Listen {
        /// The channel.
        channel: Span,
    },
    /// `UNLISTEN channel | *`.
    Unlisten {
        /// The channel, or `None` for `*`.
        channel: Option<Span>,
    },
    /// `LOAD 'library'` (primary, and a pin).
    Load,
    /// A `causeway.*` statement for the proxy itself.
    Proxy(ProxyCommand),
    /// Not recognised.
    #[default]
    Unknown,
}

/// One statement of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Statement {
    /// What it is.
    pub kind: StatementKind,
    /// Where it may run.
    pub route: RouteClass,
    /// Its text, without the `;` and surrounding whitespace (comments before it are kept out,
    /// comments inside are in).
    pub span: Span,
}

/// A called function, as spans into the analysed text; [`Analysis::functions`] resolves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FunctionRef {
    /// The schema it was qualified with (`s` in `s.f(…)` and in `db.s.f(…)`), if any.
    pub schema: Option<Span>,
    /// The function's own name.
    pub name: Span,
}

/// A called function's name, normalised as PostgreSQL does: unquoted parts in lower case,
/// quoted parts as written without quotes, at most 63 bytes each. Borrowed from the analysed
/// text when it is already in that form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionName<'a> {
    /// The schema, if the call was qualified.
    pub schema: Option<Cow<'a, str>>,
    /// The function's name.
    pub name: Cow<'a, str>,
}

impl std::fmt::Display for FunctionName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

// === The analysis ===

/// The statements of a request. Most requests have one; pgbench's whole TPC-B transaction
/// sent as one string has 7, the first 4 of which fit inline.
type Statements = SmallVec<[Statement; 4]>;

/// The functions a request calls, each once; the first 6 inline.
type FunctionRefs = SmallVec<[FunctionRef; 6]>;

/// Appends to an inline list, doubling its capacity when it is full, as a `Vec` does (the
/// first move to the heap makes room for twice the inline part). `SmallVec::push` alone grows
/// to the next power of two above the length: from 6 inline entries to 8, 16, 32, one
/// reallocation more than doubling for 9 to 12 or 17 to 24 calls. `#[inline]`: it runs for
/// every statement and call, from files that may be other codegen units.
#[inline]
fn push_doubling<A: smallvec::Array>(list: &mut SmallVec<A>, item: A::Item) {
    if list.len() == list.capacity() {
        list.reserve_exact(list.capacity());
    }
    list.push(item);
}

/// The analysis of one request's text. `S` holds the text: `&[u8]` for [`analyze`]'s result
/// (borrowing the request), `Box<[u8]>` for [`OwnedAnalysis`] (cached, shared with `Arc`).
#[derive(Debug, Clone)]
pub struct Analysis<S> {
    /// The analysed text; spans point into it.
    sql: S,
    /// The whole request's class: the most restrictive of its statements'.
    route: RouteClass,
    /// The statements in order (empty statements between `;`s left out).
    statements: Statements,
    /// Functions called, each once, in order of appearance; calls to
    /// [`KNOWN_READ_ONLY_FUNCTIONS`] are left out.
    functions: FunctionRefs,
    /// The first reason found to pin the client to its server connection.
    pin: Option<PinReason>,
    /// `/* causeway:primary */` or `/* causeway:standby */` among the leading comments.
    hint: Option<Route>,
    /// `/* causeway:max_lag=200ms */` among the leading comments.
    max_lag: Option<Duration>,
    /// The last change of `default_transaction_read_only` in the request.
    default_read_only: Option<DefaultReadOnly>,
}

/// An analysis that owns its text: what [`ClassifierCache`] stores and shares.
pub type OwnedAnalysis = Analysis<Box<[u8]>>;

impl<S: AsRef<[u8]>> Analysis<S> {
    /// The analysed text.
    pub fn sql(&self) -> &[u8] {
        self.sql.as_ref()
    }

    /// Where the whole request may run, before the router's function check.
    pub fn route(&self) -> RouteClass {
        self.route
    }

    /// The statements, in order.
    pub fn statements(&self) -> &[Statement] {
        self.statements.as_slice()
    }

    /// The functions called (each once), as spans.
    pub fn function_refs(&self) -> &[FunctionRef] {
        self.functions.as_slice()
    }

    /// The functions called (each once), normalised, for the router's volatility check.
    /// Calls to [`BUILTIN_WRITE_FUNCTIONS`] are included (and already made the route
    /// [`RouteClass::Primary`]); calls to [`KNOWN_READ_ONLY_FUNCTIONS`] are not. A name the
    /// router does not know must be treated as volatile.
    pub fn functions(&self) -> impl Iterator<Item = FunctionName<'_>> + '_ {
        self.functions.as_slice().iter().map(|f| FunctionName {
            schema: f.schema.map(|s| normalize_ident(self.text(s))),
            name: normalize_ident(self.text(f.name)),
        })
    }

    /// Why the client must keep its server connection, if it must.
    pub fn pin(&self) -> Option<PinReason> {
        self.pin
    }

    /// The routing hint of the leading comments (`/* causeway:primary */`,
    /// `/* causeway:standby */`; primary wins if both are given).
    pub fn hint(&self) -> Option<Route> {
        self.hint
    }

    /// The lag limit of the leading comments (`/* causeway:max_lag=200ms */`).
    pub fn max_lag(&self) -> Option<Duration> {
        self.max_lag
    }

    /// How the request changes the session's `default_transaction_read_only`, if it does.
    pub fn default_read_only(&self) -> Option<DefaultReadOnly> {
        self.default_read_only
    }

    /// Whether the request has no statement at all (empty, only comments or `;`).
    pub fn is_empty(&self) -> bool {
        self.statements.as_slice().is_empty()
    }

    /// The bytes a span covers (empty if it does not fit the text).
    pub fn text(&self, span: Span) -> &[u8] {
        self.sql().get(span.range()).unwrap_or_default()
    }

    /// The text of a statement.
    pub fn statement_text(&self, statement: &Statement) -> &[u8] {
        self.text(statement.span)
    }

    /// A name (possibly dotted: `myext.setting`) normalised as PostgreSQL does: unquoted
    /// parts in lower case, quoted parts as written. Borrowed when already in that form.
    pub fn name(&self, span: Span) -> Cow<'_, str> {
        normalize_name(self.text(span))
    }

    /// A parameter name, normalised (see [`Analysis::name`]).
    pub fn param_name(&self, name: ParamName) -> Cow<'_, str> {
        match name {
            ParamName::Written(span) => self.name(span),
            ParamName::Builtin(name) => Cow::Borrowed(name),
        }
    }

    /// A copy that owns its text, for caching.
    pub fn to_owned_analysis(&self) -> OwnedAnalysis {
        Analysis {
            sql: Box::from(self.sql()),
            route: self.route,
            statements: SmallVec::from_slice(&self.statements),
            functions: SmallVec::from_slice(&self.functions),
            pin: self.pin,
            hint: self.hint,
            max_lag: self.max_lag,
            default_read_only: self.default_read_only,
        }
    }
}

// === Entry point ===

/// Analyses the text of one `Query` message or one `Parse` message's statement.
///
/// Never panics and allocates only when a request has more than 4 statements or calls more
/// than 6 distinct functions. Texts that are not valid UTF-8, contain a NUL byte, or are longer
/// than 4 GiB are [`RouteClass::Unknown`] with no statements.
pub fn analyze(sql: &[u8]) -> Analysis<&[u8]> {
    let mut hint = None;
    let mut max_lag = None;
    if u32::try_from(sql.len()).is_err() || sql.contains(&0) || std::str::from_utf8(sql).is_err() {
        return Analysis {
            sql,
            route: RouteClass::Unknown,
            statements: SmallVec::new(),
            functions: SmallVec::new(),
            pin: None,
            hint,
            max_lag,
            default_read_only: None,
        };
    }
    parse_hints(sql, &mut hint, &mut max_lag);

    let mut analyzer = Analyzer::new(sql, LexOptions::default());
    analyzer.run();
    if analyzer.lexer.saw_ambiguous_backslash() && analyzer.route == RouteClass::Read {
        analyzer.route = analyzer
            .route
            .combine(analyzer::reread_with_backslash_escapes(&analyzer));
    }
    // One struct expression: each inline list is copied once, straight into the result, and
    // no empty list is built only to be dropped (field-by-field assignment did both).
    Analysis {
        sql,
        route: analyzer.route,
        statements: analyzer.statements,
        functions: analyzer.functions,
        pin: analyzer.pin,
        hint,
        max_lag,
        default_read_only: analyzer.default_read_only,
    }
}
