//! What the live page shows, built by following the history (never by asking the manager's
//! thread): the hosts (up or down, converged or not, their graphs in force), the recent
//! events, and each rule's hits and errors. Every map is bounded.

use crate::history::{Follower, Kind, Record};
use bus::monitor::{Hit, RuleError};
use bus::{Action, Event, Life};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

/// Recent events kept for the live stream.
pub const RECENT: usize = 1_000;
const MAX_HOSTS: usize = 10_000;
const MAX_RULES: usize = 1_000;
const MAX_GRAPHS_PER_HOST: usize = 1_000;
/// Actions remembered (by id) until a host reports on them.
const MAX_ACTIONS: usize = 20_000;

/// A graph a host holds.
#[derive(Debug, Clone, Serialize)]
pub struct InForce {
    /// The action that set it.
    pub action: String,
    /// `keep` or `for`.
    pub life: Life,
    /// What the host last said of it: `ok`, `failed`, ...
    pub status: String,
    /// When, Unix ms.
    pub at: u64,
    /// Repairs since.
    pub repairs: u64,
    /// The graph the action carries, drawn on request (not sent in lists).
    #[serde(skip)]
    pub graph: Value,
}

/// A host as the page and `reflex hosts` show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Host {
    /// Heartbeats arrive (`host/<name>/up` since the last `down`).
    pub up: bool,
    /// When it last went up or down, Unix ms; 0 before either was seen.
    pub since: u64,
    /// Its actor said `actor/converged` last (not `actor/diverged`); `None` before either.
    pub converged: Option<bool>,
    /// Last heard of, Unix ms.
    pub seen: u64,
    /// The tag of the last event it sent (or the manager sent about it).
    pub last_tag: String,
    /// Its graphs in force, by name.
    pub graphs: BTreeMap<String, InForce>,
    /// When its failures happened (failed results, failed checks, rejected actions), Unix ms,
    /// the newest [`MAX_FAILURES`].
    #[serde(skip)]
    pub failures: VecDeque<u64>,
}

/// Failure times kept per host: enough to count an hour's on a host that fails every few seconds.
pub const MAX_FAILURES: usize = 4_096;

impl Host {
    /// Failures at or after `since_ms` (of the newest [`MAX_FAILURES`]).
    pub fn failures_since(&self, since_ms: u64) -> usize {
        self.failures
            .iter()
            .rev()
            .take_while(|t| **t >= since_ms)
            .count()
    }

    fn failed(&mut self, at: u64) {
        if self.failures.len() >= MAX_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(at);
    }
}

/// A rule's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleCounts {
    /// Runs that went through.
    pub hits: u64,
    /// Runs that failed.
    pub errors: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

/// An event of the live stream.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    /// When the manager took it, Unix ms.
    pub at: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// The page's model.
pub struct View {
    follower: Follower,
    /// The newest events, oldest first.
    pub recent: VecDeque<Recent>,
    /// Events seen in all.
    pub events: u64,
    /// Hosts by name.
    pub hosts: BTreeMap<String, Host>,
    /// Rules by name.
    pub rules: BTreeMap<String, RuleCounts>,
    actions: HashMap<String, Action>,
    action_order: VecDeque<String>,
}

/// How much of the history the page reads when it starts: the counts it shows are of this
/// and what comes after (the metrics have the totals since the manager started).
pub const START_BYTES: u64 = 64 << 20;

impl View {
    /// A view of the history in `dir` (its newest [`START_BYTES`] and all that comes after),
    /// empty until [`View::update`].
    pub fn new(dir: &Path) -> View {
        View::from(Follower::recent(dir, START_BYTES).unwrap_or_else(|_| Follower::new(dir)))
    }

    /// A view of the whole history in `dir`, from its oldest segment.
    pub fn whole(dir: &Path) -> View {
        View::from(Follower::new(dir))
    }

    fn from(follower: Follower) -> View {
        View {
            follower,
            recent: VecDeque::new(),
            events: 0,
            hosts: BTreeMap::new(),
            rules: BTreeMap::new(),
            actions: HashMap::new(),
            action_order: VecDeque::new(),
        }
    }

