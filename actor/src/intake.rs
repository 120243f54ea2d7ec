//! Which actions the actor takes in, and in which order.
//!
//! Actions take effect in the order of their sequence numbers on each topic, each one once: an
//! action with a number at or below the highest one taken in on its topic is a duplicate when it
//! is one already taken in (received both replayed and live) and is ignored; any other, received
//! live, is a replay of an old signed action and refused (one in a replay answer is just one we
//! already have). To keep that order across a catch-up, what arrives live while one is in
//! flight is held back and taken in after the replayed actions.
//!
//! **Gaps.** Each action names the seq the publisher sent before it on the same topic
//! ([`Action::prev`]). The PUB socket drops silently for a subscriber past its high-water mark,
//! so a `prev` above what was taken in on that topic (and above what the last catch-up covered)
//! means actions were missed: the serve loop holds this one and catches up from the replay
//! endpoint first, without reconnecting. The seq kept on disk never passes a gap not yet filled,
//! so a crash then still fetches what was missed.
//!
//! **Several publishers.** An intake follows one publisher (its sequences are its own); the
//! ids taken in are one [`Seen`] shared by every intake, so an action that a second publisher
//! delivers under a number of its own (the leader sending on a dead manager's outbox) is a
//! duplicate there too.
//!
//! Expiry is decided here too: a replayed action that expired while the actor was away is
//! history and dropped quietly; a live one that expired before it arrived is reported.

use bus::Action;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;

/// Where an action came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Received on the subscription.
    Live,
    /// Fetched from the publisher's log while catching up.
    Replayed,
}

/// What to do with an action.
#[derive(Debug, PartialEq)]
pub(crate) enum Admit {
    /// Apply it.
    Apply(Action),
    /// Report it as expired before it arrived.
    Expired(Action),
    /// Ignore it: a duplicate, or a replayed action that expired.
    Skip,
    /// Refuse it: an old sequence number that is not an action taken in before.
    Replayed {
        /// Its sequence.
        seq: u64,
        /// The highest one taken in on its topic.
        last: u64,
    },
}

/// How many of the ids taken in are remembered to tell a duplicate from a replay: far more
/// than a publisher resends after a crash (what was in flight) or a catch-up holds.
const SEEN_IDS: usize = 65_536;

