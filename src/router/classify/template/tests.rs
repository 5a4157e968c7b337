//! Tests of the literal-free keys: which texts get one, and that a text answered through
//! another text's key gets exactly the analysis the classifier gives it on its own, over the
//! whole statement corpus and the texts where a literal decides the route.

use std::sync::Arc;

use super::super::{analyze, ClassifierCache};
use super::Template;

include!("../corpus.rs");

/// Texts where a literal (integer or not) decides the analysis: each must get its own.
const LITERAL_DECIDES: &[&str] = &[
    "SET default_transaction_read_only = 1",
    "SET default_transaction_read_only = 0",
    "SET default_transaction_read_only TO 1; SELECT 1",
    "SET SESSION default_transaction_read_only = 0; SELECT 1",
    "EXPLAIN (ANALYZE 0) DELETE FROM t WHERE a = 1",
    "EXPLAIN (ANALYZE 1) DELETE FROM t WHERE a = 1",
    "EXPLAIN (ANALYZE 0, VERBOSE 1) SELECT 1",
    "EXPLAIN (ANALYZE 1, VERBOSE 0) UPDATE t SET a = 2",
    "SET causeway.max_lag = 100",
    "SET causeway.max_lag = 2000",
    "SET causeway.max_lag TO 0; SELECT 1",
    "SHOW causeway.max_lag; SELECT 1",
    "SELECT set_config('causeway.route', 'primary', false)",
    "SELECT set_config('work_mem', '64', false), 1",
    "SELECT nextval('s1')",
    "SELECT nextval('s2'), 1",
    "SELECT currval('s1') + 1",
    "SELECT E'\\'' || 1",
    "SELECT 'a\\' || 1",
    "SELECT $$1$$, 2",
    "SELECT \"t1\".a FROM \"t1\" WHERE a = 1",
    "/* causeway:primary */ SELECT 1",
    "/* causeway:max_lag=5ms */ SELECT 1",
    "-- 1\nSELECT 1",
    "SELECT 1 -- causeway:primary",
    "FETCH 5 FROM c",
    "MOVE 1 IN c; SELECT 2",
    "DECLARE c CURSOR FOR SELECT 1",
    "PREPARE p AS SELECT 1",
    "EXECUTE p(1)",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT pg_sleep(1), 2",
    "LIMIT 1",
    "SELECT 1; SET default_transaction_read_only = 1; SELECT 2",
    "SELECT 1 INTO t2",
    "SELECT 1 INTO TEMP t2",
    "SELECT 1 FROM t FOR UPDATE",
    "SELECT 1.5, 1e5, 0x2A, 1_000, .5, 1..2, 1e-5, 12abc, a1, a$1",
    "SELECT 1 $1",
    "SELECT x[1:2] FROM t WHERE y::int4 = 3",
    "INSERT INTO t VALUES (1, 2) RETURNING a",
    "UPDATE t SET a = a + 1 WHERE b = 2",
    "DELETE FROM t WHERE a IN (1, 2, 3)",
    "WITH x AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT 2",
    "BEGIN; SELECT 1; COMMIT",
    "SELECT 1 { 2",
    "SELECT 1 \u{e9} 2",
];

/// Integers to put in place of each integer literal of a text.
const REPLACEMENTS: &[&str] = &["0", "1", "2", "7", "42", "00", "12345678901234567890"];

/// The text with every integer literal (as the key finds them) replaced by `by`.
fn with_integers(sql: &str, by: &str) -> Option<String> {
    let t = Template::of(sql.as_bytes())?;
    let mut out = String::new();
    let mut at = 0;
    for &(start, len) in &t.literals {
        out.push_str(&sql[at..start as usize]);
        out.push_str(by);
        at = (start + len) as usize;
    }
    out.push_str(&sql[at..]);
    Some(out)
}

/// What the classifier says of `sql` on its own, comparable.
fn fresh(sql: &str) -> String {
    format!("{:?}", analyze(sql.as_bytes()).to_owned_analysis())
}

/// Feeds `sql` and its integer variants to `check` through one fresh cache per order
/// (forwards, then backwards), each text twice; `check` gets the cache, the text and the
/// round (0 or 1).
fn for_each_variant(sql: &str, mut check: impl FnMut(&ClassifierCache, &str, usize)) {
    let mut texts = vec![sql.to_owned()];
    texts.extend(REPLACEMENTS.iter().filter_map(|r| with_integers(sql, r)));
    for backwards in [false, true] {
        let cache = ClassifierCache::default();
        if backwards {
            texts.reverse();
        }
        for round in 0..2 {
            for text in &texts {
                check(&cache, text, round);
            }
        }
    }
}

/// Feeds `sql` and its integer variants through one cache, in both orders, and checks every
/// answer against the classifier's own.
fn check_variants(sql: &str) {
    for_each_variant(sql, |cache, text, _| {
        let got = format!("{:?}", cache.analyze(text.as_bytes()));
        assert_eq!(got, fresh(text), "cached answer differs for {text:?}");
    });
}

