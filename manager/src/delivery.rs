//! Streams: which events of each sender are done, and the acks door that says so.
//!
//! A sender numbers its events in a stream ([`bus::delivery`]). Per stream, keyed by the
//! sender's authenticated name and its stream id (a host can neither advance nor read another
//! host's stream), the manager keeps the next number it expects. It is committed with the
//! effects of the events it counts ([`Streams::side_writes`]), and only after that commit are
//! acks sent ([`Streams::committed`]): an acknowledged event is durable, and an event done
//! before a crash is recognised when it comes again.
//!
//! Clustered (a shared register store), the committed marks are etcd's: a stream's mark is
//! read with [`Registers::side_get`] the first time a group touches the stream (so the
//! group's transaction compares it, and two managers cannot both take the same event), acks
//! say what the shared mark says, and a manager that forwarded a stream to its owner relays
//! the owner's progress to the sender as the mark moves ([`Streams::relay_acks`]). Marks are
//! never forgotten there (a later leader's job), only dropped from memory.
//!
//! Bounded: at most [`MAX_STREAMS`] streams are remembered (the one idle longest is forgotten
//! first, and so is any stream idle for [`FORGET_AFTER_MS`]); a sender whose stream was
//! forgotten starts over as a new one. Hellos only record where to send acks (in memory, at most
//! [`MAX_ROUTES`]).

use bus::delivery::{Ack, Batch, Hello};
use registers::{RegisterError, Registers, SideWrite};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The side space the stream marks live in, next to the registers.
pub const SPACE: u8 = 0x80;
/// Most streams remembered.
pub const MAX_STREAMS: usize = 100_000;
/// A stream not heard from for this long (7 days) is forgotten.
pub const FORGET_AFTER_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most ack routes kept in memory.
pub const MAX_ROUTES: usize = 100_000;
/// Most streams remembered for one sender name: past it, that sender's stream idle longest is
/// forgotten, so a host minting stream ids forgets only its own.
pub const MAX_STREAMS_PER_SENDER: usize = 1_024;
/// Clustered: a mark forgotten for the bounds ([`MAX_STREAMS`], [`MAX_STREAMS_PER_SENDER`])
/// has been idle at least this long (1 hour): a sender still talking is acknowledged within a
/// heartbeat of each commit, so it holds nothing below its stream's mark by then.
pub const MIN_IDLE_TO_FORGET_MS: u64 = 3600 * 1000;
/// Most marks forgotten in one pass.
pub const MAX_FORGET_PER_PASS: usize = 1_000;

/// Clustered (the leader's job): which of the committed `marks` (stream key, when an event of
/// it was last done) to forget at `now`, by their index: those idle more than
/// [`FORGET_AFTER_MS`], then, past [`MAX_STREAMS_PER_SENDER`] for one sender or
/// [`MAX_STREAMS`] in all, the idle longest among those idle at least
/// [`MIN_IDLE_TO_FORGET_MS`]; at most [`MAX_FORGET_PER_PASS`].
pub fn to_forget(marks: &[(&str, u64)], now: u64) -> Vec<usize> {
    let idle = |i: usize| now.saturating_sub(marks[i].1);
    let mut gone = vec![false; marks.len()];
    let mut out = Vec::new();
    let take = |i: usize, gone: &mut Vec<bool>, out: &mut Vec<usize>| {
        if !gone[i] && out.len() < MAX_FORGET_PER_PASS {
            gone[i] = true;
            out.push(i);
        }
    };
    for i in 0..marks.len() {
        if idle(i) > FORGET_AFTER_MS {
            take(i, &mut gone, &mut out);
        }
    }
    // Per sender, then in all: the idle longest first, never one idle less than the floor.
    let mut by_sender: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (k, _)) in marks.iter().enumerate() {
        let user = k.split_once('\0').map_or(*k, |(u, _)| u);
        by_sender.entry(user).or_default().push(i);
    }
    for mut mine in by_sender.into_values() {
        mine.retain(|&i| !gone[i]);
        if mine.len() <= MAX_STREAMS_PER_SENDER {
            continue;
        }
        let over = mine.len() - MAX_STREAMS_PER_SENDER;
        mine.sort_unstable_by_key(|&i| marks[i].1);
        for &i in mine.iter().take(over) {
            if idle(i) >= MIN_IDLE_TO_FORGET_MS {
                take(i, &mut gone, &mut out);
            }
        }
    }
    let left: Vec<usize> = (0..marks.len()).filter(|&i| !gone[i]).collect();
    if left.len() > MAX_STREAMS {
        let mut left = left;
        let over = left.len() - MAX_STREAMS;
        left.sort_unstable_by_key(|&i| marks[i].1);
        for &i in left.iter().take(over) {
            if idle(i) >= MIN_IDLE_TO_FORGET_MS {
                take(i, &mut gone, &mut out);
            }
        }
    }
    out
}

