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

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::lexer::{
    keyword_category, leading_comments, KeywordCategory, LexOptions, Lexer, Token, TokenKind,
};
use crate::config::{Consistency, Route};

#[cfg(test)]
mod tests;

// === Function lists ===

/// Built-in functions that must run on the primary whatever their volatility says; a call to
/// any of them (unqualified or `pg_catalog.`-qualified) makes the statement
/// [`RouteClass::Primary`]. Sorted (binary search).
pub const BUILTIN_WRITE_FUNCTIONS: &[&str] = &[
    // Sequences: `currval`/`lastval` only read, but they read state that `nextval` left in the
    // server session that ran it, which is on the primary.
    "currval",
    // See `currval`.
    "lastval",
    // Large objects: the `lo_*` family (and the old `loread`/`lowrite`) writes or needs the
    // descriptor opened on the same server.
    "lo_close",
    "lo_creat",
    "lo_create",
    "lo_export",
    "lo_from_bytea",
    "lo_get",
    "lo_import",
    "lo_lseek",
    "lo_lseek64",
    "lo_open",
    "lo_put",
    "lo_tell",
    "lo_tell64",
    "lo_truncate",
    "lo_truncate64",
    "lo_unlink",
    "loread",
    "lowrite",
    // Sequences: advance the sequence (a write; fails during recovery).
    "nextval",
    // Advisory locks: locks coordinate clients only if they are all taken on the primary.
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_all",
    "pg_advisory_unlock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    // Assigns a transaction id, which a standby cannot do (STABLE in pg_proc, so the
    // volatility check alone would miss it).
    "pg_current_xact_id",
    // Sends a notification; listeners are on the primary.
    "pg_notify",
    // See `pg_advisory_lock`.
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    // Changes a setting of the server session it runs in; the session must stay put.
    "set_config",
    // Sequences: sets the sequence (a write).
    "setval",
    // The old name of `pg_current_xact_id` (also STABLE in pg_proc).
    "txid_current",
];

/// Volatile built-ins that are harmless on a standby: they write nothing and depend on no
/// primary-only state. The router treats calls to them as reads even though `pg_proc` says
/// VOLATILE. Sorted.
pub const BUILTIN_READ_VOLATILE_FUNCTIONS: &[&str] = &[
    // The wall clock, not the transaction's start time.
    "clock_timestamp",
    // Random UUIDs.
    "gen_random_uuid",
    // Size functions read the catalog and the file system of the server they run on; the
    // sizes are the same on standbys up to replication lag.
    "pg_database_size",
    "pg_indexes_size",
    "pg_relation_size",
    // Sleeping is harmless anywhere.
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // See `pg_database_size`.
    "pg_table_size",
    "pg_tablespace_size",
    "pg_total_relation_size",
    // Random numbers.
    "random",
    "random_normal",
    // The wall clock as text.
    "timeofday",
    // PostgreSQL 18's random UUIDs.
    "uuidv4",
    "uuidv7",
];

/// Very common built-ins that are IMMUTABLE or STABLE in `pg_proc`: calls to them
/// (unqualified or `pg_catalog.`-qualified, unquoted or quoted in lower case) are not
/// reported in [`Analysis::functions`], which saves the router a lookup for the most frequent
/// queries. A schema placed before `pg_catalog` in `search_path` could shadow them; that is
/// the one risk this list takes, and it is the same one every `pg_catalog` name takes.
/// Sorted.
pub const KNOWN_READ_ONLY_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "char_length",
    "concat",
    "concat_ws",
    "count",
    "current_setting",
    "date_part",
    "date_trunc",
    "dense_rank",
    "first_value",
    "floor",
    "format",
    "generate_series",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path_text",
    "lag",
    "last_value",
    "lead",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "now",
    "ntile",
    "octet_length",
    "pg_backend_pid",
    "rank",
    "regexp_replace",
    "replace",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "split_part",
    "statement_timestamp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trunc",
    "unnest",
    "upper",
    "version",
];

/// Session advisory-lock functions: the lock lives as long as the server session, so the
/// client must keep that server connection.
const SESSION_ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

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

/// A `causeway.*` setting the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxySetting {
    /// `causeway.route`: `primary`, `standby` or `auto`.
    Route,
    /// `causeway.max_lag`: the session's lag limit.
    MaxLag,
    /// `causeway.min_lsn`: the WAL position reads must see (read-your-writes token).
    MinLsn,
    /// `causeway.consistency`: `session` or `eventual`.
    Consistency,
}

impl ProxySetting {
    /// The setting's full name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxySetting::Route => "causeway.route",
            ProxySetting::MaxLag => "causeway.max_lag",
            ProxySetting::MinLsn => "causeway.min_lsn",
            ProxySetting::Consistency => "causeway.consistency",
        }
    }

    fn from_name(name: &Token<'_>) -> Option<ProxySetting> {
        [
            ProxySetting::Route,
            ProxySetting::MaxLag,
            ProxySetting::MinLsn,
            ProxySetting::Consistency,
        ]
        .into_iter()
        .find(|s| ident_is(name, &s.as_str()["causeway.".len()..]))
    }
}

/// Why a `causeway.*` statement cannot be carried out; the session answers with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyError {
    /// No such `causeway.*` setting.
    UnknownSetting,
    /// The value does not parse for that setting.
    InvalidValue(ProxySetting),
    /// `SET LOCAL causeway.*`: proxy settings are per session only.
    LocalScope(ProxySetting),
}

/// A statement about the proxy's own settings, never sent to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyCommand {
    /// `SET causeway.route = 'primary' | 'standby' | 'auto'`.
    SetRoute(Route),
    /// `SET causeway.max_lag = '200ms'` (`us`, `ms`, `s`, `min`; a bare number is ms).
    SetMaxLag(Duration),
    /// `SET causeway.min_lsn = '0/3000060'`, as the 64-bit WAL position.
    SetMinLsn(u64),
    /// `SET causeway.consistency = 'session' | 'eventual'`.
    SetConsistency(Consistency),
    /// `SHOW causeway.<setting>`.
    Show(ProxySetting),
    /// `RESET causeway.<setting>`, or `SET causeway.<setting> TO DEFAULT`.
    Reset(ProxySetting),
    /// A `causeway.*` statement that cannot be carried out.
    Invalid {
        /// The setting's name as written.
        name: Span,
        /// What is wrong.
        error: ProxyError,
    },
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

