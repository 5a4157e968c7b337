//! One consumer per config key: a test that fails when a key the schema accepts is read
//! nowhere outside the config module and is not listed in [`NOT_YET_IMPLEMENTED`].
//!
//! A key that parses, is documented and does nothing is worse than no key: operators set it
//! and trust it. The compiler cannot tell (the config structs are public, so an unread field is
//! not dead code), so the test reads the source text of `src/`; comments, string literals, unit
//! tests and the config module itself do not count as reads.
//!
//! - A `[table]` key (`proxy.client_idle_timeout`) is read where `table.field` appears as code
//!   (`settings.config.proxy.client_idle_timeout`, or `pool.min_idle` after
//!   `let pool = &config.pool`); an assignment does not count.
//! - A `[[table]]` entry's fields are reached through loop variables and lookups whose names
//!   say nothing (`n.role` is also the topology's node role), so each such key names its read
//!   in [`ENTRY_READS`].

use std::path::Path;

use super::walk::SCHEMA;
use super::NOT_YET_IMPLEMENTED;

/// Tables whose entries are an array (`[[nodes]]`): their keys are found through
/// [`ENTRY_READS`].
const ARRAY_TABLES: &[&str] = &["nodes", "users", "databases"];

/// How each implemented `[[table]]` key is read outside the config module: code text as
/// [`normalize`] writes it (no whitespace but one space between two words). When a read moves
/// or is renamed, name the new one here.
const ENTRY_READS: &[(&str, &str)] = &[
    ("nodes.address", "host:node.host.clone()"),
    ("nodes.weight", "weight:node.weight"),
    ("nodes.tls_mode", "node.tls.mode.unwrap_or("),
    ("nodes.tls_ca", "node.tls.ca.clone()"),
    ("nodes.tls_server_name", "&node.tls.server_name"),
    ("users.name", "users.insert(user.name.clone()"),
    ("users.password", "match(&user.password,"),
    ("users.server_password", "match(&user.server_password,"),
    ("users.auth", "match user.auth"),
    ("users.max_connections", "u.config.max_connections"),
    ("users.pool_mode", "u.config.pool_mode"),
    ("users.default_route", "|u|u.default_route"),
    ("users.consistency", "|u|u.consistency"),
    ("users.require_tls", "u.config.require_tls"),
    ("databases.name", "config.database(&"),
    ("databases.default_route", "|d|d.default_route"),
    ("databases.consistency", "|d|d.consistency"),
];

/// The code of every `.rs` file under `dir` (see [`normalize`]), without the config module and
/// test-only files (`tests.rs`).
fn code_outside_config(dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if !path.ends_with("src/config") {
                code_outside_config(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.display().to_string(), normalize(&text)));
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A file's code as one line: everything from a `#[cfg(test)]` line on, comment lines and the
/// contents of string literals dropped (a message that names a key does not read it), and
/// whitespace kept only as one space between two words (so `cfg\n    .proxy\n    .listen`,
/// as rustfmt breaks a chain, reads `cfg.proxy.listen`, and `if proxy.listen` stays two words).
fn normalize(text: &str) -> String {
    let code: Vec<char> = text
        .lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| l.chars().chain(['\n']))
        .collect();
    let mut out = String::new();
    let mut space = false;
    let mut i = 0;
    while i < code.len() {
        let c = code[i];
        i += 1;
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && out.ends_with(is_ident) && is_ident(c) {
            out.push(' ');
        }
        space = false;
        if c == '\'' && matches!(code.get(i..i + 2), Some(['"', '\''] | ['\\', '"'])) {
            // The character literals '"' and '\"' open no string.
            i += if code[i] == '"' { 2 } else { 3 };
            continue;
        }
        // r"..." and r#"..."# (not the raw identifier r#type).
        let hashes = code[i..].iter().take_while(|&&h| h == '#').count();
        let raw = c == 'r' && code.get(i + hashes) == Some(&'"') && !out.ends_with(is_ident);
        if c != '"' && !raw {
            out.push(c);
            continue;
        }
        // A string literal: skip to its end, leaving `""`.
        let hashes = if raw { hashes } else { 0 };
        if raw {
            i += hashes + 1;
        }
        while i < code.len() {
            if !raw && code[i] == '\\' {
                i += 2;
            } else if code[i] == '"' && code[i + 1..].iter().take(hashes).all(|&h| h == '#') {
                i += 1 + hashes;
                break;
            } else {
                i += 1;
            }
        }
        out.push_str("\"\"");
    }
    out
}

