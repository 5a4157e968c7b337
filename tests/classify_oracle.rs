//! Cross-checks the hand-written statement classifier against PostgreSQL's own grammar
//! (`pg_query`, which compiles the server's parser): every corpus statement and many generated
//! variations go through both, and the two must agree on "read" versus "primary".
//!
//! Runs only with `cargo test --features oracle --test classify_oracle` (it needs clang and
//! libclang-dev to build `pg_query`). What is checked:
//! - never "read" where PostgreSQL's parse tree shows a write, a lock, a data-modifying CTE,
//!   `SELECT INTO`, a write-listed function call, or a read-write transaction start (a bug);
//! - never a function call in the parse tree that the classifier did not report (the router
//!   could not check its volatility), except SQL-syntax calls (`EXTRACT`, `TRIM`…) and the
//!   known read-only built-ins the classifier leaves out on purpose;
//! - "primary" where PostgreSQL says read is allowed (conservative) and counted; the counts
//!   are printed, and `docs/CLASSIFIER.md` explains the known cases.
#![cfg(feature = "oracle")]

use std::collections::BTreeSet;

use causeway::router::classify::{
    analyze, RouteClass, BUILTIN_WRITE_FUNCTIONS, KNOWN_READ_ONLY_FUNCTIONS,
};
use serde_json::Value;

include!("../src/router/classify/corpus.rs");

/// What PostgreSQL's parse tree says about a text.
#[derive(Debug)]
struct Verdict {
    /// Some statement writes, locks, or must otherwise run on the primary.
    write: bool,
    /// Calls that run (not under a plain EXPLAIN), as `name` or `schema.name`.
    functions: BTreeSet<String>,
}

/// The variant name and body of a `Node` (`{"node": {"SelectStmt": {...}}}`).
fn node(v: &Value) -> Option<(&str, &Value)> {
    let inner = v.get("node")?.as_object()?;
    let (k, b) = inner.iter().next()?;
    Some((k.as_str(), b))
}

