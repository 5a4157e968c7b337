//! Named prepared statements on a server connection.
//!
//! Clients' statement names are theirs alone; a server connection shared by many clients names
//! the statements it has prepared itself (`cw_1`, `cw_2`, ...), keyed by the statement's
//! definition (query text and parameter types). The session rewrites Bind/Describe/Close to the
//! server's names and prepares a missing statement in front of the request that needs it.
//!
//! The unnamed statement keeps its name on the server (PostgreSQL replaces it at each unnamed
//! Parse and drops it at each simple Query), but a client may Parse it in one request and Bind
//! it in a later one (libpq's `PQsendPrepare` with an empty name, then
//! `PQsendQueryPrepared`), which may run on another connection: the client's last unnamed
//! Parse and each connection's current unnamed statement are both kept as their Parse body
//! tail ([`UnnamedStatement`]), and a Bind or Describe that finds them different prepares the
//! client's in front of the request.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// A client's named prepared statements, by the client's name for them (the session keeps
/// them; the connection rewrites requests with them). The names are the client's choice, so
/// the map's hasher is keyed at random: with an unkeyed one (FxHash) a client can pick
/// thousands of names that collide and make every lookup walk them all. aHash rather than the
/// standard library's SipHash: as keyed, a tenth of the cost for a short name, and every Bind
/// looks its statement up twice (about 580 of a prepared query's ~10,000 instructions went to
/// SipHash).
pub type ClientStatements = std::collections::HashMap<Bytes, Arc<StatementDef>, ahash::RandomState>;

/// A named prepared statement's definition: the Parse body after the name (query text and
/// parameter types), which is what makes two statements interchangeable.
#[derive(Debug)]
pub struct StatementDef {
    /// Parse body without the statement name: query, NUL, parameter type count and OIDs.
    pub body: Bytes,
    /// Hash of `body`, the key of server-side statement caches.
    pub hash: u64,
    /// The classifier's analysis of the query text and the text's learned-writes key, made
    /// at the first Bind that is routed: later Binds of the statement skip the shared
    /// classifier cache (hashing and comparing the text, its lock and counters).
    pub route_info: OnceLock<(Arc<crate::router::classify::OwnedAnalysis>, u64)>,
}

impl PartialEq for StatementDef {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.body == other.body
    }
}

impl Eq for StatementDef {}

impl StatementDef {
    /// Builds a definition from a Parse body's tail (everything after the name's NUL).
    pub fn new(body: Bytes) -> Arc<StatementDef> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        Arc::new(StatementDef {
            hash: h.finish(),
            body,
            route_info: OnceLock::new(),
        })
    }
}

/// The unnamed statement as a Parse body tail (query, NUL, parameter type count and OIDs): a
/// client's (its last unnamed Parse, until a simple Query or a Close drops it) or a
/// connection's (what the server holds as its unnamed statement, if the proxy knows it).
/// `None` is "none" for a client and "unknown or none" for a connection.
pub type UnnamedStatement = Option<Bytes>;

/// Statements prepared on one server connection, by definition: a bounded cache. Beyond
/// [`MAX_SERVER_STATEMENTS`] the least recently used statement is evicted; evicted and
/// invalidated statements are deallocated on the server by the next request that finds the
/// connection idle (see [`ServerStatements::take_pending_close`]), never while a request
/// already sent may still use them.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// Server-side name and last use (a tick of `clock`) for each definition prepared on
    /// this connection.
    by_hash: rustc_hash::FxHashMap<u64, Entry>,
    /// Source of fresh server-side names.
    next: u64,
    /// Advances on every use, for least-recently-used eviction.
    clock: u64,
    /// Server-side names to deallocate (evicted or invalidated), oldest first.
    pending_close: Vec<Arc<str>>,
    /// Statements found stale on this connection ("cached plan must not change result type")
    /// that the pool has not been told about yet, by definition hash.
    pub(crate) newly_stale: Vec<u64>,
    /// The pool's invalidation generation this connection has applied.
    pub(crate) seen_generation: u64,
    /// The server's unnamed statement as last parsed on this connection, forgotten at every
    /// simple Query written to it (the client's or the proxy's own) and at a failed Parse.
    pub(crate) unnamed: UnnamedStatement,
}

#[derive(Debug)]
struct Entry {
    def: Arc<StatementDef>,
    name: Arc<str>,
    used: u64,
}

/// Most statements kept prepared on one server connection; beyond it the least recently used
/// one is evicted (and deallocated on the server).
pub const MAX_SERVER_STATEMENTS: usize = 1_000;

