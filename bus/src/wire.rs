//! The two messages of the system: events (facts, flowing to the manager) and actions (desired
//! state, flowing from the manager to actors).

use crate::Target;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Something that happened on a host, or a result an actor reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (UUIDv7 text: time-ordered).
    pub id: String,
    /// Slash-separated tag: `beacon/load`, `actor/result`, `demo/hello`.
    pub tag: String,
    /// The host the event is about (the sender's name unless said otherwise).
    pub host: String,
    /// Unix time in milliseconds when the event was made.
    pub time: u64,
    /// Free-form payload.
    #[serde(default)]
    pub data: Value,
    /// How many rule-emitted events stand between this one and an outside event; 0 for outside
    /// events. The manager drops events that are too deep (loop protection).
    #[serde(default)]
    pub depth: u32,
    /// For an event a rule emitted: the id of the event that rule was reacting to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// For an event a rule emitted: the rules that emitted each event of the chain leading to
    /// it, oldest first (what `manager/loop` names when a chain runs away).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl Event {
    /// A fresh event with a new id and the current time.
    pub fn new(tag: impl Into<String>, host: impl Into<String>, data: Value) -> Event {
        Event {
            id: new_id(),
            tag: tag.into(),
            host: host.into(),
            time: now_ms(),
            data,
            depth: 0,
            cause: None,
            chain: Vec::new(),
        }
    }
}

/// Where an action came from: the event that caused it and the rule that made it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The id of the event the rule was reacting to.
    pub event: String,
    /// The rule's name (its file stem).
    pub rule: String,
}

/// Desired state for the actors a target selects: a resource graph, under a name that later
/// actions with the same name replace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Unique id (UUIDv7 text), given by the manager.
    pub id: String,
    /// Actors hold one graph per name; a new action with the same name replaces it.
    pub name: String,
    /// Strictly increasing number the publisher assigns; 0 until then.
    #[serde(default)]
    pub seq: u64,
    /// Who it is for; on the wire the string `all`, `host/<name>` or `group/<name>`, checked
    /// when the frame is decoded.
    pub target: Target,
    /// The resource graph, in the one graph schema (`resources:` and `edges:`); the engine
    /// validates it.
    pub graph: Value,
    /// The event and rule that made it.
    #[serde(default)]
    pub origin: Origin,
    /// Unix time in milliseconds after which actors must not run it; `None` = never expires.
    /// For [`Life::For`] it is also when the actor releases the graph.
    #[serde(default)]
    pub expires: Option<u64>,
    /// How long its graph stays in force on the actor.
    #[serde(default)]
    pub life: Life,
    /// The seq of the action the publisher sent on the same topic before this one; 0 when it
    /// does not know (first since it started). An actor that sees a `prev` it never received
    /// missed actions (the PUB socket drops for a subscriber past its high-water mark) and
    /// fetches them from the replay endpoint.
    #[serde(default)]
    pub prev: u64,
}

/// How long an action's graph stays in force on an actor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Life {
    /// Desired state: watched and repaired until an action with the same name replaces it.
    #[default]
    Keep,
    /// Converge once, report, release: nothing is watched or kept afterwards (a restart, a
    /// one-shot remediation).
    Once,
    /// Kept and repaired like `keep` for this many seconds from when the rule acted, then
    /// released (the action's `expires` says when).
    For(u64),
}

impl Life {
    /// Whether the actor keeps the graph after its first converge.
    pub fn kept(self) -> bool {
        !matches!(self, Life::Once)
    }
}

/// A new unique, time-ordered id (UUIDv7). Its random bits come from a user-space generator
/// (uuid's `fast-rng`), not a getrandom(2) system call per id: senders make millions.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_v7_and_time_ordered() {
        let ids: Vec<String> = (0..50_000).map(|_| super::new_id()).collect();
        let set: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "text order is time order"
        );
        let u = uuid::Uuid::parse_str(&ids[0]).unwrap();
        assert_eq!(u.get_version_num(), 7);
    }
}