/// Every `(type name, body)` pair below `v`: node-type keys are CamelCase, fields snake_case.
fn each_node<'v>(v: &'v Value, f: &mut dyn FnMut(&'v str, &'v Value)) {
    match v {
        Value::Object(map) => {
            for (k, b) in map {
                if k.starts_with(|c: char| c.is_ascii_uppercase()) {
                    f(k, b);
                } else if k == "larg" || k == "rarg" {
                    // The branches of UNION/INTERSECT/EXCEPT are SelectStmts stored directly,
                    // not as nodes.
                    f("SelectStmt", b);
                }
                each_node(b, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| each_node(i, f)),
        _ => {}
    }
}

/// The text of a constant-ish argument (`String`, `Integer`, `Boolean`, `A_Const`).
fn const_text(v: &Value) -> Option<String> {
    let mut out = None;
    each_node(v, &mut |k, b| {
        if out.is_some() {
            return;
        }
        out = match k {
            "String" | "Sval" => b.get("sval").and_then(Value::as_str).map(str::to_owned),
            "Integer" | "Ival" => b.get("ival").map(|i| i.to_string()),
            "Boolean" | "Boolval" => b.get("boolval").map(|i| i.to_string()),
            _ => None,
        };
    });
    out
}

fn is_false(text: &str) -> bool {
    matches!(text.to_ascii_lowercase().as_str(), "false" | "off" | "0")
}

fn func_name(call: &Value) -> Option<(Option<String>, String)> {
    let parts: Vec<String> = call
        .get("funcname")?
        .as_array()?
        .iter()
        .filter_map(const_text)
        .collect();
    let (name, rest) = parts.split_last()?;
    Some((rest.last().cloned(), name.clone()))
}

/// Reads everything below a statement that runs: writes, locks, calls.
fn scan_executed(sql: &str, v: &Value, verdict: &mut Verdict) {
    each_node(v, &mut |k, b| match k {
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => verdict.write = true,
        "SelectStmt" => {
            let into = b.get("into_clause").is_some_and(|i| !i.is_null());
            let locking = b
                .get("locking_clause")
                .and_then(Value::as_array)
                .is_some_and(|l| !l.is_empty());
            if into || locking {
                verdict.write = true;
            }
        }
        "FuncCall" => {
            // SQL-syntax calls (EXTRACT, TRIM, AT TIME ZONE…) are built-ins written as syntax.
            if b.get("funcformat").and_then(Value::as_i64) == Some(4) {
                return;
            }
            // So are calls the grammar makes up (`LIKE … ESCAPE` is `like_escape(…)`): the
            // text at their location is not their name.
            let location = b.get("location").and_then(Value::as_u64).unwrap_or(0) as usize;
            let written = sql.get(location..).unwrap_or("").trim_start_matches('"');
            if let Some((schema, name)) = func_name(b) {
                let first = schema.as_deref().unwrap_or(&name);
                let lower = written.to_lowercase();
                if !lower.starts_with(&first.to_lowercase()) {
                    return;
                }
                let builtin_schema = schema.as_deref().map_or(true, |s| s == "pg_catalog");
                if builtin_schema && BUILTIN_WRITE_FUNCTIONS.contains(&name.as_str()) {
                    verdict.write = true;
                }
                if builtin_schema && KNOWN_READ_ONLY_FUNCTIONS.contains(&name.as_str()) {
                    return;
                }
                verdict.functions.insert(match schema {
                    Some(s) => format!("{s}.{name}"),
                    None => name,
                });
            }
        }
        _ => {}
    });
}

/// Classifies one parsed statement (`Node`) the way the product contract says.
fn statement(sql: &str, stmt: &Value, verdict: &mut Verdict) {
    let Some((kind, body)) = node(stmt) else {
        verdict.write = true;
        return;
    };
    match kind {
        "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
            scan_executed(sql, stmt, verdict)
        }
        "ExplainStmt" => {
            let mut analyze = false;
            for option in body
                .get("options")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(("DefElem", d)) = node(option) else {
                    continue;
                };
                if d.get("defname").and_then(Value::as_str) == Some("analyze") {
                    analyze = match d.get("arg").filter(|a| !a.is_null()) {
                        None => true,
                        Some(arg) => !const_text(arg).is_some_and(|t| is_false(&t)),
                    };
                }
            }
            let query = body.get("query").cloned().unwrap_or(Value::Null);
            match node(&query) {
                // EXPLAIN EXECUTE: the classifier sends it where EXECUTE goes.
                Some(("ExecuteStmt", _)) => verdict.write = true,
                _ if analyze => statement(sql, &query, verdict),
                _ => {}
            }
        }
        "CopyStmt" => {
            let is_from = body.get("is_from").and_then(Value::as_bool) == Some(true);
            let is_program = body.get("is_program").and_then(Value::as_bool) == Some(true);
            let to_file = body
                .get("filename")
                .and_then(Value::as_str)
                .is_some_and(|f| !f.is_empty());
            if is_from || is_program || to_file {
                verdict.write = true;
            }
            if let Some(q) = body.get("query").filter(|q| !q.is_null()) {
                scan_executed(sql, q, verdict);
            }
        }
        "TransactionStmt" => {
            let k = body.get("kind").and_then(Value::as_i64).unwrap_or(0);
            match k {
                // BEGIN / START TRANSACTION: read-only and not serializable is a read.
                1 | 2 => {
                    let mut read_only = false;
                    let mut serializable = false;
                    for option in body
                        .get("options")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let Some(("DefElem", d)) = node(option) else {
                            continue;
                        };
                        let arg = d.get("arg").and_then(const_text).unwrap_or_default();
                        match d.get("defname").and_then(Value::as_str) {
                            Some("transaction_read_only") => {
                                read_only = arg == "1" || arg == "true"
                            }
                            Some("transaction_isolation") => serializable = arg == "serializable",
                            _ => {}
                        }
                    }
                    if !read_only || serializable {
                        verdict.write = true;
                    }
                }
                // PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED.
                8..=10 => verdict.write = true,
                _ => {}
            }
        }
        "PrepareStmt" | "DeclareCursorStmt" => {
            if let Some(q) = body.get("query") {
                statement(sql, q, verdict);
            }
        }
        "VariableSetStmt" | "VariableShowStmt" | "DeallocateStmt" | "DiscardStmt" | "FetchStmt"
        | "ClosePortalStmt" | "ConstraintsSetStmt" => {}
        // EXECUTE (the text does not say what runs), LISTEN/UNLISTEN/NOTIFY, LOAD, and every
        // other utility or DDL statement.
        _ => verdict.write = true,
    }
}

fn oracle(sql: &str) -> Result<Verdict, String> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| e.to_string())?;
    let json = serde_json::to_value(&parsed.protobuf).map_err(|e| e.to_string())?;
    let mut verdict = Verdict {
        write: false,
        functions: BTreeSet::new(),
    };
    for raw in json
        .get("stmts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(stmt) = raw.get("stmt") {
            statement(sql, stmt, &mut verdict);
        }
    }
    Ok(verdict)
}

