//! What was last published on each topic, so that a subscriber can tell it missed something.
//!
//! A PUB socket drops silently for a subscriber past its high-water mark (a stalled or slow
//! actor in a large burst). Two things let the actor notice: each action names the seq sent
//! before it on its topic ([`bus::Action::prev`]), and, for the tail of a burst that no later
//! action follows, a **tick** on each topic that had actions in the last [`TICK_FOR`], once a
//! second: three frames, the topic, `tick`, and the last seq there (8 bytes, big-endian). An
//! actor whose own count is behind a tick fetches the rest from the replay endpoint.
//!
//! Kept in memory only: after a restart the first action of each topic says `prev` 0 ("not
//! known"), and actors reconnect and catch up anyway.

use bus::delivery::TICK;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many topics are remembered; past it they are all forgotten (prev 0 for a while).
const MAX_TOPICS: usize = 100_000;
/// How long after its last action a topic keeps being ticked.
pub(crate) const TICK_FOR: Duration = Duration::from_secs(15);
/// How often the ticks go out.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// Per topic: the last seq published and when.
pub(crate) struct Topics {
    last: HashMap<String, (u64, Instant)>,
    last_tick: Instant,
}

impl Topics {
    pub(crate) fn new() -> Topics {
        Topics {
            last: HashMap::new(),
            last_tick: Instant::now(),
        }
    }

    /// The last seq published on `topic`, 0 when not known.
    pub(crate) fn last(&self, topic: &str) -> u64 {
        self.last.get(topic).map_or(0, |(s, _)| *s)
    }

    /// A group's actions were published: the last seq it gave each topic.
    pub(crate) fn published(&mut self, topics: HashMap<String, u64>) {
        if self.last.len() + topics.len() > MAX_TOPICS {
            // An actor then misses no gap it could have told, only one it could not anyway.
            self.last.clear();
        }
        let now = Instant::now();
        self.last
            .extend(topics.into_iter().map(|(t, s)| (t, (s, now))));
    }

    /// Once a second, tick every topic with actions in the last [`TICK_FOR`].
    pub(crate) fn tick(&mut self, publish: &zmq::Socket) -> zmq::Result<()> {
        if self.last_tick.elapsed() < TICK_EVERY {
            return Ok(());
        }
        self.last_tick = Instant::now();
        for (topic, (seq, at)) in &self.last {
            if at.elapsed() < TICK_FOR {
                // A PUB never blocks: a tick dropped for a slow subscriber is sent again.
                publish.send(topic.as_bytes(), zmq::SNDMORE)?;
                publish.send(TICK, zmq::SNDMORE)?;
                publish.send(&seq.to_be_bytes()[..], 0)?;
            }
        }
        Ok(())
    }
}