/// What the manager does with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Run the batch's events from this index on (the ones before were done already).
    From(usize),
    /// The batch starts past the next expected event: one was lost on the way. Dropped whole;
    /// the sender sends again from where the ack says.
    Gap,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    next: u64,
    seen: u64,
}

/// The streams and the acks door.
pub struct Streams {
    /// By key, so one sender's streams are one range.
    streams: BTreeMap<String, Stream>,
    /// Streams advanced since the last commit.
    dirty: HashSet<String>,
    /// Streams forgotten since the last commit (their marks are deleted with it).
    forgotten: Vec<String>,
    /// Streams advanced by the last commit, to ack.
    to_ack: Vec<String>,
    routes: HashMap<String, Vec<u8>>,
    door: zmq::Socket,
    /// Events skipped because they were done already (resends).
    pub duplicates: u64,
    /// Batches dropped because an event before them was missing.
    pub gaps: u64,
    /// Clustered: the shared registers the marks are read from.
    shared: Option<Registers>,
    /// Clustered: streams this manager forwarded to their owner, and the mark last relayed.
    fronted: HashMap<String, u64>,
    /// Clustered: where a stream without a mark in etcd goes on, as its sender's hello said
    /// (everything below was acknowledged); forwarded with its batches to the owner.
    hints: HashMap<String, u64>,
}

/// The key of `stream` from `user` (`""` without CURVE).
pub fn key(user: &str, stream: &str) -> String {
    let mut k = String::with_capacity(user.len() + stream.len() + 1);
    k.push_str(user);
    k.push('\0');
    k.push_str(stream);
    k
}

impl Streams {
    /// The committed stream marks, and the bound acks door.
    /// `shared`: the registers are a cluster's (the marks are read as needed, not at open).
    pub fn open(
        registers: &Registers,
        door: zmq::Socket,
        shared: bool,
    ) -> Result<Streams, RegisterError> {
        let mut streams = BTreeMap::new();
        let committed = if shared {
            Vec::new()
        } else {
            registers.side_entries(SPACE)?
        };
        for (k, v) in committed {
            let (Ok(key), Some(s)) = (String::from_utf8(k), decode(&v)) else {
                continue;
            };
            streams.insert(key, s);
        }
        Ok(Streams {
            streams,
            dirty: HashSet::new(),
            forgotten: Vec::new(),
            to_ack: Vec::new(),
            routes: HashMap::new(),
            door,
            duplicates: 0,
            gaps: 0,
            shared: shared.then(|| registers.clone()),
            fronted: HashMap::new(),
            hints: HashMap::new(),
        })
    }

    /// Streams advanced in the group being built.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Clustered: the mark of `key` as committed (etcd's, through the mirror), not recorded.
    fn shared_next(&self, key: &str) -> Option<u64> {
        let reg = self.shared.as_ref()?;
        match reg.side_peek(SPACE, key.as_bytes()) {
            Ok(v) => Some(v.as_deref().and_then(decode).map_or(0, |s| s.next)),
            Err(_) => None,
        }
    }

    /// Clustered: `key` was forwarded to its owner from here; its sender is acked from the
    /// shared mark as it moves.
    pub fn front(&mut self, key: &str) {
        if !self.fronted.contains_key(key) {
            if self.fronted.len() >= MAX_ROUTES {
                self.fronted.clear();
            }
            self.fronted.insert(key.to_string(), 0);
        }
    }

    /// Clustered: where stream `key`, without a mark in etcd, goes on (its sender's hello).
    pub fn hint(&self, key: &str) -> Option<u64> {
        self.hints.get(key).copied()
    }

    /// Clustered: stream `key` goes on at `from` if it has no mark (a hello heard here, or
    /// one another manager forwarded with the stream's batch).
    pub fn set_hint(&mut self, key: &str, from: u64) {
        if from == 0 {
            self.hints.remove(key);
            return;
        }
        if self.hints.len() >= MAX_ROUTES && !self.hints.contains_key(key) {
            // Only a cache: a sender says it again at its next hello.
            self.hints.clear();
        }
        self.hints.insert(key.to_string(), from);
    }

