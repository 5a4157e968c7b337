//! Statements about the proxy's own settings (`SET causeway.x = …`, `SHOW causeway.x`,
//! `RESET causeway.x`), which the session answers itself instead of sending them to a server,
//! and the parsers of setting values they share with the rest of the classifier (durations,
//! WAL positions, PostgreSQL booleans). A bad value becomes [`ProxyCommand::Invalid`] here,
//! so the session can answer with an error instead of a server seeing the statement.

use crate::protocol::Lsn;
use std::time::Duration;

use super::names::{ident_is, trim_ascii};
use super::Span;
use crate::config::{Consistency, Route};
use crate::router::lexer::Token;

/// A `causeway.*` setting the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxySetting {
    /// `causeway.route`: `primary`, `standby` or `auto`.
    Route,
    /// `causeway.max_lag`: the session's lag limit.
    MaxLag,
    /// `causeway.min_lsn`: the WAL position reads must see (read-your-writes token).
    MinLsn,
    /// `causeway.consistency`: `session` or `eventual`.
    Consistency,
}

impl ProxySetting {
    /// The setting's full name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxySetting::Route => "causeway.route",
            ProxySetting::MaxLag => "causeway.max_lag",
            ProxySetting::MinLsn => "causeway.min_lsn",
            ProxySetting::Consistency => "causeway.consistency",
        }
    }

    fn from_name(name: &Token<'_>) -> Option<ProxySetting> {
        [
            ProxySetting::Route,
            ProxySetting::MaxLag,
            ProxySetting::MinLsn,
            ProxySetting::Consistency,
        ]
        .into_iter()
        .find(|s| ident_is(name, &s.as_str()["causeway.".len()..]))
    }
}

/// Why a `causeway.*` statement cannot be carried out; the session answers with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyError {
    /// No such `causeway.*` setting.
    UnknownSetting,
    /// The value does not parse for that setting.
    InvalidValue(ProxySetting),
    /// `SET LOCAL causeway.*`: proxy settings are per session only.
    LocalScope(ProxySetting),
}

/// A statement about the proxy's own settings, never sent to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyCommand {
    /// `SET causeway.route = 'primary' | 'standby' | 'auto'`.
    SetRoute(Route),
    /// `SET causeway.max_lag = '200ms'` (`us`, `ms`, `s`, `min`; a bare number is ms).
    SetMaxLag(Duration),
    /// `SET causeway.min_lsn = '0/3000060'`, as the 64-bit WAL position.
    SetMinLsn(Lsn),
    /// `SET causeway.consistency = 'session' | 'eventual'`.
    SetConsistency(Consistency),
    /// `SHOW causeway.<setting>`.
    Show(ProxySetting),
    /// `RESET causeway.<setting>`, or `SET causeway.<setting> TO DEFAULT`.
    Reset(ProxySetting),
    /// A `causeway.*` statement that cannot be carried out.
    Invalid {
        /// The setting's name as written.
        name: Span,
        /// What is wrong.
        error: ProxyError,
    },
}

