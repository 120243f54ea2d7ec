//! Delivery: at least once on the wire, exactly once in effect.
//!
//! **Senders → manager.** A sender numbers its events in a *stream* (an id it makes at start,
//! or keeps in its spool): event `n` of stream `s` is `(s, n)`, counted from 0. Events travel on
//! the PUSH → PULL ingest path as [`Batch`] frames (a run of consecutive events of one stream,
//! each the very bytes of a single-event frame). The sender also connects a DEALER to the
//! manager's acks door (ROUTER) and says [`Hello`] there at start and every heartbeat; the
//! manager answers each hello, and every group commit that advanced the stream, with an
//! [`Ack`]: every event numbered below `next` is done, its effects durable. The sender keeps
//! what is not acknowledged and sends it again after a timeout.
//!
//! The manager keeps, per stream, the next number it expects, committed with the effects of
//! the events it counts. It takes only that number next: an event below it was done already (a
//! resend) and is skipped; a batch that starts above it (an event lost on the way) is dropped
//! whole and answered with the ack the sender rewinds to. So a stream is processed in order,
//! every event once. A stream the manager does not know starts at 0, or where the sender's
//! hello says its oldest held event is ([`Hello::from`]): never where a batch happens to
//! start, which would skip events lost before it.
//!
//! **Manager → publisher.** Actions wait in the manager's durable outbox, numbered per outbox
//! ([`Linked`]); the publisher logs them durably and answers with [`LinkAck`] on its ack PUB,
//! topic = the outbox id. It remembers the highest number it logged per outbox (in the same
//! write as the log), so a resend after either side restarts is recognised and not numbered
//! twice.
//!
//! **Publisher → actor.** Each action names the seq sent before it on its topic
//! ([`crate::Action::prev`]), and the publisher ticks recent topics with their last seq: three
//! frames, the topic, [`TICK`], the seq (8 bytes, big-endian). An actor behind either fetches the
//! rest from the replay door.
//!
//! ```
//! use bus::delivery::Batch;
//!
//! let events = [bus::encode(&bus::Event::new("demo/a", "web1", serde_json::json!({})))];
//! let frame = Batch::encode("s1", 7, &events);
//! let back = Batch::decode(&frame, bus::MAX_FRAME).unwrap();
//! assert_eq!((back.stream, back.first, back.events.len()), ("s1", 7, 1));
//! assert_eq!(back.events[0], events[0].as_slice());
//! ```

use crate::codec::DecodeError;
use crate::Action;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The first byte of a [`Batch`] frame (a single-event frame starts with [`crate::VERSION`]).
pub const BATCH: u8 = b'B';

/// The middle frame of a publisher's tick on a topic.
pub const TICK: &[u8] = b"tick";

/// Most events one batch frame may carry.
pub const MAX_BATCH_EVENTS: usize = 1_024;

/// Longest stream id accepted: ids are made by [`new_stream`].
pub const MAX_STREAM_ID: usize = 64;

/// A run of consecutive events of one stream: event `first + i` is `events[i]`, each a whole
/// single-event frame (version byte and msgpack), borrowed from the batch frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The sender's stream id.
    pub stream: &'a str,
    /// The number of the first event.
    pub first: u64,
    /// The events, in order.
    pub events: Vec<&'a [u8]>,
}