    /// Clustered: ack the senders of forwarded streams whose shared mark moved.
    pub fn relay_acks(&mut self) {
        if self.fronted.is_empty() {
            return;
        }
        let mut moved = Vec::new();
        for (k, last) in &self.fronted {
            if let Some(next) = self.shared_next(k) {
                if next > *last {
                    moved.push((k.clone(), next));
                }
            }
        }
        for (k, next) in moved {
            self.fronted.insert(k.clone(), next);
            self.ack(&k);
        }
    }

    /// Clustered: the group lost a race and is discarded: forget what it advanced (the next
    /// group reads those marks again).
    pub fn discard(&mut self) {
        for k in self.dirty.drain() {
            self.streams.remove(&k);
        }
        self.forgotten.clear();
    }

    /// How many streams are remembered.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no stream is remembered.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Which events of `batch`, from the stream `key`, to run.
    pub fn admit(&mut self, key: &str, batch: &Batch) -> Admit {
        let n = batch.events.len() as u64;
        if let Some(reg) = &self.shared {
            if !self.dirty.contains(key) {
                // The committed mark, read into the group's compares.
                match reg.side_get(SPACE, key.as_bytes()) {
                    Ok(Some(v)) => match decode(&v) {
                        Some(s) => {
                            self.hints.remove(key);
                            self.streams.insert(key.to_string(), s);
                        }
                        None => {
                            tracing::warn!(stream = %key.replace('\0', "/"), "a stream mark in etcd does not decode: starting the stream over");
                            self.streams.remove(key);
                        }
                    },
                    Ok(None) => match self.hints.get(key) {
                        // No mark (new, or forgotten by the leader): where the sender's hello
                        // says, everything below having been acknowledged. The group's
                        // transaction compares the mark's absence.
                        Some(&from) => {
                            self.streams.insert(
                                key.to_string(),
                                Stream {
                                    next: from,
                                    seen: bus::now_ms(),
                                },
                            );
                        }
                        None => {
                            self.streams.remove(key);
                        }
                    },
                    Err(e) => {
                        // Not taken: the sender sends it again.
                        tracing::warn!(error = %e, "cannot read a stream mark");
                        return Admit::Gap;
                    }
                }
            }
        }
        let next = match self.streams.get(key) {
            Some(s) => s.next,
            // A stream never seen (or forgotten) starts at 0, or where its hello says
            // ([`Streams::serve_door`]); never where a batch starts, or what was lost before it
            // would be taken for done.
            None => 0,
        };
        if batch.first > next {
            self.gaps += 1;
            // The ack tells the sender where to go back to.
            self.to_ack.push(key.to_string());
            return Admit::Gap;
        }
        let skip = (next - batch.first).min(n);
        self.duplicates += skip;
        if skip == n {
            // All done already: ack again, the earlier ack may have been lost.
            self.to_ack.push(key.to_string());
        }
        Admit::From(skip as usize)
    }

    /// Event number `n` of stream `key` is done (in the group being built).
    pub fn done(&mut self, key: &str, n: u64) {
        let now = bus::now_ms();
        match self.streams.get_mut(key) {
            Some(s) => {
                s.next = n + 1;
                s.seen = now;
            }
            None => {
                self.streams.insert(
                    key.to_string(),
                    Stream {
                        next: n + 1,
                        seen: now,
                    },
                );
                self.cap_sender(key);
            }
        }
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
    }

    /// Keep at most [`MAX_STREAMS_PER_SENDER`] streams of the sender of `key`.
    fn cap_sender(&mut self, key: &str) {
        let user_end = key.find('\0').map_or(key.len(), |i| i + 1);
        let prefix = &key[..user_end];
        let mine: Vec<(&String, &Stream)> = self
            .streams
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(MAX_STREAMS_PER_SENDER + 1)
            .collect();
        if mine.len() <= MAX_STREAMS_PER_SENDER {
            return;
        }
        let Some(oldest) = mine
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .min_by_key(|(_, s)| s.seen)
            .map(|(k, _)| (*k).clone())
        else {
            return;
        };
        self.streams.remove(&oldest);
        self.dirty.remove(&oldest);
        if self.shared.is_none() {
            self.forgotten.push(oldest);
        }
    }

