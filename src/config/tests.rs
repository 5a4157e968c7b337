//! Tests for the configuration loader: the example file, defaults, environment overrides,
//! problem reporting, validation, secrecy and notices.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::values::{check_scram_verifier, parse_duration, parse_host_port};
use super::walk::SCHEMA;
use super::*;

mod security;

const EXAMPLE: &str = include_str!("../../proxy.toml");
const DOCS: &str = include_str!("../../docs/CONFIG.md");

/// The smallest valid file.
const MINIMAL: &str = r#"
[monitor]
user = "mon"

[[nodes]]
address = "db:5432"
"#;

/// A password that must never show up in any output.
const SECRET: &str = "hunter2-Zq9";

/// A well-formed SCRAM verifier (iterations 4096, 16-byte salt, 32-byte keys).
const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
    q0VkqEUzqp1pSbaBOdUK4fETXFuSOqs6VGDJdBMUxNE=:\
    bVyp0vnsNTAg6Gh6Nc5WTRtNPVBw9NRpE11Md0aILbw=";

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Loaded, ConfigError> {
    Config::from_toml(text, "proxy.toml", &no_env)
}

fn load_env(text: &str, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml(text, "proxy.toml", &|name| vars.get(name).cloned())
}

fn ok(text: &str) -> Config {
    match load(text) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Ok(_) => panic!("expected problems, the config loaded"),
        Err(e) => e.problems().to_vec(),
    }
}

/// The problem about `key`, failing with the full list if there is none.
fn problem_for<'p>(problems: &'p [Problem], key: &str) -> &'p Problem {
    problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"))
}