/// Counts of one comparison run.
#[derive(Debug, Default)]
struct Tally {
    /// Texts compared.
    total: usize,
    /// Texts PostgreSQL's grammar rejects (they fail on any server; not compared).
    syntax_errors: usize,
    /// …of which the classifier called "read" (harmless: the server refuses them).
    syntax_errors_read: usize,
    /// Both say read.
    agree_read: usize,
    /// Both say primary.
    agree_primary: usize,
    /// The classifier says primary or unknown, PostgreSQL says read.
    conservative: Vec<String>,
    /// The classifier says read, PostgreSQL says write: bugs.
    unsafe_reads: Vec<String>,
    /// Calls in the parse tree the classifier did not report: bugs.
    missed_calls: Vec<String>,
    /// Names the classifier reported as calls that are not calls (conservative: the router
    /// does not find them, so the text goes to the primary).
    extra_calls: Vec<String>,
}

impl Tally {
    fn check(&mut self, sql: &str) {
        self.total += 1;
        let analysis = analyze(sql.as_bytes());
        let lexer_read = analysis.route() == RouteClass::Read;
        let verdict = match oracle(sql) {
            Ok(v) => v,
            Err(_) => {
                self.syntax_errors += 1;
                if lexer_read {
                    self.syntax_errors_read += 1;
                }
                return;
            }
        };
        match (lexer_read, verdict.write) {
            (true, false) => self.agree_read += 1,
            (false, true) => self.agree_primary += 1,
            (false, false) => self.conservative.push(sql.to_owned()),
            (true, true) => self.unsafe_reads.push(sql.to_owned()),
        }
        if lexer_read {
            let reported: BTreeSet<String> = analysis.functions().map(|f| f.to_string()).collect();
            for f in &verdict.functions {
                if !reported.contains(f) {
                    self.missed_calls.push(format!("{sql}  →  {f}"));
                }
            }
            for f in &reported {
                if !verdict.functions.contains(f) {
                    self.extra_calls.push(format!("{sql}  →  {f}"));
                }
            }
        }
    }

    fn report(&self, name: &str) {
        println!(
            "{name}: {} texts; {} rejected by PostgreSQL's grammar ({} of them called read); \
             of the {} parsed: {} agree read, {} agree primary, {} conservative (primary where \
             PostgreSQL says read), {} unsafe reads, {} missed calls, {} extra calls",
            self.total,
            self.syntax_errors,
            self.syntax_errors_read,
            self.total - self.syntax_errors,
            self.agree_read,
            self.agree_primary,
            self.conservative.len(),
            self.unsafe_reads.len(),
            self.missed_calls.len(),
            self.extra_calls.len()
        );
        for c in self.conservative.iter().take(20) {
            println!("  conservative: {c}");
        }
        for c in self.extra_calls.iter().take(20) {
            println!("  extra call: {c}");
        }
        assert!(
            self.unsafe_reads.is_empty(),
            "read but PostgreSQL says write:\n{}",
            self.unsafe_reads.join("\n")
        );
        assert!(
            self.missed_calls.is_empty(),
            "calls not reported:\n{}",
            self.missed_calls.join("\n")
        );
    }
}

/// Texts built around one corpus statement: other spellings and other contexts.
fn variations(sql: &str) -> Vec<String> {
    let trimmed = sql.trim().trim_end_matches(';');
    let first = trimmed
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut out = vec![
        sql.to_ascii_lowercase(),
        sql.to_ascii_uppercase(),
        format!("/* c; DELETE */ {sql}"),
        format!("-- c\n{sql}\n-- end"),
        format!("SELECT 1; {sql}"),
        format!("{trimmed}; SELECT 1"),
        format!("{trimmed};\n\t;"),
        sql.replacen(' ', " /* ; INSERT */ ", 1),
        sql.replacen(' ', "\n\t  ", 2),
    ];
    let query = matches!(first.as_str(), "select" | "values" | "table" | "with");
    let dml = matches!(first.as_str(), "insert" | "update" | "delete" | "merge");
    if query || dml {
        out.push(format!("EXPLAIN {trimmed}"));
        out.push(format!("EXPLAIN ANALYZE {trimmed}"));
        out.push(format!("EXPLAIN (ANALYZE, BUFFERS) {trimmed}"));
        out.push(format!("EXPLAIN (ANALYZE false) {trimmed}"));
        out.push(format!("PREPARE p AS {trimmed}"));
        out.push(format!("COPY ({trimmed}) TO STDOUT"));
    }
    if query {
        out.push(format!("SELECT * FROM ({trimmed}) s"));
        out.push(format!("WITH w AS ({trimmed}) SELECT * FROM w"));
        out.push(format!("DECLARE c CURSOR FOR {trimmed}"));
        out.push(format!("DECLARE c CURSOR WITH HOLD FOR {trimmed}"));
        out.push(format!("SELECT EXISTS ({trimmed})"));
    }
    if dml {
        out.push(format!("WITH w AS ({trimmed} RETURNING 1) SELECT * FROM w"));
    }
    out
}

