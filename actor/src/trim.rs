//! Giving memory back once a burst is over.
//!
//! A burst of actions allocates far more than the graphs it leaves in force: the frames, the
//! checks in flight, the results held until the manager acknowledges them. glibc keeps what is
//! freed inside its arenas (one per thread that allocated, the blocking pool's included), so
//! without this the actor's resident memory would stay at the burst's peak for good, and a
//! steady stream would ratchet it up. [`bus::trim::release`] hands the free pages back to the
//! kernel. It walks every arena under its lock, so it runs on the serve loop's tick only: once
//! the actions have been quiet for [`QUIET`] after a busy spell, and at most every [`EVERY`]
//! while they keep coming.

use std::time::{Duration, Instant};

/// How long without a new action counts as the end of a burst.
pub(crate) const QUIET: Duration = Duration::from_secs(2);
/// The longest time between trims while actions keep coming.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Trim {
    /// An action was taken since the last trim.
    busy: bool,
    last_action: Instant,
    last_trim: Instant,
}

impl Trim {
    pub(crate) fn new() -> Trim {
        let now = Instant::now();
        Trim {
            busy: false,
            last_action: now,
            last_trim: now,
        }
    }

    /// An action was taken.
    pub(crate) fn action(&mut self) {
        self.busy = true;
        self.last_action = Instant::now();
    }

    /// Whether to trim now; a true answer counts as the trim done.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        let due = self.busy
            && (now.duration_since(self.last_action) >= QUIET
                || now.duration_since(self.last_trim) >= EVERY);
        if due {
            self.busy = false;
            self.last_trim = now;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_quiet_spell_or_every_so_often_and_never_when_idle() {
        let mut t = Trim::new();
        let t0 = Instant::now();
        assert!(
            !t.due(t0 + EVERY * 2),
            "nothing taken in: nothing to give back"
        );
        t.action();
        let a = t.last_action;
        assert!(!t.due(a + QUIET / 2), "still busy");
        assert!(t.due(a + QUIET), "quiet after a burst");
        assert!(!t.due(a + QUIET * 2), "once per quiet spell");
        // A steady stream: never quiet, trimmed every EVERY.
        let start = t.last_trim;
        t.action();
        t.last_action = start + EVERY;
        assert!(t.due(start + EVERY));
    }
}
