//! Literal-free keys for [`super::ClassifierCache`]: `SELECT … WHERE aid = 42` and `… = 7` are
//! one statement with a different integer, and the classifier says the same of both. pgbench
//! `-M simple` and most ORMs without server-side prepares send a new literal with every query,
//! so a cache keyed by the exact text misses every time.
//!
//! [`Template::of`] replaces each integer literal by one `0xFF` byte (never part of a text it
//! accepts, so a key is never ambiguous). It accepts only texts whose tokens it can delimit
//! exactly as the lexer does without the lexer: ASCII words, numbers (through the lexer's own
//! [`number_end`]), whitespace and punctuation. Anything where a literal could decide the route
//! or hide a token boundary makes it give up, and the text is cached by its exact bytes as
//! before: quotes of any kind (strings, `E''` escape strings, `nextval('…')`, `set_config`,
//! quoted identifiers), `$` outside a word (parameters, dollar quotes), backslashes, comments
//! (and so hints), non-ASCII and control bytes. Only whole integer tokens (`42`, not `4.2`,
//! `1e5` or `0x2A`) are replaced.
//!
//! An analysis is stored under its key only if [`is_literal_free`]: every statement a query or
//! plain DML, no hint, no change of `default_transaction_read_only`. Those kinds never read a
//! number's value (the lexer's rule: numbers decide nothing), so texts that differ only in
//! integers get the same analysis but for the spans, which [`Template`] maps between the key and
//! each text. `SET x = 1`, `EXPLAIN (ANALYZE 0)`, `FETCH 5` and `causeway.*` statements stay
//! keyed by their exact text.

use smallvec::SmallVec;

#[cfg(test)]
mod tests;

use super::{Analysis, StatementKind};
use crate::router::lexer::{is_op_char, number_end};

/// The byte that stands for one integer literal in a key.
const LITERAL: u8 = 0xFF;

/// Where a text's integer literals are, which makes its literal-free key.
#[derive(Debug)]
pub(super) struct Template {
    /// The literals in the text, in order: start offset and length.
    literals: SmallVec<[(u32, u32); 8]>,
}

/// A literal-free key, built on the caller's stack (moving it would copy its inline part).
pub(super) type Key = SmallVec<[u8; 256]>;

impl Template {
    /// The key of `sql`, or `None` when the text has no integer literal or holds anything the
    /// key cannot treat safely (see the module's documentation).
    pub(super) fn of(sql: &[u8]) -> Option<Template> {
        let mut literals = SmallVec::<[(u32, u32); 8]>::new();
        let n = sql.len();
        let mut i = 0;
        while i < n {
            let next = sql.get(i + 1).copied();
            match CLASS[usize::from(sql[i])] {
                PLAIN => i += 1,
                WORD => {
                    i += 1;
                    while i < n && CLASS[usize::from(sql[i])] & WORD_CONT != 0 {
                        i += 1;
                    }
                }
                DOT if !next.is_some_and(|c| c.is_ascii_digit()) => i += 1,
                DIGIT | DOT => {
                    let start = i;
                    while i < n && sql[i].is_ascii_digit() {
                        i += 1;
                    }
                    // Digits followed by nothing that continues a number: a whole integer
                    // token. Anything else (`4.2`, `1e5`, `0x2A`, `.5`): the lexer's rule.
                    let whole = i > start
                        && !sql
                            .get(i)
                            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.');
                    let end = if whole { i } else { number_end(sql, start) };
                    if end == i && i > start {
                        literals.push((u32::try_from(start).ok()?, (i - start) as u32));
                    }
                    i = end;
                }
                DASH if next == Some(b'-') => return None, // a comment
                SLASH if next == Some(b'*') => return None,
                DASH | SLASH => i += 1,
                _ => return None, // quotes, `$`, `\`, non-ASCII, control bytes
            }
        }
        (!literals.is_empty()).then_some(Template { literals })
    }

    /// Writes the key of `sql` (this template's text) into `key`: the text with each integer
    /// literal replaced by one [`LITERAL`] byte.
    pub(super) fn key_into(&self, sql: &[u8], key: &mut Key) {
        key.clear();
        let mut at = 0;
        for &(start, len) in &self.literals {
            key.extend_from_slice(&sql[at..start as usize]);
            key.push(LITERAL);
            at = (start + len) as usize;
        }
        key.extend_from_slice(&sql[at..]);
    }

    /// The offset in the key of offset `at` of the text, or `None` if `at` is inside a literal.
    fn to_key(&self, at: usize) -> Option<usize> {
        let mut shift = 0;
        for &(start, len) in &self.literals {
            let (start, len) = (start as usize, len as usize);
            if start + len <= at {
                shift += len - 1;
            } else if start < at {
                return None;
            } else {
                break;
            }
        }
        Some(at - shift)
    }

