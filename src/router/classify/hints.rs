//! Routing hints in the comments before a statement's first token: `/* causeway:primary */`,
//! `/* causeway:standby */`, `/* causeway:max_lag=200ms */`. They steer one request where
//! `SET causeway.*` steers the session. A hint does not change the lexical class: the router
//! decides what a `causeway:standby` hint on a write means, so the hint is reported beside
//! the class, never folded into it.

use std::time::Duration;

use super::command::parse_duration;
use crate::config::Route;
use crate::router::lexer::{is_space, leading_comments};

/// Reads `causeway:primary`, `causeway:standby` and `causeway:max_lag=<duration>` items
/// (case-insensitive, separated by spaces or commas) from the comments before the first
/// token. Unknown items are ignored: a comment is not a place to fail a query. `#[inline]`:
/// it runs for every request, from [`analyze`](super::analyze), which may be in another
/// codegen unit.
#[inline]
pub(super) fn parse_hints(sql: &[u8], hint: &mut Option<Route>, max_lag: &mut Option<Duration>) {
    const PREFIX: &[u8] = b"causeway:";
    for comment in leading_comments(sql) {
        for item in comment.split(|&b| b == b',' || is_space(b)) {
            if item.len() <= PREFIX.len() || !item[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
                continue;
            }
            let value = &item[PREFIX.len()..];
            if value.eq_ignore_ascii_case(b"primary") {
                *hint = Some(Route::Primary);
            } else if value.eq_ignore_ascii_case(b"standby") {
                if *hint != Some(Route::Primary) {
                    *hint = Some(Route::Standby);
                }
            } else if value.len() > 8 && value[..8].eq_ignore_ascii_case(b"max_lag=") {
                if let Some(d) = parse_duration(&value[8..]) {
                    *max_lag = Some(d);
                }
            }
        }
    }
}