/// A byte string on the wire as msgpack `bin`, borrowed when decoded.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Raw<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event frame as msgpack bin")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Raw<'de>, E> {
                Ok(Raw(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    stream: &'a str,
    first: u64,
    #[serde(borrow)]
    events: Vec<Raw<'a>>,
}

/// Why a batch frame was refused beyond not decoding.
fn invalid(why: &str) -> DecodeError {
    DecodeError::Malformed(rmp_serde::decode::Error::Syntax(why.to_string()))
}

impl<'a> Batch<'a> {
    /// The frame for events `first..` of `stream`.
    pub fn encode<E: AsRef<[u8]>>(stream: &str, first: u64, events: &[E]) -> Vec<u8> {
        let size: usize = events.iter().map(|e| e.as_ref().len() + 5).sum();
        let mut out = Vec::with_capacity(size + stream.len() + 32);
        out.push(BATCH);
        let wire = Wire {
            stream,
            first,
            events: events.iter().map(|e| Raw(e.as_ref())).collect(),
        };
        rmp_serde::encode::write_named(&mut out, &wire).expect("batches always encode");
        out
    }

    /// Decode a batch frame of at most `limit` bytes; the stream id is checked (non-empty, at
    /// most [`MAX_STREAM_ID`] ASCII letters, digits, `-` and `_`), and so is the count
    /// (1 to [`MAX_BATCH_EVENTS`]). The events inside are not decoded here.
    pub fn decode(frame: &'a [u8], limit: usize) -> Result<Batch<'a>, DecodeError> {
        if frame.len() > limit {
            return Err(DecodeError::Oversize {
                size: frame.len(),
                limit,
            });
        }
        let (&kind, body) = frame.split_first().ok_or(DecodeError::Empty)?;
        if kind != BATCH {
            return Err(DecodeError::Version(kind));
        }
        let w: Wire = rmp_serde::from_slice(body)?;
        if !valid_stream(w.stream) {
            return Err(invalid("bad stream id"));
        }
        if w.events.is_empty() || w.events.len() > MAX_BATCH_EVENTS {
            return Err(invalid("a batch holds 1 to 1024 events"));
        }
        if w.first.checked_add(w.events.len() as u64).is_none() {
            return Err(invalid("event numbers overflow"));
        }
        Ok(Batch {
            stream: w.stream,
            first: w.first,
            events: w.events.into_iter().map(|r| r.0).collect(),
        })
    }
}

/// True for a frame that says it is a batch (its first byte); [`Batch::decode`] checks the rest.
pub fn is_batch(frame: &[u8]) -> bool {
    frame.first() == Some(&BATCH)
}

/// True for a stream id a sender may use.
pub fn valid_stream(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_STREAM_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh stream id (a UUIDv7: unique, time-ordered).
pub fn new_stream() -> String {
    crate::new_id()
}

/// Sender → manager at the acks door: "I send stream `stream`; where are we?". Sent at start
/// and every heartbeat, it also tells the manager the sender is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's stream id.
    pub stream: String,
    /// The number of the oldest event the sender still holds: everything below it was
    /// acknowledged. A manager that does not know the stream (it never committed a mark for
    /// it, or forgot it) starts it here; until then it takes the stream only from 0.
    #[serde(default)]
    pub from: u64,
}

/// Manager → sender: every event of `stream` numbered below `next` is done (its effects are
/// durable); the sender may forget them, and resends from `next` what it still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The stream.
    pub stream: String,
    /// The number of the first event not done.
    pub next: u64,
}

/// Manager → publisher on the link: action number `seq` of the manager's outbox `outbox`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linked {
    /// The outbox id (made once per manager state dir, so a wiped outbox is a new one).
    pub outbox: String,
    /// Its number in that outbox, from 1, without gaps.
    pub seq: u64,
    /// The action (its `seq` field is the publisher's to set).
    pub action: Action,
    /// Every number of this outbox up to `after` is in some publisher's durable log (the
    /// outbox deletes an entry only once acknowledged): a publisher that has not seen this
    /// outbox up to there (a clustered leader sending a dead member's outbox, a member that
    /// came back linked to another publisher) takes `after + 1` next instead of waiting for
    /// numbers it will never be sent. 0: nothing said.
    #[serde(default)]
    pub after: u64,
}

/// Publisher → manager on the link's ack PUB (topic: the outbox id): every action of `outbox`
/// numbered up to `upto` is in the publisher's durable log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkAck {
    /// The outbox id.
    pub outbox: String,
    /// The highest number logged.
    pub upto: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VERSION;

    #[test]
    fn batches_round_trip_and_hostile_ones_are_refused() {
        let events: Vec<Vec<u8>> = (0..3).map(|i| vec![VERSION, i]).collect();
        let f = Batch::encode("abc-1", u64::MAX - 3, &events);
        assert!(is_batch(&f));
        let b = Batch::decode(&f, 1 << 20).unwrap();
        assert_eq!(b.events, [&[VERSION, 0][..], &[VERSION, 1], &[VERSION, 2]]);
        assert!(Batch::decode(&f, 10).is_err(), "over the limit");
        let over = Batch::encode("abc", u64::MAX - 1, &events);
        assert!(Batch::decode(&over, 1 << 20).is_err(), "numbers overflow");
        let bad = Batch::encode("a b", 0, &events);
        assert!(Batch::decode(&bad, 1 << 20).is_err(), "bad stream id");
        let long = Batch::encode(&"x".repeat(65), 0, &events);
        assert!(Batch::decode(&long, 1 << 20).is_err(), "stream id too long");
        let none = Batch::encode::<Vec<u8>>("abc", 0, &[]);
        assert!(Batch::decode(&none, 1 << 20).is_err(), "empty batch");
        let many: Vec<Vec<u8>> = vec![vec![1]; MAX_BATCH_EVENTS + 1];
        assert!(Batch::decode(&Batch::encode("abc", 0, &many), 1 << 22).is_err());
        assert!(Batch::decode(
            &crate::encode(&Hello {
                stream: "x".into(),
                from: 0
            }),
            1 << 20
        )
        .is_err());
        assert!(Batch::decode(&[], 1 << 20).is_err());
        assert!(Batch::decode(&[BATCH, 0xc1], 1 << 20).is_err());
        assert!(valid_stream(&new_stream()));
    }
}
