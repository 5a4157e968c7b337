//! Identifiers as PostgreSQL reads them: matching a token against a lower-case name without
//! copying (the analyzer's hot path), and normalising names for the router and the session
//! (unquoted parts lower-cased, quoted parts as written, 63 bytes at most), borrowed from the
//! analysed text whenever it already is in that form.

use std::borrow::Cow;

use crate::router::lexer::{is_space, Lexer, Token, TokenKind};

/// Whether a word or quoted identifier names `lower` (a lower-case name): an unquoted word
/// in any case, or a quoted identifier spelled exactly so.
pub(super) fn ident_is(token: &Token<'_>, lower: &str) -> bool {
    match token.kind {
        TokenKind::Word => token.text.eq_ignore_ascii_case(lower.as_bytes()),
        TokenKind::QuotedIdent => {
            token.text.len() == lower.len() + 2
                && token.text[0] == b'"'
                && &token.text[1..token.text.len() - 1] == lower.as_bytes()
        }
        _ => false,
    }
}

/// The normalised bytes of a simple identifier (a word, lower-cased; or a `"…"` identifier
/// without `""` inside) in `buf`; `None` for anything else or anything longer than `buf`.
pub(super) fn simple_ident<'b>(token: &Token<'_>, buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    let text = token.text;
    match token.kind {
        TokenKind::Word if text.len() <= buf.len() => {
            let out = &mut buf[..text.len()];
            for (d, s) in out.iter_mut().zip(text) {
                *d = s.to_ascii_lowercase();
            }
            Some(out)
        }
        TokenKind::QuotedIdent if text.first() == Some(&b'"') && text.len() - 2 <= buf.len() => {
            let inner = &text[1..text.len() - 1];
            if inner.contains(&b'"') {
                return None;
            }
            let out = &mut buf[..inner.len()];
            out.copy_from_slice(inner);
            Some(out)
        }
        _ => None,
    }
}

/// Whether a sorted list (the lists in `builtins`) holds `name`, by binary search.
pub(super) fn sorted_contains(list: &[&str], name: &[u8]) -> bool {
    list.binary_search_by(|k| k.as_bytes().cmp(name)).is_ok()
}

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT_BYTES: usize = 63;

/// Normalises one identifier as PostgreSQL does: unquoted → ASCII lower case; `"…"` → the
/// inside with `""` as `"`; `U&"…"` → the inside as written (escapes are not decoded, so
/// such a name will not be found by the router: unknown, hence primary). Truncated to 63
/// bytes at a character boundary.
pub fn normalize_ident(raw: &[u8]) -> Cow<'_, str> {
    let (inner, quoted) = if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
        (&raw[1..raw.len() - 1], true)
    } else if raw.len() >= 4 && raw[..2].eq_ignore_ascii_case(b"u&") && raw[2] == b'"' {
        (&raw[3..raw.len() - 1], true)
    } else {
        (raw, false)
    };
    let text = String::from_utf8_lossy(inner);
    let text = if quoted {
        if text.contains("\"\"") {
            Cow::Owned(text.replace("\"\"", "\""))
        } else {
            text
        }
    } else if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        text
    };
    truncate_ident(text)
}

/// Cuts a name to [`MAX_IDENT_BYTES`] at a character boundary, as PostgreSQL does.
fn truncate_ident(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.len() <= MAX_IDENT_BYTES {
        return text;
    }
    let mut cut = MAX_IDENT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..cut]),
        Cow::Owned(mut s) => {
            s.truncate(cut);
            Cow::Owned(s)
        }
    }
}

/// Normalises a dotted name (`a.b`, `"A".b`, `a . b`): each part as [`normalize_ident`],
/// joined with `.`. Borrowed when the text already is in that form.
pub fn normalize_name(raw: &[u8]) -> Cow<'_, str> {
    let simple = raw.iter().all(|&b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.' || b == b'$'
    });
    if simple && !raw.contains(&b'.') {
        return truncate_ident(String::from_utf8_lossy(raw));
    }
    let mut out = String::new();
    for token in Lexer::new(raw) {
        match token.kind {
            TokenKind::Dot => out.push('.'),
            TokenKind::Word | TokenKind::QuotedIdent => out.push_str(&normalize_ident(token.text)),
            _ => out.push_str(&String::from_utf8_lossy(token.text)),
        }
    }
    if out.as_bytes() == raw {
        Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default())
    } else {
        Cow::Owned(out)
    }
}

/// The text without PostgreSQL's whitespace at either end (which, unlike
/// `<[u8]>::trim_ascii`, includes the vertical tab).
pub(super) fn trim_ascii(text: &[u8]) -> &[u8] {
    let start = text.iter().position(|b| !is_space(*b));
    let Some(start) = start else { return &[] };
    let end = text.iter().rposition(|b| !is_space(*b)).unwrap_or(start);
    &text[start..=end]
}
