//! `reflex trace`: the causal tree of one event, from the history. The event, each rule that
//! ran for it (and the register keys it wrote), each action the rule appended with each host's
//! reports on it (result, repairs, errors), and the events rules emitted from it, each with its
//! own tree. One forward pass from the event suffices: every effect is written after its cause.

use super::reader::Reader;
use super::segment::{Kind, MAX_RECORD};
use bus::monitor::{Hit, RuleError};
use bus::{Action, Event};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io;

/// A trace keeps at most this many events, and this many reports per action (a kept graph
/// repaired all week would otherwise make the tree as large as the history).
const MAX_EVENTS: usize = 10_000;
const MAX_REPORTS: usize = 1_000;
/// How far before an id's own time its record is looked for (the sender's clock may be ahead).
const SKEW_MS: u64 = 10 * 60 * 1000;

/// An event and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct EventNode {
    /// When the manager took it, Unix ms.
    pub at: u64,
    /// The event.
    pub event: Event,
    /// The rules that ran for it, in order.
    pub hits: Vec<HitNode>,
    /// The rules that failed for it.
    pub errors: Vec<RuleError>,
}

/// A rule that ran for an event.
#[derive(Debug, Clone, Serialize)]
pub struct HitNode {
    /// When, Unix ms.
    pub at: u64,
    /// The rule.
    pub rule: String,
    /// The register keys it wrote.
    pub wrote: Vec<String>,
    /// The actions it appended.
    pub actions: Vec<ActionNode>,
    /// The events it emitted, each with its own tree.
    pub emitted: Vec<EventNode>,
}

/// An action and what the hosts said of it.
#[derive(Debug, Clone, Serialize)]
pub struct ActionNode {
    /// When the rule appended it, Unix ms.
    pub at: u64,
    /// The action (its graph included).
    pub action: Action,
    /// Each host's reports on it, in order: `actor/result`, `actor/repaired`, ...
    pub reports: Vec<Report>,
    /// Reports left out past [`MAX_REPORTS`].
    pub more_reports: u64,
}

/// A host's report on an action.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the manager took it, Unix ms.
    pub at: u64,
    /// The report's event id.
    pub id: String,
    /// The host.
    pub host: String,
    /// `actor/result`, `actor/repaired`, `actor/error`, ...
    pub tag: String,
    /// What it said.
    pub data: Value,
}

/// What the history knows of an id.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "found", rename_all = "snake_case")]
pub enum Traced {
    /// The tree of the event (for an action's id: of the event whose rule appended it).
    Yes {
        /// The tree.
        tree: Box<EventNode>,
        /// Events left out past [`MAX_EVENTS`].
        truncated: bool,
    },
    /// No such id in the history, and it is not older than the history.
    Unknown,
    /// The id is older than the oldest record kept: pruned.
    Pruned {
        /// When the oldest record kept was written, Unix ms.
        oldest: u64,
    },
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    tag: &'a str,
    #[serde(borrow, default)]
    cause: Option<&'a str>,
}

#[derive(Deserialize)]
struct ActionHead<'a> {
    #[serde(borrow)]
    id: &'a str,
    origin: OriginHead,
}

#[derive(Deserialize)]
struct OriginHead {
    event: String,
}

/// The time a UUIDv7 id was made (its first 48 bits, Unix ms), if it is one.
fn id_time(id: &str) -> Option<u64> {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    if hex.len() != 12 || id.len() != 36 || id.as_bytes().get(14) != Some(&b'7') {
        return None;
    }
    u64::from_str_radix(&hex, 16).ok()
}

