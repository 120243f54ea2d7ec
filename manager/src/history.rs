//! The manager's retained history: every event it took, each rule hit (with the register keys
//! the rule wrote), each rule error and each action, in the order they happened, so an operator
//! can ask afterwards what the system did and why (`reflex events`, `reflex trace`).
//!
//! It lives under `<state>/history/` as segment files of length-framed records, appended to by
//! the manager's own thread once per group (one `write(2)`, no fsync: the history explains, the
//! registers decide; a crash loses at most the group in flight, never the manager). A segment
//! is never appended to after a restart or a failed write, so a torn tail is only ever at a
//! segment's end, where readers stop. The history is bounded by size and by age: whole
//! segments are pruned oldest first ([`Retention`]).
//!
//! Hosts' results and repairs are events too (`actor/result`, `actor/repaired`, ... naming the
//! action), so a trace is one forward pass from the event's time: [`trace`].

mod follow;
mod reader;
mod segment;
#[cfg(test)]
mod tests;
mod trace;
mod writer;

pub use follow::Follower;
pub use reader::{query, Query, Reader, Record};
pub use segment::{Kind, MAX_RECORD};
pub use trace::{trace, ActionNode, EventNode, HitNode, Report, Traced};
pub use writer::Writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How much history is kept: whichever bound is reached first prunes the oldest segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Most bytes on disk.
    pub max_bytes: u64,
    /// Oldest record kept.
    pub max_age: Duration,
}

/// Kept by default: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Kept by default: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// The history folder of a state dir.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("history")
}