fn with_minimal(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

#[test]
fn example_loads_without_problems() {
    let loaded = match load(EXAMPLE) {
        Ok(loaded) => loaded,
        Err(e) => panic!("proxy.toml has problems:\n{e}"),
    };
    let c = &loaded.config;
    let addresses: Vec<String> = c.nodes.iter().map(NodeConfig::address).collect();
    assert_eq!(
        addresses,
        ["127.0.0.1:5432", "127.0.0.1:5433", "127.0.0.1:5434"]
    );
    assert_eq!(c.monitor.user, "causeway_monitor");
    assert_eq!(
        c.monitor.password.as_ref().map(Secret::expose),
        Some("monitor")
    );
    let app = c.user("app").expect("user app");
    assert_eq!(app.password.as_ref().map(Secret::expose), Some("app"));
    assert_eq!(
        app.server_password.as_ref().map(Secret::expose),
        Some("app")
    );
    assert_eq!(app.auth, AuthMethod::ScramSha256);
    assert_eq!(
        c.proxy.listen,
        "127.0.0.1:6432".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.nodes[0].role, Some(RoleHint::Primary));
    assert_eq!(c.nodes[1].name.as_deref(), Some("pg2"));
}

/// Tables the example shows commented out, because writing them turns a feature on.
const COMMENTED_TABLES: &[&str] = &["auth_query"];

#[test]
fn example_sets_every_key_and_docs_describe_every_key() {
    for (table, keys) in SCHEMA {
        let commented = if COMMENTED_TABLES.contains(table) {
            "# "
        } else {
            ""
        };
        let header = if matches!(*table, "nodes" | "users" | "databases") {
            format!("[[{table}]]")
        } else {
            format!("{commented}[{table}]")
        };
        assert!(EXAMPLE.contains(&header), "proxy.toml lacks {header}");
        for key in *keys {
            let assignment = format!("\n{commented}{key} = ");
            assert!(
                EXAMPLE.contains(&assignment),
                "proxy.toml does not set {table}.{key}"
            );
            let documented = format!("`{table}.{key}`");
            assert!(
                DOCS.contains(&documented),
                "docs/CONFIG.md lacks {documented}"
            );
        }
    }
    for over in ENV_OVERRIDES {
        assert!(DOCS.contains(over.var), "docs/CONFIG.md lacks {}", over.var);
        assert!(EXAMPLE.contains(over.var), "proxy.toml lacks {}", over.var);
    }
}

#[test]
fn docs_mark_exactly_the_unimplemented_keys() {
    for (table, keys) in SCHEMA {
        for key in *keys {
            let path = format!("{table}.{key}");
            let row = DOCS
                .lines()
                .find(|l| l.starts_with(&format!("| `{path}` |")))
                .unwrap_or_else(|| panic!("docs/CONFIG.md has no row for {path}"));
            let unimplemented = NOT_YET_IMPLEMENTED
                .iter()
                .any(|u| u.key == path || u.key == *table);
            assert_eq!(
                row.contains("not yet"),
                unimplemented,
                "docs/CONFIG.md row for {path} disagrees with NOT_YET_IMPLEMENTED"
            );
        }
    }
}

#[test]
fn every_key_in_the_example_has_a_comment() {
    let mut previous = "";
    for line in EXAMPLE.lines() {
        let is_setting = !line.starts_with('#') && !line.starts_with('[') && line.contains(" = ");
        if is_setting {
            assert!(
                previous.starts_with('#'),
                "no comment directly above '{line}'"
            );
        }
        previous = line;
    }
}

#[test]
fn example_notices_cover_the_unimplemented_keys_it_sets() {
    let loaded = load(EXAMPLE).unwrap();
    let keys: Vec<&str> = loaded.notices.iter().map(|n| n.key).collect();
    // The example sets every key, so every entry appears (the value-specific ones because it
    // writes pool_mode = "transaction" in both places).
    let expected: Vec<&str> = NOT_YET_IMPLEMENTED.iter().map(|u| u.key).collect();
    assert_eq!(keys, expected);
    for notice in &loaded.notices {
        assert!(notice.line.is_some(), "{notice} has no line");
    }
}

#[test]
fn defaults() {
    let c = ok(MINIMAL);
    let p = &c.proxy;
    assert_eq!(p.listen, "127.0.0.1:6432".parse::<SocketAddr>().unwrap());
    assert_eq!(p.http_listen, None);
    assert_eq!(p.pool_mode, PoolMode::Transaction);
    assert_eq!(p.max_client_connections, 10_000);
    assert_eq!(p.max_message_size, 64 * 1024 * 1024);
    assert_eq!(p.startup_timeout, Duration::from_secs(10));
    assert_eq!(p.client_idle_timeout, None);
    assert_eq!(p.shutdown_timeout, Duration::from_secs(30));
    assert!(p.admin_users.is_empty());
    assert!(p.tcp_nodelay);
    assert_eq!(p.worker_threads, 0);
    assert_eq!(p.log_level, "info");
    assert_eq!(p.log_format, super::LogFormat::Text);

    let pool = &c.pool;
    assert_eq!(pool.max_server_connections, 100);
    assert_eq!(pool.pool_size, 20);
    assert_eq!(pool.min_idle, 0);
    assert_eq!(pool.server_idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(pool.server_lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(pool.pool_timeout, Some(Duration::from_secs(30)));
    assert_eq!(pool.server_connect_timeout, Duration::from_secs(5));
    assert_eq!(pool.server_reset_query.as_deref(), Some("DISCARD ALL"));

    let r = &c.routing;
    assert_eq!(r.check_interval, Duration::from_millis(250));
    assert_eq!(r.max_lag_bytes, Some(16 * 1024 * 1024));
    assert_eq!(r.max_lag, Some(Duration::from_secs(1)));
    assert_eq!(r.consistency, Consistency::Session);
    assert_eq!(r.read_only_transactions, ReadOnlyTransactions::Standby);
    assert_eq!(r.primary_reads, PrimaryReads::Fallback);
    assert_eq!(r.balance, Balance::LeastOutstanding);
    assert_eq!(r.primary_wait, Duration::from_secs(10));
    assert_eq!(r.fallback, Fallback::Primary);
    assert_eq!(r.causal_wait, Duration::ZERO);
    assert_eq!(r.health_threshold, 2);
    assert_eq!(r.readonly_database_suffix.as_deref(), Some("_ro"));
    assert!(r.write_functions.is_empty());
    assert!(r.read_functions.is_empty());
    assert_eq!(r.volatility_refresh, Some(Duration::from_secs(60)));

    let m = &c.monitor;
    assert_eq!(m.user, "mon");
    assert_eq!(m.password, None);
    assert_eq!(m.database, "postgres");
    assert_eq!(m.connect_timeout, Duration::from_secs(1));
    assert_eq!(m.query_timeout, Duration::from_secs(1));

    assert_eq!(
        c.nodes,
        [NodeConfig {
            host: "db".into(),
            port: 5432,
            weight: 1,
            role: None,
            name: None,
            tls: NodeTlsConfig::default(),
        }]
    );
    assert!(c.users.is_empty());
    assert!(c.databases.is_empty());
}

#[test]
fn user_defaults() {
    let c = ok(&with_minimal(
        "[[users]]\nname = \"app\"\npassword = \"pw\"\n",
    ));
    let u = c.user("app").unwrap();
    assert_eq!(u.auth, AuthMethod::ScramSha256);
    assert_eq!(u.server_password.as_ref().map(Secret::expose), Some("pw"));
    assert_eq!(u.max_connections, None);
    assert_eq!(u.pool_mode, None);
    assert_eq!(u.default_route, None);
    assert_eq!(u.consistency, None);
    assert!(c.user("nobody").is_none());
}

#[test]
fn zero_turns_off_what_can_be_off() {
    let c = ok(&with_minimal(
        r#"
[proxy]
client_idle_timeout = "0"
shutdown_timeout = "0s"
[pool]
server_idle_timeout = "0"
server_lifetime = 0
pool_timeout = "0ms"
server_reset_query = ""
[routing]
max_lag_bytes = 0
max_lag = "0"
readonly_database_suffix = ""
volatility_refresh = "0"
primary_wait = "0"
"#,
    ));
    assert_eq!(c.proxy.client_idle_timeout, None);
    assert_eq!(c.proxy.shutdown_timeout, Duration::ZERO);
    assert_eq!(c.pool.server_idle_timeout, None);
    assert_eq!(c.pool.server_lifetime, None);
    assert_eq!(c.pool.pool_timeout, None);
    assert_eq!(c.pool.server_reset_query, None);
    assert_eq!(c.routing.max_lag_bytes, None);
    assert_eq!(c.routing.max_lag, None);
    assert_eq!(c.routing.readonly_database_suffix, None);
    assert_eq!(c.routing.volatility_refresh, None);
    assert_eq!(c.routing.primary_wait, Duration::ZERO);
}

#[test]
fn every_keyword_is_accepted() {
    let c = ok(&with_minimal(
        r#"
[proxy]
pool_mode = "session"
log_format = "json"
[routing]
consistency = "eventual"
read_only_transactions = "primary"
primary_reads = "always"
balance = "random"
fallback = "error"
[[users]]
name = "a"
auth = "md5"
password = "x"
pool_mode = "transaction"
default_route = "standby"
consistency = "eventual"
[[databases]]
name = "d"
default_route = "primary"
consistency = "session"
"#,
    ));
    assert_eq!(c.proxy.pool_mode, PoolMode::Session);
    assert_eq!(c.proxy.log_format, super::LogFormat::Json);
    assert_eq!(c.routing.consistency, Consistency::Eventual);
    assert_eq!(
        c.routing.read_only_transactions,
        ReadOnlyTransactions::Primary
    );
    assert_eq!(c.routing.primary_reads, PrimaryReads::Always);
    assert_eq!(c.routing.balance, Balance::Random);
    assert_eq!(c.routing.fallback, Fallback::Error);
    let a = c.user("a").unwrap();
    assert_eq!(a.auth, AuthMethod::Md5);
    assert_eq!(a.pool_mode, Some(PoolMode::Transaction));
    assert_eq!(a.default_route, Some(Route::Standby));
    assert_eq!(a.consistency, Some(Consistency::Eventual));
    let d = c.database("d").unwrap();
    assert_eq!(d.default_route, Some(Route::Primary));
    assert_eq!(d.consistency, Some(Consistency::Session));
    assert_eq!(Balance::RoundRobin.to_string(), "round_robin");
    assert_eq!(AuthMethod::ScramSha256.as_str(), "scram-sha-256");
}

#[test]
fn dotted_keys_and_inline_tables_work_and_keep_lines() {
    let text = "monitor.user = \"m\"\nnodes = [{ address = \"a:1\" }, { address = \"b:2\", weight = 0 }]\n\
                proxy.max_client_connections = 0\n";
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "proxy.max_client_connections");
    assert_eq!(problems[0].line, Some(3));
    let c = ok("monitor.user = \"m\"\nnodes = [{ address = \"a:1\" }, { address = \"b:2\", weight = 0 }]\n");
    assert_eq!(c.nodes[1].weight, 0);
}

#[test]
fn env_overrides_each_key() {
    let loaded = load_env(
        EXAMPLE,
        &[
            ("CAUSEWAY_LISTEN", "0.0.0.0:7432"),
            ("CAUSEWAY_HTTP_LISTEN", "[::]:9999"),
            ("CAUSEWAY_POOL_MODE", "session"),
            ("CAUSEWAY_WORKER_THREADS", "1"),
            ("CAUSEWAY_MONITOR_USER", "watcher"),
            ("CAUSEWAY_MONITOR_PASSWORD", "from-env"),
        ],
    )
    .unwrap();
    let c = loaded.config;
    assert_eq!(c.proxy.worker_threads, 1);
    assert_eq!(
        c.proxy.listen,
        "0.0.0.0:7432".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.proxy.http_listen, Some("[::]:9999".parse().unwrap()));
    assert_eq!(c.proxy.pool_mode, PoolMode::Session);
    assert_eq!(c.monitor.user, "watcher");
    assert_eq!(
        c.monitor.password.as_ref().map(Secret::expose),
        Some("from-env")
    );
    // The file's nodes are untouched without CAUSEWAY_NODES.
    assert_eq!(c.nodes.len(), 3);
    // The pool_mode notice follows the effective value: session is implemented.
    assert!(!loaded.notices.iter().any(|n| n.key == "proxy.pool_mode"));
}

#[test]
fn env_supplies_what_the_file_lacks() {
    let c = load_env(
        "",
        &[
            ("CAUSEWAY_MONITOR_USER", "watcher"),
            ("CAUSEWAY_NODES", "db-1:5432"),
        ],
    )
    .unwrap()
    .config;
    assert_eq!(c.monitor.user, "watcher");
    assert_eq!(c.nodes[0].address(), "db-1:5432");
}

#[test]
fn env_nodes_replace_the_file_nodes() {
    let c = load_env(
        EXAMPLE,
        &[(
            "CAUSEWAY_NODES",
            "pg-primary:5432, pg-standby_1:5433,[fd00::7]:5434,",
        )],
    )
    .unwrap()
    .config;
    let got: Vec<(String, u16, u32)> = c
        .nodes
        .iter()
        .map(|n| (n.host.clone(), n.port, n.weight))
        .collect();
    assert_eq!(
        got,
        [
            ("pg-primary".to_owned(), 5432, 1),
            ("pg-standby_1".to_owned(), 5433, 1),
            ("fd00::7".to_owned(), 5434, 1),
        ]
    );
    assert_eq!(c.nodes[2].address(), "[fd00::7]:5434");
    assert!(c.nodes.iter().all(|n| n.name.is_none() && n.role.is_none()));
}

#[test]
fn empty_env_vars_change_nothing() {
    let c = load_env(EXAMPLE, &[("CAUSEWAY_NODES", ""), ("CAUSEWAY_LISTEN", "")])
        .unwrap()
        .config;
    assert_eq!(c.nodes.len(), 3);
    assert_eq!(c.proxy.listen.port(), 6432);
}

#[test]
fn bad_env_values_are_problems_naming_the_variable() {
    let err = load_env(
        MINIMAL,
        &[
            ("CAUSEWAY_LISTEN", "localhost:6432"),
            ("CAUSEWAY_POOL_MODE", "statement"),
            ("CAUSEWAY_NODES", "db1:5432,db2"),
        ],
    )
    .unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let listen = problem_for(problems, "proxy.listen");
    assert_eq!(listen.line, None);
    assert!(
        listen.message.ends_with("(from CAUSEWAY_LISTEN)"),
        "{listen}"
    );
    let mode = problem_for(problems, "proxy.pool_mode");
    assert!(mode.message.contains("CAUSEWAY_POOL_MODE"), "{mode}");
    let node = problem_for(problems, "nodes[1].address");
    assert!(node.message.contains("no port"), "{node}");
    assert!(node.message.contains("CAUSEWAY_NODES"), "{node}");
    // Rendered without a line number.
    assert!(
        err.to_string().contains("proxy.toml: proxy.listen: "),
        "{err}"
    );
}

#[test]
fn three_unknown_keys_give_three_problems_with_lines() {
    let text = r#"[proxy]
listen = "127.0.0.1:6432"
listne = "x"

[routing]
check_interval = "1s"
max_lagg = "2s"

[monitor]
user = "m"

[[nodes]]
address = "a:5432"
wieght = 2
"#;
    let err = load(text).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert_eq!(problems[0].line, Some(3));
    assert_eq!(problems[0].key, "proxy.listne");
    assert_eq!(problems[1].line, Some(7));
    assert_eq!(problems[1].key, "routing.max_lagg");
    assert_eq!(problems[2].line, Some(14));
    assert_eq!(problems[2].key, "nodes[0].wieght");
    assert_eq!(
        problems[1].render("proxy.toml"),
        "proxy.toml:7: routing.max_lagg: unknown key (did you mean 'max_lag'?)"
    );
    let rendered = err.to_string();
    assert_eq!(rendered.lines().count(), 3);
    assert!(
        rendered.contains("proxy.toml:14: nodes[0].wieght: unknown key (did you mean 'weight'?)")
    );
}

#[test]
fn unknown_tables_and_misplaced_keys_get_suggestions() {
    let problems = problems(&with_minimal(
        "[node]\naddress = \"x:1\"\n[proxy]\npool_size = 3\n[extra]\nanything = 1\n",
    ));
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problem_for(&problems, "node").message.contains("'nodes'"));
    assert!(problem_for(&problems, "proxy.pool_size")
        .message
        .contains("'pool.pool_size'"));
    assert_eq!(problem_for(&problems, "extra").message, "unknown key");
}

#[test]
fn wrong_types_and_bad_durations_name_their_keys() {
    let text = r#"[monitor]
user = "m"
[[nodes]]
address = "a:5432"
weight = "heavy"
[proxy]
startup_timeout = "10 seconds"
tcp_nodelay = "yes"
max_message_size = 1.5
[routing]
check_interval = 250
max_lag = "1x"
primary_wait = "-1s"
causal_wait = 1979-05-27
"#;
    let problems = problems(text);
    assert_eq!(problems.len(), 8, "{problems:#?}");
    let weight = problem_for(&problems, "nodes[0].weight");
    assert_eq!(weight.message, "expected an integer, found a string");
    let startup = problem_for(&problems, "proxy.startup_timeout");
    assert!(
        startup.message.contains("'10 seconds' is not a duration"),
        "{startup}"
    );
    assert!(problem_for(&problems, "proxy.tcp_nodelay")
        .message
        .contains("expected true or false"));
    assert!(problem_for(&problems, "proxy.max_message_size")
        .message
        .contains("found a float"));
    assert!(problem_for(&problems, "routing.check_interval")
        .message
        .contains("250 has no unit"));
    assert!(problem_for(&problems, "routing.max_lag")
        .message
        .contains("'1x' is not a duration"));
    assert!(problem_for(&problems, "routing.primary_wait")
        .message
        .contains("not a duration"));
    assert!(problem_for(&problems, "routing.causal_wait")
        .message
        .contains("found a date-time"));
    // Lines survive date-times.
    assert_eq!(weight.line, Some(5));
    assert_eq!(problem_for(&problems, "routing.causal_wait").line, Some(14));
}

#[test]
fn date_times_anywhere_keep_every_line() {
    let text = "[monitor]\nuser = \"m\"\nbogus = 1\n[[nodes]]\naddress = \"a:1\"\n[proxy]\n\
                startup_timeout = 00:00:10\nshutdown_timeout = 1979-05-27 07:32:00Z\n\
                admin_users = [2024-01-01, \"x\"]\n[routing]\nmax_lag = \"\\u0000\"\n";
    let problems = problems(text);
    let lines: Vec<(Option<usize>, &str)> =
        problems.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        lines,
        [
            (Some(3), "monitor.bogus"),
            (Some(7), "proxy.startup_timeout"),
            (Some(8), "proxy.shutdown_timeout"),
            (Some(9), "proxy.admin_users[0]"),
            (Some(9), "proxy.admin_users"),
            (Some(11), "routing.max_lag"),
        ],
        "{problems:#?}"
    );
}

