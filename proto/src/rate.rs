//! Moving estimates: a rate over about the last window of work, weighted by each sample's
//! amount ([`Rate`]), and an exponentially weighted mean ([`Mean`]). The device learns its
//! speeds with them and the host its own; Auto mode's cost model reads both.

use std::time::Duration;

/// A rate over roughly the last `window` units of work.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    amount: f64,
    secs: f64,
    window: f64,
}

impl Rate {
    /// An empty rate remembering about `window` units.
    pub const fn new(window: f64) -> Self {
        Rate {
            amount: 0.0,
            secs: 0.0,
            window,
        }
    }

    /// Adds `amount` units done in `took`.
    pub fn add(&mut self, amount: f64, took: Duration) {
        if amount <= 0.0 || took.is_zero() {
            return;
        }
        let keep = (-amount / self.window).exp();
        self.amount = self.amount * keep + amount;
        self.secs = self.secs * keep + took.as_secs_f64();
    }

    /// Units per second, once there is a sample.
    pub fn per_sec(&self) -> Option<f64> {
        (self.secs > 0.0 && self.amount > 0.0).then(|| self.amount / self.secs)
    }
}

/// A moving average of a duration (one sample per call).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean {
    value: Option<f64>,
}

impl Mean {
    /// Weight of the newest sample.
    const ALPHA: f64 = 0.1;

    /// Adds one sample.
    pub fn add(&mut self, x: f64) {
        self.value = Some(match self.value {
            Some(v) => v + Self::ALPHA * (x - v),
            None => x,
        });
    }

    /// The average, once there is a sample.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_follows_the_recent_work_weighted_by_its_amount() {
        let mut r = Rate::new(1000.0);
        assert_eq!(r.per_sec(), None);
        r.add(100.0, Duration::from_secs(1));
        assert_eq!(r.per_sec(), Some(100.0));
        // A tiny sample at another rate barely moves it...
        r.add(1.0, Duration::from_millis(1));
        assert!((r.per_sec().unwrap() - 100.0).abs() < 1.0);
        // ...while several windows of work at a new rate take it over.
        for _ in 0..50 {
            r.add(500.0, Duration::from_secs(1));
        }
        assert!((r.per_sec().unwrap() - 500.0).abs() < 5.0, "{r:?}");
        let mut m = Mean::default();
        m.add(10.0);
        assert_eq!(m.get(), Some(10.0));
        m.add(20.0);
        assert_eq!(m.get(), Some(11.0));
    }
}