    /// True when marks wait for a commit.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.forgotten.is_empty()
    }

    /// The marks to commit with the group; forgets streams past the bounds.
    pub fn side_writes(&mut self) -> Vec<SideWrite> {
        self.forget(bus::now_ms());
        let mut out = Vec::with_capacity(self.dirty.len() + self.forgotten.len());
        for k in self.forgotten.drain(..) {
            out.push(SideWrite {
                space: SPACE,
                key: k.into_bytes(),
                value: None,
            });
        }
        for k in &self.dirty {
            if let Some(s) = self.streams.get(k) {
                out.push(SideWrite {
                    space: SPACE,
                    key: k.as_bytes().to_vec(),
                    value: Some(encode(s)),
                });
            }
        }
        out
    }

    fn forget(&mut self, now: u64) {
        let stale: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.seen) > FORGET_AFTER_MS)
            .map(|(k, _)| k.clone())
            .take(1_000)
            .collect();
        for k in stale {
            self.streams.remove(&k);
            self.dirty.remove(&k);
            if self.shared.is_none() {
                self.forgotten.push(k);
            }
        }
        while self.streams.len() > MAX_STREAMS {
            let Some(oldest) = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            tracing::warn!(stream = %oldest.replace('\0', "/"), "more than {MAX_STREAMS} streams: forgetting the one idle longest");
            self.streams.remove(&oldest);
            self.dirty.remove(&oldest);
            if self.shared.is_none() {
                self.forgotten.push(oldest);
            }
        }
    }

    /// The group is committed: ack every stream it advanced.
    pub fn committed(&mut self) {
        let advanced: Vec<String> = self.dirty.drain().collect();
        self.to_ack.extend(advanced);
        self.send_acks();
    }

    /// Send the acks owed (a gap or a resend answered without a commit).
    pub fn send_acks(&mut self) {
        for k in std::mem::take(&mut self.to_ack) {
            self.ack(&k);
        }
    }

    fn ack(&self, key: &str) {
        let Some(route) = self.routes.get(key) else {
            // No hello yet: the sender's next hello is answered with where it stands.
            return;
        };
        let stream = key.split_once('\0').map(|(_, s)| s).unwrap_or(key);
        let next = match self.shared_next(key) {
            Some(shared) => shared,
            None => self.streams.get(key).map(|s| s.next).unwrap_or(0),
        };
        let frame = bus::encode(&Ack {
            stream: stream.to_string(),
            next,
        });
        // A sender gone away is dropped by ROUTER; its next hello gets the news.
        if self
            .door
            .send(&route[..], zmq::SNDMORE | zmq::DONTWAIT)
            .is_ok()
        {
            let _ = self.door.send(frame, zmq::DONTWAIT);
        }
    }

    /// The acks door's socket, to poll.
    pub fn door(&self) -> &zmq::Socket {
        &self.door
    }

    /// Answer the hellos waiting at the door: remember where each stream's acks go and say
    /// where it stands. `secure`: take the sender's name from its `User-Id`. Returns the
    /// authenticated names heard from (their heartbeats; none without CURVE), each once: a
    /// set, since a reconnecting fleet can leave tens of thousands of hellos for one pass.
    pub fn serve_door(
        &mut self,
        secure: bool,
    ) -> Result<std::collections::BTreeSet<String>, zmq::Error> {
        let mut route = zmq::Message::new();
        let mut body = zmq::Message::new();
        let mut heard = std::collections::BTreeSet::new();
        loop {
            match self.door.recv(&mut route, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(heard),
                Err(e) => return Err(e),
            }
            if !route.get_more() {
                continue;
            }
            self.door.recv(&mut body, zmq::DONTWAIT)?;
            // Whatever else the peer put in the message is not ours to read.
            while body.get_more() {
                let mut rest = zmq::Message::new();
                self.door.recv(&mut rest, zmq::DONTWAIT)?;
                if !rest.get_more() {
                    break;
                }
            }
            let user = if secure {
                body.gets("User-Id").unwrap_or_default().to_string()
            } else {
                String::new()
            };
            let Ok(hello) = bus::decode_with_limit::<Hello>(&body, 1_024) else {
                continue;
            };
            if !bus::delivery::valid_stream(&hello.stream) {
                continue;
            }
            let k = key(&user, &hello.stream);
            if self.shared.is_some() {
                // Clustered: a stream without a mark in etcd goes on where the hello says
                // (taken by the owner, this manager or the one it forwards to).
                match self.shared_next(&k) {
                    Some(0) if hello.from > 0 => self.set_hint(&k, hello.from),
                    Some(_) => {
                        self.hints.remove(&k);
                    }
                    None => {}
                }
            } else if hello.from > 0 && !self.streams.contains_key(&k) {
                // Everything below `from` was acknowledged (by this manager before it lost the
                // mark, or before it forgot the stream): the stream goes on from there.
                self.done(&k, hello.from - 1);
            }
            if self.routes.len() >= MAX_ROUTES && !self.routes.contains_key(&k) {
                // Routes are only a cache of where acks go: start it again.
                self.routes.clear();
            }
            self.routes.insert(k.clone(), route.to_vec());
            self.ack(&k);
            if !user.is_empty() {
                heard.insert(user);
            }
        }
    }
}

