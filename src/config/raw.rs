//! The parsed document as a plain tree that remembers where each key was written (or which
//! environment variable supplied it), before any schema is applied.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum At {
    /// Byte range in the file (of the key, or of the array element).
    File(Range<usize>),
    /// An environment variable.
    Env(&'static str),
    /// Not known: a default, or a document parsed without position information.
    Nowhere,
}

/// One `key = value` of a table. (No `Debug`: values may be passwords.)
pub(crate) struct Entry {
    /// The key (one segment; dotted keys become nested tables).
    pub(crate) key: String,
    /// Where the key was written.
    pub(crate) at: At,
    /// The value.
    pub(crate) value: Raw,
}

/// A TOML value. (No `Debug`: it may be a password.)
pub(crate) enum Raw {
    /// A table, in document order.
    Table(Vec<Entry>),
    /// An array, with where each element was written.
    Array(Vec<(At, Raw)>),
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A float (never valid for causeway, so its value is not kept).
    Float,
    /// A boolean.
    Boolean(bool),
    /// A date and/or time (never valid for causeway).
    Datetime,
}

impl Raw {
    /// "a string", "an integer", ... for type errors. Never includes the value.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Raw::Table(_) => "a table",
            Raw::Array(_) => "an array",
            Raw::String(_) => "a string",
            Raw::Integer(_) => "an integer",
            Raw::Float => "a float",
            Raw::Boolean(_) => "a boolean",
            Raw::Datetime => "a date-time",
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Integer(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Raw, E> {
        i64::try_from(v)
            .map(Raw::Integer)
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Raw, E> {
        Ok(Raw::Float)
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(string_or_datetime(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(string_or_datetime(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            let at = At::File(item.span());
            items.push((at, item.into_inner()));
        }
        Ok(Raw::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let at = At::File(key.span());
            let value = map.next_value::<Raw>()?;
            entries.push(Entry {
                key: key.into_inner(),
                at,
                value,
            });
        }
        Ok(Raw::Table(entries))
    }
}

/// A string, unless it is the mask [`parse`] put in place of a date-time.
fn string_or_datetime(s: String) -> Raw {
    if s == "\0" {
        Raw::Datetime
    } else {
        Raw::String(s)
    }
}

/// Converts a value parsed without positions (see [`parse`]).
fn from_value(value: toml::Value) -> Raw {
    match value {
        toml::Value::String(s) => Raw::String(s),
        toml::Value::Integer(i) => Raw::Integer(i),
        toml::Value::Float(_) => Raw::Float,
        toml::Value::Boolean(b) => Raw::Boolean(b),
        toml::Value::Datetime(_) => Raw::Datetime,
        toml::Value::Array(items) => Raw::Array(
            items
                .into_iter()
                .map(|v| (At::Nowhere, from_value(v)))
                .collect(),
        ),
        toml::Value::Table(table) => Raw::Table(from_table(table)),
    }
}

fn from_table(table: toml::Table) -> Vec<Entry> {
    table
        .into_iter()
        .map(|(key, value)| Entry {
            key,
            at: At::Nowhere,
            value: from_value(value),
        })
        .collect()
}

/// Parses a document into its top-level entries. On a syntax error, returns where (a byte
/// range) and what.
///
/// Positions come from `toml::Spanned` keys and array elements. toml cannot hand a date-time
/// to a span-aware visitor, so each date-time (never valid for causeway, but `00:00:10` is an
/// easy mistake for a duration) is masked with [`DATETIME_MASK`], padded to the same length so
/// every position stays put, and the text parsed again. If that ever fails, the document is
/// parsed without positions and its problems have no line numbers.
pub(crate) fn parse(text: &str) -> Result<Vec<Entry>, (Option<Range<usize>>, String)> {
    if let Err(e) = text.parse::<toml::Table>() {
        // toml's messages can span lines ("invalid table header\nexpected ..."); keep one
        // problem on one line. They describe syntax, never echo values.
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        return Err((e.span(), format!("syntax error: {message}")));
    }
    let mut masked = text.to_owned();
    loop {
        let span = match toml::from_str::<Raw>(&masked) {
            Ok(Raw::Table(entries)) => return Ok(entries),
            Ok(_) => return Err((None, "the document is not a table".to_owned())),
            Err(e) => e.span(),
        };
        // The document is valid TOML, so the failure is a date-time at `span`.
        match span.filter(|s| is_datetime(&masked[s.clone()])) {
            Some(span) => {
                let padding = " ".repeat(span.len() - DATETIME_MASK.len());
                masked.replace_range(span, &format!("{DATETIME_MASK}{padding}"));
            }
            None => {
                let table = text.parse::<toml::Table>().unwrap_or_default();
                return Ok(from_table(table));
            }
        }
    }
}

/// Stands in for a date-time: a TOML string holding a lone NUL, 8 bytes long like the
/// shortest date-time (`07:32:00`).
const DATETIME_MASK: &str = r#""\u0000""#;

/// Whether `text` is a TOML date-time at least as long as [`DATETIME_MASK`].
fn is_datetime(text: &str) -> bool {
    text.len() >= DATETIME_MASK.len()
        && text.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || b"-:.+ TtZz".contains(&b))
}

/// Applies the `CAUSEWAY_*` overrides in [`super::ENV_OVERRIDES`] to the document. An unset or
/// empty variable changes nothing.
pub(crate) fn overlay_env(doc: &mut Vec<Entry>, env: &dyn Fn(&str) -> Option<String>) {
    for over in super::ENV_OVERRIDES {
        let Some(value) = env(over.var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let at = At::Env(over.var);
        if over.key == "nodes" {
            let nodes = value
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|address| {
                    let table = vec![Entry {
                        key: "address".to_owned(),
                        at: at.clone(),
                        value: Raw::String(address.to_owned()),
                    }];
                    (at.clone(), Raw::Table(table))
                })
                .collect();
            set(doc, "nodes", at.clone(), Raw::Array(nodes));
            continue;
        }
        let Some((section, key)) = over.key.split_once('.') else {
            continue;
        };
        if !doc.iter().any(|e| e.key == section) {
            doc.push(Entry {
                key: section.to_owned(),
                at: at.clone(),
                value: Raw::Table(Vec::new()),
            });
        }
        // A section that is not a table is a type error the walk reports; the override then
        // has nowhere to go.
        if let Some(Entry {
            value: Raw::Table(table),
            ..
        }) = doc.iter_mut().find(|e| e.key == section)
        {
            let value = match value.trim().parse::<i64>() {
                Ok(n) if over.integer => Raw::Integer(n),
                _ => Raw::String(value),
            };
            set(table, key, at, value);
        }
    }
}

/// Sets `key` in `table`, replacing what the file had.
fn set(table: &mut Vec<Entry>, key: &str, at: At, value: Raw) {
    match table.iter_mut().find(|e| e.key == key) {
        Some(entry) => {
            entry.at = at;
            entry.value = value;
        }
        None => table.push(Entry {
            key: key.to_owned(),
            at,
            value,
        }),
    }
}

/// Turns byte offsets into 1-based line numbers.
pub(crate) struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    /// Indexes `text`.
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { starts }
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}
