//! Fuzz target: the statement classifier (`analyze`, `ClassifierCache`), on arbitrary text.
//!
//! Every Query and Parse a client sends goes through it, so it must never panic, whatever the
//! bytes. And its rule is "unsure → primary" (docs/CLASSIFIER.md). Text cannot be checked for
//! being a read without a real parser, but these consequences of the rule can, for any input:
//!
//! - text with a NUL byte or invalid UTF-8 is `Unknown`, with no statements;
//! - the request's class is at least as restrictive as each statement's;
//! - a statement the classifier did not recognise is never a read, nor are the kinds that
//!   write or need the primary (`INSERT`…, DDL, `COPY FROM`, `EXECUTE`, `LISTEN`, `LOAD`,
//!   two-phase commands, a `BEGIN` that is not read-only or is serializable);
//! - a write followed by anything, `DELETE FROM t;<input>`, is never a read: no text after a
//!   statement can undo it;
//! - the cache answers exactly what `analyze` does, on a miss and on a hit;
//! - every accessor (names, spans, functions) works on what came back.
//!
//! A write placed *after* the input is deliberately not checked: the input may leave a
//! parenthesis open, and `SELECT (;DELETE …` is a syntax error to PostgreSQL (nothing runs)
//! which the classifier may call a read. That is harmless, so it is not a finding.
#![no_main]

use causeway::router::classify::{
    analyze, Analysis, CacheLimits, ClassifierCache, IsolationLevel, RouteClass, StatementKind,
    TxAccess,
};
use libfuzzer_sys::fuzz_target;

/// Whether a statement of this kind must go to the primary, as docs/CLASSIFIER.md says.
fn kind_needs_primary(kind: &StatementKind) -> bool {
    match kind {
        StatementKind::Insert
        | StatementKind::Update
        | StatementKind::Delete
        | StatementKind::Merge
        | StatementKind::Write
        | StatementKind::CopyFrom
        | StatementKind::PrepareTransaction
        | StatementKind::CommitPrepared
        | StatementKind::RollbackPrepared
        | StatementKind::Execute { .. }
        | StatementKind::Listen { .. }
        | StatementKind::Load
        | StatementKind::Unknown => true,
        StatementKind::Begin { access, isolation } => {
            *access != TxAccess::ReadOnly || *isolation == Some(IsolationLevel::Serializable)
        }
        _ => false,
    }
}

/// Checks the invariants that hold for any analysis, and touches every accessor.
fn check<S: AsRef<[u8]> + std::fmt::Debug>(a: &Analysis<S>) {
    let sql = a.sql();
    if sql.contains(&0) || std::str::from_utf8(sql).is_err() {
        assert_eq!(a.route(), RouteClass::Unknown);
        assert!(a.is_empty());
    }
    for s in a.statements() {
        assert_eq!(a.route().combine(s.route), a.route(), "{s:?} in {a:?}");
        if kind_needs_primary(&s.kind) {
            assert!(s.route.needs_primary(), "{s:?} is a read in {a:?}");
        }
        if s.kind == StatementKind::Unknown {
            assert_eq!(s.route, RouteClass::Unknown, "{s:?}");
        }
        assert!(s.span.range().end <= sql.len());
        let _ = a.statement_text(s);
        touch_kind(a, &s.kind);
    }
    for f in a.function_refs() {
        assert!(f.name.range().end <= sql.len());
        let _ = a.name(f.name);
    }
    for f in a.functions() {
        let _ = f.to_string();
    }
    let _ = (a.pin(), a.hint(), a.max_lag(), a.default_read_only());
    let _ = a.route().as_str();
}

/// Resolves the spans and names a statement kind carries.
fn touch_kind<S: AsRef<[u8]>>(a: &Analysis<S>, kind: &StatementKind) {
    match *kind {
        StatementKind::Show { name } => {
            let _ = a.param_name(name);
        }
        StatementKind::Set { name, value, .. } => {
            let _ = (a.param_name(name), a.text(value));
        }
        StatementKind::Reset { name: Some(name) } => {
            let _ = a.param_name(name);
        }
        StatementKind::Prepare { name, body } => {
            let _ = (a.name(name), a.text(body));
        }
        StatementKind::Savepoint { name }
        | StatementKind::ReleaseSavepoint { name }
        | StatementKind::RollbackToSavepoint { name }
        | StatementKind::Execute { name }
        | StatementKind::DeclareCursor { name, .. }
        | StatementKind::Listen { channel: name }
        | StatementKind::Deallocate { name: Some(name) }
        | StatementKind::Unlisten {
            channel: Some(name),
        } => {
            let _ = a.name(name);
        }
        _ => {}
    }
}

/// The parts of two analyses that must agree.
fn same<S: AsRef<[u8]>, T: AsRef<[u8]>>(x: &Analysis<S>, y: &Analysis<T>) {
    assert_eq!(x.sql(), y.sql());
    assert_eq!(x.route(), y.route());
    assert_eq!(x.statements(), y.statements());
    assert_eq!(x.function_refs(), y.function_refs());
    assert_eq!(
        (x.pin(), x.hint(), x.max_lag(), x.default_read_only()),
        (y.pin(), y.hint(), y.max_lag(), y.default_read_only())
    );
}

fuzz_target!(|data: &[u8]| {
    let direct = analyze(data);
    check(&direct);

    // A small cache so that the fuzzer also reaches eviction and the "too long to store" path.
    let cache = ClassifierCache::new(CacheLimits {
        max_entries: 4,
        max_bytes: 4096,
        max_text_len: 512,
    });
    let miss = cache.analyze(data);
    same(&direct, &*miss);
    let hit = cache.analyze(data);
    same(&direct, &*hit);

    let mut after_write = b"DELETE FROM t;".to_vec();
    after_write.extend_from_slice(data);
    let a = analyze(&after_write);
    check(&a);
    assert!(
        a.route().needs_primary(),
        "a write followed by the input was classified as a read: {a:?}"
    );
});