/// The analysis of one request's text. `S` holds the text: `&[u8]` for [`analyze`]'s result
/// (borrowing the request), `Box<[u8]>` for [`OwnedAnalysis`] (cached, shared with `Arc`).
#[derive(Debug, Clone)]
pub struct Analysis<S> {
    /// The analysed text; spans point into it.
    sql: S,
    /// The whole request's class: the most restrictive of its statements'.
    route: RouteClass,
    /// The statements in order (empty statements between `;`s left out).
    statements: InlineVec<Statement, 4>,
    /// Functions called, each once, in order of appearance; calls to
    /// [`KNOWN_READ_ONLY_FUNCTIONS`] are left out.
    functions: InlineVec<FunctionRef, 6>,
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
            statements: self.statements.clone(),
            functions: self.functions.clone(),
            pin: self.pin,
            hint: self.hint,
            max_lag: self.max_lag,
            default_read_only: self.default_read_only,
        }
    }

    /// An approximate count of the bytes this analysis holds (for the cache's budget).
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.sql().len()
            + self.statements.heap_bytes()
            + self.functions.heap_bytes()
    }
}

/// Analyses the text of one `Query` message or one `Parse` message's statement.
///
/// Never panics and allocates only when a request has more than 4 statements or calls more
/// than 6 distinct functions. Texts that are not valid UTF-8, contain a NUL byte, or are longer
/// than 4 GiB are [`RouteClass::Unknown`] with no statements.
pub fn analyze(sql: &[u8]) -> Analysis<&[u8]> {
    let mut analysis = Analysis {
        sql,
        route: RouteClass::Read,
        statements: InlineVec::new(),
        functions: InlineVec::new(),
        pin: None,
        hint: None,
        max_lag: None,
        default_read_only: None,
    };
    if u32::try_from(sql.len()).is_err() || sql.contains(&0) || std::str::from_utf8(sql).is_err() {
        analysis.route = RouteClass::Unknown;
        return analysis;
    }
    parse_hints(sql, &mut analysis.hint, &mut analysis.max_lag);

    let mut analyzer = Analyzer::new(sql, LexOptions::default());
    analyzer.run();
    if analyzer.lexer.saw_ambiguous_backslash() && analyzer.route == RouteClass::Read {
        analyzer.route = analyzer
            .route
            .combine(reread_with_backslash_escapes(&analyzer));
    }
    analysis.route = analyzer.route;
    analysis.statements = analyzer.statements;
    analysis.functions = analyzer.functions;
    analysis.pin = analyzer.pin;
    analysis.default_read_only = analyzer.default_read_only;
    analysis
}

