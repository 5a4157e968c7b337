//! Write-ahead-log positions as PostgreSQL prints them (`16/B374D848`).
//!
//! The harness compares positions to decide when a standby has replayed what the primary wrote;
//! comparing the text would be wrong (`9/0` > `10/0` as strings), so it parses them.

use std::{fmt, str::FromStr};

use super::error::ClusterError;

/// A position in the write-ahead log: the 64-bit byte offset behind `pg_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = ClusterError;

    /// Parses `HI/LO`, both hexadecimal, `LO` at most 32 bits (the `pg_lsn` output format).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ClusterError::Invalid(format!("not a WAL position: {text:?}"));
        let (hi, lo) = text.trim().split_once('/').ok_or_else(invalid)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| invalid())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| invalid())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
    }

    #[test]
    fn orders_numerically_not_textually() {
        let a: Lsn = "9/0".parse().unwrap();
        let b: Lsn = "10/0".parse().unwrap();
        assert!(a < b);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "16", "16/", "/1", "x/1", "1/100000000", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }
}
