//! A write-ahead-log position ([`Lsn`]), in PostgreSQL's `pg_lsn` text form (`16/B374D848`).
//!
//! The watcher, the router, read-your-writes, the admin endpoint and the test harness all handle
//! WAL positions. One type keeps them from being mixed up with other `u64`s (byte counts,
//! epochs), gives one strict parser and one printer, and makes positions compare numerically:
//! comparing the text would be wrong (`9/0` > `10/0` as strings).

use std::fmt;
use std::str::FromStr;

/// Longest half of the text form: each half is a 32-bit number in hexadecimal.
const MAX_HALF_DIGITS: usize = 8;

/// A position in the write-ahead log: the 64-bit byte offset behind `pg_lsn`.
///
/// Ordered like the log itself, so "has replayed at least `x`" is `lsn >= x`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

/// A text that is not a WAL position in PostgreSQL's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a WAL position (expected two hexadecimal halves such as 16/B374D848)")]
pub struct ParseLsnError;

impl Lsn {
    /// The start of the log; also what `SHOW causeway.min_lsn` reports when no position is set.
    pub const ZERO: Lsn = Lsn(0);

    /// The byte offset.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Bytes of WAL from `earlier` up to `self`; zero when `earlier` is not earlier (a standby
    /// that replayed past the primary's last sample is not behind it).
    pub const fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Parses the text form from bytes (a DataRow column, a SET value).
    ///
    /// As strict as PostgreSQL's `pg_lsn_in`: `HI/LO`, each half 1 to 8 hexadecimal digits,
    /// nothing else (no sign, no whitespace, no `0x`). Callers that accept padded input trim it
    /// first.
    pub fn parse(text: &[u8]) -> Result<Lsn, ParseLsnError> {
        let slash = text.iter().position(|&b| b == b'/').ok_or(ParseLsnError)?;
        let hi = parse_half(&text[..slash])?;
        let lo = parse_half(&text[slash + 1..])?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// One half of the text form. Digits are checked by hand because `u32::from_str_radix` would
/// also take a leading `+`.
fn parse_half(digits: &[u8]) -> Result<u32, ParseLsnError> {
    if digits.is_empty() || digits.len() > MAX_HALF_DIGITS {
        return Err(ParseLsnError);
    }
    digits.iter().try_fold(0u32, |acc, &b| {
        let digit = char::from(b).to_digit(16).ok_or(ParseLsnError)?;
        // Eight digits at most, so the shift never drops a set bit.
        Ok((acc << 4) | digit)
    })
}

impl From<u64> for Lsn {
    fn from(offset: u64) -> Lsn {
        Lsn(offset)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> u64 {
        lsn.0
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Lsn, ParseLsnError> {
        Lsn::parse(text.as_bytes())
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's form: both halves in upper-case hexadecimal without leading zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    /// The text form, so positions in logs and test failures read like PostgreSQL's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn::from(0x16_B374_D848));
        assert_eq!(lsn.as_u64(), 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn::from(0x300_0060).to_string(), "0/3000060");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(format!("{lsn:?}"), "Lsn(16/B374D848)");
        // Lower case and leading zeros are accepted, printed the canonical way.
        assert_eq!(
            Lsn::parse(b"00000016/b374d848").unwrap().to_string(),
            "16/B374D848"
        );
    }

    #[test]
    fn round_trips_at_the_edges() {
        for v in [
            0,
            1,
            0xFFFF_FFFF,
            0x1_0000_0000,
            0x16_B374_D848,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let lsn = Lsn::from(v);
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn), "{v:#x}");
            assert_eq!(u64::from(lsn), v);
        }
        assert_eq!(Lsn::parse(b"FFFFFFFF/FFFFFFFF"), Ok(Lsn::from(u64::MAX)));
    }

    #[test]
    fn orders_numerically_not_textually() {
        let a: Lsn = "9/0".parse().unwrap();
        let b: Lsn = "10/0".parse().unwrap();
        assert!(a < b);
        assert!(Lsn::parse(b"0/FFFFFFFF").unwrap() < Lsn::parse(b"1/0").unwrap());
    }

    #[test]
    fn byte_distance_saturates() {
        let a = Lsn::from(1000);
        let b = Lsn::from(1500);
        assert_eq!(b.bytes_since(a), 500);
        assert_eq!(a.bytes_since(b), 0);
        assert_eq!(a.bytes_since(a), 0);
    }

    #[test]
    fn rejects_anything_but_two_hex_halves() {
        for bad in [
            "",
            "x",
            "/",
            "16",
            "16/",
            "/1",
            "x/1",
            "1/x",
            "G/1",
            "1/2/3",
            "123456789/0",
            "1/100000000",
            "+1/2",
            "1/+2",
            "-1/2",
            " 1/2",
            "1/2 ",
            "1 /2",
            "1/ 2",
            "1/2\n",
            "0x1/2",
            "1/2\0",
            "１/2",
        ] {
            assert_eq!(bad.parse::<Lsn>(), Err(ParseLsnError), "{bad:?}");
        }
        assert_eq!(Lsn::parse(b"1/\xff"), Err(ParseLsnError));
    }

    #[test]
    fn every_split_of_a_valid_text() {
        let text = b"16/B374D848";
        let whole = Lsn::parse(text).unwrap();
        for cut in 0..=text.len() {
            let (head, tail) = text.split_at(cut);
            // A piece parses exactly when it still has digits on both sides of the slash.
            assert_eq!(Lsn::parse(head).is_ok(), cut >= 4, "head at {cut}");
            assert_eq!(Lsn::parse(tail).is_ok(), cut <= 1, "tail at {cut}");
        }
        assert_eq!(Lsn::parse(b"6/B374D848"), Ok(Lsn::from(0x6_B374_D848)));
        assert_eq!(Lsn::parse(b"16/B"), Ok(Lsn::from(0x16_0000_000B)));
        assert_eq!(Lsn::parse(text), Ok(whole));
    }
}