/// Whether `needle` occurs in `code` (normalized) as a read: not inside a longer name on
/// either side, and not assigned to.
fn reads(code: &str, needle: &str) -> bool {
    code.match_indices(needle).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let rest = &code[at + needle.len()..];
        let after = rest.chars().next();
        let starts_clean = before.is_none_or(|c| !is_ident(c));
        let ends_clean = after.is_none_or(|c| !is_ident(c) || !needle.ends_with(is_ident));
        let assigned = rest.starts_with('=') && !rest.starts_with("==");
        starts_clean && ends_clean && !assigned
    })
}

/// Where `needle` is read, if anywhere.
fn reader<'a>(code: &'a [(String, String)], needle: &str) -> Option<&'a str> {
    code.iter()
        .find(|(_, text)| reads(text, needle))
        .map(|(path, _)| path.as_str())
}

fn is_unimplemented(key: &str) -> bool {
    let table = key.split('.').next().unwrap_or(key);
    NOT_YET_IMPLEMENTED
        .iter()
        .any(|u| u.value.is_none() && (u.key == key || u.key == table))
}

#[test]
fn every_key_is_read_outside_the_config_module_or_listed_as_not_yet_implemented() {
    let mut code = Vec::new();
    code_outside_config(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut code,
    );
    let mut unread = Vec::new();
    for (table, keys) in SCHEMA {
        for key in *keys {
            let path = format!("{table}.{key}");
            let entry_read = ENTRY_READS.iter().find(|(k, _)| *k == path);
            if ARRAY_TABLES.contains(table) {
                match (entry_read, is_unimplemented(&path)) {
                    (Some(_), true) => unread.push(format!(
                        "{path}: listed in both NOT_YET_IMPLEMENTED and ENTRY_READS"
                    )),
                    (None, false) => unread.push(format!(
                        "{path}: not in ENTRY_READS; name the code that reads it, or list it \
                         in NOT_YET_IMPLEMENTED"
                    )),
                    (Some((_, needle)), false) if reader(&code, needle).is_none() => unread.push(
                        format!("{path}: its read `{needle}` (ENTRY_READS) is not in src/"),
                    ),
                    _ => {}
                }
                continue;
            }
            assert!(entry_read.is_none(), "{path} is not an [[array]] key");
            match (reader(&code, &path), is_unimplemented(&path)) {
                (None, false) => unread.push(format!(
                    "{path}: read nowhere outside src/config/ (as `{path}`); consume it, or \
                     list it in NOT_YET_IMPLEMENTED"
                )),
                (Some(file), true) => unread.push(format!(
                    "{path}: read in {file}, but listed in NOT_YET_IMPLEMENTED; remove it there"
                )),
                _ => {}
            }
        }
    }
    assert!(unread.is_empty(), "\n{}\n", unread.join("\n"));
}

#[test]
fn reads_are_told_from_lookalikes() {
    let read = |code: &str| reads(&normalize(code), "proxy.tcp_nodelay");
    assert!(read("let n = settings.config.proxy.tcp_nodelay;"));
    assert!(read(
        "let n = settings\n    .config\n    .proxy\n    .tcp_nodelay;"
    ));
    assert!(read("if proxy.tcp_nodelay {"));
    assert!(!read("let n = settings.config.proxy.tcp_nodelay_x;"));
    assert!(!read("let n = myproxy.tcp_nodelay;"));
    assert!(!read("key: \"proxy.tcp_nodelay\","));
    assert!(!read("warn!(\"see proxy.tcp_nodelay\");"));
    assert!(!read(
        "let q = '\"'; let s = r#\"a \" proxy.tcp_nodelay\"#;"
    ));
    assert!(!read("// config.proxy.tcp_nodelay\n"));
    assert!(read("let r#type = 1; proxy.tcp_nodelay"));
    assert!(!read("config.proxy.tcp_nodelay = false;"));
    assert!(read("config.proxy.tcp_nodelay == false"));
    assert!(!read(
        "#[cfg(test)]\nmod tests { fn f() { config.proxy.tcp_nodelay; } }"
    ));
    // A needle that ends in punctuation may be followed by anything.
    let code = normalize("x.and_then(|u| u.default_route)");
    assert!(reads(&code, "|u|u.default_route"));
}