/// Where the tree of `id` starts: the root event's id and when its record was written.
fn find_root(reader: &Reader, id: &str) -> io::Result<Option<(String, u64)>> {
    let from = id_time(id).map_or(0, |t| t.saturating_sub(SKEW_MS));
    for from in [from, 0] {
        let mut found = None;
        reader.scan(from, |rec| {
            match rec.kind {
                Kind::Event => {
                    if let Ok(h) = bus::decode_with_limit::<Head>(rec.body, MAX_RECORD) {
                        if h.id == id {
                            found = Some((id.to_string(), rec.at));
                        }
                    }
                }
                Kind::Action => {
                    if let Ok(a) = bus::decode_with_limit::<ActionHead>(rec.body, MAX_RECORD) {
                        if a.id == id {
                            // Its event was taken in the same group, just before.
                            found = Some((a.origin.event, rec.at.saturating_sub(SKEW_MS)));
                        }
                    }
                }
                _ => {}
            }
            found.is_none()
        })?;
        if found.is_some() || from == 0 {
            return Ok(found);
        }
    }
    Ok(None)
}

/// A trace nests at most this deep (the manager stops rule chains at `MAX_DEPTH`; an event
/// from outside naming a cause can make a chain of any length).
const MAX_NESTING: usize = 64;

/// The tree being built: nodes in flat lists, children by index, assembled at the end.
#[derive(Default)]
struct Arena {
    events: Vec<Option<EventNode>>,
    by_event: HashMap<String, usize>,
    /// Per event: its hits; and events emitted by a rule whose hit is not in the history.
    event_hits: Vec<Vec<usize>>,
    event_orphans: Vec<Vec<usize>>,
    hits: Vec<Option<HitNode>>,
    hit_of: HashMap<(usize, String), usize>,
    hit_emitted: Vec<Vec<usize>>,
    hit_actions: Vec<Vec<usize>>,
    actions: Vec<Option<ActionNode>>,
    by_action: HashMap<String, usize>,
    truncated: bool,
}

impl Arena {
    fn event(&mut self, at: u64, event: Event) -> Option<usize> {
        if self.events.len() >= MAX_EVENTS {
            self.truncated = true;
            return None;
        }
        let i = self.events.len();
        self.by_event.insert(event.id.clone(), i);
        self.events.push(Some(EventNode {
            at,
            event,
            hits: Vec::new(),
            errors: Vec::new(),
        }));
        self.event_hits.push(Vec::new());
        self.event_orphans.push(Vec::new());
        Some(i)
    }

    fn hit(&mut self, event: usize, node: HitNode) -> usize {
        let i = self.hits.len();
        self.hit_of.insert((event, node.rule.clone()), i);
        self.hits.push(Some(node));
        self.hit_emitted.push(Vec::new());
        self.hit_actions.push(Vec::new());
        self.event_hits[event].push(i);
        i
    }

    fn take(&mut self, at: u64, kind: Kind, body: &[u8], root: &str) {
        match kind {
            Kind::Event => self.take_event(at, body, root),
            Kind::Hit => {
                let Ok(hit) = bus::decode_with_limit::<Hit>(body, MAX_RECORD) else {
                    return;
                };
                let Some(&e) = self.by_event.get(&hit.event) else {
                    return;
                };
                let node = HitNode {
                    at,
                    rule: hit.rule,
                    wrote: hit.wrote,
                    actions: Vec::new(),
                    emitted: Vec::new(),
                };
                self.hit(e, node);
            }
            Kind::Error => {
                let Ok(err) = bus::decode_with_limit::<RuleError>(body, MAX_RECORD) else {
                    return;
                };
                if let Some(&e) = self.by_event.get(&err.event) {
                    if let Some(node) = self.events[e].as_mut() {
                        node.errors.push(err);
                    }
                }
            }
            Kind::Action => {
                let Ok(head) = bus::decode_with_limit::<ActionHead>(body, MAX_RECORD) else {
                    return;
                };
                let Some(&e) = self.by_event.get(&head.origin.event) else {
                    return;
                };
                let Ok(action) = bus::decode_with_limit::<Action>(body, MAX_RECORD) else {
                    return;
                };
                let rule = action.origin.rule.clone();
                let h = match self.hit_of.get(&(e, rule.clone())) {
                    Some(&h) => h,
                    // Its hit is not in the history (a group whose write failed).
                    None => self.hit(
                        e,
                        HitNode {
                            at,
                            rule,
                            wrote: Vec::new(),
                            actions: Vec::new(),
                            emitted: Vec::new(),
                        },
                    ),
                };
                let a = self.actions.len();
                self.by_action.insert(action.id.clone(), a);
                self.actions.push(Some(ActionNode {
                    at,
                    action,
                    reports: Vec::new(),
                    more_reports: 0,
                }));
                self.hit_actions[h].push(a);
            }
        }
    }