/// If a dotted name is `causeway.<x>`: `Ok(setting)` for a known setting, `Err` (an
/// [`ProxyCommand::Invalid`]) for an unknown one. `None` for other names.
pub(super) fn proxy_target(
    span: Span,
    parts: &[Option<Token<'_>>; 4],
    n: usize,
) -> Option<Result<ProxySetting, ProxyCommand>> {
    let first = parts[0]?;
    if !ident_is(&first, "causeway") {
        return None;
    }
    let unknown = ProxyCommand::Invalid {
        name: span,
        error: ProxyError::UnknownSetting,
    };
    if n != 2 {
        return Some(Err(unknown));
    }
    Some(
        parts[1]
            .and_then(|p| ProxySetting::from_name(&p))
            .ok_or(unknown),
    )
}

/// `SET causeway.<setting> = value`, with the value parsed.
pub(super) fn proxy_set(setting: ProxySetting, name: Span, raw: &[u8]) -> ProxyCommand {
    if raw.eq_ignore_ascii_case(b"default") {
        return ProxyCommand::Reset(setting);
    }
    let parsed = simple_value(raw).and_then(|v| match setting {
        ProxySetting::Route => [Route::Primary, Route::Standby, Route::Auto]
            .into_iter()
            .find(|r| v.eq_ignore_ascii_case(r.as_str().as_bytes()))
            .map(ProxyCommand::SetRoute),
        ProxySetting::Consistency => [Consistency::Session, Consistency::Eventual]
            .into_iter()
            .find(|c| v.eq_ignore_ascii_case(c.as_str().as_bytes()))
            .map(ProxyCommand::SetConsistency),
        ProxySetting::MaxLag => parse_duration(v).map(ProxyCommand::SetMaxLag),
        ProxySetting::MinLsn => parse_lsn(v).map(ProxyCommand::SetMinLsn),
    });
    parsed.unwrap_or(ProxyCommand::Invalid {
        name,
        error: ProxyError::InvalidValue(setting),
    })
}

/// A setting value as one simple piece of text: the inside of a plain `'…'` string without
/// embedded quotes, or text without quotes at all (`on`, `200ms`, `0/16B3748`).
pub(super) fn simple_value(raw: &[u8]) -> Option<&[u8]> {
    let raw = trim_ascii(raw);
    if raw.len() >= 2 && raw[0] == b'\'' && raw[raw.len() - 1] == b'\'' {
        let inner = &raw[1..raw.len() - 1];
        return (!inner.contains(&b'\'')).then_some(inner);
    }
    (!raw.contains(&b'\'') && !raw.contains(&b'"')).then_some(raw)
}

/// Parses a duration: a number (decimals allowed), optional spaces, and a unit among `us`,
/// `ms`, `s`, `min` (case-insensitive); a bare number is milliseconds, like PostgreSQL's own
/// millisecond settings.
pub fn parse_duration(text: &[u8]) -> Option<Duration> {
    let text = trim_ascii(text);
    let digits = text
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = std::str::from_utf8(number).ok()?.parse().ok()?;
    let unit = trim_ascii(unit);
    let nanos_per = if unit.is_empty() || unit.eq_ignore_ascii_case(b"ms") {
        1e6
    } else if unit.eq_ignore_ascii_case(b"us") {
        1e3
    } else if unit.eq_ignore_ascii_case(b"s") {
        1e9
    } else if unit.eq_ignore_ascii_case(b"min") {
        60e9
    } else {
        return None;
    };
    let nanos = number * nanos_per;
    // Ten years is far beyond any sensible lag limit and keeps the conversion exact enough.
    (nanos.is_finite() && (0.0..=3.2e17).contains(&nanos))
        .then(|| Duration::from_nanos(nanos as u64))
}

/// Parses a WAL position as PostgreSQL prints it: `HI/LO`, both hexadecimal, up to 8 digits.
pub fn parse_lsn(text: &[u8]) -> Option<Lsn> {
    Lsn::parse(trim_ascii(text)).ok()
}

/// Parses a boolean setting value as PostgreSQL's `parse_bool` does: `true`/`false`,
/// `yes`/`no`, `on`/`off`, `1`/`0`, and unambiguous prefixes, in any case.
pub(super) fn parse_bool(text: &[u8]) -> Option<bool> {
    let mut buf = [0u8; 8];
    if text.len() > buf.len() {
        return None;
    }
    let t = &mut buf[..text.len()];
    t.copy_from_slice(text);
    t.make_ascii_lowercase();
    let t: &[u8] = t;
    let prefix_of = |word: &[u8], min: usize| t.len() >= min && word.starts_with(t);
    if prefix_of(b"true", 1) || prefix_of(b"yes", 1) || t == b"1" || prefix_of(b"on", 2) {
        Some(true)
    } else if prefix_of(b"false", 1) || prefix_of(b"no", 1) || t == b"0" || prefix_of(b"off", 2) {
        Some(false)
    } else {
        None
    }
}
