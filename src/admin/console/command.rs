//! Console command parsing: one statement's words (case-insensitive, as PgBouncer reads
//! them) into a [`Command`], or the error the client gets for it.

use crate::protocol::messages::ProxyError;
use crate::protocol::SqlState;

/// A `SHOW` view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Each node: role, health, fencing, timeline, lag.
    Nodes,
    /// Per database: PgBouncer's `SHOW DATABASES` columns.
    Databases,
    /// Per database and user: clients and server connections.
    Pools,
    /// Each server connection, in use or idle.
    Servers,
    /// Counts of clients, servers, pools, users, databases (two columns: list, items).
    Lists,
    /// Each client connection.
    Clients,
    /// Per route: counts and latency percentiles.
    Stats,
    /// Per route: the totals only (PgBouncer's `SHOW STATS_TOTALS`).
    StatsTotals,
    /// Every configuration key in force, secrets hidden.
    Config,
    /// The proxy's version.
    Version,
    /// The commands.
    Help,
}

/// A console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW <view>`.
    Show(Show),
    /// `KILL <client pid>`: end one client's session (57P01).
    Kill(i32),
    /// `RELOAD`: re-read the configuration file, as SIGHUP does.
    Reload,
    /// `SHUTDOWN`: stop as SIGTERM does (running transactions finish).
    Shutdown,
    /// `PAUSE [db]`: hold new transactions, wait for running ones to end.
    Pause(Option<String>),
    /// `RESUME [db]`: let held transactions go.
    Resume(Option<String>),
}

/// Parses one statement (no `;`).
pub fn parse(statement: &str) -> Result<Command, ProxyError> {
    let words: Vec<String> = statement
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let show = |v| Ok(Command::Show(v));
    match words.as_slice() {
        ["SHOW", "NODES"] => show(Show::Nodes),
        ["SHOW", "DATABASES"] => show(Show::Databases),
        ["SHOW", "POOLS"] => show(Show::Pools),
        ["SHOW", "SERVERS"] => show(Show::Servers),
        ["SHOW", "LISTS"] => show(Show::Lists),
        ["SHOW", "CLIENTS"] => show(Show::Clients),
        ["SHOW", "STATS"] => show(Show::Stats),
        ["SHOW", "STATS_TOTALS"] => show(Show::StatsTotals),
        ["SHOW", "CONFIG"] => show(Show::Config),
        ["SHOW", "VERSION"] => show(Show::Version),
        ["SHOW", "HELP"] | ["HELP"] => show(Show::Help),
        ["SHOW", other] => Err(ProxyError::error(
            SqlState::UNDEFINED_OBJECT,
            format!("unknown SHOW view {other:?}: see SHOW HELP"),
        )),
        ["KILL", pid] => pid.parse().map(Command::Kill).map_err(|_| {
            ProxyError::error(
                SqlState::INVALID_PARAMETER_VALUE,
                format!("KILL takes a client's pid (SHOW CLIENTS), not {pid:?}"),
            )
        }),
        ["RELOAD"] => Ok(Command::Reload),
        ["PAUSE"] => Ok(Command::Pause(None)),
        ["RESUME"] => Ok(Command::Resume(None)),
        // Database names keep their case (the words were upper-cased for matching).
        ["PAUSE", _] => Ok(Command::Pause(
            statement.split_whitespace().nth(1).map(unquote),
        )),
        ["RESUME", _] => Ok(Command::Resume(
            statement.split_whitespace().nth(1).map(unquote),
        )),
        ["SHUTDOWN"] => Ok(Command::Shutdown),
        _ => Err(ProxyError::error(
            SqlState::SYNTAX_ERROR,
            format!("unknown admin console command {statement:?}: see SHOW HELP"),
        )),
    }
}

/// A database name as written, without double quotes.
fn unquote(name: &str) -> String {
    name.trim_matches('"').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_insensitive_and_checked() {
        assert_eq!(parse("show pools"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("SHOW  Stats"), Ok(Command::Show(Show::Stats)));
        assert_eq!(parse("kill 42"), Ok(Command::Kill(42)));
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert_eq!(parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(parse("PAUSE MyDb"), Ok(Command::Pause(Some("MyDb".into()))));
        assert_eq!(
            parse("resume \"MyDb\""),
            Ok(Command::Resume(Some("MyDb".into())))
        );
        assert_eq!(parse("SHOW nothing").unwrap_err().code, "42704");
        assert_eq!(parse("KILL x").unwrap_err().code, "22023");
        assert_eq!(parse("SELECT 1").unwrap_err().code, "42601");
    }
}
