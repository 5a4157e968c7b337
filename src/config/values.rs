//! Parsers for the value formats `proxy.toml` uses: durations, `host:port`, password shapes.
//! Each returns a message fit for a [`super::Problem`] on failure.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine as _;

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"` or `"0"`: a whole number and a unit, nothing else.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str =
        "write a whole number and a unit: \"250ms\", \"10s\", \"5m\", \"1h\", or \"0\"";
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(format!("'{text}' is not a duration; {HINT}"));
    }
    let Ok(n) = number.parse::<u64>() else {
        return Err(format!("'{text}' is too long a duration"));
    };
    let seconds_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "" => return Err(format!("'{text}' has no unit; {HINT}")),
        _ => return Err(format!("'{text}' is not a duration; {HINT}")),
    };
    n.checked_mul(seconds_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long a duration"))
}

/// Parses a node address: `host:port`, where host is a DNS name, an IPv4 address, or an IPv6
/// address in brackets (returned without them). The port is required.
pub(crate) fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    const HINT: &str = "write host:port, e.g. \"10.0.0.1:5432\", \"db-1:5432\" or \"[::1]:5432\"";
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("'{text}' has an unclosed '['; {HINT}"));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "'{host}' in brackets is not an IPv6 address; {HINT}"
            ));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("'{text}' has no port; {HINT}"));
        };
        (host, port)
    } else {
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("'{text}' has no port; {HINT}"));
        };
        if host.contains(':') {
            return Err(format!("'{text}': an IPv6 address needs brackets; {HINT}"));
        }
        if host.is_empty() {
            return Err(format!("'{text}' has no host; {HINT}"));
        }
        if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
            return Err(format!(
                "'{host}' is neither an IP address nor a host name; {HINT}"
            ));
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{port}' is not a port (1-65535); {HINT}")),
        Ok(port) => Ok((host.to_owned(), port)),
    }
}

/// Letters, digits, `-` and `_` (container service names use it) in dot-separated labels.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What a password string is, by PostgreSQL's own rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PasswordKind {
    /// Plain text.
    Plain,
    /// Starts with `SCRAM-SHA-256$`.
    ScramVerifier,
    /// `md5` followed by 32 lowercase hex digits.
    Md5Hash,
}

/// Classifies a password the way PostgreSQL does (`get_password_type`).
pub(crate) fn password_kind(password: &str) -> PasswordKind {
    if password.starts_with(SCRAM_PREFIX) {
        PasswordKind::ScramVerifier
    } else if password.len() == 35
        && password.starts_with("md5")
        && password[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        PasswordKind::Md5Hash
    } else {
        PasswordKind::Plain
    }
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// Checks the shape `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64, keys
/// of 32 bytes). The message never quotes the verifier.
pub(crate) fn check_scram_verifier(verifier: &str) -> Result<(), String> {
    let shape = || {
        "is not a valid SCRAM-SHA-256 verifier: expected \
         SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64), as found in \
         pg_authid.rolpassword"
            .to_owned()
    };
    let rest = verifier.strip_prefix(SCRAM_PREFIX).ok_or_else(shape)?;
    let (iterations_salt, keys) = rest.split_once('$').ok_or_else(shape)?;
    let (iterations, salt) = iterations_salt.split_once(':').ok_or_else(shape)?;
    let (stored_key, server_key) = keys.split_once(':').ok_or_else(shape)?;
    match iterations.parse::<u32>() {
        Ok(n) if n > 0 => {}
        _ => return Err(shape()),
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt_ok = b64.decode(salt).is_ok_and(|s| !s.is_empty());
    let keys_ok = [stored_key, server_key]
        .iter()
        .all(|k| b64.decode(k).is_ok_and(|k| k.len() == 32));
    if salt_ok && keys_ok {
        Ok(())
    } else {
        Err(shape())
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}