/// Calls in every kind of place an expression can be.
fn call_placements() -> Vec<String> {
    const CALLS: &[&str] = &[
        "nextval('s')",
        "myfunc(1)",
        "s.myfunc(a)",
        "\"MyFunc\"(1)",
        "left('a', 1)",
        "pg_advisory_lock(1)",
        "pg_catalog.setval('s', 1)",
        "filter(1)",
        "join(1)",
        "like('a', 'b')",
        "ilike(1)",
        "similar(1)",
        // Functions named like the unreserved keywords the classifier treats specially.
        "cube(1)",
        "rollup(1)",
        "by(1)",
        "set(1)",
        "second(1)",
        "zone(1)",
        "over(1)",
        "sets(1)",
        "varying(1)",
        "first(1)",
        "next(1)",
        "conflict(1)",
        "materialized(1)",
        "recursive(1)",
        "ordinality(1)",
        "system(1)",
    ];
    const PLACES: &[&str] = &[
        "SELECT {f}",
        "SELECT {f} AS x",
        "SELECT {f} x",
        "SELECT a, {f} FROM t",
        "SELECT -{f}",
        "SELECT NOT {f}",
        "SELECT ({f})",
        "SELECT ARRAY[{f}]",
        "SELECT ROW({f}, 1)",
        "SELECT x::int + {f} FROM t",
        "SELECT x IN ({f}) FROM t",
        "SELECT x = ANY ({f}) FROM t",
        "SELECT CASE WHEN {f} THEN {f} ELSE 0 END",
        "SELECT COALESCE({f}, 0)",
        "SELECT CAST({f} AS text)",
        "SELECT DISTINCT {f} FROM t",
        "SELECT DISTINCT ON (a) {f} FROM t",
        "SELECT 1 OPERATOR(pg_catalog.+) {f}",
        "SELECT * FROM t WHERE a = {f}",
        "SELECT * FROM t WHERE a BETWEEN {f} AND 10",
        "SELECT * FROM t WHERE a LIKE {f}",
        "SELECT * FROM t WHERE a IS DISTINCT FROM {f}",
        "SELECT a FROM t ORDER BY {f}",
        "SELECT a FROM t GROUP BY a HAVING {f} > 0",
        "SELECT a FROM t LIMIT {f} OFFSET {f}",
        "SELECT a FROM t FETCH FIRST {f} ROWS ONLY",
        "SELECT count(*) FILTER (WHERE {f} > 0) FROM t",
        "SELECT sum(a) OVER (ORDER BY {f}) FROM t",
        "SELECT * FROM {f}",
        "SELECT * FROM {f} AS g(x)",
        "SELECT * FROM t, {f}",
        "SELECT * FROM t JOIN LATERAL {f} ON true",
        "SELECT * FROM t JOIN u ON {f}",
        "SELECT * FROM ROWS FROM ({f}) AS r(x)",
        "SELECT * FROM unnest(a) WITH ORDINALITY AS u(x, n), {f}",
        "SELECT (SELECT {f})",
        "SELECT EXISTS (SELECT {f})",
        "VALUES ({f})",
        "VALUES (1), ({f})",
        "WITH w AS (SELECT {f}) SELECT * FROM w",
        "WITH w(a) AS (SELECT 1) SELECT a, {f} FROM w",
        "WITH w AS (SELECT 1) (SELECT 1) ORDER BY 1, {f}",
        "SELECT ts AT TIME ZONE {f} FROM t",
        "SELECT {f} FROM t WHERE b = $1",
        "TABLE t UNION SELECT {f}",
        "SELECT 1 UNION SELECT {f}",
        "COPY (SELECT {f}) TO STDOUT",
        "EXPLAIN ANALYZE SELECT {f}",
        "PREPARE p AS SELECT {f}",
        "DECLARE c CURSOR FOR SELECT {f}",
        "SELECT x FROM t WHERE y = 1 AND {f} IS NULL",
        "SELECT a FROM t WINDOW w AS (PARTITION BY {f})",
        "SELECT json_build_object('a', {f})",
        "SELECT '{{}}'::jsonb || to_jsonb({f})",
        "SELECT a FROM t GROUP BY {f}",
        "SELECT a FROM t GROUP BY a, {f}",
        "SELECT a FROM t GROUP BY CUBE (a), {f}",
        "SELECT a FROM t GROUP BY a HAVING count(*) > 1 ORDER BY a, {f}",
        "SELECT a, {f} FROM t GROUP BY ROLLUP (a)",
        "SELECT * FROM t TABLESAMPLE bernoulli ({f})",
        "SELECT * FROM t WHERE a @> {f} OR {f}",
        "SELECT {f}::text",
        "SELECT ({f}).x",
        "SELECT a FROM t WHERE (a, b) = ({f}, 1)",
        "SELECT a FROM t ORDER BY a USING < , {f}",
        "SELECT a FROM t ORDER BY a DESC NULLS FIRST, {f}",
        "SELECT 1 FROM t WHERE ts AT TIME ZONE 'UTC' > {f}",
        "SELECT INTERVAL '1' SECOND + {f}",
        "SELECT CAST(x AS double precision) + {f} FROM t",
        "SELECT x::timestamp with time zone, {f} FROM t",
        "SELECT a FROM t FETCH FIRST 1 ROW ONLY",
        "WITH RECURSIVE w(n) AS (SELECT 1) SELECT {f}",
        "WITH w AS NOT MATERIALIZED (SELECT 1), v AS (SELECT {f}) SELECT 1",
        "SELECT * FROM t AS x(a, b), {f}",
        "SELECT * FROM (SELECT 1) s(a) JOIN {f} ON true",
        "SELECT 1 FROM t1 NATURAL JOIN t2, {f}",
        "SELECT * FROM t WHERE a SIMILAR TO {f}",
        "SELECT * FROM t WHERE a NOT LIKE {f} AND b ILIKE {f} AND c NOT ILIKE {f}",
        "SELECT * FROM t WHERE a BETWEEN {f} AND {f} OR b NOT BETWEEN {f} AND 1",
        "SELECT * FROM t WHERE a LIKE 'x' ESCAPE {f}",
        "SELECT * FROM t LEFT JOIN {f} ON true NATURAL JOIN {f} CROSS JOIN {f}",
        "SELECT * FROM t FULL OUTER JOIN {f} ON true",
        "SELECT sum(a) OVER (ORDER BY b ROWS BETWEEN {f} PRECEDING AND {f} FOLLOWING) FROM t",
        "SELECT sum(a) OVER (ORDER BY b ROWS {f} PRECEDING) FROM t",
        "SELECT a IS NULL OR {f} FROM t",
        "SELECT CURRENT_DATE + {f}, NULL IS NOT DISTINCT FROM {f}",
        "SELECT * FROM t WHERE a NOT SIMILAR TO {f} ESCAPE {f}",
        "SELECT * FROM t WHERE a IS NOT DISTINCT FROM {f}",
        "SELECT {f} IS NULL, {f} ISNULL, {f} NOTNULL",
        "SELECT x FROM t WHERE a = 1 AND b IS NOT NULL AND {f}",
        "SELECT NOT {f}, NOT NOT {f}",
        "SELECT a FROM t FETCH NEXT {f} ROWS WITH TIES",
        "SELECT a FROM t ORDER BY a FETCH FIRST ({f}) ROWS WITH TIES",
        "SELECT a COLLATE \"C\" || {f} FROM t",
        "SELECT {f} AT TIME ZONE {f}",
        "SELECT a FROM t WHERE a::date = {f}::date",
        "SELECT ARRAY[1] || {f}",
        "SELECT a FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = {f})",
        "SELECT a FROM t WHERE a IN (SELECT {f} FROM u)",
        "SELECT (SELECT max(a) FROM t) + {f}",
        "SELECT DISTINCT ON (a, b) a, {f} FROM t ORDER BY a, b",
        "SELECT a FROM t UNION ALL SELECT {f} ORDER BY 1",
        "(SELECT {f}) UNION (SELECT {f})",
        "SELECT {f} FROM t FOR UPDATE",
        "WITH RECURSIVE w(n) AS (SELECT 1) SEARCH DEPTH FIRST BY n SET o SELECT {f}",
        "WITH RECURSIVE w(n) AS (SELECT 1) CYCLE n SET c USING p SELECT {f}",
    ];
    let mut out = Vec::new();
    for place in PLACES {
        for call in CALLS {
            out.push(place.replace("{f}", call));
        }
    }
    out
}