#[test]
fn lines_are_reported_for_types_and_values() {
    let text =
        "[monitor]\nuser = \"m\"\n[[nodes]]\naddress = \"a:5432\"\n\n[[nodes]]\naddress = \"b\"\n\
                [pool]\npool_size = -1\n";
    let problems = problems(text);
    assert_eq!(problem_for(&problems, "nodes[1].address").line, Some(7));
    let pool_size = problem_for(&problems, "pool.pool_size");
    assert_eq!(pool_size.line, Some(9));
    assert_eq!(pool_size.message, "must be at least 1, not -1");
}

#[test]
fn syntax_errors_have_a_line() {
    let err = load("[proxy]\nlisten = \"127.0.0.1:6432\nx = 1\n").unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, Some(2));
    assert!(
        problems[0].message.starts_with("syntax error: "),
        "{:?}",
        problems[0]
    );
    assert!(!problems[0].message.contains('\n'));
    let err = load("a = 1\na = 2\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("proxy.toml:2: syntax error: duplicate key"),
        "{err}"
    );
}

#[test]
fn patroni_source_needs_http_urls() {
    let found = problems(&with_minimal("[topology]\nsource = \"patroni\"\n"));
    assert!(problem_for(&found, "topology.patroni")
        .message
        .starts_with("missing"));
    let found = problems(&with_minimal(
        "[topology]\nsource = \"patroni\"\npatroni = [\"https://a:8008\", \"http://b\"]\n",
    ));
    problem_for(&found, "topology.patroni[0]");
    problem_for(&found, "topology.patroni[1]");
    let c = load(&with_minimal(
        "[topology]\nsource = \"patroni\"\npatroni = [\"http://10.0.0.1:8008\"]\n",
    ))
    .unwrap()
    .config;
    assert_eq!(c.topology.source, TopologySource::Patroni);
    assert_eq!(c.topology.patroni, vec!["http://10.0.0.1:8008".to_owned()]);
}

