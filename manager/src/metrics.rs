//! The manager's Prometheus metrics.
//!
//! [`Stats`] stays the one count the run loop keeps (plain integers, no atomics on the event
//! path); [`Metrics::sync`] copies it into the exposed counters and gauges a few times a
//! second. Only the per-rule meters are live: a rule run adds to its own counter and histogram,
//! which it holds directly (no label lookup per run). Labels are bounded: rule names (one per
//! rule file), drop reasons and host states, never anything taken from an event.

use crate::Stats;
use bus::MalformedKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use telemetry::{set_counter as set, set_gauge as gauge, Dropped};

/// A rule's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The rule's name (its file stem).
    pub rule: String,
}

/// A state label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

fn rule_histogram() -> Histogram {
    Histogram::new(telemetry::seconds_buckets())
}

/// The per-rule families: every rule's meters live here under its name.
#[derive(Clone)]
pub struct RuleMeters {
    hits: Family<RuleLabel, Counter>,
    errors: Family<RuleLabel, Counter>,
    seconds: Family<RuleLabel, Histogram, fn() -> Histogram>,
}

impl Default for RuleMeters {
    fn default() -> RuleMeters {
        RuleMeters {
            hits: Family::default(),
            errors: Family::default(),
            seconds: Family::new_with_constructor(rule_histogram),
        }
    }
}

/// One rule's meters, held by the rule.
#[derive(Clone)]
pub struct RuleMeter {
    /// Runs that went through.
    pub hits: Counter,
    /// Runs that failed.
    pub errors: Counter,
    /// How long each run took, in seconds.
    pub seconds: Histogram,
}

impl RuleMeters {
    /// The meters of the rule named `rule` (the same ones again after a reload).
    pub fn for_rule(&self, rule: &str) -> RuleMeter {
        let label = RuleLabel { rule: rule.into() };
        RuleMeter {
            hits: self.hits.get_or_create_owned(&label),
            errors: self.errors.get_or_create_owned(&label),
            seconds: self.seconds.get_or_create_owned(&label),
        }
    }

    /// A removed rule's series go too, so the label set stays that of the rule files.
    pub fn forget(&self, rule: &str) {
        let label = RuleLabel { rule: rule.into() };
        self.hits.remove(&label);
        self.errors.remove(&label);
        self.seconds.remove(&label);
    }
}

/// What the manager exposes beside the rule meters.
#[derive(Default)]
pub struct Metrics {
    events: Counter,
    dropped: Family<Dropped, Counter>,
    duplicates: Counter,
    actions: Counter,
    outbox: Gauge,
    outbox_max: Gauge,
    outbox_resent: Counter,
    internal_max: Gauge,
    streams: Gauge,
    commits: Counter,
    reloads: Counter,
    rules: Family<State, Gauge>,
    hosts: Family<State, Gauge>,
    registers_bytes: Gauge,
    history_bytes: Gauge,
    history_dropped: Counter,
}

impl Metrics {
    /// The metrics and the registry that exposes them with `rules`' meters, prefixed
    /// `reflex_manager_`.
    pub fn new(rules: &RuleMeters) -> (Metrics, Registry) {
        let m = Metrics::default();
        let mut r = Registry::with_prefix("reflex_manager");
        r.register(
            "events",
            "Events taken in and run (from hosts and from rules)",
            m.events.clone(),
        );
        r.register(
            "frames_dropped",
            "Frames or events dropped, by reason (malformed kinds, forged, revoked, gap, loop)",
            m.dropped.clone(),
        );
        r.register(
            "duplicates",
            "Events skipped as a sender's resend of one already done",
            m.duplicates.clone(),
        );
        r.register(
            "actions",
            "Actions decided by rules and handed to the outbox",
            m.actions.clone(),
        );
        r.register(
            "outbox_actions",
            "Actions in the outbox, not yet in the publisher's log",
            m.outbox.clone(),
        );
        r.register(
            "outbox_actions_max",
            "High-water mark of the outbox since start",
            m.outbox_max.clone(),
        );
        r.register(
            "outbox_resent",
            "Outbox actions sent to the publisher again",
            m.outbox_resent.clone(),
        );
        r.register(
            "internal_events_max",
            "High-water mark of the queue of events made inside the manager",
            m.internal_max.clone(),
        );
        r.register("streams", "Senders' streams remembered", m.streams.clone());
        r.register(
            "commits",
            "Group commits (one fsync each)",
            m.commits.clone(),
        );
        r.register(
            "rule_reloads",
            "Rule files reloaded after a change",
            m.reloads.clone(),
        );
        r.register(
            "rules",
            "Rules loaded, by state (active, disabled)",
            m.rules.clone(),
        );
        r.register(
            "hosts",
            "Hosts by state (up: heartbeats arrive, down: missed too many)",
            m.hosts.clone(),
        );
        r.register_with_unit(
            "registers",
            "Size of the register store on disk",
            Unit::Bytes,
            m.registers_bytes.clone(),
        );
        r.register_with_unit(
            "history",
            "Size of the history on disk",
            Unit::Bytes,
            m.history_bytes.clone(),
        );
        r.register(
            "history_dropped",
            "History records lost to write errors",
            m.history_dropped.clone(),
        );
        r.register(
            "rule_hits",
            "Rule runs that went through, by rule",
            rules.hits.clone(),
        );
        r.register(
            "rule_errors",
            "Rule runs that failed, by rule",
            rules.errors.clone(),
        );
        r.register_with_unit(
            "rule_run",
            "Time a rule run took, by rule",
            Unit::Seconds,
            rules.seconds.clone(),
        );
        (m, r)
    }

    /// Copy the loop's counts in; `registers_bytes`: the store's size on disk, when read.
    pub fn sync(&self, s: &Stats, internal_max: usize, registers_bytes: Option<u64>) {
        set(&self.events, s.events);
        for kind in MalformedKind::ALL {
            let n = s.malformed.get(kind);
            let why = Dropped {
                reason: "malformed",
                kind: kind.as_str(),
            };
            set(&self.dropped.get_or_create_owned(&why), n);
        }
        for (reason, n) in [
            ("forged", s.forged),
            ("revoked", s.revoked),
            ("gap", s.gaps),
            ("loop", s.loops),
        ] {
            set(
                &self
                    .dropped
                    .get_or_create_owned(&Dropped { reason, kind: "" }),
                n,
            );
        }
        set(&self.duplicates, s.duplicates);
        set(&self.actions, s.actions);
        gauge(&self.outbox, s.outbox);
        if self.outbox_max.get() < s.outbox as i64 {
            gauge(&self.outbox_max, s.outbox);
        }
        gauge(&self.internal_max, internal_max);
        set(&self.outbox_resent, s.outbox_resent);
        gauge(&self.streams, s.streams);
        set(&self.commits, s.commits);
        set(&self.reloads, s.reloads);
        let disabled = s.disabled.len();
        gauge(
            &self.rules.get_or_create_owned(&State { state: "active" }),
            s.rules.len() - disabled,
        );
        gauge(
            &self.rules.get_or_create_owned(&State { state: "disabled" }),
            disabled,
        );
        gauge(
            &self.hosts.get_or_create_owned(&State { state: "up" }),
            s.hosts_up,
        );
        gauge(
            &self.hosts.get_or_create_owned(&State { state: "down" }),
            s.hosts_down,
        );
        if let Some(b) = registers_bytes {
            gauge(&self.registers_bytes, b);
        }
        gauge(&self.history_bytes, s.history_bytes);
        set(&self.history_dropped, s.history_dropped);
    }
}