    fn take_event(&mut self, at: u64, body: &[u8], root: &str) {
        let Ok(h) = bus::decode_with_limit::<Head>(body, MAX_RECORD) else {
            return;
        };
        if self.by_event.contains_key(h.id) {
            return; // a resent or forged duplicate id: the first stands
        }
        let is_root = self.events.is_empty() && h.id == root;
        let cause = h.cause.and_then(|c| self.by_event.get(c).copied());
        let report = !self.by_action.is_empty() && h.tag.starts_with("actor/");
        if !(is_root || cause.is_some() || report) {
            return;
        }
        let Ok(event) = bus::decode_with_limit::<Event>(body, MAX_RECORD) else {
            return;
        };
        if is_root {
            self.event(at, event);
        } else if let Some(c) = cause {
            let rule = event.chain.last().cloned().unwrap_or_default();
            let hit = self.hit_of.get(&(c, rule)).copied();
            if let Some(i) = self.event(at, event) {
                match hit {
                    Some(h) => self.hit_emitted[h].push(i),
                    None => self.event_orphans[c].push(i),
                }
            }
        } else if let Some(&a) = event
            .data
            .get("action")
            .and_then(Value::as_str)
            .and_then(|id| self.by_action.get(id))
        {
            let Some(node) = self.actions[a].as_mut() else {
                return;
            };
            if node.reports.len() >= MAX_REPORTS {
                node.more_reports += 1;
                return;
            }
            node.reports.push(Report {
                at,
                id: event.id,
                host: event.host,
                tag: event.tag,
                data: event.data,
            });
        }
    }

    /// The tree under event `e`, moved out of the lists.
    fn assemble(&mut self, e: usize, nesting: usize) -> Option<EventNode> {
        if nesting > MAX_NESTING {
            self.truncated = true;
            return None;
        }
        let mut node = self.events.get_mut(e)?.take()?;
        for h in std::mem::take(&mut self.event_hits[e]) {
            let Some(mut hit) = self.hits[h].take() else {
                continue;
            };
            for a in std::mem::take(&mut self.hit_actions[h]) {
                hit.actions.extend(self.actions[a].take());
            }
            for c in std::mem::take(&mut self.hit_emitted[h]) {
                hit.emitted.extend(self.assemble(c, nesting + 1));
            }
            node.hits.push(hit);
        }
        for c in std::mem::take(&mut self.event_orphans[e]) {
            if let Some(child) = self.assemble(c, nesting + 1) {
                // Under the rule the chain names, its hit not in the history.
                node.hits.push(HitNode {
                    at: child.at,
                    rule: child.event.chain.last().cloned().unwrap_or_default(),
                    wrote: Vec::new(),
                    actions: Vec::new(),
                    emitted: vec![child],
                });
            }
        }
        Some(node)
    }
}

/// The causal tree of `id` (an event's or an action's id).
pub fn trace(reader: &Reader, id: &str) -> io::Result<Traced> {
    let not_found = || match (id_time(id), reader.oldest()) {
        // Segment names are kept unique by a millisecond's bump: allow for a few.
        (Some(t), Some(oldest)) if t + 1_000 < oldest => Traced::Pruned { oldest },
        _ => Traced::Unknown,
    };
    let Some((root, from)) = find_root(reader, id)? else {
        return Ok(not_found());
    };
    let mut arena = Arena::default();
    reader.scan(from, |rec| {
        if rec.at >= from || !arena.events.is_empty() {
            arena.take(rec.at, rec.kind, rec.body, &root);
        }
        true
    })?;
    let tree = arena.assemble(0, 0);
    Ok(match tree {
        Some(tree) => Traced::Yes {
            tree: Box::new(tree),
            truncated: arena.truncated,
        },
        None => not_found(),
    })
}