#[test]
fn zero_where_it_makes_no_sense() {
    let problems = problems(&with_minimal(
        "[routing]\ncheck_interval = \"0ms\"\nhealth_threshold = 0\n\
         [proxy]\nstartup_timeout = \"0\"\nmax_message_size = 10\n\
         [pool]\nserver_connect_timeout = \"0s\"\nmax_server_connections = 0\n",
    ));
    for key in [
        "routing.check_interval",
        "routing.health_threshold",
        "proxy.startup_timeout",
        "proxy.max_message_size",
        "pool.server_connect_timeout",
        "pool.max_server_connections",
    ] {
        problem_for(&problems, key);
    }
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert_eq!(
        problem_for(&problems, "routing.check_interval").message,
        "must be greater than zero"
    );
}

#[test]
fn at_least_one_node_and_a_monitor_user() {
    let problems = problems("");
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problem_for(&problems, "nodes")
        .message
        .starts_with("no nodes"));
    assert!(problem_for(&problems, "monitor.user")
        .message
        .starts_with("missing"));
    let problems = self::problems("nodes = []\n[monitor]\nuser = \"\"\n");
    assert_eq!(
        problem_for(&problems, "monitor.user").message,
        "must not be empty"
    );
    assert_eq!(problem_for(&problems, "nodes").line, Some(1));
}