    /// Take in what the history gained since the last update.
    pub fn update(&mut self) {
        let mut records = Vec::new();
        loop {
            let more = self
                .follower
                .poll(|r| records.push((r.kind, r.at, r.body.to_vec())));
            for (kind, at, body) in records.drain(..) {
                self.take(Record {
                    kind,
                    at,
                    body: &body,
                });
            }
            match more {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("live page: reading the history: {e}");
                    break;
                }
            }
        }
    }

    fn take(&mut self, rec: Record<'_>) {
        let limit = crate::history::MAX_RECORD;
        match rec.kind {
            Kind::Event => {
                if let Ok(event) = bus::decode_with_limit::<Event>(rec.body, limit) {
                    self.event(rec.at, event);
                }
            }
            Kind::Hit => {
                if let Ok(hit) = bus::decode_with_limit::<Hit>(rec.body, limit) {
                    if let Some(r) = self.rule(&hit.rule) {
                        r.hits += 1;
                    }
                }
            }
            Kind::Error => {
                if let Ok(err) = bus::decode_with_limit::<RuleError>(rec.body, limit) {
                    if let Some(r) = self.rule(&err.rule) {
                        r.errors += 1;
                        r.last_error = Some(err.message);
                    }
                }
            }
            Kind::Action => {
                if let Ok(action) = bus::decode_with_limit::<Action>(rec.body, limit) {
                    if self.action_order.len() >= MAX_ACTIONS {
                        if let Some(old) = self.action_order.pop_front() {
                            self.actions.remove(&old);
                        }
                    }
                    self.action_order.push_back(action.id.clone());
                    self.actions.insert(action.id.clone(), action);
                }
            }
        }
    }

    fn rule(&mut self, name: &str) -> Option<&mut RuleCounts> {
        if !self.rules.contains_key(name) && self.rules.len() >= MAX_RULES {
            return None;
        }
        Some(self.rules.entry(name.to_string()).or_default())
    }

    fn host(&mut self, name: &str) -> Option<&mut Host> {
        if !self.hosts.contains_key(name) && self.hosts.len() >= MAX_HOSTS {
            return None;
        }
        Some(self.hosts.entry(name.to_string()).or_default())
    }

    fn event(&mut self, at: u64, event: Event) {
        self.events += 1;
        let tag = event.tag.as_str();
        if matches!(tag, "manager/rules/loaded" | "manager/rules/removed") {
            // The rules in force, so the ones that never hit are listed too.
            if let Some(names) = event.data.get("rules").and_then(Value::as_array) {
                let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                self.rules.retain(|r, _| names.contains(&r.as_str()));
                for n in names {
                    self.rule(n);
                }
            }
        } else if let Some((name, state)) = tag
            .strip_prefix("host/")
            .and_then(|rest| rest.rsplit_once('/'))
        {
            if let (Some(h), "up" | "down") = (self.host(name), state) {
                let up = state == "up";
                if up != h.up || h.since == 0 {
                    h.since = at;
                }
                h.up = up;
                h.seen = at;
                h.last_tag = event.tag.clone();
            }
        } else if let Some(kind) = tag.strip_prefix("actor/") {
            let name = event.host.clone();
            let data = &event.data;
            let action = data.get("action").and_then(Value::as_str).map(String::from);
            let graph = data.get("name").and_then(Value::as_str).map(String::from);
            let known = action.as_ref().and_then(|id| self.actions.get(id)).cloned();
            if let Some(h) = self.host(&name) {
                h.seen = at;
                h.last_tag = event.tag.clone();
                match kind {
                    "up" => h.up = true,
                    "converged" => h.converged = Some(true),
                    "diverged" => h.converged = Some(false),
                    "error" | "rejected" => h.failed(at),
                    "result" => {
                        let status = data.get("status").and_then(Value::as_str).unwrap_or("?");
                        if !matches!(status, "ok" | "superseded") {
                            h.failed(at);
                        }
                        if let (Some(a), Some(g)) = (known, graph) {
                            if a.life == Life::Once {
                                h.graphs.remove(&g);
                            } else if h.graphs.contains_key(&g)
                                || h.graphs.len() < MAX_GRAPHS_PER_HOST
                            {
                                h.graphs.insert(
                                    g,
                                    InForce {
                                        action: a.id.clone(),
                                        life: a.life,
                                        status: status.to_string(),
                                        at,
                                        repairs: 0,
                                        graph: a.graph.clone(),
                                    },
                                );
                            }
                        }
                    }
                    "repaired" => {
                        if let Some(g) = graph.and_then(|g| h.graphs.get_mut(&g)) {
                            g.repairs += 1;
                        }
                    }
                    "released" => {
                        if let Some(g) = graph {
                            h.graphs.remove(&g);
                        }
                    }
                    _ => {}
                }
            }
        } else if let Some(h) = self.hosts.get_mut(&event.host) {
            // Any other event of a host already known (beacons, `reflex send`): its last word.
            h.seen = at;
            h.last_tag = event.tag.clone();
        }
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { at, event });
    }
}