#[test]
fn corpus_agrees_with_postgres_grammar() {
    let mut tally = Tally::default();
    for (sql, _) in CORPUS {
        tally.check(sql);
    }
    tally.report("corpus");
}

#[test]
fn variations_agree_with_postgres_grammar() {
    let mut tally = Tally::default();
    for (sql, _) in CORPUS {
        for v in variations(sql) {
            tally.check(&v);
        }
    }
    tally.report("variations");
}

#[test]
fn calls_in_every_place_are_seen() {
    let mut tally = Tally::default();
    for sql in call_placements() {
        tally.check(&sql);
    }
    tally.report("call placements");
}

// === Random queries ===

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items[self.below(items.len())]
    }
}

/// Generates random queries from a small grammar of PostgreSQL's, biased towards the places
/// where a lexical classifier can go wrong: calls with keyword-like names, aliases with
/// column lists, casts with type modifiers, CTEs (some data-modifying), locking clauses,
/// `INTO`, comments between tokens.
struct Gen {
    rng: Rng,
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "t",
    "u",
    "x",
    "data",
    "name",
    "value",
    "filter",
    "over",
    "by",
    "cube",
    "first",
    "second",
    "zone",
    "set",
    "materialized",
    "key",
    "update_time",
    "for_update",
    "\"select\"",
    "\"A b\"",
    "\"update\"",
    "\"Tbl\"",
    "s.t",
    "public.u",
    "t.a",
    "x.\"update\"",
];
const FUNCS: &[&str] = &[
    "f",
    "myfunc",
    "s.f",
    "\"F\"",
    "nextval",
    "setval",
    "pg_advisory_lock",
    "pg_catalog.nextval",
    "left",
    "right",
    "count",
    "lower",
    "now",
    "random",
    "filter",
    "over",
    "by",
    "cube",
    "rollup",
    "first",
    "second",
    "zone",
    "set",
    "sets",
    "varying",
    "materialized",
    "system",
    "txid_current",
    "public.count",
    "abs",
    "generate_series",
    "coalesce2",
];
const TYPES: &[&str] = &[
    "int",
    "numeric(10,2)",
    "varchar(3)",
    "character varying(4)",
    "double precision",
    "timestamp(3) with time zone",
    "interval day to second(2)",
    "s.mytype",
    "int[]",
    "text",
    "\"char\"",
    "bit varying(2)",
    "time without time zone",
];