#[test]
fn node_addresses_must_be_host_port() {
    let problems = problems(
        r#"[monitor]
user = "m"
[[nodes]]
address = "10.0.0.1"
[[nodes]]
address = "::1:5432"
[[nodes]]
address = "db:99999"
[[nodes]]
address = "bad host:5432"
[[nodes]]
weight = 2
[[nodes]]
address = "ok:5432"
[[nodes]]
address = "OK:5432"
name = "dup"
[[nodes]]
address = "other:5432"
name = "dup"
[[nodes]]
address = "x:1"
role = "leader"
weight = -1
"#,
    );
    let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        messages[0].contains("nodes[0].address: '10.0.0.1' has no port"),
        "{messages:#?}"
    );
    assert!(messages[1].contains("nodes[1].address:") && messages[1].contains("needs brackets"));
    assert!(messages[2].contains("nodes[2].address: '99999' is not a port"));
    assert!(messages[3].contains("nodes[3].address: 'bad host' is neither"));
    assert_eq!(problems[4].key, "nodes[4].address");
    assert_eq!(
        problems[4].line,
        Some(11),
        "the [[nodes]] header of the entry"
    );
    assert!(messages[5].contains("nodes[6].address: OK:5432 is listed twice"));
    assert!(messages[6].contains("nodes[7].name: node name 'dup' is used twice"));
    assert!(messages[7].contains("nodes[8].role: 'leader' is not one of \"primary\", \"standby\""));
    assert!(messages[8].contains("nodes[8].weight: must be at least 0"));
    assert_eq!(problems.len(), 9, "{messages:#?}");
}

