//! Hysteresis: a boolean that flips only after N consecutive observations agree, so a node that
//! hovers at a limit (or drops one check in a hundred) does not flap.

/// A debounced boolean.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    /// The value callers see.
    state: bool,
    /// Whether anything was observed yet; the first observation is taken as is, so a fresh
    /// proxy does not wait N checks to use a healthy cluster.
    seeded: bool,
    /// Consecutive observations that disagree with `state`.
    streak: u32,
    /// Observations needed to flip (at least 1).
    threshold: u32,
}

impl Hysteresis {
    /// A value starting at `initial` that flips after `threshold` disagreeing observations.
    pub fn new(initial: bool, threshold: u32) -> Hysteresis {
        Hysteresis {
            state: initial,
            seeded: false,
            streak: 0,
            threshold: threshold.max(1),
        }
    }

    /// The current, debounced value.
    pub fn get(&self) -> bool {
        self.state
    }

    /// Records one observation; returns true if the value flipped.
    pub fn observe(&mut self, value: bool) -> bool {
        if !self.seeded {
            self.seeded = true;
            self.streak = 0;
            let flipped = self.state != value;
            self.state = value;
            return flipped;
        }
        if value == self.state {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak >= self.threshold {
            self.state = value;
            self.streak = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_threshold_agreeing_observations() {
        let mut h = Hysteresis::new(false, 3);
        assert!(h.observe(true), "first observation seeds the value");
        assert!(h.get());
        assert!(!h.observe(false));
        assert!(!h.observe(false));
        assert!(
            !h.observe(true),
            "an agreeing observation resets the streak"
        );
        assert!(!h.observe(false));
        assert!(!h.observe(false));
        assert!(h.get());
        assert!(h.observe(false));
        assert!(!h.get());
    }

    #[test]
    fn threshold_one_follows_every_observation() {
        let mut h = Hysteresis::new(true, 1);
        h.observe(true);
        assert!(h.observe(false));
        assert!(h.observe(true));
    }
}
