//! The link from the manager, and the acknowledgements back.
//!
//! Every link frame is a [`Linked`]: action number `seq` of the manager's outbox `outbox`. The
//! publisher remembers per outbox the highest number it logged (`acked`, in the journal, in the
//! same batch as the actions it covers) and takes only `acked + 1` next: a lower number is a
//! resend (acknowledged, not logged again), a higher one means one was lost on the way (dropped
//! unacknowledged; the manager resends in order from `acked + 1`). A frame may say that every
//! number up to its `after` is already in some publisher's log (the outbox deletes an entry only
//! once acknowledged): the publisher then takes `after + 1` next, which is how a clustered
//! leader hands a dead member's outbox to its own publisher, and how a manager that comes back
//! linked to another publisher (or to a wiped one) is not stuck waiting for numbers it deleted.
//!
//! A group is what the link holds at one look (at most [`MAX_GROUP`] frames): numbered, sealed,
//! staged in one batch, applied, published, flushed once, and only then acknowledged. A kill -9
//! anywhere loses nothing acknowledged and never reuses a seq (a restart after one numbers on
//! from one group further).

use crate::journal::Journal;
use crate::{Publisher, PublisherError};
use bus::delivery::{valid_stream, LinkAck, Linked};
use bus::MalformedKind;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Most link frames committed as one group.
pub(crate) const MAX_GROUP: usize = 4_096;
/// Most outboxes remembered; past it the one heard from longest ago is forgotten.
pub(crate) const MAX_OUTBOXES: usize = 1_024;
/// How often every recently seen outbox is told where it stands.
const ACK_EVERY: Duration = Duration::from_secs(1);
/// How long after its last frame an outbox is still told.
const SEEN_FOR: Duration = Duration::from_secs(60);

/// Where one outbox stands.
struct Outbox {
    /// The highest number logged (durable).
    acked: u64,
    /// The seq the publisher was at when it last heard from it: the oldest goes first.
    stamp: u64,
    /// When it last sent a frame (or the publisher started, for one it remembers).
    seen: Instant,
}

/// Every outbox remembered.
pub(crate) struct Outboxes {
    map: HashMap<String, Outbox>,
    last_tick: Instant,
}

impl Outboxes {
    /// The outboxes the journal remembers, each counted as seen now: a manager waiting for an
    /// ack the publisher died before sending learns where it stands.
    pub(crate) fn load(journal: &Journal) -> Result<Outboxes, PublisherError> {
        let now = Instant::now();
        let map = journal
            .outboxes()?
            .into_iter()
            .map(|o| {
                let (acked, stamp, seen) = (o.acked, o.stamp, now);
                (o.id, Outbox { acked, stamp, seen })
            })
            .collect();
        Ok(Outboxes {
            map,
            last_tick: now,
        })
    }

    /// The highest number logged from `outbox` (0 for one unknown).
    pub(crate) fn acked(&self, outbox: &str) -> u64 {
        self.map.get(outbox).map_or(0, |o| o.acked)
    }

    /// How many are remembered.
    #[cfg(test)]
    pub(crate) fn map_len(&self) -> usize {
        self.map.len()
    }

    fn touch(&mut self, outbox: &str, stamp: u64) {
        let now = Instant::now();
        match self.map.get_mut(outbox) {
            Some(o) => {
                o.stamp = stamp;
                o.seen = now;
            }
            None => {
                let o = Outbox {
                    acked: 0,
                    stamp,
                    seen: now,
                };
                self.map.insert(outbox.to_string(), o);
            }
        }
    }

    /// Forget the outboxes heard from longest ago while there are too many, sparing those in
    /// `spare` (advanced by the group being committed); staged in `batch`.
    fn evict(&mut self, batch: &mut sled::Batch, spare: &HashMap<String, u64>) {
        let Some(excess) = self.map.len().checked_sub(MAX_OUTBOXES).filter(|&n| n > 0) else {
            return;
        };
        // Outboxes that never had an action logged (heard from only after a gap) go first, so
        // frames with made-up ids cannot push out a real outbox.
        let mut old: Vec<(bool, u64, String)> = self
            .map
            .iter()
            .filter(|(id, _)| !spare.contains_key(*id))
            .map(|(id, o)| (o.acked > 0, o.stamp, id.clone()))
            .collect();
        old.sort_unstable();
        for (_, _, id) in old.into_iter().take(excess) {
            tracing::info!(outbox = %id, "forgot an outbox heard from longest ago");
            self.map.remove(&id);
            Journal::stage_forget(batch, &id);
        }
    }
}

/// One group of link frames being committed.
pub(crate) struct Group {
    batch: sled::Batch,
    /// The seq its next action gets.
    next: u64,
    /// Topic and sealed frame of each action, in order.
    out: Vec<(String, Vec<u8>)>,
    /// Seq and name of each action, in order (for pruning).
    named: Vec<(u64, String)>,
    /// Outboxes advanced, with the number they reached.
    advanced: HashMap<String, u64>,
    /// Outboxes to acknowledge once committed: advanced or resent to.
    ack: BTreeSet<String>,
    /// The last seq the group gives each topic.
    topics: HashMap<String, u64>,
}