#[test]
fn host_port_parser() {
    assert_eq!(
        parse_host_port("10.0.0.1:5432"),
        Ok(("10.0.0.1".into(), 5432))
    );
    assert_eq!(
        parse_host_port("db.example.com.:1"),
        Ok(("db.example.com.".into(), 1))
    );
    assert_eq!(parse_host_port("[::1]:5432"), Ok(("::1".into(), 5432)));
    for bad in [
        "", ":5432", "db:", "db:0", "[::1]", "[::1", "[nope]:1", "a..b:1", "a/b:1",
    ] {
        assert!(parse_host_port(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn duration_parser() {
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in [
        "",
        "s",
        "1",
        "1.5s",
        "1 s",
        "-1s",
        "1d",
        "1m30s",
        "99999999999999999999s",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad} accepted");
    }
    assert!(parse_duration(&format!("{}h", u64::MAX / 60)).is_err());
}

#[test]
fn pool_limits_are_consistent() {
    let problems = problems(&with_minimal(
        "[pool]\nmax_server_connections = 10\npool_size = 11\n",
    ));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "pool.pool_size");
    assert_eq!(problems[0].line, Some(10));
    // The default pool_size against a smaller explicit limit: the line of the limit.
    let problems = self::problems(&with_minimal("[pool]\nmax_server_connections = 5\n"));
    assert_eq!(problems[0].key, "pool.pool_size");
    assert_eq!(problems[0].line, Some(9));
    let problems = self::problems(&with_minimal("[pool]\npool_size = 4\nmin_idle = 5\n"));
    assert_eq!(problems[0].key, "pool.min_idle");
    // No cascade from an invalid value.
    let problems = self::problems(&with_minimal("[pool]\nmax_server_connections = \"many\"\n"));
    assert_eq!(problems.len(), 1, "{problems:#?}");
}

#[test]
fn routing_lists_and_databases() {
    let problems = problems(&with_minimal(
        "[routing]\nwrite_functions = [\"nextval\", \"f\", \"f\", 3]\nread_functions = [\"nextval\"]\n\
         [[databases]]\nname = \"a\"\n[[databases]]\nname = \"a\"\nconsistency = \"strong\"\n",
    ));
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "routing.write_functions[2]",
            "routing.write_functions[3]",
            "routing.read_functions",
            "databases[1].name",
            "databases[1].consistency",
        ],
        "{problems:#?}"
    );
}

