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
    actions: HashMap<String, Known>,
    action_order: VecDeque<String>,
    /// Read for the hosts alone ([`View::hosts_only`]).
    lean: bool,
}

/// What is remembered of an action until its hosts report on it.
struct Known {
    life: Life,
    /// Its graph, for the page to draw; `Null` when read for the hosts alone.
    graph: Value,
}

/// What a view read for the hosts alone decodes of an action: the rest (the graph above all)
/// is skipped, not built.
#[derive(serde::Deserialize)]
struct ActionHead {
    id: String,
    #[serde(default)]
    life: Life,
}

/// What a view read for the hosts alone decodes of an event first: its strings borrowed and its
/// data walked, not built. Only presence and actor events are decoded whole.
#[derive(serde::Deserialize)]
struct EventHead<'a> {
    #[serde(borrow)]
    tag: &'a str,
    #[serde(borrow)]
    host: &'a str,
    #[serde(default)]
    #[allow(dead_code)]
    data: serde::de::IgnoredAny,
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

    /// A view of the whole history in `dir`, from its oldest segment, read for the hosts
    /// alone (what `reflex hosts` shows): rule records are skipped, events other than presence
    /// and the actors' are only glanced at (tag and host), actions' graphs are not kept, and
    /// no recent events are kept.
    pub fn hosts_only(dir: &Path) -> View {
        View {
            lean: true,
            ..View::from(Follower::new(dir))
        }
    }

    fn from(follower: Follower) -> View {
        View {
            lean: false,
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
            Kind::Hit | Kind::Error if self.lean => {}
            Kind::Event if self.lean => {
                let Ok(head) = bus::decode_with_limit::<EventHead>(rec.body, limit) else {
                    return;
                };
                if head.tag.starts_with("host/") || head.tag.starts_with("actor/") {
                    if let Ok(event) = bus::decode_with_limit::<Event>(rec.body, limit) {
                        self.event(rec.at, event);
                    }
                } else {
                    self.events += 1;
                    if let Some(h) = self.hosts.get_mut(head.host) {
                        h.seen = rec.at;
                        head.tag.clone_into(&mut h.last_tag);
                    }
                }
            }
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
                let known = if self.lean {
                    bus::decode_with_limit::<ActionHead>(rec.body, limit)
                        .ok()
                        .map(|a| (a.id, a.life, Value::Null))
                } else {
                    bus::decode_with_limit::<Action>(rec.body, limit)
                        .ok()
                        .map(|a| (a.id, a.life, a.graph))
                };
                if let Some((id, life, graph)) = known {
                    if self.action_order.len() >= MAX_ACTIONS {
                        if let Some(old) = self.action_order.pop_front() {
                            self.actions.remove(&old);
                        }
                    }
                    self.action_order.push_back(id.clone());
                    self.actions.insert(id, Known { life, graph });
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
            // The action's id, life and (for what is kept) graph, copied out of the map.
            let known = action.and_then(|id| {
                let k = self.actions.get(&id)?;
                let graph = if k.life == Life::Once {
                    Value::Null
                } else {
                    k.graph.clone()
                };
                Some((id, k.life, graph))
            });
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
                        if let (Some((id, life, drawn)), Some(g)) = (known, graph) {
                            if life == Life::Once {
                                h.graphs.remove(&g);
                            } else if h.graphs.contains_key(&g)
                                || h.graphs.len() < MAX_GRAPHS_PER_HOST
                            {
                                h.graphs.insert(
                                    g,
                                    InForce {
                                        action: id,
                                        life,
                                        status: status.to_string(),
                                        at,
                                        repairs: 0,
                                        graph: drawn,
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
        if self.lean {
            return;
        }
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { at, event });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Retention, Writer};
    use bus::monitor::Hit;
    use bus::{Origin, Target};
    use serde_json::json;

    fn action(host: &str, life: Life) -> Action {
        Action {
            id: bus::new_id(),
            name: "site".into(),
            seq: 0,
            target: Target::parse(&format!("host/{host}")).unwrap(),
            graph: json!({"resources": [{"kind": "file", "name": "/tmp/site"}]}),
            origin: Origin::default(),
            expires: None,
            life,
            prev: 0,
        }
    }

    /// What `reflex hosts` shows of a host: everything but the graphs' contents.
    fn shown(v: &View) -> Vec<(String, Value, Vec<String>, usize)> {
        v.hosts
            .iter()
            .map(|(n, h)| {
                (
                    n.clone(),
                    serde_json::to_value(h).unwrap(),
                    h.graphs.keys().cloned().collect(),
                    h.failures_since(0),
                )
            })
            .collect()
    }

    #[test]
    fn the_hosts_read_alone_are_the_hosts_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(
            dir.path(),
            Retention {
                max_bytes: 1 << 30,
                max_age: std::time::Duration::from_secs(3600),
            },
        )
        .unwrap();
        let ev = |w: &mut Writer, tag: &str, host: &str, data: Value| {
            w.record(Kind::Event, &bus::encode(&Event::new(tag, host, data)));
        };
        ev(&mut w, "host/web1/up", "web1", json!({}));
        ev(&mut w, "host/web2/up", "web2", json!({}));
        let kept = action("web1", Life::Keep);
        let once = action("web1", Life::Once);
        for a in [&kept, &once] {
            w.record(Kind::Action, &bus::encode(a));
        }
        let hit = Hit {
            rule: "10-site".into(),
            event: bus::new_id(),
            tag: "demo/site".into(),
            actions: 2,
            wrote: vec![],
        };
        w.record(Kind::Hit, &bus::encode(&hit));
        ev(
            &mut w,
            "actor/result",
            "web1",
            json!({"action": kept.id, "name": "site", "status": "ok"}),
        );
        ev(
            &mut w,
            "actor/result",
            "web1",
            json!({"action": once.id, "name": "restart", "status": "failed"}),
        );
        ev(&mut w, "actor/converged", "web1", json!({}));
        ev(
            &mut w,
            "actor/rejected",
            "web2",
            json!({"reason": "policy"}),
        );
        ev(&mut w, "host/web2/down", "web2", json!({}));
        ev(&mut w, "beacon/load", "web1", json!({"load1": 0.3}));
        ev(&mut w, "beacon/load", "stranger", json!({"load1": 0.3}));
        w.flush();

        let mut whole = View::from(Follower::new(dir.path()));
        whole.update();
        let mut alone = View::hosts_only(dir.path());
        alone.update();
        assert_eq!(shown(&alone), shown(&whole));
        assert_eq!(alone.events, whole.events);
        let web1 = &alone.hosts["web1"];
        assert_eq!(
            (web1.up, web1.converged, web1.last_tag.as_str()),
            (true, Some(true), "beacon/load")
        );
        assert_eq!(web1.graphs.keys().collect::<Vec<_>>(), ["site"]);
        assert_eq!(web1.failures_since(0), 1);
        let web2 = &alone.hosts["web2"];
        assert_eq!((web2.up, web2.failures_since(0)), (false, 1));
        // The page's view keeps what the hosts' does not need.
        assert!(alone.recent.is_empty() && alone.rules.is_empty());
        assert_eq!(whole.rules["10-site"].hits, 1);
        assert_eq!(
            whole.hosts["web1"].graphs["site"].graph, kept.graph,
            "the page draws the graph"
        );
    }
}