fn encode(s: &Stream) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&s.next.to_be_bytes());
    v.extend_from_slice(&s.seen.to_be_bytes());
    v
}

fn decode(v: &[u8]) -> Option<Stream> {
    let next = u64::from_be_bytes(v.get(0..8)?.try_into().ok()?);
    let seen = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some(Stream { next, seen })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> Streams {
        let door = bus::sockets::bind(zmq::ROUTER, &format!("inproc://streams-{}", bus::new_id()))
            .expect("door");
        Streams::open(&Registers::temporary().expect("store"), door, false).expect("streams")
    }

    fn batch(first: u64, n: usize) -> Vec<u8> {
        let events: Vec<Vec<u8>> = (0..n).map(|i| vec![bus::VERSION, i as u8]).collect();
        Batch::encode("s", first, &events)
    }

    #[test]
    fn a_stream_is_taken_in_order_once_and_an_unknown_one_only_from_its_start() {
        let mut s = streams();
        let k = key("web1", "s");
        // Unknown: a batch past 0 follows events lost on the way (or a lost mark): not taken.
        let late = batch(5, 2);
        assert_eq!(
            s.admit(&k, &Batch::decode(&late, 1 << 20).unwrap()),
            Admit::Gap
        );
        let first = batch(0, 3);
        assert_eq!(
            s.admit(&k, &Batch::decode(&first, 1 << 20).unwrap()),
            Admit::From(0)
        );
        for n in 0..3 {
            s.done(&k, n);
        }
        // A resend overlapping what is done: only the new part runs.
        let again = batch(1, 4);
        assert_eq!(
            s.admit(&k, &Batch::decode(&again, 1 << 20).unwrap()),
            Admit::From(2)
        );
        assert_eq!((s.duplicates, s.gaps), (2, 1));
        // Another host's stream of the same id is its own.
        let other = key("web2", "s");
        assert_eq!(
            s.admit(&other, &Batch::decode(&again, 1 << 20).unwrap()),
            Admit::Gap
        );
        let writes = s.side_writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].key, k.as_bytes());
    }

    #[test]
    fn the_clustered_window_forgets_what_sled_forgets_but_nothing_recent() {
        let now = 30 * 24 * 3600 * 1000;
        let day = 24 * 3600 * 1000;
        // Idle 8 days: gone; idle 6 days: kept.
        let a = key("web1", "old");
        let b = key("web1", "recent");
        assert_eq!(
            to_forget(&[(&a, now - 8 * day), (&b, now - 6 * day)], now),
            [0]
        );
        // One sender past its bound: its idle longest go, but only those idle an hour.
        let keys: Vec<String> = (0..MAX_STREAMS_PER_SENDER + 3)
            .map(|i| key("web2", &format!("s{i}")))
            .collect();
        let mut marks: Vec<(&str, u64)> = keys.iter().map(|k| (k.as_str(), now)).collect();
        marks[5].1 = now - 2 * 3600 * 1000;
        marks[7].1 = now - 3 * 3600 * 1000;
        marks[9].1 = now - 60 * 1000;
        let mut gone = to_forget(&marks, now);
        gone.sort_unstable();
        assert_eq!(gone, [5, 7], "the third oldest is idle a minute only: kept");
        // Another sender's streams are not counted against this one.
        let other = key("web3", "s");
        marks.push((&other, now - 2 * 3600 * 1000));
        assert_eq!(to_forget(&marks, now).len(), 2);
    }

    #[test]
    fn a_sender_minting_streams_forgets_only_its_own() {
        let mut s = streams();
        s.done(&key("web2", "keep"), 0);
        for i in 0..MAX_STREAMS_PER_SENDER + 10 {
            s.done(&key("web1", &format!("s{i}")), 0);
        }
        assert_eq!(s.len(), MAX_STREAMS_PER_SENDER + 1);
        assert!(s.streams.contains_key(&key("web2", "keep")));
        let last = key("web1", &format!("s{}", MAX_STREAMS_PER_SENDER + 9));
        assert!(s.streams.contains_key(&last), "the newest is kept");
        let forgotten = s.side_writes().iter().filter(|w| w.value.is_none()).count();
        assert_eq!(forgotten, 10);
    }
}
