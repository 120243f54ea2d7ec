//! The actor's Prometheus metrics. Its reports are counted where they all pass, on their way
//! to the manager; the check-apply histogram is fed by the engine; the graphs in force and the
//! queues are read on the serve loop's tick.

use bus::Event;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

/// The tags an actor reports under (anything else counts as `other`: labels stay bounded).
const TAGS: [&str; 9] = [
    "actor/result",
    "actor/repaired",
    "actor/error",
    "actor/msg",
    "actor/rejected",
    "actor/released",
    "actor/up",
    "actor/converged",
    "actor/diverged",
];

/// The reasons an action is rejected for (see `rejected::Reason::kind`).
const REASONS: [&str; 5] = ["signature", "target", "replayed", "expired", "policy"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tag {
    tag: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Why {
    reason: &'static str,
}

/// What the actor exposes, prefixed `reflex_actor_`.
#[derive(Clone)]
pub(crate) struct Metrics {
    reports: Family<Tag, Counter>,
    rejected: Family<Why, Counter>,
    repairs: Counter,
    checks: Histogram,
    /// Graphs in force (kept for good or for a while, and one-shot ones converging).
    pub(crate) graphs: Gauge,
    /// Actions received but not yet taken by the serve loop.
    pub(crate) inbound: Gauge,
    results_pending: Gauge,
    results_overflowed: Counter,
}

impl Metrics {
    pub(crate) fn new() -> (Metrics, Registry) {
        let m = Metrics {
            reports: Family::default(),
            rejected: Family::default(),
            repairs: Counter::default(),
            checks: Histogram::new(telemetry::seconds_buckets()),
            graphs: Gauge::default(),
            inbound: Gauge::default(),
            results_pending: Gauge::default(),
            results_overflowed: Counter::default(),
        };
        let mut r = Registry::with_prefix("reflex_actor");
        r.register(
            "reports",
            "Events reported to the manager, by tag",
            m.reports.clone(),
        );
        r.register(
            "rejected_actions",
            "Actions refused (never run), by reason",
            m.rejected.clone(),
        );
        r.register(
            "repairs",
            "Drift repaired by the engine after a graph first converged",
            m.repairs.clone(),
        );
        r.register_with_unit(
            "check_apply",
            "Time one resource check-apply took",
            Unit::Seconds,
            m.checks.clone(),
        );
        r.register("graphs", "Graphs in force", m.graphs.clone());
        r.register(
            "inbound_actions",
            "Actions received and waiting for the serve loop",
            m.inbound.clone(),
        );
        r.register(
            "results_pending",
            "Reports sent and not yet acknowledged by the manager",
            m.results_pending.clone(),
        );
        r.register(
            "results_overflowed",
            "Reports dropped because too many were unacknowledged",
            m.results_overflowed.clone(),
        );
        (m, r)
    }

    /// Count one report on its way out.
    pub(crate) fn report(&self, ev: &Event) {
        let tag = TAGS
            .iter()
            .find(|t| **t == ev.tag)
            .copied()
            .unwrap_or("other");
        self.reports.get_or_create(&Tag { tag }).inc();
        match tag {
            "actor/repaired" => {
                self.repairs.inc();
            }
            "actor/rejected" => {
                let said = ev.data.get("reason").and_then(|r| r.as_str());
                let reason = REASONS
                    .iter()
                    .find(|r| Some(**r) == said)
                    .copied()
                    .unwrap_or("other");
                self.rejected.get_or_create(&Why { reason }).inc();
            }
            _ => {}
        }
    }

    /// The result sender's queue.
    pub(crate) fn sender(&self, push: &bus::sender::Sender) {
        telemetry::set_gauge(&self.results_pending, push.pending());
        telemetry::set_counter(&self.results_overflowed, push.overflowed());
    }

    /// What the engine calls after each check-apply.
    pub(crate) fn observer(&self) -> engine::Observe {
        let h = self.checks.clone();
        Arc::new(move |d| h.observe(d.as_secs_f64()))
    }
}
