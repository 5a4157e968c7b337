//! The built-in functions the classifier knows by name: those that must run on the primary
//! whatever `pg_proc` says, the volatile ones harmless on a standby, the common read-only ones
//! not worth a lookup, and the session advisory locks that pin a client. Data, not logic: each
//! entry says why it is there, and the public lists are sorted for binary search (a unit test
//! checks the order).

/// Built-in functions that must run on the primary whatever their volatility says; a call to
/// any of them (unqualified or `pg_catalog.`-qualified) makes the statement
/// [`RouteClass::Primary`](super::RouteClass::Primary). Sorted (binary search).
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
/// reported in [`Analysis::functions`](super::Analysis::functions), which saves the router a
/// lookup for the most frequent queries. A schema placed before `pg_catalog` in `search_path` could shadow them; that is
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
pub(super) const SESSION_ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];
