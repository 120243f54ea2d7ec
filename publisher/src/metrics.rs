//! The publisher's Prometheus metrics: the loop's own counts, copied in a few times a second
//! (see `telemetry::set_counter`), so publishing costs no atomic per action.

use crate::Publisher;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use telemetry::{set_counter as set, set_gauge as gauge, Dropped};

/// What the publisher exposes, prefixed `reflex_publisher_`.
#[derive(Default)]
pub(crate) struct Metrics {
    published: Counter,
    resent: Counter,
    gaps: Counter,
    commits: Counter,
    dropped: Family<Dropped, Counter>,
    refused: Counter,
    replays: Counter,
    replayed: Counter,
    last_seq: Gauge,
    log_bytes: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> (Metrics, Registry) {
        let m = Metrics::default();
        let mut r = Registry::with_prefix("reflex_publisher");
        r.register(
            "actions_published",
            "Actions numbered, logged and published",
            m.published.clone(),
        );
        r.register(
            "link_resent",
            "Link frames recognised as a manager's resend (acknowledged, not logged again)",
            m.resent.clone(),
        );
        r.register(
            "link_gaps",
            "Link frames dropped because one before them was missing (the manager resends)",
            m.gaps.clone(),
        );
        r.register(
            "commits",
            "Groups committed to the log (one flush each)",
            m.commits.clone(),
        );
        r.register(
            "frames_dropped",
            "Link frames dropped, by reason and kind",
            m.dropped.clone(),
        );
        r.register(
            "topics_refused",
            "Subscriptions and replay topics refused: not the peer's own",
            m.refused.clone(),
        );
        r.register(
            "replay_requests",
            "Replay requests answered",
            m.replays.clone(),
        );
        r.register(
            "replayed_actions",
            "Actions sent in replay answers",
            m.replayed.clone(),
        );
        r.register(
            "last_seq",
            "The number of the last action published",
            m.last_seq.clone(),
        );
        r.register_with_unit(
            "log",
            "Size of the action log on disk",
            Unit::Bytes,
            m.log_bytes.clone(),
        );
        (m, r)
    }

    pub(crate) fn sync(&self, p: &Publisher) {
        set(&self.published, p.published);
        set(&self.resent, p.resent);
        set(&self.gaps, p.gaps);
        set(&self.commits, p.commits);
        for kind in bus::MalformedKind::ALL {
            let n = p.bad.get(kind);
            let label = Dropped {
                reason: "malformed",
                kind: kind.as_str(),
            };
            set(&self.dropped.get_or_create_owned(&label), n);
        }
        set(&self.refused, p.doors.refused);
        set(&self.replays, p.replays);
        set(&self.replayed, p.replayed);
        gauge(&self.last_seq, p.next_seq.saturating_sub(1));
        gauge(&self.log_bytes, p.db.size_on_disk().unwrap_or(0));
    }
}
