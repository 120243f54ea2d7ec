//! The manager's monitor stream: what `reflex tail` shows. Two frames per message: a topic
//! (`event/<tag>`, `hit/<rule>`, `action/<name>`, `error/<rule>`) so subscribers can filter, and
//! the payload. Events are republished as the very frame that arrived (no re-encoding on the
//! hot path); the others are [`Hit`], [`Action`](crate::Action) and [`RuleError`] frames.

use serde::{Deserialize, Serialize};

/// Topic prefix of an event, followed by its tag; the payload is the event's frame.
pub const EVENT: &str = "event/";
/// Topic prefix of a [`Hit`], followed by the rule's name.
pub const HIT: &str = "hit/";
/// Topic prefix of an [`Action`](crate::Action), followed by its name.
pub const ACTION: &str = "action/";
/// Topic prefix of a [`RuleError`], followed by the rule's name.
pub const ERROR: &str = "error/";

/// A rule ran for an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The rule's name.
    pub rule: String,
    /// The id of the event.
    pub event: String,
    /// The event's tag.
    pub tag: String,
    /// How many actions the rule appended.
    pub actions: u32,
    /// The register keys the rule wrote (set, incr, del, expire, the throttles), each once,
    /// at most [`MAX_WROTE`] of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrote: Vec<String>,
}

/// The most register keys one [`Hit`] names: a rule writing thousands is told by its count
/// elsewhere, not by a frame that large.
pub const MAX_WROTE: usize = 64;

/// A rule failed for an event, or an action it built was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleError {
    /// The rule's name (empty when the event could not be given to any rule).
    pub rule: String,
    /// The id of the event.
    pub event: String,
    /// What went wrong, as Rhai or the action check said it.
    pub message: String,
}