impl Gen {
    fn ws(&mut self) -> &'static str {
        match self.rng.below(12) {
            0 => " /* c */ ",
            1 => " -- c\n",
            2 => "\n\t",
            _ => " ",
        }
    }

    fn name(&mut self) -> String {
        self.rng.pick(NAMES).to_owned()
    }

    fn call(&mut self, depth: u32) -> String {
        let f = self.rng.pick(FUNCS);
        let args = match f {
            "nextval" | "pg_catalog.nextval" => "'s'".to_owned(),
            "setval" => "'s', 1".to_owned(),
            "count" if self.rng.chance(50) => "*".to_owned(),
            _ => (0..self.rng.below(3))
                .map(|_| self.expr(depth + 1))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut call = format!("{f}({args})");
        if self.rng.chance(10) {
            call.push_str(&format!(" FILTER (WHERE {})", self.expr(depth + 1)));
        }
        if self.rng.chance(10) {
            call.push_str(&format!(
                " OVER (PARTITION BY {} ORDER BY {})",
                self.name(),
                self.name()
            ));
        }
        call
    }

    fn expr(&mut self, depth: u32) -> String {
        let ws = self.ws();
        if depth > 4 {
            return match self.rng.below(3) {
                0 => self.name(),
                1 => "1".to_owned(),
                _ => "'s'".to_owned(),
            };
        }
        let d = depth + 1;
        match self.rng.below(28) {
            0 | 1 => self.name(),
            2 => format!("{}", self.rng.below(100)),
            3 => "'it''s; DELETE'".to_owned(),
            4 => "$1".to_owned(),
            5..=8 => self.call(d),
            9 => format!("{}{ws}+{ws}{}", self.expr(d), self.expr(d)),
            10 => format!("({})", self.expr(d)),
            11 => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.expr(d),
                self.expr(d),
                self.expr(d)
            ),
            12 => format!("CAST({} AS {})", self.expr(d), self.rng.pick(TYPES)),
            13 => format!("{}::{}", self.name(), self.rng.pick(TYPES)),
            14 => format!("EXISTS ({})", self.select(d)),
            15 => format!("{} IN ({}, {})", self.expr(d), self.expr(d), self.expr(d)),
            16 => format!("{} IN ({})", self.expr(d), self.select(d)),
            17 => format!("ARRAY[{}]", self.expr(d)),
            18 => format!("({})", self.select(d)),
            19 => format!("{} IS NOT NULL", self.expr(d)),
            20 => format!("NOT {}", self.expr(d)),
            21 => format!(
                "{} BETWEEN {} AND {}",
                self.expr(d),
                self.expr(d),
                self.expr(d)
            ),
            22 => format!("EXTRACT(epoch FROM {})", self.expr(d)),
            23 => format!("SUBSTRING({} FROM 1 FOR {})", self.expr(d), self.expr(d)),
            24 => format!("{} AT TIME ZONE {}", self.expr(d), self.expr(d)),
            25 => format!("{} = ANY ({})", self.expr(d), self.expr(d)),
            26 => format!("ROW({}, {})", self.expr(d), self.expr(d)),
            27 if self.rng.chance(50) => {
                let op = self
                    .rng
                    .pick(&["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE", "SIMILAR TO"]);
                format!("{} {op} ({})", self.expr(d), self.expr(d))
            }
            _ => format!("{} OPERATOR(pg_catalog.+) {}", self.expr(d), self.expr(d)),
        }
    }

    fn table_ref(&mut self, depth: u32) -> String {
        let d = depth + 1;
        let alias = |g: &mut Gen| match g.rng.below(4) {
            0 => String::new(),
            1 => format!(" AS {}", g.rng.pick(&["x", "y", "data", "z"])),
            2 => format!(" {}(c1, c2)", g.rng.pick(&["x", "y", "z"])),
            _ => format!(" AS {}(c1)", g.rng.pick(&["x", "data", "z"])),
        };
        match self.rng.below(8) {
            0..=2 => format!(
                "{}{}",
                self.rng.pick(&["t", "u", "s.t", "\"Tbl\"", "data"]),
                alias(self)
            ),
            3 => format!("{}{}", self.call(d), alias(self)),
            4 => format!(
                "({}){}",
                self.select(d),
                alias(self).replace(" AS ", " AS q").replace("  ", " q")
            ),
            5 => format!("LATERAL ({}) l", self.select(d)),
            6 => {
                let kind = self
                    .rng
                    .pick(&["", "LEFT ", "RIGHT OUTER ", "FULL ", "INNER "]);
                format!(
                    "{} {kind}JOIN {} ON {}",
                    self.table_ref(d),
                    self.table_ref(d),
                    self.expr(d)
                )
            }
            7 if self.rng.chance(50) => {
                let kind = self
                    .rng
                    .pick(&["NATURAL JOIN", "CROSS JOIN", "NATURAL LEFT JOIN"]);
                format!("{} {kind} {}", self.table_ref(d), self.table_ref(d))
            }
            _ => format!(
                "t TABLESAMPLE {} ({})",
                self.rng.pick(&["system", "bernoulli"]),
                self.expr(d)
            ),
        }
    }

    fn select(&mut self, depth: u32) -> String {
        let d = depth + 1;
        if depth > 3 {
            return "SELECT 1".to_owned();
        }
        let mut q = String::new();
        if self.rng.chance(15) {
            q.push_str(&self.with_clause(d));
        }
        match self.rng.below(10) {
            0 => {
                q.push_str(&format!("VALUES ({}), ({})", self.expr(d), self.expr(d)));
                return q;
            }
            1 => {
                q.push_str(&format!("TABLE {}", self.rng.pick(&["t", "s.t"])));
                return q;
            }
            _ => {}
        }
        q.push_str("SELECT ");
        match self.rng.below(6) {
            0 => q.push_str("DISTINCT "),
            1 => q.push_str(&format!("DISTINCT ON ({}) ", self.expr(d))),
            _ => {}
        }
        let targets: Vec<String> = (0..1 + self.rng.below(3))
            .map(|_| {
                let e = self.expr(d);
                match self.rng.below(3) {
                    0 => format!("{e} AS {}", self.rng.pick(&["c", "\"C\"", "data"])),
                    _ => e,
                }
            })
            .collect();
        q.push_str(&targets.join(", "));
        if self.rng.chance(5) {
            q.push_str(&format!(
                " INTO {}",
                self.rng.pick(&["new_t", "TEMP tmp", "pg_temp.x"])
            ));
        }
        if self.rng.chance(80) {
            let items: Vec<String> = (0..1 + self.rng.below(2))
                .map(|_| self.table_ref(d))
                .collect();
            q.push_str(&format!(" FROM {}", items.join(", ")));
        }
        if self.rng.chance(50) {
            q.push_str(&format!(" WHERE {}", self.expr(d)));
        }
        if self.rng.chance(20) {
            match self.rng.below(4) {
                0 => q.push_str(&format!(" GROUP BY {}, {}", self.expr(d), self.expr(d))),
                1 => q.push_str(&format!(
                    " GROUP BY CUBE ({}), {}",
                    self.name(),
                    self.expr(d)
                )),
                2 => q.push_str(&format!(
                    " GROUP BY ROLLUP ({}, {})",
                    self.name(),
                    self.name()
                )),
                _ => q.push_str(&format!(" GROUP BY GROUPING SETS (({}), ())", self.name())),
            }
            if self.rng.chance(50) {
                q.push_str(&format!(" HAVING {}", self.expr(d)));
            }
        }
        if self.rng.chance(15) {
            q.push_str(&format!(" UNION SELECT {}", self.expr(d)));
        }
        if self.rng.chance(30) {
            q.push_str(&format!(" ORDER BY {}, {}", self.expr(d), self.expr(d)));
        }
        if self.rng.chance(15) {
            q.push_str(&format!(" LIMIT {}", self.expr(d)));
        }
        if self.rng.chance(8) {
            q.push_str(self.rng.pick(&[
                " FOR UPDATE",
                " FOR SHARE",
                " FOR NO KEY UPDATE",
                " FOR KEY SHARE SKIP LOCKED",
                " FOR READ ONLY",
            ]));
        }
        q
    }

    fn with_clause(&mut self, depth: u32) -> String {
        let mut ctes = Vec::new();
        for i in 0..1 + self.rng.below(2) {
            let cols = if self.rng.chance(40) { "(c1)" } else { "" };
            let mat = self.rng.pick(&["", "MATERIALIZED ", "NOT MATERIALIZED "]);
            let body = match self.rng.below(10) {
                0 => "DELETE FROM t RETURNING 1".to_owned(),
                1 => "UPDATE t SET a = 1 RETURNING a".to_owned(),
                2 => "INSERT INTO t VALUES (1) RETURNING *".to_owned(),
                _ => format!("SELECT {}", self.expr(depth + 1)),
            };
            ctes.push(format!("w{i}{cols} AS {mat}({body})"));
        }
        let recursive = if self.rng.chance(20) {
            "RECURSIVE "
        } else {
            ""
        };
        format!("WITH {recursive}{} ", ctes.join(", "))
    }

    fn statement(&mut self) -> String {
        let q = self.select(0);
        let q = match self.rng.below(20) {
            0 => format!("EXPLAIN {q}"),
            1 => format!("EXPLAIN ANALYZE {q}"),
            2 => format!("COPY ({q}) TO STDOUT"),
            3 => format!("PREPARE p AS {q}"),
            4 => format!("DECLARE c CURSOR FOR {q}"),
            5 => format!("SELECT 1; {q}"),
            _ => q,
        };
        if self.rng.chance(20) {
            q.to_ascii_uppercase()
        } else {
            q
        }
    }
}

