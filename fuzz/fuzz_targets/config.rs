//! Fuzz target: the configuration loader (`Config::from_toml`) on arbitrary text and
//! environment overrides.
//!
//! Input layout: the TOML text, then optionally a NUL byte followed by `NAME=value` lines that
//! the environment lookup answers (so the `CAUSEWAY_*` overrides are fuzzed too). Without that
//! part, the environment sets only `CAUSEWAY_MONITOR_PASSWORD`, to a marker string. Checked: no
//! panic, whatever the text; a rejected configuration has at least one problem, in line order,
//! and every problem renders; an accepted one answers lookups of its own users and databases;
//! and the monitor password from the environment never appears in a problem (secrets never
//! print), unless the text or another variable contains the marker too (other keys may quote
//! their values).
#![no_main]

use causeway::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

/// The monitor password the environment gives when the input has no environment part.
const SECRET: &str = "pw-Zq8#xV";

/// Splits the input into the TOML text and the environment lines.
fn split(data: &str) -> (&str, Vec<(&str, &str)>) {
    match data.split_once('\0') {
        Some((toml, env)) => {
            let vars = env
                .lines()
                .filter_map(|line| line.split_once('='))
                .collect();
            (toml, vars)
        }
        None => (data, vec![("CAUSEWAY_MONITOR_PASSWORD", SECRET)]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, vars) = split(data);
    let env = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    };
    match Config::from_toml(toml, "fuzz.toml", &env) {
        Ok(loaded) => {
            let config = &loaded.config;
            for user in &config.users {
                assert!(config.user(&user.name).is_some());
            }
            for database in &config.databases {
                assert!(config.database(&database.name).is_some());
            }
            let _ = format!("{config:?}");
            for notice in &loaded.notices {
                let _ = notice.to_string();
            }
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let problems = e.problems();
            assert!(!problems.is_empty(), "rejected without a reason");
            let lines: Vec<_> = problems
                .iter()
                .map(|p| (p.line.is_none(), p.line))
                .collect();
            assert!(
                lines.windows(2).all(|w| w[0] <= w[1]),
                "problems out of order"
            );
            let rendered = e.to_string();
            let quotable =
                |(k, v): &(&str, &str)| *k != "CAUSEWAY_MONITOR_PASSWORD" && v.contains(SECRET);
            if !toml.contains(SECRET) && !vars.iter().any(quotable) {
                assert!(
                    !rendered.contains(SECRET),
                    "a secret was printed: {rendered}"
                );
            }
        }
        Err(ConfigError::Read { .. }) => panic!("from_toml reads no file"),
    }
});