    /// The offset in the text of offset `at` of the key.
    fn to_text(&self, at: usize) -> usize {
        let mut shift = 0;
        for &(start, len) in &self.literals {
            let (start, len) = (start as usize, len as usize);
            if start - shift >= at {
                break;
            }
            shift += len - 1;
        }
        at + shift
    }

    /// `analysis` (of this template's text) with its spans moved into `key` (this template's
    /// key), and the key as its text: what the cache stores. `None` if a span starts or ends inside a literal.
    pub(super) fn keyed<S: AsRef<[u8]>>(
        &self,
        analysis: &Analysis<S>,
        key: &[u8],
    ) -> Option<Analysis<Box<[u8]>>> {
        remap(analysis, Box::from(key), |at| self.to_key(at))
    }

    /// A stored analysis of this template's key with its spans moved into `sql`, this
    /// template's text, and `sql` as its text.
    pub(super) fn applied(
        &self,
        keyed: &Analysis<Box<[u8]>>,
        sql: &[u8],
    ) -> Option<Analysis<Box<[u8]>>> {
        remap(keyed, Box::from(sql), |at| Some(self.to_text(at)))
    }
}

/// Byte classes of [`Template::of`]: kept as is; starts a word; a digit; `.`; `-`; `/` (the
/// last three are kept unless they start a number or a comment); anything else ends the scan.
/// [`WORD_CONT`] is a flag: the byte may continue a word (letters, digits, `_`, `$`).
const BAIL: u8 = 0;
const PLAIN: u8 = 1;
const WORD: u8 = 2 | WORD_CONT;
const DIGIT: u8 = 3 | WORD_CONT;
const DOT: u8 = 4;
const DASH: u8 = 5;
const SLASH: u8 = 6;
const WORD_CONT: u8 = 8;

/// The class of every byte. Kept as is: whitespace and the punctuation and operator bytes but
/// for `'`, `"`, `$` (a word's `$` is part of the word), `\`.
const CLASS: [u8; 256] = {
    let mut t = [BAIL; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() || b == b'_' {
            WORD
        } else if b.is_ascii_digit() {
            DIGIT
        } else if b == b'$' {
            BAIL | WORD_CONT
        } else if b == b'.' {
            DOT
        } else if b == b'-' {
            DASH
        } else if b == b'/' {
            SLASH
        } else if is_op_char(b)
            || matches!(
                b,
                b' ' | b'\t'
                    | b'\n'
                    | b'\r'
                    | 0x0b
                    | 0x0c
                    | b'('
                    | b')'
                    | b'['
                    | b']'
                    | b','
                    | b';'
                    | b':'
            )
        {
            PLAIN
        } else {
            BAIL
        };
        i += 1;
    }
    t
};

/// Whether an analysis may be shared by every text with the same key: its statements are all
/// queries or plain DML, whose analysis never reads a number, and it holds no hint and no
/// change of `default_transaction_read_only`.
pub(super) fn is_literal_free<S>(analysis: &Analysis<S>) -> bool {
    !analysis.statements.is_empty()
        && analysis.statements.iter().all(|s| {
            matches!(
                s.kind,
                StatementKind::Query
                    | StatementKind::Insert
                    | StatementKind::Update
                    | StatementKind::Delete
            )
        })
        && analysis.hint.is_none()
        && analysis.max_lag.is_none()
        && analysis.default_read_only.is_none()
}

/// A copy of `analysis` over `sql`, each span's ends moved by `map`. The statement kinds
/// [`is_literal_free`] accepts hold no spans, so statements' and calls' spans are all there is.
fn remap<S: AsRef<[u8]>, T>(
    analysis: &Analysis<S>,
    sql: T,
    map: impl Fn(usize) -> Option<usize>,
) -> Option<Analysis<T>> {
    let span = |s: super::Span| -> Option<super::Span> {
        let r = s.range();
        Some(super::Span::new(map(r.start)?, map(r.end)?))
    };
    // `from_slice`: one copy of the inline part (`clone` pushes element by element).
    let mut statements: super::Statements = SmallVec::from_slice(&analysis.statements);
    for s in &mut statements {
        s.span = span(s.span)?;
    }
    let mut functions: super::FunctionRefs = SmallVec::from_slice(&analysis.functions);
    for f in &mut functions {
        f.name = span(f.name)?;
        f.schema = match f.schema {
            Some(s) => Some(span(s)?),
            None => None,
        };
    }
    Some(Analysis {
        sql,
        route: analysis.route,
        statements,
        functions,
        pin: analysis.pin,
        hint: analysis.hint,
        max_lag: analysis.max_lag,
        default_read_only: analysis.default_read_only,
    })
}