#[test]
fn random_queries_agree_with_postgres_grammar() {
    let mut gen = Gen {
        rng: Rng(0x0000_ddb1_a5e5_u64),
    };
    let mut tally = Tally::default();
    for _ in 0..20_000 {
        let sql = gen.statement();
        tally.check(&sql);
    }
    tally.report("random queries");
    // The generator must mostly produce valid SQL, or it tests nothing.
    assert!(
        tally.syntax_errors * 3 < tally.total,
        "{} of {}",
        tally.syntax_errors,
        tally.total
    );
}

/// Corpus texts with random SQL fragments inserted between tokens: mostly invalid, but the
/// valid ones land in places no hand-written case thought of.
#[test]
fn spliced_corpus_agrees_with_postgres_grammar() {
    const PIECES: &[&str] = &[
        "FOR UPDATE",
        "FOR SHARE",
        "INTO x",
        "(",
        ")",
        "nextval('s')",
        "f(1)",
        "s.f(2)",
        ",",
        "AS",
        "x",
        "WITH",
        "SELECT",
        "DELETE FROM t",
        "UNION SELECT 1",
        "::int",
        "'s'",
        "$1",
        "/* c */",
        "--c\n",
        ";",
        "LIMIT 1",
        "WHERE true",
        "ORDER BY 1",
        "GROUP BY 1",
        "OVER ()",
        "FILTER (WHERE true)",
        "LATERAL",
        "JOIN",
        "ON",
        "NOT",
        "IN",
        "EXISTS",
        "ANY",
        "ARRAY",
        "ROW",
        "data",
        "set",
        "by",
        "cube",
        "second",
        "zone",
        "x(a)",
        "LEFT JOIN (SELECT 1) j ON true",
        "DISTINCT ON (1)",
        "OPERATOR(pg_catalog.+)",
        "AND",
        "BETWEEN",
        "LIKE",
        "E'\\''",
        "$$;$$",
        "RETURNING 1",
        "VALUES (1)",
        "TABLE t",
    ];
    let mut rng = Rng(0x5eed_0000_0000_0001);
    let mut tally = Tally::default();
    for (sql, _) in CORPUS {
        let spaces: Vec<usize> = sql.match_indices(' ').map(|(i, _)| i).collect();
        if spaces.is_empty() {
            continue;
        }
        for _ in 0..20 {
            let at = spaces[rng.below(spaces.len())];
            let piece = rng.pick(PIECES);
            let spliced = format!("{} {piece} {}", &sql[..at], &sql[at + 1..]);
            tally.check(&spliced);
        }
    }
    tally.report("spliced corpus");
}