impl Publisher {
    /// An empty group starting at the next seq.
    pub(crate) fn group(&self) -> Group {
        Group {
            batch: sled::Batch::default(),
            next: self.next_seq,
            out: Vec::new(),
            named: Vec::new(),
            advanced: HashMap::new(),
            ack: BTreeSet::new(),
            topics: HashMap::new(),
        }
    }

    /// Take one link frame into `group`; true when it is new and will be logged.
    pub(crate) fn admit(&mut self, frame: &[u8], group: &mut Group) -> bool {
        // A bad target does not decode: it is counted as a malformed frame.
        let Some(Linked {
            outbox,
            seq,
            mut action,
            after,
        }) = self
            .bad
            .keep(bus::decode_with_limit::<Linked>(frame, self.max_frame))
        else {
            return false;
        };
        let why = if !valid_stream(&outbox) {
            Some(format!("bad outbox id {outbox:?}"))
        } else if seq == 0 {
            Some("link numbers start at 1".to_string())
        } else if action.name.is_empty() || action.name.contains(char::is_control) {
            Some(format!("bad action name {:?}", action.name))
        } else {
            None
        };
        if let Some(why) = why {
            self.bad.count(MalformedKind::Malformed, &why);
            return false;
        }
        let acked = match group.advanced.get(&outbox) {
            Some(&n) => n,
            None => self.outboxes.acked(&outbox),
        };
        // The sender vouches that everything up to `after` is logged by some publisher (this
        // one or another of the cluster): the next number is the one after it.
        let acked = acked.max(after);
        self.outboxes.touch(&outbox, group.next);
        if seq <= acked {
            self.resent += 1;
            group.ack.insert(outbox);
            return false;
        }
        if seq > acked + 1 {
            // Not acknowledged: the manager resends from acked + 1 on the next ack it hears.
            self.gaps += 1;
            tracing::debug!(%outbox, seq, expected = acked + 1, "link frame after a gap dropped");
            return false;
        }
        action.seq = group.next;
        group.next += 1;
        let topic = action.target.topic();
        action.prev = group
            .topics
            .get(&topic)
            .copied()
            .unwrap_or_else(|| self.topics.last(&topic));
        group.topics.insert(topic, action.seq);
        let sealed = bus::envelope::seal(&self.sign, &action, bus::now_ms());
        Journal::stage_action(&mut group.batch, action.seq, &action.name, &sealed);
        group.out.push((action.target.topic(), sealed));
        group.named.push((action.seq, action.name.clone()));
        tracing::debug!(seq = action.seq, name = %action.name, action = %action.id, event = %action.origin.event, target = %action.target, %outbox, link_seq = seq, "logged");
        group.advanced.insert(outbox.clone(), seq);
        group.ack.insert(outbox);
        true
    }

    /// Commit `group` (one batch, one flush), then publish its actions and acknowledge.
    pub(crate) fn commit(&mut self, group: Group) -> Result<(), PublisherError> {
        let Group {
            mut batch,
            next,
            out,
            named,
            advanced,
            ack,
            topics,
        } = group;
        self.outboxes.evict(&mut batch, &advanced);
        if !out.is_empty() {
            for (id, &acked) in &advanced {
                Journal::stage_outbox(&mut batch, id, acked, next - 1);
            }
            self.journal
                .stage_prune(&mut batch, next - 1, self.keep, &named)?;
        }
        self.journal.apply(batch)?;
        if !out.is_empty() {
            // Published while the flush is still to come, acknowledged only after it: the
            // fsync is off the path to the actors. Killed in between, the group's seqs were
            // seen but not kept, so a publisher that did not stop cleanly numbers on from one
            // group further (never a seq twice), and the manager resends the group (never
            // acknowledged), which actors recognise by action id.
            self.next_seq = next;
            self.topics.published(topics);
            for (topic, sealed) in out {
                self.publish.send(topic.as_bytes(), zmq::SNDMORE)?;
                self.publish.send(sealed, 0)?;
                self.published += 1;
            }
            self.db.flush()?;
            self.commits += 1;
            for (id, acked) in advanced {
                if let Some(o) = self.outboxes.map.get_mut(&id) {
                    o.acked = acked;
                }
            }
        }
        for id in &ack {
            self.send_ack(id)?;
        }
        Ok(())
    }

    fn send_ack(&self, outbox: &str) -> Result<(), PublisherError> {
        let ack = LinkAck {
            outbox: outbox.to_string(),
            upto: self.outboxes.acked(outbox),
        };
        // A PUB never blocks: with no subscriber the ack is dropped, and the tick resends it.
        self.acks.send(outbox.as_bytes(), zmq::SNDMORE)?;
        self.acks.send(bus::encode(&ack), 0)?;
        Ok(())
    }

    /// Once a second, tell every outbox heard from in the last minute where it stands.
    pub(crate) fn tick_acks(&mut self) -> Result<(), PublisherError> {
        if self.outboxes.last_tick.elapsed() < ACK_EVERY {
            return Ok(());
        }
        self.outboxes.last_tick = Instant::now();
        let recent: Vec<String> = self
            .outboxes
            .map
            .iter()
            .filter(|(_, o)| o.seen.elapsed() < SEEN_FOR)
            .map(|(id, _)| id.clone())
            .collect();
        for id in recent {
            self.send_ack(&id)?;
        }
        Ok(())
    }
}
