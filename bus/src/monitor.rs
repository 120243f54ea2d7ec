//! The manager's monitor stream: what `reflex tail` shows. Two frames per message: a topic
//! (`event/<tag>`, `hit/<rule>`, `action/<name>`, `error/<rule>`) so subscribers can filter, and
//! the payload. Events are republished as the very frame that arrived (no re-encoding on the
//! hot path); the others are [`Hit`], [`Action`](crate::Action) and [`RuleError`] frames.

use serde::{Deserialize, Serialize};

pub const EVENT: &str = "event/";
pub const HIT: &str = "hit/";
pub const ACTION: &str = "action/";
pub const ERROR: &str = "error/";

/// A rule ran for an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub rule: String,
    pub event: String,
    pub tag: String,
    pub actions: u32,
}

/// A rule failed for an event, or an action it built was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleError {
    pub rule: String,
    pub event: String,
    pub message: String,
}
