//! Tests of the statement classifier: the shared corpus (`corpus.rs`, also run against
//! PostgreSQL's own grammar by `tests/classify_oracle.rs`), then what each statement kind
//! reports, the lexer's traps, hints, proxy commands, pins, the cache, and a no-panic sweep
//! over prefixes, mutations and random bytes.

use crate::protocol::Lsn;
use std::sync::Arc;

use super::cache::{hash_text, SHARDS};
use super::command::parse_bool;
use super::*;
use crate::config::Consistency;
use crate::router::lexer::{KeywordCategory, Lexer, TokenKind};

include!("corpus.rs");

fn route(sql: &str) -> RouteClass {
    analyze(sql.as_bytes()).route()
}

fn only_kind(sql: &str) -> StatementKind {
    let a = analyze(sql.as_bytes());
    assert_eq!(a.statements().len(), 1, "{sql:?}: {:?}", a.statements());
    a.statements()[0].kind
}

fn functions(sql: &str) -> Vec<String> {
    analyze(sql.as_bytes())
        .functions()
        .map(|f| f.to_string())
        .collect()
}

fn text(a: &Analysis<&[u8]>, span: Span) -> String {
    String::from_utf8_lossy(a.text(span)).into_owned()
}

// === Corpus ===

#[test]
fn corpus_routes() {
    let mut failures = Vec::new();
    for (sql, expected) in CORPUS {
        let got = route(sql);
        if got.as_str() != *expected {
            failures.push(format!(
                "{sql:?}: expected {expected}, got {}",
                got.as_str()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus statements misclassified:\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n")
    );
    assert!(CORPUS.len() >= 300);
}

#[test]
fn corpus_statements_cover_their_text() {
    // Every statement's span is inside the text and starts with its first token.
    for (sql, _) in CORPUS {
        let a = analyze(sql.as_bytes());
        for s in a.statements() {
            assert!(s.span.range().end <= sql.len(), "{sql:?}");
            let t = a.statement_text(s);
            assert!(!t.is_empty(), "{sql:?}");
            assert!(!crate::router::lexer::is_space(t[0]), "{sql:?}");
        }
    }
}

// === Routes the corpus cannot express ===

#[test]
fn invalid_utf8_and_nul_are_unknown() {
    for bytes in [
        &b"SELECT \xff"[..],
        b"SELECT '\xc3\x28'",
        b"\xe2\x82",
        b"SELECT 1\0",
        b"SELECT '\0'",
        b"\x00",
    ] {
        let a = analyze(bytes);
        assert_eq!(a.route(), RouteClass::Unknown, "{bytes:?}");
        assert!(a.statements().is_empty());
    }
}

#[test]
fn backslash_before_quote_is_read_both_ways_or_primary() {
    // With standard_conforming_strings off, this is one string and then `; DELETE`.
    assert_eq!(
        route(r"SELECT '\' , ' ; DELETE FROM t; -- '"),
        RouteClass::Primary
    );
    // …and here a call to a function the first reading does not see.
    assert_eq!(
        route(r"SELECT '\' , ' , myfunc(1) -- '"),
        RouteClass::Primary
    );
    // Unterminated when read the other way: such a server rejects the request, harmless.
    assert_eq!(route(r"SELECT 'C:\'"), RouteClass::Read);
    assert_eq!(
        route(r"SELECT a FROM t WHERE b LIKE 'x\_%' ESCAPE '\'"),
        RouteClass::Read
    );
    // Both readings are the same read.
    assert_eq!(route(r"SELECT '\' , '\'"), RouteClass::Read);
    // No backslash before a quote: nothing to doubt.
    assert_eq!(route(r"SELECT 'a\b', 'c\\d'"), RouteClass::Read);
}

#[test]
fn deep_nesting_is_unknown_not_a_crash() {
    let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
    assert_eq!(route(&deep), RouteClass::Unknown);
    let ok = format!("SELECT {}1{}", "(".repeat(100), ")".repeat(100));
    assert_eq!(route(&ok), RouteClass::Read);
}

// === Statement kinds ===

#[test]
fn begin_forms() {
    use IsolationLevel::*;
    let k = |sql| only_kind(sql);
    assert_eq!(
        k("BEGIN"),
        StatementKind::Begin {
            access: TxAccess::Default,
            isolation: None
        }
    );
    assert_eq!(
        k("START TRANSACTION READ ONLY"),
        StatementKind::Begin {
            access: TxAccess::ReadOnly,
            isolation: None
        }
    );
    assert_eq!(
        k("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
        StatementKind::Begin {
            access: TxAccess::ReadOnly,
            isolation: Some(RepeatableRead)
        }
    );
    assert_eq!(
        k("begin transaction isolation level read uncommitted read write"),
        StatementKind::Begin {
            access: TxAccess::ReadWrite,
            isolation: Some(ReadUncommitted)
        }
    );
    assert_eq!(
        k("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"),
        StatementKind::Begin {
            access: TxAccess::ReadOnly,
            isolation: Some(Serializable)
        }
    );
    assert_eq!(
        route("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"),
        RouteClass::Primary
    );
    assert_eq!(
        k("START TRANSACTION ISOLATION LEVEL READ COMMITTED"),
        StatementKind::Begin {
            access: TxAccess::Default,
            isolation: Some(ReadCommitted)
        }
    );
}

#[test]
fn end_of_transaction_forms() {
    assert_eq!(only_kind("COMMIT"), StatementKind::Commit { chain: false });
    assert_eq!(
        only_kind("END WORK"),
        StatementKind::Commit { chain: false }
    );
    assert_eq!(
        only_kind("COMMIT AND CHAIN"),
        StatementKind::Commit { chain: true }
    );
    assert_eq!(
        only_kind("COMMIT AND NO CHAIN"),
        StatementKind::Commit { chain: false }
    );
    assert_eq!(
        only_kind("ROLLBACK"),
        StatementKind::Rollback { chain: false }
    );
    assert_eq!(
        only_kind("ABORT AND CHAIN"),
        StatementKind::Rollback { chain: true }
    );
    assert_eq!(
        only_kind("COMMIT PREPARED 'x'"),
        StatementKind::CommitPrepared
    );
    assert_eq!(
        only_kind("ROLLBACK PREPARED 'x'"),
        StatementKind::RollbackPrepared
    );
    assert_eq!(
        only_kind("PREPARE TRANSACTION 'x'"),
        StatementKind::PrepareTransaction
    );
    let a = analyze(b"ROLLBACK WORK TO SAVEPOINT \"Sp\"");
    let StatementKind::RollbackToSavepoint { name } = a.statements()[0].kind else {
        panic!("{:?}", a.statements());
    };
    assert_eq!(a.name(name), "Sp");
    let a = analyze(b"SAVEPOINT s1; RELEASE SAVEPOINT s1; RELEASE s2");
    let kinds: Vec<_> = a.statements().iter().map(|s| s.kind).collect();
    assert!(matches!(kinds[0], StatementKind::Savepoint { name } if a.text(name) == b"s1"));
    assert!(matches!(kinds[1], StatementKind::ReleaseSavepoint { name } if a.text(name) == b"s1"));
    assert!(matches!(kinds[2], StatementKind::ReleaseSavepoint { name } if a.text(name) == b"s2"));
    // ABORT has no TO form.
    assert_eq!(route("ABORT TO s1"), RouteClass::Unknown);
}

#[test]
fn set_reports_name_and_raw_value() {
    let a = analyze(b"SET search_path TO \"$user\", public");
    let StatementKind::Set { scope, name, value } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(scope, SetScope::Session);
    assert_eq!(a.param_name(name), "search_path");
    assert_eq!(text(&a, value), "\"$user\", public");

    let a = analyze(b"set Session Work_Mem = '64MB' ; ");
    let StatementKind::Set { scope, name, value } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(scope, SetScope::Session);
    assert_eq!(a.param_name(name), "work_mem");
    assert_eq!(text(&a, value), "'64MB'");

    let a = analyze(b"SET LOCAL statement_timeout = 0");
    assert!(matches!(
        a.statements()[0].kind,
        StatementKind::Set {
            scope: SetScope::Local,
            ..
        }
    ));

    let a = analyze(b"SET \"My\".Opt TO DEFAULT");
    let StatementKind::Set { name, value, .. } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(a.param_name(name), "My.opt");
    assert_eq!(text(&a, value), "DEFAULT");

    for (sql, param, raw) in [
        ("SET TIME ZONE 'UTC'", "timezone", "'UTC'"),
        ("SET TIME ZONE LOCAL", "timezone", "LOCAL"),
        ("SET SCHEMA 'app'", "search_path", "'app'"),
        ("SET NAMES 'UTF8'", "client_encoding", "'UTF8'"),
        ("SET NAMES", "client_encoding", ""),
        ("SET ROLE reader", "role", "reader"),
        (
            "SET SESSION AUTHORIZATION 'bob'",
            "session_authorization",
            "'bob'",
        ),
        (
            "SET SESSION SESSION AUTHORIZATION DEFAULT",
            "session_authorization",
            "DEFAULT",
        ),
        ("SET XML OPTION CONTENT", "xmloption", "CONTENT"),
        ("SET role = 'x'", "role", "'x'"),
    ] {
        let a = analyze(sql.as_bytes());
        let StatementKind::Set { name, value, .. } = a.statements()[0].kind else {
            panic!("{sql}: {:?}", a.statements())
        };
        assert_eq!(a.param_name(name), param, "{sql}");
        assert_eq!(text(&a, value), raw, "{sql}");
    }
    assert_eq!(
        only_kind("SET TRANSACTION READ ONLY"),
        StatementKind::SetTransaction
    );
    assert_eq!(
        only_kind("SET CONSTRAINTS ALL IMMEDIATE"),
        StatementKind::SetConstraints
    );
}

#[test]
fn reset_and_show() {
    let a = analyze(b"RESET Work_Mem");
    let StatementKind::Reset { name: Some(name) } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(a.param_name(name), "work_mem");
    assert_eq!(only_kind("RESET ALL"), StatementKind::Reset { name: None });
    assert_eq!(
        only_kind("RESET TIME ZONE"),
        StatementKind::Reset {
            name: Some(ParamName::Builtin("timezone"))
        }
    );
    assert_eq!(
        only_kind("RESET TRANSACTION ISOLATION LEVEL"),
        StatementKind::Reset {
            name: Some(ParamName::Builtin("transaction_isolation"))
        }
    );
    assert_eq!(
        only_kind("SHOW ALL"),
        StatementKind::Show {
            name: ParamName::Builtin("all")
        }
    );
    let a = analyze(b"SHOW Search_Path");
    let StatementKind::Show { name } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(a.param_name(name), "search_path");
}

#[test]
fn discard_deallocate_prepare_execute() {
    assert_eq!(
        only_kind("DISCARD ALL"),
        StatementKind::Discard(DiscardTarget::All)
    );
    assert_eq!(
        only_kind("discard temporary"),
        StatementKind::Discard(DiscardTarget::Temp)
    );
    assert_eq!(
        only_kind("DISCARD PLANS"),
        StatementKind::Discard(DiscardTarget::Plans)
    );
    assert_eq!(
        only_kind("DISCARD SEQUENCES"),
        StatementKind::Discard(DiscardTarget::Sequences)
    );
    assert_eq!(
        only_kind("DEALLOCATE ALL"),
        StatementKind::Deallocate { name: None }
    );
    let a = analyze(b"DEALLOCATE PREPARE \"Q1\"");
    let StatementKind::Deallocate { name: Some(name) } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(a.name(name), "Q1");

    let a =
        analyze(b"PREPARE q1 (int, numeric(10,2)) AS SELECT myfunc($1) FROM t; EXECUTE q1(1, 2.5)");
    let StatementKind::Prepare { name, body } = a.statements()[0].kind else {
        panic!("{:?}", a.statements())
    };
    assert_eq!(text(&a, name), "q1");
    assert_eq!(text(&a, body), "SELECT myfunc($1) FROM t");
    assert_eq!(a.statements()[0].route, RouteClass::Read);
    let StatementKind::Execute { name } = a.statements()[1].kind else {
        panic!()
    };
    assert_eq!(text(&a, name), "q1");
    assert_eq!(a.statements()[1].route, RouteClass::Primary);
    assert_eq!(functions("PREPARE q1 AS SELECT myfunc($1)"), ["myfunc"]);
    // The arguments of EXECUTE are expressions; a call there is reported.
    assert_eq!(functions("EXECUTE q1(otherfunc(1))"), ["otherfunc"]);
    assert!(matches!(
        only_kind("EXPLAIN EXECUTE q1(1)"),
        StatementKind::Execute { .. }
    ));
    assert!(matches!(
        only_kind("EXPLAIN ANALYZE EXECUTE q1"),
        StatementKind::Execute { .. }
    ));
    // A statement named like a keyword.
    assert!(matches!(
        only_kind("PREPARE transaction AS SELECT 1"),
        StatementKind::Prepare { .. }
    ));
}

#[test]
fn cursors() {
    let a = analyze(b"DECLARE c1 CURSOR WITH HOLD FOR SELECT * FROM t");
    let StatementKind::DeclareCursor { name, hold } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(text(&a, name), "c1");
    assert!(hold);
    assert_eq!(a.pin(), Some(PinReason::HoldCursor));
    let a = analyze(b"DECLARE c1 SCROLL CURSOR FOR SELECT 1");
    assert!(matches!(
        a.statements()[0].kind,
        StatementKind::DeclareCursor { hold: false, .. }
    ));
    assert_eq!(a.pin(), None);
    assert_eq!(only_kind("FETCH ALL IN c1"), StatementKind::Cursor);
}

#[test]
fn copy_and_explain_kinds() {
    assert_eq!(only_kind("COPY t TO STDOUT"), StatementKind::CopyTo);
    assert_eq!(only_kind("COPY t FROM STDIN"), StatementKind::CopyFrom);
    assert_eq!(
        only_kind("COPY (SELECT 1) TO STDOUT"),
        StatementKind::CopyTo
    );
    assert_eq!(
        only_kind("EXPLAIN SELECT 1"),
        StatementKind::Explain { analyze: false }
    );
    assert_eq!(
        only_kind("EXPLAIN (ANALYZE 'on') SELECT 1"),
        StatementKind::Explain { analyze: true }
    );
    assert_eq!(
        only_kind("EXPLAIN (ANALYZE 0) DELETE FROM t"),
        StatementKind::Explain { analyze: false }
    );
    // Without ANALYZE nothing runs, so calls are not reported.
    assert!(functions("EXPLAIN SELECT myfunc(1)").is_empty());
    assert_eq!(functions("EXPLAIN ANALYZE SELECT myfunc(1)"), ["myfunc"]);
}

#[test]
fn dml_kinds() {
    assert_eq!(only_kind("INSERT INTO t VALUES (1)"), StatementKind::Insert);
    assert_eq!(only_kind("update t set a = 1"), StatementKind::Update);
    assert_eq!(only_kind("DELETE FROM t"), StatementKind::Delete);
    assert_eq!(
        only_kind("MERGE INTO t USING u ON true WHEN MATCHED THEN DO NOTHING"),
        StatementKind::Merge
    );
    assert_eq!(only_kind("VACUUM t"), StatementKind::Write);
    assert_eq!(only_kind("SELECT 1"), StatementKind::Query);
    assert_eq!(
        only_kind("WITH x AS (SELECT 1) SELECT 1"),
        StatementKind::Query
    );
}

#[test]
fn listen_and_unlisten() {
    let a = analyze(b"LISTEN \"Chan\"");
    let StatementKind::Listen { channel } = a.statements()[0].kind else {
        panic!()
    };
    assert_eq!(a.name(channel), "Chan");
    assert_eq!(a.pin(), Some(PinReason::Listen));
    assert_eq!(
        only_kind("UNLISTEN *"),
        StatementKind::Unlisten { channel: None }
    );
    assert!(matches!(
        only_kind("UNLISTEN c"),
        StatementKind::Unlisten { channel: Some(_) }
    ));
    assert_eq!(analyze(b"UNLISTEN c").pin(), None);
}

#[test]
fn multi_statement_lists_every_statement() {
    let a = analyze(b" SET a = 1 ;SELECT 2; ; INSERT INTO t VALUES (';') -- end");
    let kinds: Vec<_> = a.statements().iter().map(|s| s.kind).collect();
    assert_eq!(kinds.len(), 3);
    assert!(matches!(kinds[0], StatementKind::Set { .. }));
    assert_eq!(kinds[1], StatementKind::Query);
    assert_eq!(kinds[2], StatementKind::Insert);
    let texts: Vec<_> = a.statements().iter().map(|s| text(&a, s.span)).collect();
    assert_eq!(
        texts,
        ["SET a = 1", "SELECT 2", "INSERT INTO t VALUES (';')"]
    );
    let routes: Vec<_> = a.statements().iter().map(|s| s.route).collect();
    assert_eq!(
        routes,
        [RouteClass::Read, RouteClass::Read, RouteClass::Primary]
    );
    assert_eq!(a.route(), RouteClass::Primary);

    // More statements than fit inline.
    let many = "SELECT 1;".repeat(50);
    let a = analyze(many.as_bytes());
    assert_eq!(a.statements().len(), 50);
    assert_eq!(a.route(), RouteClass::Read);
    assert!(analyze(b"").is_empty());
    assert!(analyze(b" ; -- x\n ;").is_empty());
}

// === Functions ===

#[test]
fn calls_are_reported_once_and_normalised() {
    assert_eq!(functions("SELECT myfunc(1)"), ["myfunc"]);
    assert_eq!(
        functions("SELECT MyFunc(1), myfunc(2), MYFUNC(3)"),
        ["myfunc"]
    );
    assert_eq!(functions("SELECT \"MyFunc\"(1)"), ["MyFunc"]);
    assert_eq!(functions("SELECT Public.MyFunc(1)"), ["public.myfunc"]);
    assert_eq!(functions("SELECT \"S\".\"f\"\"x\"(1)"), ["S.f\"x"]);
    assert_eq!(functions("SELECT db.s.f(1)"), ["s.f"]);
    assert_eq!(functions("SELECT a.f(1), b.f(2)"), ["a.f", "b.f"]);
    assert_eq!(functions("SELECT nextval('s')"), ["nextval"]);
    assert_eq!(
        functions("SELECT pg_catalog.nextval('s')"),
        ["pg_catalog.nextval"]
    );
    // Known read-only built-ins are left out; so is syntax that looks like a call.
    assert!(functions("SELECT count(*), now(), lower(x), coalesce(a, b) FROM t").is_empty());
    assert!(functions("SELECT pg_catalog.count(*) FROM t").is_empty());
    // …but not when another schema is named.
    assert_eq!(
        functions("SELECT myschema.count(*) FROM t"),
        ["myschema.count"]
    );
    assert!(functions(
        "SELECT CAST(a AS numeric(10,2)), b::varchar(3), EXISTS (SELECT 1), x IN (1), \
         ARRAY(SELECT 1), ROW(1), EXTRACT(year FROM d), SUBSTRING(s FROM 1 FOR 2), \
         TRIM(s), POSITION('a' IN s), OVERLAY(s PLACING 'x' FROM 1), NULLIF(a, b), \
         GREATEST(a, b), LEAST(a, b), CURRENT_TIMESTAMP(3), INTERVAL '1' SECOND(3), \
         CAST(a AS character varying(3)), CAST(a AS interval day to second(2)), \
         CAST(a AS myschema.mytype(3)), a = ANY (b), a = ALL (b), a = SOME (b) FROM t"
    )
    .is_empty());
    assert!(functions("SELECT * FROM t AS x(a, b), u y(c), (SELECT 1) z(d)").is_empty());
    assert!(functions("WITH x(a) AS (SELECT 1), y(b) AS (SELECT 2) SELECT 1").is_empty());
    assert!(functions("WITH RECURSIVE x(a) AS (SELECT 1) SELECT 1").is_empty());
    assert!(functions("SELECT * FROM t TABLESAMPLE system (1) REPEATABLE (2)").is_empty());
    assert!(
        functions("SELECT sum(a) OVER (ORDER BY b), count(*) FILTER (WHERE c) FROM t").is_empty()
    );
    assert!(functions("SELECT 1 FROM t GROUP BY CUBE (a), ROLLUP (b) ORDER BY (a)").is_empty());
    assert!(functions("SELECT a OPERATOR(pg_catalog.+) b FROM t").is_empty());
    assert!(functions("INSERT INTO t (a, b) VALUES (1, 2) ON CONFLICT (a) DO NOTHING").is_empty());
    assert!(functions("COPY t (a, b) TO STDOUT").is_empty());
    assert!(functions(
        "SELECT * FROM t LEFT JOIN (SELECT 1) x ON true NATURAL FULL JOIN (u CROSS JOIN v), \
         data JOIN (SELECT 1) y ON true WHERE a NOT LIKE ('x') AND name LIKE ('y') \
         AND b NOT ILIKE ('z') AND c SIMILAR TO ('w')"
    )
    .is_empty());
    assert_eq!(functions("SELECT join(1), like(a, b)"), ["join", "like"]);
    // Set-returning functions in FROM, calls after keywords, operators, commas, parentheses.
    assert_eq!(functions("SELECT * FROM srf(1)"), ["srf"]);
    assert_eq!(
        functions("SELECT * FROM t JOIN LATERAL srf(t.a) ON true"),
        ["srf"]
    );
    assert_eq!(
        functions("SELECT a FROM t WHERE f1(a) AND NOT f2(a) OR a = f3(a) ORDER BY f4(a)"),
        ["f1", "f2", "f3", "f4"]
    );
    assert_eq!(functions("SELECT DISTINCT ON (a) f(b) FROM t"), ["f"]);
    assert_eq!(
        functions("SELECT a OPERATOR(pg_catalog.+) f(b) FROM t"),
        ["f"]
    );
    assert_eq!(functions("SELECT a, f(b) FROM t"), ["f"]);
    assert_eq!(
        functions("WITH x AS (SELECT 1) SELECT a, f(b) FROM x"),
        ["f"]
    );
    assert_eq!(
        functions("WITH x AS (SELECT 1) (SELECT a) ORDER BY a, f(b)"),
        ["f"]
    );
    assert_eq!(
        functions("SELECT * FROM unnest(a) WITH ORDINALITY AS u(x, n), f(1)"),
        ["f"]
    );
    assert_eq!(functions("SELECT x FROM t WHERE a LIKE f(b)"), ["f"]);
    assert_eq!(functions("SELECT x FROM t WHERE a SIMILAR TO f(b)"), ["f"]);
    assert_eq!(functions("SELECT ts AT TIME ZONE f(b) FROM t"), ["f"]);
    assert_eq!(functions("SELECT f(a => g(1))"), ["f", "g"]);
    assert_eq!(
        functions("SELECT left(a, 1), \"left\"(a, 1), right(a, 1)"),
        Vec::<String>::new()
    );
    assert_eq!(functions("SELECT by(1), filter(2)"), ["by", "filter"]);
    assert_eq!(
        functions("SELECT x FROM t FETCH FIRST f(1) ROWS ONLY"),
        ["f"]
    );
    assert_eq!(functions("SELECT x NOT LIKE like(a, b)"), ["like"]);
    assert_eq!(functions("SELECT x LIKE ilike(a, b)"), ["ilike"]);
    assert_eq!(functions("SELECT x BETWEEN similar(1) AND 2"), ["similar"]);
    assert_eq!(functions("SELECT * FROM t JOIN join(1) ON true"), ["join"]);
    assert_eq!(functions("SELECT a FROM t ORDER BY like(a, b)"), ["like"]);
    // Many distinct calls spill out of the inline list.
    let many: Vec<String> = (0..20).map(|i| format!("f{i}(1)")).collect();
    let sql = format!("SELECT {}", many.join(", "));
    assert_eq!(functions(&sql).len(), 20);
}

#[test]
fn pins() {
    let pin = |sql: &str| analyze(sql.as_bytes()).pin();
    assert_eq!(pin("SELECT 1"), None);
    assert_eq!(pin("LISTEN x"), Some(PinReason::Listen));
    assert_eq!(
        pin("CREATE TEMP TABLE x (a int)"),
        Some(PinReason::TempObject)
    );
    assert_eq!(
        pin("CREATE TEMPORARY VIEW v AS SELECT 1"),
        Some(PinReason::TempObject)
    );
    assert_eq!(
        pin("create local temporary sequence s"),
        Some(PinReason::TempObject)
    );
    assert_eq!(
        pin("CREATE TABLE pg_temp.x (a int)"),
        Some(PinReason::TempObject)
    );
    assert_eq!(
        pin("CREATE TABLE x (a int) ON COMMIT DROP"),
        Some(PinReason::TempObject)
    );
    assert_eq!(
        pin("SELECT * INTO TEMP x FROM t"),
        Some(PinReason::TempObject)
    );
    assert_eq!(
        pin("SELECT * INTO TEMPORARY TABLE x FROM t"),
        Some(PinReason::TempObject)
    );
    assert_eq!(
        pin("SELECT * INTO pg_temp.x FROM t"),
        Some(PinReason::TempObject)
    );
    assert_eq!(pin("SELECT * INTO x FROM t"), None);
    assert_eq!(pin("CREATE TABLE temp (a int)"), None);
    assert_eq!(pin("CREATE TABLE t (temp int)"), None);
    assert_eq!(
        pin("SELECT pg_advisory_lock(1)"),
        Some(PinReason::AdvisoryLock)
    );
    assert_eq!(
        pin("SELECT pg_try_advisory_lock(1)"),
        Some(PinReason::AdvisoryLock)
    );
    assert_eq!(
        pin("SELECT pg_advisory_lock_shared(1)"),
        Some(PinReason::AdvisoryLock)
    );
    assert_eq!(
        pin("SELECT pg_try_advisory_lock_shared(1)"),
        Some(PinReason::AdvisoryLock)
    );
    assert_eq!(pin("SELECT pg_advisory_xact_lock(1)"), None);
    assert_eq!(pin("SELECT pg_try_advisory_xact_lock(1)"), None);
    assert_eq!(pin("SELECT pg_advisory_unlock(1)"), None);
    assert_eq!(
        pin("INSERT INTO t VALUES (pg_advisory_lock(1))"),
        Some(PinReason::AdvisoryLock)
    );
    assert_eq!(
        pin("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        Some(PinReason::HoldCursor)
    );
    assert_eq!(pin("LOAD 'x'"), Some(PinReason::Load));
    assert_eq!(pin("SET ROLE r"), Some(PinReason::Role));
    assert_eq!(pin("SET SESSION AUTHORIZATION r"), Some(PinReason::Role));
    assert_eq!(pin("SET LOCAL ROLE r"), None);
    assert_eq!(
        pin("SELECT set_config('a', 'b', false)"),
        Some(PinReason::SetConfig)
    );
    assert_eq!(pin("LISTEN a; LOAD 'x'"), Some(PinReason::Listen));
}

#[test]
fn default_read_only_changes() {
    let ro = |sql: &str| analyze(sql.as_bytes()).default_read_only();
    assert_eq!(ro("SELECT 1"), None);
    assert_eq!(
        ro("SET default_transaction_read_only = on"),
        Some(DefaultReadOnly::On)
    );
    assert_eq!(
        ro("SET default_transaction_read_only TO 'true'"),
        Some(DefaultReadOnly::On)
    );
    assert_eq!(
        ro("SET SESSION default_transaction_read_only = 1"),
        Some(DefaultReadOnly::On)
    );
    assert_eq!(
        ro("SET default_transaction_read_only = OFF"),
        Some(DefaultReadOnly::Off)
    );
    assert_eq!(
        ro("SET default_transaction_read_only = no"),
        Some(DefaultReadOnly::Off)
    );
    assert_eq!(
        ro("SET default_transaction_read_only TO DEFAULT"),
        Some(DefaultReadOnly::Reset)
    );
    assert_eq!(ro("SET default_transaction_read_only = maybe"), None);
    assert_eq!(ro("SET LOCAL default_transaction_read_only = on"), None);
    assert_eq!(
        ro("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        Some(DefaultReadOnly::On)
    );
    assert_eq!(
        ro("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE"),
        Some(DefaultReadOnly::Off)
    );
    assert_eq!(
        ro("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        None
    );
    assert_eq!(
        ro("RESET default_transaction_read_only"),
        Some(DefaultReadOnly::Reset)
    );
    assert_eq!(ro("RESET ALL"), Some(DefaultReadOnly::Reset));
    assert_eq!(ro("DISCARD ALL"), Some(DefaultReadOnly::Reset));
    assert_eq!(
        ro("SET default_transaction_read_only = on; RESET ALL"),
        Some(DefaultReadOnly::Reset)
    );
    assert_eq!(
        ro("RESET ALL; SET default_transaction_read_only = on"),
        Some(DefaultReadOnly::On)
    );
}

// === Hints and proxy commands ===

#[test]
fn comment_hints() {
    let a = analyze(b"/* causeway:primary */ SELECT 1");
    assert_eq!(a.hint(), Some(Route::Primary));
    let a = analyze(b"  -- app: orders\n/* CAUSEWAY:Standby */ /* x */ SELECT 1");
    assert_eq!(a.hint(), Some(Route::Standby));
    let a = analyze(b"/*causeway:standby,causeway:max_lag=200ms*/SELECT 1");
    assert_eq!(a.hint(), Some(Route::Standby));
    assert_eq!(a.max_lag(), Some(Duration::from_millis(200)));
    let a = analyze(b"/* causeway:max_lag=2s causeway:standby causeway:primary */ SELECT 1");
    assert_eq!(a.hint(), Some(Route::Primary));
    assert_eq!(a.max_lag(), Some(Duration::from_secs(2)));
    let a = analyze(b"/* /* nested */ causeway:primary */ SELECT 1");
    assert_eq!(a.hint(), Some(Route::Primary));
    // Not leading: ignored.
    let a = analyze(b"SELECT 1 /* causeway:primary */");
    assert_eq!(a.hint(), None);
    let a = analyze(b"SELECT '/* causeway:primary */'");
    assert_eq!(a.hint(), None);
    // Unknown or malformed items are ignored.
    let a = analyze(b"/* causeway:sideways causeway:max_lag=soon */ SELECT 1");
    assert_eq!((a.hint(), a.max_lag()), (None, None));
    // A hint does not change the lexical route.
    assert_eq!(
        route("/* causeway:standby */ DELETE FROM t"),
        RouteClass::Primary
    );
}

fn proxy(sql: &str) -> ProxyCommand {
    match only_kind(sql) {
        StatementKind::Proxy(cmd) => cmd,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn proxy_commands() {
    assert_eq!(
        proxy("SET causeway.route = 'primary'"),
        ProxyCommand::SetRoute(Route::Primary)
    );
    assert_eq!(
        proxy("SET causeway.route TO standby"),
        ProxyCommand::SetRoute(Route::Standby)
    );
    assert_eq!(
        proxy("set CAUSEWAY.ROUTE = 'AUTO'"),
        ProxyCommand::SetRoute(Route::Auto)
    );
    assert_eq!(
        proxy("SET causeway.max_lag = '200ms'"),
        ProxyCommand::SetMaxLag(Duration::from_millis(200))
    );
    assert_eq!(
        proxy("SET causeway.max_lag = 1.5s"),
        ProxyCommand::SetMaxLag(Duration::from_millis(1500))
    );
    assert_eq!(
        proxy("SET causeway.max_lag = 250"),
        ProxyCommand::SetMaxLag(Duration::from_millis(250))
    );
    assert_eq!(
        proxy("SET causeway.min_lsn = '0/3000060'"),
        ProxyCommand::SetMinLsn(Lsn::from(0x0300_0060))
    );
    assert_eq!(
        proxy("SET causeway.min_lsn TO '16/B374D848'"),
        ProxyCommand::SetMinLsn(Lsn::from(0x16_B374_D848))
    );
    assert_eq!(
        proxy("SET causeway.consistency = 'eventual'"),
        ProxyCommand::SetConsistency(Consistency::Eventual)
    );
    assert_eq!(
        proxy("SET SESSION causeway.consistency = session"),
        ProxyCommand::SetConsistency(Consistency::Session)
    );
    assert_eq!(
        proxy("SHOW causeway.min_lsn"),
        ProxyCommand::Show(ProxySetting::MinLsn)
    );
    assert_eq!(
        proxy("SHOW \"causeway\".route"),
        ProxyCommand::Show(ProxySetting::Route)
    );
    assert_eq!(
        proxy("RESET causeway.max_lag"),
        ProxyCommand::Reset(ProxySetting::MaxLag)
    );
    assert_eq!(
        proxy("SET causeway.route TO DEFAULT"),
        ProxyCommand::Reset(ProxySetting::Route)
    );
    for (sql, error) in [
        (
            "SET causeway.route = 'sideways'",
            ProxyError::InvalidValue(ProxySetting::Route),
        ),
        (
            "SET causeway.max_lag = 'soon'",
            ProxyError::InvalidValue(ProxySetting::MaxLag),
        ),
        (
            "SET causeway.max_lag = '-1s'",
            ProxyError::InvalidValue(ProxySetting::MaxLag),
        ),
        (
            "SET causeway.min_lsn = '3000060'",
            ProxyError::InvalidValue(ProxySetting::MinLsn),
        ),
        (
            "SET causeway.min_lsn = 'G/1'",
            ProxyError::InvalidValue(ProxySetting::MinLsn),
        ),
        (
            "SET causeway.consistency = 'strong'",
            ProxyError::InvalidValue(ProxySetting::Consistency),
        ),
        (
            "SET causeway.route = 'a', 'b'",
            ProxyError::InvalidValue(ProxySetting::Route),
        ),
        (
            "SET LOCAL causeway.route = 'primary'",
            ProxyError::LocalScope(ProxySetting::Route),
        ),
        ("SET causeway.colour = 'blue'", ProxyError::UnknownSetting),
        ("SHOW causeway.colour", ProxyError::UnknownSetting),
        ("RESET causeway.a.b", ProxyError::UnknownSetting),
    ] {
        let ProxyCommand::Invalid { error: got, name } = proxy(sql) else {
            panic!("{sql}: {:?}", proxy(sql));
        };
        assert_eq!(got, error, "{sql}");
        assert!(!name.is_empty());
    }
    // Look-alikes are ordinary settings.
    assert!(matches!(
        only_kind("SET causewayx.route = 'a'"),
        StatementKind::Set { .. }
    ));
    assert!(matches!(
        only_kind("SET \"Causeway\".route = 'a'"),
        StatementKind::Set { .. }
    ));
}

#[test]
fn value_parsers() {
    assert_eq!(parse_duration(b"200ms"), Some(Duration::from_millis(200)));
    assert_eq!(
        parse_duration(b" 200 MS "),
        Some(Duration::from_millis(200))
    );
    assert_eq!(parse_duration(b"3s"), Some(Duration::from_secs(3)));
    assert_eq!(parse_duration(b"2min"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration(b"500us"), Some(Duration::from_micros(500)));
    assert_eq!(parse_duration(b"0"), Some(Duration::ZERO));
    for bad in [
        &b""[..],
        b"ms",
        b"1h",
        b"-1s",
        b"1..2s",
        b"1e400s",
        b"99999999999999min",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
    assert_eq!(parse_lsn(b"0/0"), Some(Lsn::ZERO));
    assert_eq!(parse_lsn(b"FFFFFFFF/FFFFFFFF"), Some(Lsn::from(u64::MAX)));
    for bad in [
        &b""[..],
        b"1",
        b"1/",
        b"/1",
        b"1/2/3",
        b"123456789/0",
        b"x/1",
    ] {
        assert_eq!(parse_lsn(bad), None, "{bad:?}");
    }
    for (text, value) in [
        ("on", Some(true)),
        ("t", Some(true)),
        ("TRUE", Some(true)),
        ("ye", Some(true)),
        ("1", Some(true)),
        ("of", Some(false)),
        ("off", Some(false)),
        ("f", Some(false)),
        ("No", Some(false)),
        ("0", Some(false)),
        ("o", None),
        ("onn", None),
        ("2", None),
        ("", None),
    ] {
        assert_eq!(parse_bool(text.as_bytes()), value, "{text}");
    }
}

#[test]
fn name_normalisation() {
    assert_eq!(normalize_ident(b"Foo"), "foo");
    assert!(matches!(normalize_ident(b"foo"), Cow::Borrowed("foo")));
    assert_eq!(normalize_ident(b"\"Foo\"\"Bar\""), "Foo\"Bar");
    assert!(matches!(normalize_ident(b"\"Foo\""), Cow::Borrowed("Foo")));
    assert_eq!(normalize_ident(b"U&\"d\\0061t\""), "d\\0061t");
    assert_eq!(normalize_ident(b"CAF\xc3\x89"), "caf\u{c9}");
    let long = "a".repeat(70);
    assert_eq!(normalize_ident(long.as_bytes()).len(), 63);
    let long_multibyte = "é".repeat(40); // 80 bytes; the cut must not split a character
    assert_eq!(normalize_ident(long_multibyte.as_bytes()), "é".repeat(31));
    assert_eq!(normalize_name(b"a.b"), "a.b");
    assert!(matches!(normalize_name(b"my.setting"), Cow::Borrowed(_)));
    assert_eq!(normalize_name(b"\"A\" . B"), "A.b");
}

// === Lexer traps ===

fn kinds(sql: &str) -> Vec<TokenKind> {
    Lexer::new(sql.as_bytes()).map(|t| t.kind).collect()
}

#[test]
fn lexer_token_kinds() {
    use TokenKind::*;
    assert_eq!(kinds("SELECT 1"), [Word, Number]);
    assert_eq!(kinds("a::int"), [Word, Cast, Word]);
    assert_eq!(kinds("x := 1"), [Word, Operator, Number]);
    assert_eq!(
        kinds("a[1:2]"),
        [Word, LBracket, Number, Colon, Number, RBracket]
    );
    assert_eq!(
        kinds("$1 $$x$$ $a$y$a$"),
        [Param, DollarString, DollarString]
    );
    assert_eq!(
        kinds("E'\\'' e'x' U&'y' u&\"z\" B'1' x'f' n'n'"),
        [String, String, String, QuotedIdent, String, String, String]
    );
    assert_eq!(kinds("e 'x'"), [Word, String]);
    assert_eq!(kinds("some'x'"), [Word, String]);
    assert_eq!(kinds("1-- c\n2"), [Number, Number]);
    assert_eq!(kinds("1 +-- c\n2"), [Number, Operator, Number]);
    assert_eq!(kinds("1 */* c */2"), [Number, Operator, Number]);
    assert_eq!(kinds("t.a"), [Word, Dot, Word]);
    assert_eq!(kinds("1.5.a"), [Number, Dot, Word]);
    assert_eq!(kinds("'a' 'b'"), [String, String]);
    assert_eq!(kinds("$"), [Error]);
    assert_eq!(kinds("1 $a"), [Number, Error]);
    assert_eq!(kinds("\"\""), [Error]);
    assert_eq!(kinds("'x"), [Error]);
    assert_eq!(kinds("/*/"), [Error]);
    assert_eq!(kinds("{"), [Error]);
    assert_eq!(kinds("a\\b"), [Word, Error]);
    let tokens: Vec<_> = Lexer::new(b"$tag$ a $tag b $tag$").collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].text, b"$tag$ a $tag b $tag$");
}

#[test]
fn leading_comment_bodies() {
    use crate::router::lexer::leading_comments;
    let got: Vec<_> = leading_comments(b" -- a\n/* b /* c */ */ --d\r\nSELECT /* e */").collect();
    assert_eq!(got, [&b" a"[..], b" b /* c */ ", b"d"]);
    assert_eq!(leading_comments(b"/* unterminated").count(), 0);
    assert_eq!(leading_comments(b"").count(), 0);
}

#[test]
fn keyword_table_is_sorted_and_complete() {
    use crate::router::lexer::{
        keyword_category, COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS,
        UNRESERVED_KEYWORDS,
    };
    for table in [
        RESERVED_KEYWORDS,
        COL_NAME_KEYWORDS,
        TYPE_FUNC_NAME_KEYWORDS,
        UNRESERVED_KEYWORDS,
    ] {
        assert!(table.windows(2).all(|w| w[0] < w[1]));
    }
    let total = RESERVED_KEYWORDS.len()
        + COL_NAME_KEYWORDS.len()
        + TYPE_FUNC_NAME_KEYWORDS.len()
        + UNRESERVED_KEYWORDS.len();
    assert_eq!(total, 494); // PostgreSQL 18's kwlist.h
    assert_eq!(keyword_category(b"SELECT"), Some(KeywordCategory::Reserved));
    assert_eq!(
        keyword_category(b"Coalesce"),
        Some(KeywordCategory::ColumnName)
    );
    assert_eq!(
        keyword_category(b"left"),
        Some(KeywordCategory::TypeFunctionName)
    );
    assert_eq!(keyword_category(b"over"), Some(KeywordCategory::Unreserved));
    assert_eq!(keyword_category(b"myfunc"), None);
    assert_eq!(keyword_category(b""), None);
}

#[test]
fn function_lists_are_sorted() {
    for list in [
        BUILTIN_WRITE_FUNCTIONS,
        BUILTIN_READ_VOLATILE_FUNCTIONS,
        KNOWN_READ_ONLY_FUNCTIONS,
    ] {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
    }
    for f in BUILTIN_WRITE_FUNCTIONS {
        assert_eq!(route(&format!("SELECT {f}(1)")), RouteClass::Primary, "{f}");
        assert!(!KNOWN_READ_ONLY_FUNCTIONS.contains(f));
    }
    for f in BUILTIN_READ_VOLATILE_FUNCTIONS {
        assert!(!BUILTIN_WRITE_FUNCTIONS.contains(f));
    }
}

// === Never panics ===

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs everything the analysis offers, so accessors are exercised too.
fn exercise(bytes: &[u8]) {
    let a = analyze(bytes);
    for s in a.statements() {
        let _ = a.statement_text(s);
        match s.kind {
            StatementKind::Set { name, value, .. } => {
                let _ = (a.param_name(name), a.text(value));
            }
            StatementKind::Prepare { name, body } => {
                let _ = (a.name(name), a.text(body));
            }
            _ => {}
        }
    }
    let _ = a.functions().count();
    let _ = a.to_owned_analysis();
    let _ = Lexer::new(bytes).count();
}

#[test]
fn never_panics_on_prefixes_of_the_corpus() {
    for (sql, _) in CORPUS {
        let bytes = sql.as_bytes();
        for end in 0..=bytes.len() {
            exercise(&bytes[..end]);
            exercise(&bytes[end..]);
        }
    }
}

#[test]
fn never_panics_on_mutations_and_random_bytes() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    const ALPHABET: &[u8] = b"'\"$;()[]/*-\\ eEuU&:.,0123456789abcXYZ=+<>\n\t\xc3\xa9\xff\0";
    for (sql, _) in CORPUS {
        for _ in 0..20 {
            let mut bytes = sql.as_bytes().to_vec();
            let edits = 1 + rng.next() % 3;
            for _ in 0..edits {
                let pick = ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize];
                match rng.next() % 3 {
                    0 if !bytes.is_empty() => {
                        let i = (rng.next() % bytes.len() as u64) as usize;
                        bytes[i] = pick;
                    }
                    1 => {
                        let i = (rng.next() % (bytes.len() as u64 + 1)) as usize;
                        bytes.insert(i, pick);
                    }
                    _ if !bytes.is_empty() => {
                        let i = (rng.next() % bytes.len() as u64) as usize;
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            exercise(&bytes);
        }
    }
    for _ in 0..20_000 {
        let len = (rng.next() % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.next() % 2 == 0 {
                    ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize]
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        exercise(&bytes);
    }
}

#[test]
fn prefixes_ending_inside_a_literal_or_comment_are_unknown() {
    // A request cut inside a literal or a comment must not be read as the part before it.
    for sql in [
        "SELECT 'a;b'; DELETE FROM t",
        "SELECT \"x;y\"; DELETE FROM t",
        "SELECT $q$ ; $q$; DELETE FROM t",
        "SELECT 1 /* ; */; DELETE FROM t",
    ] {
        let (open, close) = match sql.as_bytes()[7] {
            b'\'' => (7, sql[8..].find('\'').unwrap() + 8),
            b'"' => (7, sql[8..].find('"').unwrap() + 8),
            b'$' => (7, sql[10..].find("$q$").unwrap() + 12),
            _ => (10, sql.find("*/").unwrap() + 1),
        };
        for end in open + 1..=close {
            let prefix = &sql[..end];
            assert_eq!(route(prefix), RouteClass::Unknown, "{prefix:?}");
        }
        assert_eq!(route(sql), RouteClass::Primary);
    }
}

// === Cache ===

#[test]
fn cache_hits_share_the_analysis() {
    let cache = ClassifierCache::default();
    let a = cache.analyze(b"SELECT nextval('s')");
    let b = cache.analyze(b"SELECT nextval('s')");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.route(), RouteClass::Primary);
    assert_eq!(a.functions().next().unwrap().name, "nextval");
    let c = cache.analyze(b"SELECT nextval('t')");
    assert!(!Arc::ptr_eq(&a, &c));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 2));
    assert!(cache.get(b"SELECT nextval('s')").is_some());
    assert!(cache.get(b"SELECT 42").is_none());
    cache.clear();
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn cache_is_bounded_by_entries_and_bytes() {
    let cache = ClassifierCache::new(CacheLimits {
        max_entries: 160,
        max_bytes: 1 << 30,
        max_text_len: 1 << 20,
    });
    for i in 0..5_000 {
        cache.analyze(format!("SELECT c{i}").as_bytes());
    }
    let stats = cache.stats();
    assert!(stats.entries <= 160, "{stats:?}");
    assert!(stats.entries >= 100, "{stats:?}");

    let cache = ClassifierCache::new(CacheLimits {
        max_entries: 1_000_000,
        max_bytes: 64 << 10,
        max_text_len: 1 << 20,
    });
    for i in 0..2_000 {
        cache.analyze(format!("SELECT {i} /* {} */", "x".repeat(200)).as_bytes());
    }
    let stats = cache.stats();
    assert!(stats.bytes <= 64 << 10, "{stats:?}");
    assert!(stats.entries > 0, "{stats:?}");
}

#[test]
fn cache_keeps_recently_used_entries() {
    let cache = ClassifierCache::new(CacheLimits {
        max_entries: 16 * 8,
        max_bytes: 1 << 30,
        max_text_len: 1 << 20,
    });
    let hot = b"SELECT hot";
    cache.analyze(hot);
    for i in 0..2_000 {
        cache.analyze(hot); // referenced again before each hand pass
        cache.analyze(format!("SELECT c{i}").as_bytes());
    }
    assert!(cache.get(hot).is_some());
}

#[test]
fn cache_does_not_store_long_texts() {
    let cache = ClassifierCache::new(CacheLimits {
        max_entries: 100,
        max_bytes: 1 << 20,
        max_text_len: 100,
    });
    let long = format!("SELECT '{}'", "x".repeat(200));
    let a = cache.analyze(long.as_bytes());
    assert_eq!(a.route(), RouteClass::Read);
    assert_eq!(cache.stats().entries, 0);
    assert!(cache.get(long.as_bytes()).is_none());
}

#[test]
fn cache_is_shared_between_threads() {
    let cache = Arc::new(ClassifierCache::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    let sql = format!("SELECT c{}", (i * 7 + t) % 300);
                    assert_eq!(cache.analyze(sql.as_bytes()).route(), RouteClass::Read);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = cache.stats();
    assert_eq!(stats.entries, 300);
    assert_eq!(stats.hits + stats.misses, 8_000);
}

#[test]
fn owned_analysis_matches_borrowed() {
    for (sql, _) in CORPUS {
        let a = analyze(sql.as_bytes());
        let o = a.to_owned_analysis();
        assert_eq!(a.route(), o.route());
        assert_eq!(a.statements(), o.statements());
        assert_eq!(
            a.functions().collect::<Vec<_>>(),
            o.functions().collect::<Vec<_>>()
        );
        assert_eq!(a.pin(), o.pin());
        assert_eq!(a.sql(), o.sql());
    }
}

#[test]
fn hash_spreads_similar_texts() {
    let seed = 7;
    let mut seen = std::collections::HashSet::new();
    for i in 0..10_000 {
        assert!(seen.insert(hash_text(seed, format!("SELECT {i}").as_bytes())));
    }
    let shards: std::collections::HashSet<_> = (0..64)
        .map(|i| (hash_text(seed, format!("SELECT {i}").as_bytes()) >> 60) as usize % SHARDS)
        .collect();
    assert!(shards.len() > 8);
}

#[test]
fn ident_cont_table_matches_its_definition() {
    use crate::router::lexer::{is_ident_cont, is_ident_start};
    for b in 0..=255u8 {
        let expected = is_ident_start(b) || b.is_ascii_digit() || b == b'$';
        assert_eq!(is_ident_cont(b), expected, "byte {b:#04x}");
    }
}