/// The ids of the latest actions taken in from any publisher, oldest first. Kept as 64-bit
/// hashes under a key of this process's own (ids come signed by the control node, and a
/// chance collision among 65,536 is about 2^-48): 17 bytes an id rather than a string's 60.
#[derive(Default)]
pub(crate) struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl Seen {
    fn key(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Whether `id` was taken in lately.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.set.contains(&self.key(id))
    }

    /// Count `id` as taken in (a graph kept by a previous run, or one just admitted).
    pub(crate) fn remember(&mut self, id: &str) {
        let k = self.key(id);
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > SEEN_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// One publisher's intake: the sequence high-water marks and the actions held during
/// catch-ups.
#[derive(Default)]
pub(crate) struct Intake {
    /// Every action up to this seq, on every topic, was taken in or is known to be over (kept
    /// from a previous run, or covered by a finished catch-up).
    floor: u64,
    /// The highest sequence number taken in on each topic, where above the floor.
    topics: HashMap<String, u64>,
    /// The highest sequence number taken in on any topic.
    last_seq: u64,
    /// While a gap is being filled: the highest seq below which everything is known taken in.
    unfilled: Option<u64>,
    /// Catch-ups started and not finished yet.
    catching_up: usize,
    /// Live actions received during a catch-up, in order of arrival. Bounded in practice by
    /// what the publisher sends in one replay's answer time.
    held: VecDeque<Action>,
}

impl Intake {
    /// Count every action up to `seq` as taken in (the last one kept by a previous run).
    pub(crate) fn saw(&mut self, seq: u64) {
        self.floor = self.floor.max(seq);
        self.last_seq = self.last_seq.max(seq);
    }

    /// The seq it is safe to keep as "taken in up to": never past a gap not yet filled.
    pub(crate) fn safe_seq(&self) -> u64 {
        self.unfilled
            .map_or(self.last_seq, |u| u.min(self.last_seq))
    }

    fn topic_last(&self, topic: &str) -> u64 {
        self.topics.get(topic).copied().unwrap_or(0).max(self.floor)
    }

    /// Whether a catch-up is in flight (live actions are held).
    pub(crate) fn catching_up(&self) -> bool {
        self.catching_up > 0
    }

    /// A catch-up starts: live actions are held from now on. Returns the number to replay from.
    pub(crate) fn begin_catch_up(&mut self) -> u64 {
        self.catching_up += 1;
        self.floor
    }

    /// A live action shows a gap on its topic: the number to replay from (the highest taken in
    /// there), or `None` when nothing was missed.
    pub(crate) fn gap(&self, action: &Action) -> Option<u64> {
        let last = self.topic_last(&action.target.topic());
        (action.prev > last).then_some(last)
    }

    /// The publisher says its last seq on `topic` is `last`: the number to replay from when
    /// that is past what was taken in there, else `None`.
    pub(crate) fn behind(&self, topic: &str, last: u64) -> Option<u64> {
        let taken = self.topic_last(topic);
        (last > taken).then_some(taken)
    }

    /// Fill a gap: a catch-up from `since` starts, with `action` (the live one that showed it,
    /// if one did) held first.
    pub(crate) fn begin_gap(&mut self, since: u64, action: Option<Action>) {
        self.unfilled = Some(self.unfilled.map_or(since, |u| u.min(since)));
        self.catching_up += 1;
        if let Some(a) = action {
            self.held.push_front(a);
        }
    }

    /// A catch-up ended (its replayed actions taken in); `covered`: the publisher's last seq
    /// when it answered in full, so everything up to it is in. The live actions to take in now,
    /// none while another catch-up is still in flight.
    pub(crate) fn end_catch_up(&mut self, covered: Option<u64>) -> Vec<Action> {
        self.catching_up = self.catching_up.saturating_sub(1);
        if let Some(c) = covered {
            self.floor = self.floor.max(c);
            self.topics.retain(|_, s| *s > c);
        }
        if self.catching_up > 0 {
            return Vec::new();
        }
        if covered.is_some() {
            self.unfilled = None;
        }
        self.held.drain(..).collect()
    }

    /// A live action: back to the caller to take in now, or held until the catch-up ends.
    pub(crate) fn hold(&mut self, action: Action) -> Option<Action> {
        if self.catching_up == 0 {
            return Some(action);
        }
        self.held.push_back(action);
        None
    }

    /// Decide on an action; `seen`: the ids taken in from every publisher; `now_ms` is the
    /// wall clock its expiry is checked against.
    pub(crate) fn admit(
        &mut self,
        seen: &mut Seen,
        action: Action,
        source: Source,
        now_ms: u64,
    ) -> Admit {
        let expired = action.expires.is_some_and(|t| t < now_ms);
        if expired && source == Source::Replayed {
            return Admit::Skip;
        }
        let topic = action.target.topic();
        let last = self.topic_last(&topic);
        if action.seq > last && seen.contains(&action.id) {
            // Taken in before under another number: this publisher died between publishing it
            // and keeping it and numbered it again when the manager resent it, or another
            // publisher delivered it first. Its number is taken in all the same, so the next
            // action here (its `prev`) shows no gap.
            tracing::debug!(seq = action.seq, id = %action.id, "action taken in before, renumbered: ignored");
            self.topics.insert(topic, action.seq);
            self.last_seq = self.last_seq.max(action.seq);
            return Admit::Skip;
        }
        if action.seq != 0 && action.seq <= last {
            if seen.contains(&action.id) || source == Source::Replayed {
                tracing::debug!(seq = action.seq, "duplicate action ignored");
                return Admit::Skip;
            }
            return Admit::Replayed {
                seq: action.seq,
                last,
            };
        }
        if action.seq != 0 {
            self.topics.insert(topic, action.seq);
        }
        self.last_seq = self.last_seq.max(action.seq);
        seen.remember(&action.id);
        if expired {
            Admit::Expired(action)
        } else {
            Admit::Apply(action)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(seq: u64, expires: Option<u64>) -> Action {
        Action {
            id: format!("a{seq}"),
            name: format!("n{seq}"),
            seq,
            target: bus::Target::All,
            graph: json!([{"kind": "noop", "name": "n"}]),
            origin: bus::Origin::default(),
            expires,
            life: bus::Life::Keep,
            prev: 0,
        }
    }

    /// Runs the intake as the serve loop does, returning the sequence numbers applied.
    fn applied(
        intake: &mut Intake,
        seen: &mut Seen,
        actions: Vec<Action>,
        source: Source,
    ) -> Vec<u64> {
        actions
            .into_iter()
            .filter_map(|a| match intake.admit(seen, a, source, 1_000) {
                Admit::Apply(a) => Some(a.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_action_replayed_and_received_live_is_applied_once_in_order() {
        let mut intake = Intake::default();
        let mut seen = Seen::default();
        intake.saw(2);
        let since = intake.begin_catch_up();
        assert_eq!(since, 2);
        // Live ones arrive while the replay is in flight: 4 was also replayed, 5 was not.
        assert_eq!(intake.hold(action(4, None)), None);
        assert_eq!(intake.hold(action(5, None)), None);
        let replayed = vec![action(2, None), action(3, None), action(4, None)];
        assert_eq!(
            applied(&mut intake, &mut seen, replayed, Source::Replayed),
            [3, 4]
        );
        let live = intake.end_catch_up(None);
        assert_eq!(applied(&mut intake, &mut seen, live, Source::Live), [5]);
        // Caught up: live actions go straight through again; seq 0 is never a duplicate.
        assert_eq!(intake.hold(action(0, None)), Some(action(0, None)));
        assert_eq!(
            applied(&mut intake, &mut seen, vec![action(0, None)], Source::Live),
            [0]
        );
    }

    #[test]
    fn live_actions_wait_for_every_catch_up_in_flight() {
        let mut intake = Intake::default();
        intake.begin_catch_up();
        intake.begin_catch_up();
        assert_eq!(intake.hold(action(7, None)), None);
        assert!(intake.end_catch_up(None).is_empty());
        assert_eq!(intake.end_catch_up(None), vec![action(7, None)]);
        assert!(intake.end_catch_up(None).is_empty());
    }

    #[test]
    fn an_old_sequence_that_is_not_a_duplicate_is_a_replay() {
        let mut intake = Intake::default();
        let mut seen = Seen::default();
        intake.saw(9);
        let mut old = action(4, None);
        old.id = "never-seen".into();
        assert_eq!(
            intake.admit(&mut seen, old, Source::Live, 1_000),
            Admit::Replayed { seq: 4, last: 9 }
        );
        assert_eq!(
            intake.admit(&mut seen, action(10, None), Source::Live, 1_000),
            Admit::Apply(action(10, None))
        );
        assert_eq!(
            intake.admit(&mut seen, action(10, None), Source::Replayed, 1_000),
            Admit::Skip
        );
    }

    #[test]
    fn expired_replayed_is_history_expired_live_is_reported() {
        let mut intake = Intake::default();
        let mut seen = Seen::default();
        assert_eq!(
            intake.admit(&mut seen, action(3, Some(999)), Source::Replayed, 1_000),
            Admit::Skip
        );
        // The replayed one did not count as taken in; the live one does, and is reported.
        assert_eq!(
            intake.admit(&mut seen, action(3, Some(999)), Source::Live, 1_000),
            Admit::Expired(action(3, Some(999)))
        );
        assert_eq!(
            intake.admit(&mut seen, action(3, None), Source::Live, 1_000),
            Admit::Skip
        );
        assert_eq!(
            intake.admit(&mut seen, action(4, Some(1_000)), Source::Live, 1_000),
            Admit::Apply(action(4, Some(1_000)))
        );
    }

    fn on(topic: &str, seq: u64, prev: u64) -> Action {
        let mut a = action(seq, None);
        a.target = bus::Target::parse(topic).unwrap();
        a.prev = prev;
        a
    }

    #[test]
    fn a_prev_never_taken_in_is_a_gap_filled_before_the_action_that_showed_it() {
        let mut intake = Intake::default();
        let mut seen = Seen::default();
        intake.saw(10);
        assert_eq!(
            intake.gap(&on("host/web1", 11, 0)),
            None,
            "prev 0: not known"
        );
        assert_eq!(
            applied(
                &mut intake,
                &mut seen,
                vec![on("host/web1", 11, 0)],
                Source::Live
            ),
            [11]
        );
        assert_eq!(
            applied(&mut intake, &mut seen, vec![on("all", 12, 9)], Source::Live),
            [12]
        );
        // 13 on host/web1 was dropped by the PUB socket; 14 names it.
        let next = on("host/web1", 14, 13);
        assert_eq!(intake.gap(&next), Some(11));
        assert_eq!(intake.gap(&on("all", 15, 12)), None);
        intake.begin_gap(11, Some(next));
        assert_eq!(intake.safe_seq(), 11, "never kept past the gap");
        assert_eq!(
            intake.hold(on("all", 15, 12)),
            None,
            "live ones wait behind it"
        );
        // The replay answer: 12 again (ours already), the missed 13, and 14 (held live too).
        let replayed = vec![
            on("all", 12, 9),
            on("host/web1", 13, 11),
            on("host/web1", 14, 13),
        ];
        assert_eq!(
            applied(&mut intake, &mut seen, replayed, Source::Replayed),
            [13, 14]
        );
        let live = intake.end_catch_up(Some(14));
        assert_eq!(applied(&mut intake, &mut seen, live, Source::Live), [15]);
        assert_eq!(intake.safe_seq(), 15);
        // An old seq on a topic, live and not taken in before: still a replay, refused.
        let mut old = on("host/web1", 13, 11);
        old.id = "never-seen".into();
        assert_eq!(
            intake.admit(&mut seen, old, Source::Live, 1_000),
            Admit::Replayed { seq: 13, last: 14 }
        );
    }

    #[test]
    fn topics_keep_their_own_order() {
        let mut intake = Intake::default();
        let mut seen = Seen::default();
        assert_eq!(
            applied(&mut intake, &mut seen, vec![on("all", 5, 0)], Source::Live),
            [5]
        );
        // A lower seq on another topic is not a replay: that topic had not reached it.
        assert_eq!(
            applied(
                &mut intake,
                &mut seen,
                vec![on("group/web", 4, 0)],
                Source::Replayed
            ),
            [4]
        );
        assert_eq!(intake.gap(&on("group/web", 7, 6)), Some(4));
        assert_eq!(intake.gap(&on("all", 7, 5)), None);
        // A tick: the publisher's last seq on a topic.
        assert_eq!(intake.behind("all/", 5), None);
        assert_eq!(intake.behind("all/", 9), Some(5));
        assert_eq!(intake.behind("host/x/", 0), None, "at or below the floor");
    }

    #[test]
    fn an_action_renumbered_after_a_publisher_crash_is_taken_in_once() {
        let mut intake = Intake::default();
        let mut seen = Seen::default();
        assert_eq!(
            applied(
                &mut intake,
                &mut seen,
                vec![on("all", 100, 0)],
                Source::Live
            ),
            [100]
        );
        let mut again = on("all", 4_197, 0);
        again.id = "a100".into();
        assert_eq!(
            intake.admit(&mut seen, again, Source::Live, 1_000),
            Admit::Skip
        );
        assert_eq!(
            applied(
                &mut intake,
                &mut seen,
                vec![on("all", 4_198, 0)],
                Source::Live
            ),
            [4_198]
        );
    }

    #[test]
    fn an_action_two_publishers_deliver_is_applied_once_and_their_numbers_stay_apart() {
        let seen = &mut Seen::default();
        let (mut a, mut b) = (Intake::default(), Intake::default());
        a.saw(40);
        // Publisher b is far behind a: its numbers are its own, not replays of a's.
        assert_eq!(
            applied(&mut b, seen, vec![on("all", 3, 0)], Source::Live),
            [3]
        );
        assert_eq!(
            applied(&mut a, seen, vec![on("all", 41, 40)], Source::Live),
            [41]
        );
        // The leader's publisher (b) sends on an action a delivered, under its own number.
        let mut again = on("all", 4, 3);
        again.id = "a41".into();
        assert_eq!(b.admit(seen, again, Source::Live, 1_000), Admit::Skip);
        // Its number counts as taken in: the next one on b shows no gap.
        assert_eq!(b.gap(&on("all", 5, 4)), None);
        assert_eq!(b.safe_seq(), 4);
        assert_eq!(
            applied(&mut b, seen, vec![on("all", 5, 4)], Source::Live),
            [5]
        );
        // Replayed from b's log later, the same id is still a duplicate.
        let mut replayed = on("all", 4, 3);
        replayed.id = "a41".into();
        assert_eq!(
            b.admit(seen, replayed, Source::Replayed, 1_000),
            Admit::Skip
        );
    }

    #[test]
    fn the_seen_ids_are_bounded_oldest_first() {
        let mut seen = Seen::default();
        for i in 0..SEEN_IDS + 10 {
            seen.remember(&format!("id{i}"));
        }
        assert!(!seen.contains("id0") && !seen.contains("id9"));
        assert!(seen.contains("id10") && seen.contains(&format!("id{}", SEEN_IDS + 9)));
        assert_eq!(seen.order.len(), SEEN_IDS);
    }
}