#[test]
fn wrong_shapes_of_tables() {
    let problems = problems("proxy = 1\nmonitor = { user = \"m\" }\n[nodes]\naddress = \"a:1\"\n");
    assert!(problem_for(&problems, "proxy")
        .message
        .contains("expected a table ([proxy])"));
    assert!(problem_for(&problems, "nodes")
        .message
        .contains("expected an array of tables ([[nodes]]), found a table"));
    let problems = self::problems(&format!("users = [\"app\"]\n{MINIMAL}"));
    assert!(problem_for(&problems, "users[0]")
        .message
        .contains("expected a table"));
}

#[test]
fn passwords_never_leak() {
    let c = ok(&with_minimal(&format!(
        "[[users]]\nname = \"app\"\npassword = \"{SECRET}\"\n"
    )));
    let debug = format!("{c:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("***"));
    let user = c.user("app").unwrap();
    assert_eq!(user.password.as_ref().unwrap().to_string(), "***");

    // Every way a password can be wrong.
    let bad_files = [
        format!("[monitor]\nuser = \"m\"\npassword = \"{SECRET}\"\n"),
        format!("[monitor]\nuser = \"m\"\npassword = [\"{SECRET}\"]\n[[nodes]]\naddress = \"a:1\"\n"),
        format!(
            "{MINIMAL}[[users]]\nname = \"a\"\npassword = \"SCRAM-SHA-256${SECRET}\"\n"
        ),
        format!("{MINIMAL}[[users]]\nname = \"a\"\nauth = \"md5\"\npassword = \"{VERIFIER}\"\n"),
        format!("{MINIMAL}[[users]]\nname = \"a\"\npassword = \"md5{SECRET}\"\npasword = \"{SECRET}\"\n"),
        format!("{MINIMAL}[[users]]\nname = \"a\"\npassword = \"p\"\nserver_password = \"md50123456789abcdef0123456789abcdef\"\n"),
        format!("[monitor]\nuser = \"m\"\npassword = \"{SECRET}\n"),
        format!("[monitor]\nuser = \"m\"\npassword = \"\"\"{SECRET}\"\"\" x\n"),
    ];
    for text in &bad_files {
        let err = load(text).unwrap_err();
        for rendered in [err.to_string(), format!("{err:?}")] {
            assert!(!rendered.contains(SECRET), "leaked in:\n{rendered}");
            assert!(
                !rendered.contains("q0VkqEUz"),
                "verifier leaked in:\n{rendered}"
            );
            assert!(
                !rendered.contains("0123456789abcdef"),
                "hash leaked in:\n{rendered}"
            );
        }
    }
    // From the environment too.
    let err = load_env(
        "[monitor]\nuser = \"m\"\n",
        &[(
            "CAUSEWAY_MONITOR_PASSWORD",
            &format!("SCRAM-SHA-256${SECRET}"),
        )],
    )
    .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(SECRET));
    let loaded = load_env(MINIMAL, &[("CAUSEWAY_MONITOR_PASSWORD", SECRET)]).unwrap();
    assert!(!format!("{loaded:?}").contains(SECRET));
}

