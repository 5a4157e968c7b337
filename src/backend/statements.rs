//! Named prepared statements on a server connection.
//!
//! Clients' statement names are theirs alone; a server connection shared by many clients names
//! the statements it has prepared itself (`cw_1`, `cw_2`, ...), keyed by the statement's
//! definition (query text and parameter types). The session rewrites Bind/Describe/Close to the
//! server's names and prepares a missing statement in front of the request that needs it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

/// A named prepared statement's definition: the Parse body after the name (query text and
/// parameter types), which is what makes two statements interchangeable.
#[derive(Debug, PartialEq, Eq)]
pub struct StatementDef {
    /// Parse body without the statement name: query, NUL, parameter type count and OIDs.
    pub body: Bytes,
    /// Hash of `body`, the key of server-side statement caches.
    pub hash: u64,
}

impl StatementDef {
    /// Builds a definition from a Parse body's tail (everything after the name's NUL).
    pub fn new(body: Bytes) -> Arc<StatementDef> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        Arc::new(StatementDef {
            hash: h.finish(),
            body,
        })
    }
}

/// Statements prepared on one server connection, by definition.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// Server-side name for each definition prepared on this connection.
    by_hash: HashMap<u64, (Arc<StatementDef>, Arc<str>)>,
    /// Source of fresh server-side names.
    next: u64,
}

/// Most statements kept prepared on one server connection; beyond it the connection is retired
/// at its next check-in instead of growing without bound.
pub const MAX_SERVER_STATEMENTS: usize = 10_000;

impl ServerStatements {
    /// The server-side name of `def` on this connection, if prepared.
    pub fn name_of(&self, def: &StatementDef) -> Option<&Arc<str>> {
        match self.by_hash.get(&def.hash) {
            Some((d, name)) if d.body == def.body => Some(name),
            _ => None,
        }
    }

    /// A name never used on this connection.
    pub fn fresh_name(&mut self) -> Arc<str> {
        self.next += 1;
        Arc::from(format!("cw_{}", self.next))
    }

    /// Records that `def` is prepared as `name`.
    pub fn insert(&mut self, def: Arc<StatementDef>, name: Arc<str>) {
        self.by_hash.insert(def.hash, (def, name));
    }

    /// Forgets `def` if it is prepared as `name` (its Parse failed).
    pub fn remove(&mut self, def: &StatementDef, name: &str) {
        if let Some((_, n)) = self.by_hash.get(&def.hash) {
            if &**n == name {
                self.by_hash.remove(&def.hash);
            }
        }
    }

    /// Forgets everything (after `DISCARD ALL` / `DEALLOCATE ALL` on the connection).
    pub fn clear(&mut self) {
        self.by_hash.clear();
    }

    /// Number of statements prepared.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether nothing is prepared.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_follow_definitions() {
        let mut s = ServerStatements::default();
        let a = StatementDef::new(Bytes::from_static(b"select 1\0\0\0"));
        let a2 = StatementDef::new(Bytes::from_static(b"select 1\0\0\0"));
        let b = StatementDef::new(Bytes::from_static(b"select 2\0\0\0"));
        assert!(s.name_of(&a).is_none());
        let n = s.fresh_name();
        s.insert(a.clone(), n.clone());
        assert_eq!(s.name_of(&a2), Some(&n));
        assert!(s.name_of(&b).is_none());
        assert_ne!(s.fresh_name(), n);
        s.clear();
        assert!(s.is_empty());
    }
}
