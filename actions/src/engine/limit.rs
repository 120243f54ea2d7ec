//! The token bucket behind `meta.limit` (check-applies per second on average) and
//! `meta.burst` (how many may run back to back).

use std::time::{Duration, Instant};

/// A token bucket for `meta.limit`/`meta.burst`.
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Full: `burst` check-applies may run at once.
    pub(super) fn new(rate: f64, burst: u32) -> Bucket {
        Bucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Take one token; how long to wait before using it.
    pub(super) fn take(&mut self) -> Duration {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_waits() {
        let mut b = Bucket::new(1.0, 2);
        assert_eq!(b.take(), Duration::ZERO);
        assert_eq!(b.take(), Duration::ZERO);
        assert!(b.take() > Duration::from_millis(900));
    }
}