#[test]
fn notices_for_unimplemented_keys_set_explicitly() {
    // Defaults never produce notices.
    assert!(load(MINIMAL).unwrap().notices.is_empty());
    // Implemented keys and implemented values neither.
    let quiet =
        with_minimal("[proxy]\npool_mode = \"session\"\n[routing]\ncheck_interval = \"1s\"\n");
    assert!(load(&quiet).unwrap().notices.is_empty());

    let loud = with_minimal(
        "[routing]\nconsistency = \"session\"\n[proxy]\nadmin_users = [\"u\"]\n\
         [pool]\nmin_idle = 1\n[[users]]\nname = \"u\"\npassword = \"p\"\ndefault_route = \"auto\"\n\
         [[nodes]]\naddress = \"db2:5432\"\nname = \"n2\"\n",
    );
    let notices = load(&loud).unwrap().notices;
    let shown: Vec<String> = notices.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "`nodes.name` is accepted but has no effect yet: logs, metrics and /topology name \
             nodes by address",
        ]
    );
    assert_eq!(notices[0].line, Some(20));

    // Set by the environment: a notice without a line.
    let env_set = load_env(
        "[monitor]\nuser = \"m\"\npassword = \"p\"\n[[users]]\nname = \"u\"\npassword = \"p\"\n",
        &[("CAUSEWAY_NODES", "127.0.0.1:5432")],
    );
    assert!(env_set.is_ok());
}

#[test]
fn every_unimplemented_entry_names_a_real_key() {
    for u in NOT_YET_IMPLEMENTED {
        let known = match u.key.split_once('.') {
            Some((table, key)) => SCHEMA
                .iter()
                .any(|(t, keys)| *t == table && keys.contains(&key)),
            None => SCHEMA.iter().any(|(t, _)| *t == u.key),
        };
        assert!(known, "{} is not in the schema", u.key);
    }
}

#[test]
fn rendering_sample() {
    // Not an assertion of wording beyond the format: shows what `causeway check` prints.
    let err =
        load("[proxy]\nlisten = \"localhost:6432\"\nmax_lagg = 1\n[routing]\nmax_lag = \"1 s\"\n")
            .unwrap_err();
    let rendered = err.to_string();
    for line in rendered.lines() {
        assert!(line.starts_with("proxy.toml:"), "{line}");
    }
    assert!(rendered.contains("proxy.toml:2: proxy.listen: 'localhost:6432' is not an IP address"));
    assert!(
        rendered.contains(
            "proxy.toml:3: proxy.max_lagg: unknown key (did you mean 'routing.max_lag'?)"
        ),
        "{rendered}"
    );
    assert!(rendered.ends_with("proxy.toml: nodes: no nodes: add at least one [[nodes]] entry with an address, or set CAUSEWAY_NODES"), "{rendered}");
}

#[test]
fn read_errors_name_the_file() {
    let err = Config::load("/nonexistent/causeway/proxy.toml").unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err
        .to_string()
        .starts_with("cannot read /nonexistent/causeway/proxy.toml: "));
    assert!(err.problems().is_empty());
}

#[test]
fn worker_threads_from_the_environment_is_checked_like_the_file() {
    // An integer variable is an integer; anything else is reported against the variable.
    let err = load_env(MINIMAL, &[("CAUSEWAY_WORKER_THREADS", "two")]).unwrap_err();
    let p = problem_for(err.problems(), "proxy.worker_threads");
    assert!(p.to_string().contains("CAUSEWAY_WORKER_THREADS"), "{p}");
    let err = load_env(MINIMAL, &[("CAUSEWAY_WORKER_THREADS", "5000")]).unwrap_err();
    let p = problem_for(err.problems(), "proxy.worker_threads");
    assert!(p.to_string().contains("at most 1024"), "{p}");
    // A password that happens to be all digits stays a string.
    let loaded = load_env(
        MINIMAL,
        &[
            ("CAUSEWAY_WORKER_THREADS", "2"),
            ("CAUSEWAY_MONITOR_PASSWORD", "12345"),
        ],
    )
    .unwrap();
    assert_eq!(loaded.config.proxy.worker_threads, 2);
    assert_eq!(
        loaded.config.monitor.password.as_ref().map(Secret::expose),
        Some("12345")
    );
}