/// What routing reads of an analysis (see [`ClassifierCache::analyze_for_routing`]).
fn routing_view<S: AsRef<[u8]>>(a: &super::super::Analysis<S>) -> String {
    let kinds: Vec<String> = a
        .statements()
        .iter()
        .map(|s| format!("{:?}", s.kind))
        .collect();
    let functions: Vec<String> = a.functions().map(|f| f.to_string()).collect();
    format!(
        "{:?} {kinds:?} {:?} {:?} {:?} {:?} {functions:?} {}",
        a.route(),
        a.pin(),
        a.hint(),
        a.max_lag(),
        a.default_read_only(),
        a.is_empty()
    )
}

/// The routing view through one cache agrees with the classifier's own for `sql` and its
/// integer variants, in both orders, mixed with full analyses.
fn check_routing_variants(sql: &str) {
    for_each_variant(sql, |cache, text, round| {
        let want = routing_view(&analyze(text.as_bytes()));
        let got = routing_view(&*cache.analyze_for_routing(text.as_bytes()));
        assert_eq!(got, want, "routing view differs for {text:?}");
        if round == 1 {
            let full = format!("{:?}", cache.analyze(text.as_bytes()));
            assert_eq!(full, fresh(text), "cached answer differs for {text:?}");
        }
    });
}

#[test]
fn the_routing_view_of_a_shared_key_is_the_texts_own() {
    for (sql, _) in CORPUS {
        check_routing_variants(sql);
    }
    for sql in LITERAL_DECIDES {
        check_routing_variants(sql);
    }
    // pgbench's texts share the key's analysis itself: one entry, no copy per text.
    let cache = ClassifierCache::default();
    let a = cache.analyze_for_routing(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
    let b = cache.analyze_for_routing(b"SELECT abalance FROM pgbench_accounts WHERE aid = 2;");
    let c = cache.analyze_for_routing(b"SELECT abalance FROM pgbench_accounts WHERE aid = 3;");
    assert!(std::sync::Arc::ptr_eq(&b, &c));
    assert_eq!(routing_view(&*a), routing_view(&*b));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 1));
}

#[test]
fn corpus_texts_through_shared_keys_get_their_own_analysis() {
    let mut keyed = 0;
    for (sql, _) in CORPUS {
        keyed += usize::from(Template::of(sql.as_bytes()).is_some());
        check_variants(sql);
    }
    assert!(keyed > 100, "only {keyed} corpus texts have a key");
}

#[test]
fn texts_whose_literals_decide_get_their_own_analysis() {
    for sql in LITERAL_DECIDES {
        check_variants(sql);
    }
    // And all of them through one cache, every variant after every other.
    let cache = ClassifierCache::default();
    for _ in 0..2 {
        for sql in LITERAL_DECIDES {
            for r in REPLACEMENTS {
                let text = with_integers(sql, r).unwrap_or_else(|| (*sql).to_owned());
                let got = format!("{:?}", cache.analyze(text.as_bytes()));
                assert_eq!(got, fresh(&text), "cached answer differs for {text:?}");
            }
        }
    }
}

#[test]
fn keys_replace_whole_integers_only() {
    let key = |s: &str| {
        Template::of(s.as_bytes()).map(|t| {
            let mut key = super::Key::new();
            t.key_into(s.as_bytes(), &mut key);
            key.to_vec()
        })
    };
    let a = key("SELECT abalance FROM pgbench_accounts WHERE aid = 42;").unwrap();
    assert_eq!(
        a,
        b"SELECT abalance FROM pgbench_accounts WHERE aid = \xFF;"
    );
    assert_eq!(
        key("SELECT abalance FROM pgbench_accounts WHERE aid = 99999;"),
        Some(a)
    );
    assert_eq!(
        key("SELECT 1.5, 1e-5, 0x2A, 1..2, a1, a$1, t.c2 FROM t LIMIT 3").unwrap(),
        b"SELECT 1.5, 1e-5, 0x2A, \xFF..2, a1, a$1, t.c2 FROM t LIMIT \xFF"
    );
    for none in [
        "SELECT a FROM t",
        "SELECT '1'",
        "SELECT E'1'",
        "SELECT \"1\"",
        "SELECT $1, 2",
        "SELECT $$1$$",
        "SELECT 1 -- 2",
        "SELECT /* 1 */ 2",
        "SELECT 1 \\ 2",
        "SELECT 1 \u{e9}",
        "SELECT 1\0",
        "SELECT 1 {",
    ] {
        assert!(key(none).is_none(), "{none:?} has a key");
    }
}

#[test]
fn texts_sharing_a_key_share_one_entry() {
    let cache = ClassifierCache::default();
    for aid in 1..=500 {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
        let a = cache.analyze(sql.as_bytes());
        assert_eq!(a.sql(), sql.as_bytes());
        assert_eq!(
            a.statement_text(&a.statements()[0]),
            sql.trim_end_matches(';').as_bytes()
        );
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (499, 1, 1));
    let hit = cache
        .get(b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;")
        .unwrap();
    assert_eq!(
        hit.sql(),
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;"
    );
    assert!(cache
        .get(b"SELECT abalance FROM pgbench_accounts WHERE aid = 7")
        .is_none());
    // Another text's analysis is never returned as is.
    let again = cache.analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;");
    assert!(!Arc::ptr_eq(&hit, &again));
}
