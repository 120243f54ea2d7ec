//! Which actions the actor takes in, and in which order.
//!
//! Actions take effect in the order of their sequence numbers, each one once: an action with a
//! number at or below the highest one taken in is a duplicate when it is one already taken in
//! (received both replayed and live) and is ignored; any other is a replay of an old signed
//! action and refused. To keep
//! that order across a catch-up, what arrives live while one is in flight is held back and taken
//! in after the replayed actions.
//!
//! Expiry is decided here too: a replayed action that expired while the actor was away is
//! history and dropped quietly; a live one that expired before it arrived is reported.

use bus::Action;
use std::collections::VecDeque;

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
        /// The highest one taken in.
        last: u64,
    },
}

/// How many of the ids taken in are remembered to tell a duplicate from a replay.
const RECENT_IDS: usize = 4096;

/// The actor's intake: the sequence high-water mark and the actions held during catch-ups.
#[derive(Default)]
pub(crate) struct Intake {
    /// The highest sequence number taken in.
    last_seq: u64,
    /// Catch-ups started and not finished yet.
    catching_up: usize,
    /// Live actions received during a catch-up, in order of arrival. Bounded in practice by
    /// what the publisher sends in one replay's answer time.
    held: VecDeque<Action>,
    /// The ids of the latest actions taken in, oldest first, and as a set.
    recent: VecDeque<String>,
    recent_set: std::collections::HashSet<String>,
}

impl Intake {
    /// Count `seq` as taken in (a graph kept by a previous run, or the persisted last one).
    pub(crate) fn saw(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    fn remember(&mut self, id: &str) {
        if self.recent_set.insert(id.to_string()) {
            self.recent.push_back(id.to_string());
            if self.recent.len() > RECENT_IDS {
                if let Some(old) = self.recent.pop_front() {
                    self.recent_set.remove(&old);
                }
            }
        }
    }

    /// A catch-up starts: live actions are held from now on. Returns the number to replay from.
    pub(crate) fn begin_catch_up(&mut self) -> u64 {
        self.catching_up += 1;
        self.last_seq
    }

    /// A catch-up ended (its replayed actions taken in): the live actions to take in now, none
    /// while another catch-up is still in flight.
    pub(crate) fn end_catch_up(&mut self) -> Vec<Action> {
        self.catching_up = self.catching_up.saturating_sub(1);
        if self.catching_up > 0 {
            return Vec::new();
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

    /// Decide on an action; `now_ms` is the wall clock its expiry is checked against.
    pub(crate) fn admit(&mut self, action: Action, source: Source, now_ms: u64) -> Admit {
        let expired = action.expires.is_some_and(|t| t < now_ms);
        if expired && source == Source::Replayed {
            return Admit::Skip;
        }
        if action.seq != 0 && action.seq <= self.last_seq {
            if self.recent_set.contains(&action.id) {
                tracing::debug!(seq = action.seq, "duplicate action ignored");
                return Admit::Skip;
            }
            return Admit::Replayed {
                seq: action.seq,
                last: self.last_seq,
            };
        }
        self.last_seq = self.last_seq.max(action.seq);
        self.remember(&action.id);
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
        }
    }

    /// Runs the intake as the serve loop does, returning the sequence numbers applied.
    fn applied(intake: &mut Intake, actions: Vec<Action>, source: Source) -> Vec<u64> {
        actions
            .into_iter()
            .filter_map(|a| match intake.admit(a, source, 1_000) {
                Admit::Apply(a) => Some(a.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_action_replayed_and_received_live_is_applied_once_in_order() {
        let mut intake = Intake::default();
        intake.saw(2);
        let since = intake.begin_catch_up();
        assert_eq!(since, 2);
        // Live ones arrive while the replay is in flight: 4 was also replayed, 5 was not.
        assert_eq!(intake.hold(action(4, None)), None);
        assert_eq!(intake.hold(action(5, None)), None);
        let replayed = vec![action(2, None), action(3, None), action(4, None)];
        assert_eq!(applied(&mut intake, replayed, Source::Replayed), [3, 4]);
        let live = intake.end_catch_up();
        assert_eq!(applied(&mut intake, live, Source::Live), [5]);
        // Caught up: live actions go straight through again; seq 0 is never a duplicate.
        assert_eq!(intake.hold(action(0, None)), Some(action(0, None)));
        assert_eq!(
            applied(&mut intake, vec![action(0, None)], Source::Live),
            [0]
        );
    }

    #[test]
    fn live_actions_wait_for_every_catch_up_in_flight() {
        let mut intake = Intake::default();
        intake.begin_catch_up();
        intake.begin_catch_up();
        assert_eq!(intake.hold(action(7, None)), None);
        assert!(intake.end_catch_up().is_empty());
        assert_eq!(intake.end_catch_up(), vec![action(7, None)]);
        assert!(intake.end_catch_up().is_empty());
    }

    #[test]
    fn an_old_sequence_that_is_not_a_duplicate_is_a_replay() {
        let mut intake = Intake::default();
        intake.saw(9);
        let mut old = action(4, None);
        old.id = "never-seen".into();
        assert_eq!(
            intake.admit(old, Source::Live, 1_000),
            Admit::Replayed { seq: 4, last: 9 }
        );
        assert_eq!(
            intake.admit(action(10, None), Source::Live, 1_000),
            Admit::Apply(action(10, None))
        );
        assert_eq!(
            intake.admit(action(10, None), Source::Replayed, 1_000),
            Admit::Skip
        );
    }

    #[test]
    fn expired_replayed_is_history_expired_live_is_reported() {
        let mut intake = Intake::default();
        assert_eq!(
            intake.admit(action(3, Some(999)), Source::Replayed, 1_000),
            Admit::Skip
        );
        // The replayed one did not count as taken in; the live one does, and is reported.
        assert_eq!(
            intake.admit(action(3, Some(999)), Source::Live, 1_000),
            Admit::Expired(action(3, Some(999)))
        );
        assert_eq!(
            intake.admit(action(3, None), Source::Live, 1_000),
            Admit::Skip
        );
        assert_eq!(
            intake.admit(action(4, Some(1_000)), Source::Live, 1_000),
            Admit::Apply(action(4, Some(1_000)))
        );
    }
}
