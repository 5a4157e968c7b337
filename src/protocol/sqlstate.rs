//! SQLSTATE codes the proxy itself emits or reacts to, as named constants.
//!
//! Every error a client sees carries one of these. Codes come from PostgreSQL's
//! `errcodes.txt`; only the ones causeway uses are listed.

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    /// `00000` successful_completion: the code of the proxy's own notices.
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState("00000");
    /// `08000` connection_exception.
    pub const CONNECTION_EXCEPTION: SqlState = SqlState("08000");
    /// `08001` sqlclient_unable_to_establish_sqlconnection: a server could not be reached.
    pub const UNABLE_TO_ESTABLISH_CONNECTION: SqlState = SqlState("08001");
    /// `08006` connection_failure: the server connection broke.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// `08P01` protocol_violation.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// `0A000` feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// `22023` invalid_parameter_value.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// `25006` read_only_sql_transaction.
    pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState("25006");
    /// `25P02` in_failed_sql_transaction.
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    /// `25P03` idle_in_transaction_session_timeout.
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
    /// `28000` invalid_authorization_specification.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// `3D000` invalid_catalog_name (unknown database).
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    /// `40001` serialization_failure.
    pub const SERIALIZATION_FAILURE: SqlState = SqlState("40001");
    /// `42601` syntax_error.
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// `42704` undefined_object.
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    /// `53300` too_many_connections.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// `54000` program_limit_exceeded.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// `55000` object_not_in_prerequisite_state: the admin console's PAUSE / RESUME out of
    /// turn.
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    /// `57014` query_canceled.
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// `57P01` admin_shutdown.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// `57P02` crash_shutdown: the server is restarting after a backend crashed.
    pub const CRASH_SHUTDOWN: SqlState = SqlState("57P02");
    /// `57P03` cannot_connect_now.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// `57P05` idle_session_timeout.
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
    /// `58000` system_error.
    pub const SYSTEM_ERROR: SqlState = SqlState("58000");
    /// `F0000` config_file_error.
    pub const CONFIG_FILE_ERROR: SqlState = SqlState("F0000");
    /// `XX000` internal_error.
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");

    /// The five-character code.
    pub fn code(&self) -> &'static str {
        self.0
    }
}

// A server's code arrives as text (`ErrorFields::code`); these let it be compared with a
// constant directly, without a lookup table of every code PostgreSQL has.
impl PartialEq<str> for SqlState {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SqlState {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<SqlState> for str {
    fn eq(&self, other: &SqlState) -> bool {
        self == other.0
    }
}

impl PartialEq<SqlState> for &str {
    fn eq(&self, other: &SqlState) -> bool {
        *self == other.0
    }
}

impl PartialEq<SqlState> for String {
    fn eq(&self, other: &SqlState) -> bool {
        self == other.0
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// SQLSTATEs that keep their own value in the `sqlstate` label of `causeway_errors_total`:
/// the codes causeway itself sends, and those an operator most often alerts on (constraint
/// violations, serialization failures and deadlocks, cancellations, syntax and permission
/// errors, resource limits). Sorted, for the binary search in [`metric_label`].
const LABELLED_CODES: [&str; 57] = [
    "08000", "08001", "08003", "08006", "08P01", "0A000", "22001", "22003", "22007", "22008",
    "22012", "22023", "22P02", "23502", "23503", "23505", "23514", "23P01", "25001", "25006",
    "25P02", "25P03", "26000", "28000", "28P01", "34000", "3D000", "3F000", "40001", "40P01",
    "42501", "42601", "42703", "42704", "42710", "42804", "42883", "42P01", "42P07", "53100",
    "53200", "53300", "54000", "55000", "55P03", "57014", "57P01", "57P02", "57P03", "57P05",
    "58000", "58P01", "F0000", "P0001", "XX000", "XX001", "XX002",
];

/// The classes of PostgreSQL 15's `errcodes.txt` (the first two characters of a code), as
/// the label of a code outside [`LABELLED_CODES`]: the class followed by `XXX`. Sorted.
const CLASS_LABELS: [&str; 43] = [
    "00XXX", "01XXX", "02XXX", "03XXX", "08XXX", "09XXX", "0AXXX", "0BXXX", "0FXXX", "0LXXX",
    "0PXXX", "0ZXXX", "20XXX", "21XXX", "22XXX", "23XXX", "24XXX", "25XXX", "26XXX", "27XXX",
    "28XXX", "2BXXX", "2DXXX", "2FXXX", "34XXX", "38XXX", "39XXX", "3BXXX", "3DXXX", "3FXXX",
    "40XXX", "42XXX", "44XXX", "53XXX", "54XXX", "55XXX", "57XXX", "58XXX", "72XXX", "F0XXX",
    "HVXXX", "P0XXX", "XXXXX",
];

/// The value of the `sqlstate` label for an error with this code, from a fixed set so that a
/// server (or an extension raising its own codes) cannot grow the label without bound: the
/// code itself if it is one of [`LABELLED_CODES`], else its class as `<class>XXX` (`22XXX`),
/// else `other` (not a PostgreSQL class, or not five characters).
pub fn metric_label(code: &str) -> &'static str {
    if code.len() != 5 {
        return "other";
    }
    if let Ok(i) = LABELLED_CODES.binary_search(&code) {
        return LABELLED_CODES[i];
    }
    CLASS_LABELS
        .binary_search_by(|c| c.as_bytes()[..2].cmp(&code.as_bytes()[..2]))
        .map_or("other", |i| CLASS_LABELS[i])
}

/// Severity of an ErrorResponse or NoticeResponse the proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
    /// Informational (NoticeResponse).
    Notice,
    /// A warning (NoticeResponse).
    Warning,
}

impl Severity {
    /// The text PostgreSQL uses in the `S`/`V` fields.
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_with_codes_as_text() {
        let from_server = String::from("57P01");
        assert!(from_server == SqlState::ADMIN_SHUTDOWN);
        assert!(*from_server.as_str() == SqlState::ADMIN_SHUTDOWN);
        assert!(SqlState::ADMIN_SHUTDOWN == "57P01");
        assert!("57P03" != SqlState::ADMIN_SHUTDOWN);
        assert_eq!(SqlState::CRASH_SHUTDOWN.to_string(), "57P02");
    }

    #[test]
    fn metric_labels_come_from_a_fixed_set() {
        assert!(LABELLED_CODES.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert!(CLASS_LABELS.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert_eq!(metric_label("22012"), "22012");
        assert_eq!(metric_label("57P01"), "57P01");
        // A code outside the list keeps its class; anything else is `other`.
        assert_eq!(metric_label("22018"), "22XXX");
        assert_eq!(metric_label("HV00R"), "HVXXX");
        assert_eq!(metric_label("ZZ123"), "other");
        assert_eq!(metric_label("2201"), "other");
        assert_eq!(metric_label("é2012"), "other");
        assert_eq!(metric_label(""), "other");
        // Every code causeway sends itself keeps its own value.
        for c in [
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CONNECTION_FAILURE,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::INVALID_PASSWORD,
            SqlState::QUERY_CANCELED,
            SqlState::IDLE_SESSION_TIMEOUT,
            SqlState::CONFIG_FILE_ERROR,
        ] {
            assert_eq!(metric_label(c.code()), c.code());
        }
    }
}
