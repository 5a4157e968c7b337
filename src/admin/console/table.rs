//! A console result set: named columns (text or `int8`) and rows of text values, encoded as
//! RowDescription, DataRows and CommandComplete. Counters are `int8` so that psql aligns them
//! as numbers and drivers hand them back as integers, as PgBouncer's do.

use bytes::BytesMut;

use crate::protocol::messages::{self, INT8_OID};

/// Type OID of `text`.
const TEXT_OID: u32 = 25;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `text`.
    Text,
    /// `int8`: every value is a decimal integer.
    Int,
}

/// A result set being built.
#[derive(Debug)]
pub struct Table {
    /// Column names and types, in order.
    columns: Vec<(&'static str, Kind)>,
    /// Rows, each as long as `columns`; `None` is NULL.
    rows: Vec<Vec<Option<String>>>,
}

/// A cell: anything printable, or NULL.
pub fn cell(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

impl Table {
    /// A table with these columns and no rows.
    pub fn new(columns: &[(&'static str, Kind)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    /// Number of rows.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Appends the result set with the CommandComplete tag `tag`.
    pub fn encode(&self, dst: &mut BytesMut, tag: &str) {
        let columns: Vec<(&str, u32)> = self
            .columns
            .iter()
            .map(|(name, kind)| {
                let oid = match kind {
                    Kind::Text => TEXT_OID,
                    Kind::Int => INT8_OID,
                };
                (*name, oid)
            })
            .collect();
        messages::row_description_typed(dst, &columns);
        for row in &self.rows {
            let values: Vec<Option<&[u8]>> = row
                .iter()
                .map(|v| v.as_deref().map(str::as_bytes))
                .collect();
            messages::data_row(dst, &values);
        }
        messages::command_complete(dst, tag);
    }
}

/// A wall-clock time as PgBouncer prints it: `YYYY-MM-DD HH:MM:SS UTC`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(timestamp(t), "2024-02-29 23:59:59 UTC");
    }

    #[test]
    fn encodes_description_rows_and_tag() {
        let mut t = Table::new(&[("list", Kind::Text), ("items", Kind::Int)]);
        t.push(vec![cell("pools"), cell(3)]);
        t.push(vec![cell("users"), None]);
        assert_eq!(t.len(), 2);
        let mut b = BytesMut::new();
        t.encode(&mut b, "SHOW");
        let tags: Vec<u8> =
            std::iter::from_fn(|| crate::protocol::decode_frame(&mut b, 1 << 16).unwrap())
                .map(|f| f.tag())
                .collect();
        assert_eq!(tags, b"TDDC");
    }
}
