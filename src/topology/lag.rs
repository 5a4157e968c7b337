//! Standby lag in bytes and in time.
//!
//! Bytes: the primary's latest `pg_current_wal_lsn()` minus the standby's
//! `pg_last_wal_replay_lsn()`.
//!
//! Time: how long ago the primary was at the position the standby has replayed now. The watcher
//! keeps a short history of (instant, primary LSN) samples and interpolates between the two
//! samples around the standby's position. This is zero for a caught-up standby however long
//! the primary has been idle, unlike `now() - pg_last_xact_replay_timestamp()`, which grows
//! without bound when nothing is written.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::Lsn;

/// How many samples of the primary's position are kept.
const MAX_SAMPLES: usize = 4096;

/// Recent positions of the primary.
#[derive(Debug, Default, Clone)]
pub struct LsnHistory {
    /// (when, LSN) with non-decreasing LSNs, oldest first. A sample is only added when the LSN
    /// moved, so an idle primary costs nothing and old positions stay available.
    samples: VecDeque<(Instant, Lsn)>,
}

impl LsnHistory {
    /// Records the primary's position at `at`.
    pub fn record(&mut self, at: Instant, lsn: Lsn) {
        match self.samples.back() {
            // Same position: the newest sample already says when the primary got there.
            Some(&(_, last)) if last == lsn => return,
            // Going backwards means a different primary (failover): start over.
            Some(&(_, last)) if lsn < last => self.samples.clear(),
            _ => {}
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
    }

    /// Forgets everything (the primary changed).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The primary's latest known position.
    pub fn latest(&self) -> Option<Lsn> {
        self.samples.back().map(|&(_, l)| l)
    }

    /// Bytes of WAL the standby at `replay` is behind the primary's latest position.
    pub fn lag_bytes(&self, replay: Lsn) -> Option<u64> {
        self.latest().map(|p| p.bytes_since(replay))
    }

    /// How long ago, as of `now`, the primary was at `replay`. Zero when the standby has
    /// replayed the primary's latest position; when the history does not reach back far enough,
    /// the age of the oldest sample (a lower bound).
    pub fn lag_time(&self, replay: Lsn, now: Instant) -> Option<Duration> {
        let &(_, latest) = self.samples.back()?;
        if replay >= latest {
            return Some(Duration::ZERO);
        }
        // The first sample past the standby's position: the primary passed `replay` between
        // the sample before it and this one.
        let idx = self.samples.partition_point(|&(_, l)| l <= replay);
        let (t_after, l_after) = self.samples[idx];
        let passed_at = if idx == 0 {
            t_after
        } else {
            let (t_before, l_before) = self.samples[idx - 1];
            let span = l_after.bytes_since(l_before) as f64;
            let frac = replay.bytes_since(l_before) as f64 / span;
            t_before + t_after.duration_since(t_before).mul_f64(frac)
        };
        Some(now.saturating_duration_since(passed_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A position from a plain offset, to keep the numbers readable.
    fn at(offset: u64) -> Lsn {
        Lsn::from(offset)
    }

    #[test]
    fn idle_primary_and_caught_up_standby_have_no_lag() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        h.record(t0, at(1000));
        h.record(t0 + Duration::from_secs(30), at(1000));
        let now = t0 + Duration::from_secs(60);
        assert_eq!(h.lag_time(at(1000), now), Some(Duration::ZERO));
        assert_eq!(h.lag_bytes(at(1000)), Some(0));
    }

    #[test]
    fn lag_is_interpolated_between_samples() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        h.record(t0, at(0));
        h.record(t0 + Duration::from_secs(1), at(1000));
        h.record(t0 + Duration::from_secs(2), at(2000));
        let now = t0 + Duration::from_secs(3);
        // The primary was at 1500 half way between the 1 s and 2 s samples.
        let lag = h.lag_time(at(1500), now).unwrap();
        assert!((lag.as_millis() as i64 - 1500).abs() <= 1, "{lag:?}");
        assert_eq!(h.lag_bytes(at(1500)), Some(500));
        // At exactly a sample's position: the moment of that sample (the conservative end).
        let lag = h.lag_time(at(1000), now).unwrap();
        assert!((lag.as_millis() as i64 - 2000).abs() <= 1, "{lag:?}");
    }

    #[test]
    fn history_too_short_gives_a_lower_bound() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        h.record(t0, at(5000));
        let now = t0 + Duration::from_secs(4);
        assert_eq!(h.lag_time(at(100), now), Some(Duration::from_secs(4)));
        assert_eq!(LsnHistory::default().lag_time(at(1), now), None);
    }

    #[test]
    fn a_position_going_backwards_starts_over() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        h.record(t0, at(5000));
        h.record(t0 + Duration::from_secs(1), at(10));
        assert_eq!(h.latest(), Some(at(10)));
        assert_eq!(h.samples.len(), 1);
    }
}
