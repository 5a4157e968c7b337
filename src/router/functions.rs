//! Which function calls make a statement a write.
//!
//! PostgreSQL marks every function IMMUTABLE, STABLE or VOLATILE (`pg_proc.provolatile`). A
//! statement that calls a VOLATILE function may write (or take a lock, or advance a sequence),
//! so it goes to the primary, except for a short list of harmless volatile built-ins. Functions
//! the catalog does not know (created after the last load, or in a database not loaded yet) are
//! treated as writes: "unsure" always means the primary.

use std::collections::{HashMap, HashSet};

/// Volatile built-ins that do not write and are fine on a standby.
pub const READ_SAFE_VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "clock_timestamp",
    "timeofday",
    "statement_timestamp",
    "gen_random_uuid",
    "uuid_generate_v4",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "inet_server_port",
    "inet_server_addr",
    "inet_client_addr",
    "inet_client_port",
    "txid_current_if_assigned",
    "pg_current_xact_id_if_assigned",
    "pg_stat_get_activity",
    "pg_stat_get_backend_pid",
    "now",
    "current_setting",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "version",
    "pg_table_size",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_database_size",
];

/// Built-ins that always go to the primary, whatever the catalog says.
pub const ALWAYS_WRITE: &[&str] = &[
    "nextval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_promote",
    "pg_create_restore_point",
    "pg_switch_wal",
];

/// What the proxy knows about one database's functions.
#[derive(Debug, Default, Clone)]
pub struct FunctionCatalog {
    /// For each name (lower case, unqualified and `schema.name`): whether any overload is
    /// VOLATILE.
    volatile: HashMap<String, bool>,
}

impl FunctionCatalog {
    /// Builds a catalog from `(schema, name, provolatile)` rows of `pg_proc`.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str, char)>) -> Self {
        let mut volatile: HashMap<String, bool> = HashMap::new();
        for (schema, name, v) in rows {
            let is_volatile = v == 'v';
            for key in [name.to_owned(), format!("{schema}.{name}")] {
                let e = volatile.entry(key).or_insert(false);
                *e |= is_volatile;
            }
        }
        FunctionCatalog { volatile }
    }

    /// Number of names known.
    pub fn len(&self) -> usize {
        self.volatile.len()
    }

    /// Whether nothing is known (not loaded yet).
    pub fn is_empty(&self) -> bool {
        self.volatile.is_empty()
    }

    /// Whether the catalog knows `name` and no overload of it is volatile.
    fn is_known_read_only(&self, name: &str) -> bool {
        self.volatile.get(name) == Some(&false)
    }
}

/// Function-name overrides from the configuration.
#[derive(Debug, Default, Clone)]
pub struct FunctionOverrides {
    /// Calls that make a statement a write.
    pub writes: HashSet<String>,
    /// Calls that are fine on a standby.
    pub reads: HashSet<String>,
}

/// Whether calling `name` (as written in the statement; case-folded unless quoted by the
/// classifier) keeps a statement a read.
pub fn is_read_only_call(
    name: &str,
    catalog: &FunctionCatalog,
    overrides: &FunctionOverrides,
) -> bool {
    let lower;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lower = name.to_ascii_lowercase();
        lower.as_str()
    } else {
        name
    };
    // `pg_catalog.nextval` is `nextval`.
    let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
    if overrides.writes.contains(name) || overrides.writes.contains(bare) {
        return false;
    }
    if overrides.reads.contains(name) || overrides.reads.contains(bare) {
        return true;
    }
    if ALWAYS_WRITE.contains(&bare) {
        return false;
    }
    if READ_SAFE_VOLATILE.contains(&bare) {
        return true;
    }
    catalog.is_known_read_only(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> FunctionCatalog {
        FunctionCatalog::from_rows([
            ("pg_catalog", "lower", 'i'),
            ("pg_catalog", "count", 'i'),
            ("public", "report", 's'),
            ("public", "bump", 'v'),
            ("other", "report", 'v'),
        ])
    }

    #[test]
    fn volatility_decides() {
        let c = cat();
        let o = FunctionOverrides::default();
        assert!(is_read_only_call("lower", &c, &o));
        assert!(is_read_only_call("COUNT", &c, &o));
        assert!(!is_read_only_call("bump", &c, &o));
        // One volatile overload anywhere makes the bare name a write; the qualified one is exact.
        assert!(!is_read_only_call("report", &c, &o));
        assert!(is_read_only_call("public.report", &c, &o));
        assert!(!is_read_only_call("other.report", &c, &o));
        // Unknown: a write.
        assert!(!is_read_only_call("created_later", &c, &o));
    }

    #[test]
    fn built_in_lists_and_overrides() {
        let c = cat();
        let mut o = FunctionOverrides::default();
        assert!(!is_read_only_call("nextval", &c, &o));
        assert!(!is_read_only_call("pg_catalog.setval", &c, &o));
        assert!(is_read_only_call("random", &c, &o));
        assert!(is_read_only_call("pg_sleep", &c, &o));
        o.reads.insert("bump".into());
        o.writes.insert("lower".into());
        assert!(is_read_only_call("bump", &c, &o));
        assert!(!is_read_only_call("lower", &c, &o));
    }
}