/// A plain string had a backslash before a quote. A server with `standard_conforming_strings
/// = off` would read the text differently from there on (`'\'' ; DELETE …` is one string
/// there and a statement here, or the other way round). Reads the text that way too: if it
/// lexes and is a read calling no other functions, the first reading stands; otherwise the
/// request goes to the primary. (If it does not lex that way, such a server rejects the whole
/// request before running any of it, which is harmless.)
fn reread_with_backslash_escapes(first: &Analyzer<'_>) -> RouteClass {
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

// === Hints ===

/// Reads `causeway:primary`, `causeway:standby` and `causeway:max_lag=<duration>` items
/// (case-insensitive, separated by spaces or commas) from the comments before the first
/// token. Unknown items are ignored: a comment is not a place to fail a query.
fn parse_hints(sql: &[u8], hint: &mut Option<Route>, max_lag: &mut Option<Duration>) {
    const PREFIX: &[u8] = b"causeway:";
    for comment in leading_comments(sql) {
        for item in comment.split(|&b| b == b',' || super::lexer::is_space(b)) {
            if item.len() <= PREFIX.len() || !item[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
                continue;
            }
            let value = &item[PREFIX.len()..];
            if value.eq_ignore_ascii_case(b"primary") {
                *hint = Some(Route::Primary);
            } else if value.eq_ignore_ascii_case(b"standby") {
                if *hint != Some(Route::Primary) {
                    *hint = Some(Route::Standby);
                }
            } else if value.len() > 8 && value[..8].eq_ignore_ascii_case(b"max_lag=") {
                if let Some(d) = parse_duration(&value[8..]) {
                    *max_lag = Some(d);
                }
            }
        }
    }
}

/// Parses a duration: a number (decimals allowed), optional spaces, and a unit among `us`,
/// `ms`, `s`, `min` (case-insensitive); a bare number is milliseconds, like PostgreSQL's own
/// millisecond settings.
pub fn parse_duration(text: &[u8]) -> Option<Duration> {
    let text = trim_ascii(text);
    let digits = text
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = std::str::from_utf8(number).ok()?.parse().ok()?;
    let unit = trim_ascii(unit);
    let nanos_per = if unit.is_empty() || unit.eq_ignore_ascii_case(b"ms") {
        1e6
    } else if unit.eq_ignore_ascii_case(b"us") {
        1e3
    } else if unit.eq_ignore_ascii_case(b"s") {
        1e9
    } else if unit.eq_ignore_ascii_case(b"min") {
        60e9
    } else {
        return None;
    };
    let nanos = number * nanos_per;
    // Ten years is far beyond any sensible lag limit and keeps the conversion exact enough.
    (nanos.is_finite() && (0.0..=3.2e17).contains(&nanos))
        .then(|| Duration::from_nanos(nanos as u64))
}

/// Parses a WAL position as PostgreSQL prints it: `HI/LO`, both hexadecimal, up to 8 digits.
pub fn parse_lsn(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(trim_ascii(text)).ok()?;
    let (hi, lo) = text.split_once('/')?;
    let part = |s: &str| {
        (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((u64::from(part(hi)?) << 32) | u64::from(part(lo)?))
}

/// Parses a boolean setting value as PostgreSQL's `parse_bool` does: `true`/`false`,
/// `yes`/`no`, `on`/`off`, `1`/`0`, and unambiguous prefixes, in any case.
fn parse_bool(text: &[u8]) -> Option<bool> {
    let mut buf = [0u8; 8];
    if text.len() > buf.len() {
        return None;
    }
    let t = &mut buf[..text.len()];
    t.copy_from_slice(text);
    t.make_ascii_lowercase();
    let t: &[u8] = t;
    let prefix_of = |word: &[u8], min: usize| t.len() >= min && word.starts_with(t);
    if prefix_of(b"true", 1) || prefix_of(b"yes", 1) || t == b"1" || prefix_of(b"on", 2) {
        Some(true)
    } else if prefix_of(b"false", 1) || prefix_of(b"no", 1) || t == b"0" || prefix_of(b"off", 2) {
        Some(false)
    } else {
        None
    }
}

// === The analyzer ===

/// How a query-like token run is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanMode {
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
}

/// Walks the tokens of a text statement by statement. Lookahead is a small queue of tokens.
struct Analyzer<'a> {
    /// The text.
    sql: &'a [u8],
    /// The token source.
    lexer: Lexer<'a>,
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
    route: RouteClass,
    /// Statements so far.
    statements: InlineVec<Statement, 4>,
    /// Functions so far.
    functions: InlineVec<FunctionRef, 6>,
    /// The first pin reason.
    pin: Option<PinReason>,
    /// The last default read-only change.
    default_read_only: Option<DefaultReadOnly>,
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

impl<'a> Analyzer<'a> {
    fn new(sql: &'a [u8], options: LexOptions) -> Self {
        Analyzer {
            sql,
            lexer: Lexer::with_options(sql, options),
            look: [None; 4],
            look_head: 0,
            look_len: 0,
            last_end: 0,
            lex_failed: false,
            route: RouteClass::Read,
            statements: InlineVec::new(),
            functions: InlineVec::new(),
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
    fn run(&mut self) {
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
            self.statements.push(Statement {
                kind,
                route,
                span: Span::new(first.offset, self.last_end),
            });
        }
        if self.lex_failed {
            self.route = RouteClass::Unknown;
        }
    }

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

    // --- query scanning ---

    /// Scans a query-like statement to its end (or, with `until_close`, to the `)` that
    /// closes the group it is in, which is consumed), collecting calls and read/write signs.
    fn scan(&mut self, mode: ScanMode, until_close: bool) -> RouteClass {
        let mut st = Scan {
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
        };
        while let Some(t) = self.peek() {
            match t.kind {
                TokenKind::Semicolon => {
                    if st.depth > 0 {
                        st.raise(RouteClass::Unknown); // `;` inside parentheses: a syntax error
                    }
                    break;
                }
                TokenKind::LParen => {
                    self.bump();
                    if st.depth >= MAX_DEPTH {
                        st.raise(RouteClass::Unknown);
                        self.skip_rest();
                        break;
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
                    let expr = st.expr_groups & Scan::bit(st.depth) != 0;
                    st.clear(st.depth);
                    st.depth -= 1;
                    st.set_prev(if expr { Prev::Open } else { Prev::Close });
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

    /// Handles a word or quoted identifier inside a scan: keywords that matter, names, calls.
    fn scan_name(&mut self, st: &mut Scan<'a>, mode: ScanMode) {
        let Some(first) = self.bump() else { return };
        if first.kind == TokenKind::Word {
            match Kw::of(first.text) {
                Kw::For if mode == ScanMode::Query => {
                    st.group_by &= !Scan::bit(st.depth);
                    if self.locking_clause_follows() {
                        st.raise(RouteClass::Primary);
                    }
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                Kw::Into if mode == ScanMode::Query => {
                    // `SELECT … INTO t` creates a table.
                    st.raise(RouteClass::Primary);
                    if self.temp_target_follows() {
                        self.pin(PinReason::TempObject);
                    }
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                Kw::With => {
                    if self.cte_follows() {
                        st.cte_lists |= Scan::bit(st.depth);
                    }
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                Kw::Select | Kw::Values | Kw::Table => {
                    // The main query of a WITH list at this depth starts here.
                    st.cte_lists &= !Scan::bit(st.depth);
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                w @ (Kw::Insert | Kw::Update | Kw::Delete | Kw::Merge)
                    if st.in_cte_list() && self.data_modification_shape(w) =>
                {
                    // `WITH … DELETE FROM …`: the main statement modifies data.
                    st.cte_lists &= !Scan::bit(st.depth);
                    st.raise(RouteClass::Primary);
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                Kw::On => {
                    if matches!(st.prev, Prev::Word(p) if p.eq_ignore_ascii_case(b"distinct"))
                        && self.peek_kind() == Some(TokenKind::LParen)
                    {
                        st.pending_expr_group = true;
                    }
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                Kw::By if matches!(st.prev, Prev::Word(p) if p.eq_ignore_ascii_case(b"group")) => {
                    st.group_by |= Scan::bit(st.depth);
                    st.set_prev(Prev::Word(first.text));
                    return;
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
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                Kw::Sets
                    if matches!(st.prev, Prev::Word(p) if p.eq_ignore_ascii_case(b"grouping"))
                        && self.peek_kind() == Some(TokenKind::LParen) =>
                {
                    st.pending_grouping_group = true;
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                Kw::Operator if self.peek_kind() == Some(TokenKind::LParen) => {
                    // `a OPERATOR(pg_catalog.+) b`: not a call; an operand follows the group.
                    st.pending_expr_group = true;
                    st.set_prev(Prev::Word(first.text));
                    return;
                }
                _ => {}
            }
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
            self.functions.push(FunctionRef {
                schema,
                name: Span::of(&name),
            });
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

    // --- statements ---

    /// Consumes a statement of the write kind to its end. `CREATE RULE … (a; b)` has `;`
    /// inside parentheses, so they do not end the statement there.
    fn skip_write(&mut self) {
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
    fn create(&mut self) {
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

    /// `SHOW name | ALL | TIME ZONE | TRANSACTION ISOLATION LEVEL | SESSION AUTHORIZATION`.
    fn show(&mut self) -> (StatementKind, RouteClass) {
        self.bump();
        let name = match self.special_param_name() {
            Some(name) => name,
            None => {
                if self.eat_word("all") {
                    ParamName::Builtin("all")
                } else {
                    let Some((span, parts, n)) = self.eat_dotted_name() else {
                        return (StatementKind::Unknown, RouteClass::Unknown);
                    };
                    if let Some(cmd) = proxy_target(span, &parts, n) {
                        let cmd = match cmd {
                            Ok(setting) => ProxyCommand::Show(setting),
                            Err(invalid) => invalid,
                        };
                        return (StatementKind::Proxy(cmd), RouteClass::Read);
                    }
                    ParamName::Written(span)
                }
            }
        };
        (StatementKind::Show { name }, RouteClass::Read)
    }

    /// The multi-word parameter names shared by `SHOW` and `RESET`.
    fn special_param_name(&mut self) -> Option<ParamName> {
        let next = self.peek_at(1);
        let name = if self.peek_is_word("time") && next.is_some_and(|t| t.is_word("zone")) {
            self.bump();
            "timezone"
        } else if self.peek_is_word("session") && next.is_some_and(|t| t.is_word("authorization")) {
            self.bump();
            "session_authorization"
        } else if self.peek_is_word("transaction")
            && next.is_some_and(|t| t.is_word("isolation"))
            && self.peek_at(2).is_some_and(|t| t.is_word("level"))
        {
            self.bump();
            self.bump();
            "transaction_isolation"
        } else {
            return None;
        };
        self.bump();
        Some(ParamName::Builtin(name))
    }

    /// `RESET name | ALL | TIME ZONE | SESSION AUTHORIZATION | TRANSACTION ISOLATION LEVEL`.
    fn reset(&mut self) -> (StatementKind, RouteClass) {
        self.bump();
        if let Some(name) = self.special_param_name() {
            return (StatementKind::Reset { name: Some(name) }, RouteClass::Read);
        }
        if self.eat_word("all") {
            self.default_read_only = Some(DefaultReadOnly::Reset);
            return (StatementKind::Reset { name: None }, RouteClass::Read);
        }
        let Some((span, parts, n)) = self.eat_dotted_name() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        if let Some(cmd) = proxy_target(span, &parts, n) {
            let cmd = match cmd {
                Ok(setting) => ProxyCommand::Reset(setting),
                Err(invalid) => invalid,
            };
            return (StatementKind::Proxy(cmd), RouteClass::Read);
        }
        if n == 1 && parts[0].is_some_and(|p| ident_is(&p, "default_transaction_read_only")) {
            self.default_read_only = Some(DefaultReadOnly::Reset);
        }
        let name = Some(ParamName::Written(span));
        (StatementKind::Reset { name }, RouteClass::Read)
    }

    /// `SET …` in all its forms.
    fn set(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        self.bump(); // SET
        let next = self.peek_at(1);
        if self.peek_is_word("session") && next.is_some_and(|t| t.is_word("characteristics")) {
            self.bump();
            self.bump();
            if !(self.eat_word("as") && self.eat_word("transaction")) {
                return (K::Unknown, RouteClass::Unknown);
            }
            let Some((access, _)) = self.transaction_modes() else {
                return (K::Unknown, RouteClass::Unknown);
            };
            match access {
                TxAccess::ReadOnly => self.default_read_only = Some(DefaultReadOnly::On),
                TxAccess::ReadWrite => self.default_read_only = Some(DefaultReadOnly::Off),
                TxAccess::Default => {}
            }
            return (K::SetSessionCharacteristics, RouteClass::Read);
        }
        let scope = if self.peek_is_word("local") {
            self.bump();
            SetScope::Local
        } else {
            if self.peek_is_word("session") && !next.is_some_and(|t| t.is_word("authorization")) {
                self.bump();
            }
            SetScope::Session
        };
        let next = self.peek_at(1);
        let mut buf = [0u8; 24];
        let special = match lower(self.peek(), &mut buf) {
            b"transaction" => {
                self.bump();
                if self.eat_word("snapshot") {
                    self.skip_rest();
                } else if self.transaction_modes().is_none() {
                    return (K::Unknown, RouteClass::Unknown);
                }
                return (K::SetTransaction, RouteClass::Read);
            }
            b"constraints" => {
                self.skip_rest();
                return (K::SetConstraints, RouteClass::Read);
            }
            b"time" if next.is_some_and(|t| t.is_word("zone")) => {
                self.bump();
                Some("timezone")
            }
            b"session" if next.is_some_and(|t| t.is_word("authorization")) => {
                self.bump();
                Some("session_authorization")
            }
            b"xml" if next.is_some_and(|t| t.is_word("option")) => {
                self.bump();
                Some("xmloption")
            }
            b"schema" => Some("search_path"),
            b"names" => Some("client_encoding"),
            b"role" if !next.is_some_and(|t| t.is_word("to") || t.text == b"=") => Some("role"),
            _ => None,
        };
        if let Some(name) = special {
            self.bump();
            let value = self.skip_rest();
            if value.is_empty() && name != "client_encoding" {
                return (K::Unknown, RouteClass::Unknown);
            }
            if scope == SetScope::Session && matches!(name, "role" | "session_authorization") {
                self.pin(PinReason::Role);
            }
            let name = ParamName::Builtin(name);
            return (K::Set { scope, name, value }, RouteClass::Read);
        }

        let Some((span, parts, n)) = self.eat_dotted_name() else {
            return (K::Unknown, RouteClass::Unknown);
        };
        let assigns = self
            .peek()
            .is_some_and(|t| t.is_word("to") || (t.kind == TokenKind::Operator && t.text == b"="));
        if !assigns {
            return (K::Unknown, RouteClass::Unknown);
        }
        self.bump();
        let value = self.skip_rest();
        if value.is_empty() {
            return (K::Unknown, RouteClass::Unknown);
        }
        let sql = self.sql;
        let value_text = &sql[value.range()];
        if let Some(target) = proxy_target(span, &parts, n) {
            let cmd = match target {
                Err(invalid) => invalid,
                Ok(setting) if scope == SetScope::Local => ProxyCommand::Invalid {
                    name: span,
                    error: ProxyError::LocalScope(setting),
                },
                Ok(setting) => proxy_set(setting, span, value_text),
            };
            return (K::Proxy(cmd), RouteClass::Read);
        }
        if n == 1 && scope == SetScope::Session {
            if let Some(p) = parts[0] {
                if ident_is(&p, "default_transaction_read_only") {
                    self.default_read_only = if value_text.eq_ignore_ascii_case(b"default") {
                        Some(DefaultReadOnly::Reset)
                    } else {
                        match simple_value(value_text).and_then(parse_bool) {
                            Some(true) => Some(DefaultReadOnly::On),
                            Some(false) => Some(DefaultReadOnly::Off),
                            None => self.default_read_only, // the server will refuse it
                        }
                    };
                } else if ident_is(&p, "role") || ident_is(&p, "session_authorization") {
                    self.pin(PinReason::Role);
                }
            }
        }
        let name = ParamName::Written(span);
        (K::Set { scope, name, value }, RouteClass::Read)
    }

    /// Transaction modes after `BEGIN`, `START TRANSACTION`, `SET TRANSACTION`, `SET SESSION
    /// CHARACTERISTICS AS TRANSACTION`: `ISOLATION LEVEL …`, `READ ONLY`, `READ WRITE`,
    /// `[NOT] DEFERRABLE`, separated by commas or spaces. Later modes override earlier ones,
    /// as in PostgreSQL. `None` if something else is there.
    fn transaction_modes(&mut self) -> Option<(TxAccess, Option<IsolationLevel>)> {
        let mut access = TxAccess::Default;
        let mut isolation = None;
        loop {
            if self.at_end() {
                return Some((access, isolation));
            }
            if self.peek_kind() == Some(TokenKind::Comma) {
                self.bump();
                continue;
            }
            let mut buf = [0u8; 24];
            match lower(self.bump(), &mut buf) {
                b"isolation" => {
                    if !self.eat_word("level") {
                        return None;
                    }
                    let mut b2 = [0u8; 24];
                    isolation = Some(match lower(self.bump(), &mut b2) {
                        b"serializable" => IsolationLevel::Serializable,
                        b"repeatable" if self.eat_word("read") => IsolationLevel::RepeatableRead,
                        b"read" if self.eat_word("committed") => IsolationLevel::ReadCommitted,
                        b"read" if self.eat_word("uncommitted") => IsolationLevel::ReadUncommitted,
                        _ => return None,
                    });
                }
                b"read" => {
                    if self.eat_word("only") {
                        access = TxAccess::ReadOnly;
                    } else if self.eat_word("write") {
                        access = TxAccess::ReadWrite;
                    } else {
                        return None;
                    }
                }
                b"not" => {
                    if !self.eat_word("deferrable") {
                        return None;
                    }
                }
                b"deferrable" => {}
                _ => return None,
            }
        }
    }

    /// `BEGIN [WORK | TRANSACTION] [modes]`, `START TRANSACTION [modes]`.
    fn begin(&mut self) -> (StatementKind, RouteClass) {
        let Some(first) = self.bump() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        if first.is_word("start") {
            if !self.eat_word("transaction") {
                return (StatementKind::Unknown, RouteClass::Unknown);
            }
        } else if !self.eat_word("work") {
            self.eat_word("transaction");
        }
        let Some((access, isolation)) = self.transaction_modes() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        // Hot standbys refuse SERIALIZABLE, even for read-only transactions.
        let route =
            if access == TxAccess::ReadOnly && isolation != Some(IsolationLevel::Serializable) {
                RouteClass::Read
            } else {
                RouteClass::Primary
            };
        (StatementKind::Begin { access, isolation }, route)
    }

    /// `COMMIT`/`END`/`ROLLBACK`/`ABORT [WORK | TRANSACTION] [AND [NO] CHAIN]`, `ROLLBACK
    /// … TO [SAVEPOINT] name`, `COMMIT PREPARED 'gid'`, `ROLLBACK PREPARED 'gid'`.
    fn end_transaction(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        let Some(first) = self.bump() else {
            return (K::Unknown, RouteClass::Unknown);
        };
        let commit = first.is_word("commit") || first.is_word("end");
        let plain = first.is_word("commit") || first.is_word("rollback");
        if plain && self.peek_is_word("prepared") {
            self.bump();
            if self.peek_kind() != Some(TokenKind::String) {
                return (K::Unknown, RouteClass::Unknown);
            }
            self.bump();
            let kind = if commit {
                K::CommitPrepared
            } else {
                K::RollbackPrepared
            };
            return (kind, RouteClass::Primary);
        }
        if !self.eat_word("work") {
            self.eat_word("transaction");
        }
        if !commit && plain && self.eat_word("to") {
            self.eat_word("savepoint");
            let Some(name) = self.eat_name() else {
                return (K::Unknown, RouteClass::Unknown);
            };
            return (
                K::RollbackToSavepoint {
                    name: Span::of(&name),
                },
                RouteClass::Read,
            );
        }
        let mut chain = false;
        if self.eat_word("and") {
            chain = !self.eat_word("no");
            if !self.eat_word("chain") {
                return (K::Unknown, RouteClass::Unknown);
            }
        }
        let kind = if commit {
            K::Commit { chain }
        } else {
            K::Rollback { chain }
        };
        (kind, RouteClass::Read)
    }

    /// `SAVEPOINT name`, `RELEASE [SAVEPOINT] name`.
    fn savepoint(&mut self) -> (StatementKind, RouteClass) {
        let release = self.bump().is_some_and(|t| t.is_word("release"));
        if release {
            self.eat_word("savepoint");
        }
        let Some(name) = self.eat_name() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        let name = Span::of(&name);
        let kind = if release {
            StatementKind::ReleaseSavepoint { name }
        } else {
            StatementKind::Savepoint { name }
        };
        (kind, RouteClass::Read)
    }

    /// `EXPLAIN [ANALYZE] [VERBOSE] statement`, `EXPLAIN (option [value], …) statement`.
    fn explain(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        self.bump(); // EXPLAIN
        let mut analyze = false;
        let options_list = self.peek_kind() == Some(TokenKind::LParen) && {
            let mut buf = [0u8; 24];
            let w = lower(self.peek_at(1), &mut buf);
            !w.is_empty() && !matches!(w, b"select" | b"values" | b"table" | b"with")
        };
        if options_list {
            self.bump(); // (
            loop {
                let Some(option) = self.bump().filter(|t| t.kind == TokenKind::Word) else {
                    return (K::Unknown, RouteClass::Unknown);
                };
                let is_analyze = option.is_word("analyze") || option.is_word("analyse");
                let mut value = true;
                if !matches!(self.peek_kind(), Some(TokenKind::Comma | TokenKind::RParen)) {
                    let Some(v) = self.bump() else {
                        return (K::Unknown, RouteClass::Unknown);
                    };
                    let off = v.is_word("false") || v.is_word("off") || v.text == b"0";
                    value =
                        !(off || matches!(simple_value(v.text).and_then(parse_bool), Some(false)));
                }
                if is_analyze {
                    analyze = value;
                }
                match self.bump().map(|t| t.kind) {
                    Some(TokenKind::Comma) => continue,
                    Some(TokenKind::RParen) => break,
                    _ => return (K::Unknown, RouteClass::Unknown),
                }
            }
        } else {
            if self.eat_word("analyze") || self.eat_word("analyse") {
                analyze = true;
            }
            self.eat_word("verbose");
        }
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

    /// `COPY table [(cols)] {FROM | TO} …`, `COPY (query) TO …`.
    fn copy(&mut self) -> (StatementKind, RouteClass) {
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
    fn prepare(&mut self) -> (StatementKind, RouteClass) {
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
    fn execute(&mut self) -> (StatementKind, RouteClass) {
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
    fn deallocate(&mut self) -> (StatementKind, RouteClass) {
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

    /// `DISCARD ALL | PLANS | SEQUENCES | TEMP | TEMPORARY`.
    fn discard(&mut self) -> (StatementKind, RouteClass) {
        self.bump();
        let mut buf = [0u8; 24];
        let target = match lower(self.bump(), &mut buf) {
            b"all" => {
                self.default_read_only = Some(DefaultReadOnly::Reset);
                DiscardTarget::All
            }
            b"plans" => DiscardTarget::Plans,
            b"sequences" => DiscardTarget::Sequences,
            b"temp" | b"temporary" => DiscardTarget::Temp,
            _ => return (StatementKind::Unknown, RouteClass::Unknown),
        };
        (StatementKind::Discard(target), RouteClass::Read)
    }

    /// `DECLARE name [BINARY] [[A]SENSITIVE | INSENSITIVE] [[NO] SCROLL] CURSOR
    /// [{WITH | WITHOUT} HOLD] FOR query`.
    fn declare(&mut self) -> (StatementKind, RouteClass) {
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
    fn listen(&mut self) -> (StatementKind, RouteClass) {
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

// === Proxy commands ===

/// If a dotted name is `causeway.<x>`: `Ok(setting)` for a known setting, `Err` (an
/// [`ProxyCommand::Invalid`]) for an unknown one. `None` for other names.
fn proxy_target(
    span: Span,
    parts: &[Option<Token<'_>>; 4],
    n: usize,
) -> Option<Result<ProxySetting, ProxyCommand>> {
    let first = parts[0]?;
    if !ident_is(&first, "causeway") {
        return None;
    }
    let unknown = ProxyCommand::Invalid {
        name: span,
        error: ProxyError::UnknownSetting,
    };
    if n != 2 {
        return Some(Err(unknown));
    }
    Some(
        parts[1]
            .and_then(|p| ProxySetting::from_name(&p))
            .ok_or(unknown),
    )
}

/// `SET causeway.<setting> = value`, with the value parsed.
fn proxy_set(setting: ProxySetting, name: Span, raw: &[u8]) -> ProxyCommand {
    if raw.eq_ignore_ascii_case(b"default") {
        return ProxyCommand::Reset(setting);
    }
    let parsed = simple_value(raw).and_then(|v| match setting {
        ProxySetting::Route => [Route::Primary, Route::Standby, Route::Auto]
            .into_iter()
            .find(|r| v.eq_ignore_ascii_case(r.as_str().as_bytes()))
            .map(ProxyCommand::SetRoute),
        ProxySetting::Consistency => [Consistency::Session, Consistency::Eventual]
            .into_iter()
            .find(|c| v.eq_ignore_ascii_case(c.as_str().as_bytes()))
            .map(ProxyCommand::SetConsistency),
        ProxySetting::MaxLag => parse_duration(v).map(ProxyCommand::SetMaxLag),
        ProxySetting::MinLsn => parse_lsn(v).map(ProxyCommand::SetMinLsn),
    });
    parsed.unwrap_or(ProxyCommand::Invalid {
        name,
        error: ProxyError::InvalidValue(setting),
    })
}

/// A setting value as one simple piece of text: the inside of a plain `'…'` string without
/// embedded quotes, or text without quotes at all (`on`, `200ms`, `0/16B3748`).
fn simple_value(raw: &[u8]) -> Option<&[u8]> {
    let raw = trim_ascii(raw);
    if raw.len() >= 2 && raw[0] == b'\'' && raw[raw.len() - 1] == b'\'' {
        let inner = &raw[1..raw.len() - 1];
        return (!inner.contains(&b'\'')).then_some(inner);
    }
    (!raw.contains(&b'\'') && !raw.contains(&b'"')).then_some(raw)
}

// === Names ===

/// Whether a word or quoted identifier names `lower` (a lower-case name): an unquoted word
/// in any case, or a quoted identifier spelled exactly so.
fn ident_is(token: &Token<'_>, lower: &str) -> bool {
    match token.kind {
        TokenKind::Word => token.text.eq_ignore_ascii_case(lower.as_bytes()),
        TokenKind::QuotedIdent => {
            token.text.len() == lower.len() + 2
                && token.text[0] == b'"'
                && &token.text[1..token.text.len() - 1] == lower.as_bytes()
        }
        _ => false,
    }
}

/// The normalised bytes of a simple identifier (a word, lower-cased; or a `"…"` identifier
/// without `""` inside) in `buf`; `None` for anything else or anything longer than `buf`.
fn simple_ident<'b>(token: &Token<'_>, buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    let text = token.text;
    match token.kind {
        TokenKind::Word if text.len() <= buf.len() => {
            let out = &mut buf[..text.len()];
            for (d, s) in out.iter_mut().zip(text) {
                *d = s.to_ascii_lowercase();
            }
            Some(out)
        }
        TokenKind::QuotedIdent if text.first() == Some(&b'"') && text.len() - 2 <= buf.len() => {
            let inner = &text[1..text.len() - 1];
            if inner.contains(&b'"') {
                return None;
            }
            let out = &mut buf[..inner.len()];
            out.copy_from_slice(inner);
            Some(out)
        }
        _ => None,
    }
}

fn sorted_contains(list: &[&str], name: &[u8]) -> bool {
    list.binary_search_by(|k| k.as_bytes().cmp(name)).is_ok()
}

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT_BYTES: usize = 63;

/// Normalises one identifier as PostgreSQL does: unquoted → ASCII lower case; `"…"` → the
/// inside with `""` as `"`; `U&"…"` → the inside as written (escapes are not decoded, so
/// such a name will not be found by the router: unknown, hence primary). Truncated to 63
/// bytes at a character boundary.
pub fn normalize_ident(raw: &[u8]) -> Cow<'_, str> {
    let (inner, quoted) = if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
        (&raw[1..raw.len() - 1], true)
    } else if raw.len() >= 4 && raw[..2].eq_ignore_ascii_case(b"u&") && raw[2] == b'"' {
        (&raw[3..raw.len() - 1], true)
    } else {
        (raw, false)
    };
    let text = String::from_utf8_lossy(inner);
    let text = if quoted {
        if text.contains("\"\"") {
            Cow::Owned(text.replace("\"\"", "\""))
        } else {
            text
        }
    } else if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        text
    };
    truncate_ident(text)
}

fn truncate_ident(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.len() <= MAX_IDENT_BYTES {
        return text;
    }
    let mut cut = MAX_IDENT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..cut]),
        Cow::Owned(mut s) => {
            s.truncate(cut);
            Cow::Owned(s)
        }
    }
}

/// Normalises a dotted name (`a.b`, `"A".b`, `a . b`): each part as [`normalize_ident`],
/// joined with `.`. Borrowed when the text already is in that form.
pub fn normalize_name(raw: &[u8]) -> Cow<'_, str> {
    let simple = raw.iter().all(|&b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.' || b == b'$'
    });
    if simple && !raw.contains(&b'.') {
        return truncate_ident(String::from_utf8_lossy(raw));
    }
    let mut out = String::new();
    for token in Lexer::new(raw) {
        match token.kind {
            TokenKind::Dot => out.push('.'),
            TokenKind::Word | TokenKind::QuotedIdent => out.push_str(&normalize_ident(token.text)),
            _ => out.push_str(&String::from_utf8_lossy(token.text)),
        }
    }
    if out.as_bytes() == raw {
        Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default())
    } else {
        Cow::Owned(out)
    }
}

fn trim_ascii(text: &[u8]) -> &[u8] {
    let start = text.iter().position(|b| !super::lexer::is_space(*b));
    let Some(start) = start else { return &[] };
    let end = text
        .iter()
        .rposition(|b| !super::lexer::is_space(*b))
        .unwrap_or(start);
    &text[start..=end]
}

// === Inline vector ===

/// A vector that keeps its first `N` elements inline, so the usual request (one statement, a
/// few calls) allocates nothing. Once it outgrows `N` every element moves to the heap, which
/// keeps the elements contiguous.
#[derive(Debug, Clone)]
struct InlineVec<T: Copy + Default, const N: usize> {
    /// Elements while there are at most `N`: `inline[..len]`.
    inline: [T; N],
    /// Number of inline elements; unused once `heap` is not empty.
    len: usize,
    /// All elements once there are more than `N`.
    heap: Vec<T>,
}

impl<T: Copy + Default, const N: usize> InlineVec<T, N> {
    fn new() -> Self {
        InlineVec {
            inline: [T::default(); N],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, value: T) {
        if self.heap.is_empty() {
            if self.len < N {
                self.inline[self.len] = value;
                self.len += 1;
                return;
            }
            self.heap.reserve(2 * N);
            self.heap.extend_from_slice(&self.inline[..self.len]);
        }
        self.heap.push(value);
    }

    fn as_slice(&self) -> &[T] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }

    fn heap_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<T>()
    }
}

// === Cache ===

/// Limits of a [`ClassifierCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most analyses kept.
    pub max_entries: usize,
    /// Most bytes kept (texts plus analyses, approximately).
    pub max_bytes: usize,
    /// Longer texts are analysed every time and never stored: one huge generated statement
    /// must not push out thousands of small ones.
    pub max_text_len: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: 10_000,
            max_bytes: 32 << 20,
            max_text_len: 16 << 10,
        }
    }
}

/// Counters of a [`ClassifierCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that analysed the text.
    pub misses: u64,
    /// Analyses held now.
    pub entries: usize,
    /// Approximate bytes held now.
    pub bytes: usize,
}

/// Number of independently locked parts; a power of two.
const SHARDS: usize = 16;

/// A bounded, thread-safe cache of analyses keyed by the statement text.
///
/// The text is hashed with a per-cache random seed; the hash picks one of 16 shards (each
/// behind its own `parking_lot::Mutex`, held only for a map lookup, so contention is low) and
/// a slot in it. A hit is confirmed by comparing the whole text, so a hash collision costs a
/// miss, never a wrong answer, and a flood of colliding texts cannot grow a chain. Eviction is
/// CLOCK (second chance) per shard, by entry count and by bytes. Analysis runs outside the
/// lock.
#[derive(Debug)]
pub struct ClassifierCache {
    /// The shards; a text's hash picks one.
    shards: Box<[Mutex<Shard>]>,
    /// Seed of the text hash, random per cache.
    seed: u64,
    /// The limits, as configured.
    limits: CacheLimits,
    /// Hits so far.
    hits: AtomicU64,
    /// Misses so far.
    misses: AtomicU64,
}

/// One part of the cache.
#[derive(Debug, Default)]
struct Shard {
    /// Text hash → index in `slots`.
    index: HashMap<u64, usize, BuildHasherDefault<PrehashedHasher>>,
    /// The entries, in CLOCK order.
    slots: Vec<Slot>,
    /// The CLOCK hand: the next slot considered for eviction.
    hand: usize,
    /// Sum of the slots' footprints.
    bytes: usize,
}

/// One cached analysis.
#[derive(Debug)]
struct Slot {
    /// Hash of the text (the key in `Shard::index`).
    hash: u64,
    /// The analysis, which also holds the text.
    value: Arc<OwnedAnalysis>,
    /// Its footprint, counted in `Shard::bytes`.
    bytes: usize,
    /// Used since the hand last passed (CLOCK's second chance).
    referenced: bool,
}

impl Default for ClassifierCache {
    fn default() -> Self {
        ClassifierCache::new(CacheLimits::default())
    }
}

impl ClassifierCache {
    /// An empty cache with these limits.
    pub fn new(limits: CacheLimits) -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        ClassifierCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            seed,
            limits,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The analysis of `sql`, from the cache or freshly made (and then stored, if the text is
    /// not too long).
    pub fn analyze(&self, sql: &[u8]) -> Arc<OwnedAnalysis> {
        if sql.len() > self.limits.max_text_len {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(analyze(sql).to_owned_analysis());
        }
        let hash = hash_text(self.seed, sql);
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        if let Some(hit) = shard.lock().get(hash, sql) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let value = Arc::new(analyze(sql).to_owned_analysis());
        let per_shard = |total: usize| total.div_ceil(SHARDS).max(1);
        shard.lock().insert(
            hash,
            Arc::clone(&value),
            per_shard(self.limits.max_entries),
            per_shard(self.limits.max_bytes),
        );
        value
    }

    /// The cached analysis of `sql`, if there is one.
    pub fn get(&self, sql: &[u8]) -> Option<Arc<OwnedAnalysis>> {
        let hash = hash_text(self.seed, sql);
        self.shards[(hash >> 60) as usize % SHARDS]
            .lock()
            .get(hash, sql)
    }

    /// Counters and current size.
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self.shards.iter().fold((0, 0), |(e, b), s| {
            let s = s.lock();
            (e + s.slots.len(), b + s.bytes)
        });
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            *shard.lock() = Shard::default();
        }
    }
}

impl Shard {
    fn get(&mut self, hash: u64, sql: &[u8]) -> Option<Arc<OwnedAnalysis>> {
        let &i = self.index.get(&hash)?;
        let slot = &mut self.slots[i];
        if slot.value.sql() != sql {
            return None; // a hash collision
        }
        slot.referenced = true;
        Some(Arc::clone(&slot.value))
    }

    fn insert(
        &mut self,
        hash: u64,
        value: Arc<OwnedAnalysis>,
        max_entries: usize,
        max_bytes: usize,
    ) {
        let bytes = value.footprint();
        if bytes > max_bytes {
            return;
        }
        if let Some(&i) = self.index.get(&hash) {
            // Another thread stored the same text meanwhile, or a colliding text is there:
            // the newer one wins.
            let slot = &mut self.slots[i];
            self.bytes = self.bytes - slot.bytes + bytes;
            slot.value = value;
            slot.bytes = bytes;
            return;
        }
        while !self.slots.is_empty()
            && (self.slots.len() >= max_entries || self.bytes + bytes > max_bytes)
        {
            let victim = self.clock_victim();
            let removed = self.slots.swap_remove(victim);
            self.index.remove(&removed.hash);
            self.bytes -= removed.bytes;
            if let Some(moved) = self.slots.get(victim) {
                self.index.insert(moved.hash, victim);
            }
        }
        self.index.insert(hash, self.slots.len());
        self.slots.push(Slot {
            hash,
            value,
            bytes,
            referenced: false,
        });
        self.bytes += bytes;
    }

    /// CLOCK: the first slot from the hand that was not used since the hand last passed it,
    /// clearing the marks it passes. Ends within two turns. The shard must not be empty.
    fn clock_victim(&mut self) -> usize {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let slot = &mut self.slots[self.hand];
            if !slot.referenced {
                return self.hand;
            }
            slot.referenced = false;
            self.hand += 1;
        }
    }
}

/// A fast keyed hash of the text: four independent multiply-rotate lanes over 32-byte blocks
/// (so the multiplications overlap), then the tail 8 bytes at a time, then murmur3's final
/// avalanche. Not cryptographic; collisions only cost misses (see [`ClassifierCache`]).
fn hash_text(seed: u64, text: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let word = |bytes: &[u8]| {
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(w)
    };
    let step = |lane: u64, w: u64| (lane ^ w).wrapping_mul(K).rotate_left(29);
    let mut lanes = [
        seed,
        seed ^ K,
        seed.rotate_left(21),
        seed.rotate_left(42) ^ K,
    ];
    let mut blocks = text.chunks_exact(32);
    for block in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = step(*lane, word(w));
        }
    }
    let mut h = (text.len() as u64).wrapping_mul(K)
        ^ lanes[0]
        ^ lanes[1].rotate_left(17)
        ^ lanes[2].rotate_left(31)
        ^ lanes[3].rotate_left(47);
    for w in blocks.remainder().chunks(8) {
        h = step(h, word(w));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A hasher for keys that already are good hashes.
#[derive(Debug, Default, Clone, Copy)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