/// Most server-side names waiting to be deallocated; beyond it the connection is retired at
/// its next check-in rather than holding more (a client that keeps a connection busy in one
/// long transaction while preparing thousands of statements).
pub const MAX_PENDING_CLOSE: usize = 1_000;

impl ServerStatements {
    /// The server-side name of `def` on this connection, if prepared; counts as a use.
    pub fn name_of(&mut self, def: &StatementDef) -> Option<&Arc<str>> {
        self.clock += 1;
        match self.by_hash.get_mut(&def.hash) {
            // The same definition is usually the very same `Arc` (the client's): a pointer
            // comparison spares comparing the query text on every Bind.
            Some(e) if std::ptr::eq(&*e.def, def) || e.def.body == def.body => {
                e.used = self.clock;
                Some(&e.name)
            }
            _ => None,
        }
    }

    /// A name never used on this connection.
    pub fn fresh_name(&mut self) -> Arc<str> {
        self.next += 1;
        Arc::from(format!("cw_{}", self.next))
    }

    /// Records that `def` is prepared as `name`, evicting the least recently used statement
    /// when the cache is full. A statement replaced by `def` (same hash) is deallocated too.
    pub fn insert(&mut self, def: Arc<StatementDef>, name: Arc<str>) {
        self.clock += 1;
        let hash = def.hash;
        let entry = Entry {
            def,
            name,
            used: self.clock,
        };
        if let Some(old) = self.by_hash.insert(hash, entry) {
            self.pending_close.push(old.name);
        }
        while self.by_hash.len() > MAX_SERVER_STATEMENTS {
            let Some(oldest) = self
                .by_hash
                .iter()
                .filter(|(h, _)| **h != hash)
                .min_by_key(|(_, e)| e.used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some(e) = self.by_hash.remove(&oldest) {
                self.pending_close.push(e.name);
            }
        }
    }

    /// Forgets `def` if it is prepared as `name` (its Parse failed: nothing to deallocate).
    pub fn remove(&mut self, def: &StatementDef, name: &str) {
        if let Some(e) = self.by_hash.get(&def.hash) {
            if &*e.name == name {
                self.by_hash.remove(&def.hash);
            }
        }
    }

    /// Forgets the statement with definition hash `hash` and queues its server-side name for
    /// deallocation, so the next use prepares it again (after DDL changed its result type).
    pub fn invalidate(&mut self, hash: u64) {
        if let Some(e) = self.by_hash.remove(&hash) {
            self.pending_close.push(e.name);
        }
    }

    /// Forgets every statement and queues them all for deallocation.
    pub fn invalidate_all(&mut self) {
        for (_, e) in self.by_hash.drain() {
            self.pending_close.push(e.name);
        }
    }

    /// Server-side names to deallocate now; the caller sends the deallocation.
    pub fn take_pending_close(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.pending_close)
    }

    /// Number of server-side names waiting to be deallocated.
    pub fn pending_close_len(&self) -> usize {
        self.pending_close.len()
    }

    /// Forgets everything (after `DISCARD ALL` / `DEALLOCATE ALL` on the connection: nothing
    /// is left to deallocate either).
    pub fn clear(&mut self) {
        self.by_hash.clear();
        self.pending_close.clear();
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

    #[test]
    fn least_recently_used_statement_is_evicted_and_deallocated() {
        let mut s = ServerStatements::default();
        let defs: Vec<_> = (0..=MAX_SERVER_STATEMENTS)
            .map(|i| StatementDef::new(Bytes::from(format!("select {i}\0\0\0"))))
            .collect();
        for d in &defs[..MAX_SERVER_STATEMENTS] {
            let n = s.fresh_name();
            s.insert(d.clone(), n);
        }
        // The first one is used again, so the second is the least recently used.
        assert!(s.name_of(&defs[0]).is_some());
        let n = s.fresh_name();
        s.insert(defs[MAX_SERVER_STATEMENTS].clone(), n);
        assert_eq!(s.len(), MAX_SERVER_STATEMENTS);
        assert!(s.name_of(&defs[0]).is_some());
        assert!(s.name_of(&defs[1]).is_none());
        assert_eq!(s.take_pending_close(), vec![Arc::<str>::from("cw_2")]);
    }

    #[test]
    fn invalidated_statement_is_prepared_again() {
        let mut s = ServerStatements::default();
        let a = StatementDef::new(Bytes::from_static(b"select * from t\0\0\0"));
        let n = s.fresh_name();
        s.insert(a.clone(), n.clone());
        s.invalidate(a.hash);
        assert!(s.name_of(&a).is_none());
        assert_eq!(s.take_pending_close(), vec![n]);
    }
}
