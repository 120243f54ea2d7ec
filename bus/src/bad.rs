//! Counting the frames a receiver drops. Every receiver (manager ingest, the publisher's link,
//! an actor's subscription) drops a frame it cannot decode, and must neither die nor flood its
//! log when a peer sends garbage by the million: [`BadFrames`] counts them by kind and logs the
//! first of each kind only.

use crate::codec::{DecodeError, MalformedKind};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt::Display;

/// Bad frames dropped so far, by kind.
///
/// It serializes as a map from kind name to count, holding only the kinds seen
/// (`{"empty": 1, "malformed": 2}`): what the manager's `stats` reply shows.
///
/// ```
/// use bus::{BadFrames, Event, MalformedKind};
///
/// let mut bad = BadFrames::new("event frame");
/// let event: Option<Event> = bad.keep(bus::decode(b""));
/// assert!(event.is_none());
/// assert_eq!(bad.get(MalformedKind::Empty), 1);
/// assert_eq!(serde_json::to_string(&bad).unwrap(), r#"{"empty":1}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrames {
    /// What the frames are, for the log line: "frame", "action frame".
    what: &'static str,
    counts: [u64; MalformedKind::ALL.len()],
}

impl Default for BadFrames {
    fn default() -> BadFrames {
        BadFrames::new("frame")
    }
}

impl BadFrames {
    /// No bad frames yet; `what` names the frames in the log line ("action frame").
    pub const fn new(what: &'static str) -> BadFrames {
        BadFrames {
            what,
            counts: [0; MalformedKind::ALL.len()],
        }
    }

    /// Count one dropped frame of `kind`, and log it when it is the first of its kind.
    /// Returns how many of that kind there have been.
    pub fn count(&mut self, kind: MalformedKind, why: &dyn Display) -> u64 {
        let n = &mut self.counts[kind as usize];
        *n += 1;
        if *n == 1 {
            tracing::warn!(
                kind = kind.as_str(),
                "dropped a bad {}: {why} (further ones of this kind are only counted)",
                self.what
            );
        }
        *n
    }

    /// Count a frame that failed to decode.
    pub fn error(&mut self, e: &DecodeError) -> u64 {
        self.count(e.kind(), e)
    }

    /// The decoded value, or `None` with the error counted: `let Some(x) = bad.keep(decode(f))`.
    pub fn keep<T>(&mut self, decoded: Result<T, DecodeError>) -> Option<T> {
        decoded.map_err(|e| self.error(&e)).ok()
    }

    /// How many frames of `kind` were dropped.
    pub fn get(&self, kind: MalformedKind) -> u64 {
        self.counts[kind as usize]
    }

    /// How many frames were dropped in all.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The kinds seen, with their counts, in [`MalformedKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (MalformedKind, u64)> + '_ {
        MalformedKind::ALL
            .into_iter()
            .map(|k| (k, self.get(k)))
            .filter(|&(_, n)| n > 0)
    }
}

impl Serialize for BadFrames {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.iter().count()))?;
        for (kind, n) in self.iter() {
            map.serialize_entry(kind.as_str(), &n)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, decode_with_limit, encode, Event};
    use serde_json::json;

    #[test]
    fn counts_each_kind_and_serializes_the_seen_ones() {
        let mut bad = BadFrames::default();
        let good = encode(&Event::new("a/b", "h", json!(null)));
        assert!(bad.keep(decode::<Event>(&good)).is_some());
        assert_eq!(bad.total(), 0);
        assert_eq!(serde_json::to_value(&bad).unwrap(), json!({}));
        let _ = bad.keep(decode::<Event>(&[]));
        let _ = bad.keep(decode::<Event>(&[crate::VERSION, 0xc1]));
        let _ = bad.keep(decode::<Event>(&[crate::VERSION, 0xc1]));
        let _ = bad.keep(decode_with_limit::<Event>(&good, 2));
        assert_eq!(bad.count(MalformedKind::Version, &"v9"), 1);
        assert_eq!(bad.get(MalformedKind::Malformed), 2);
        assert_eq!(bad.total(), 5);
        assert_eq!(
            serde_json::to_value(&bad).unwrap(),
            json!({"empty": 1, "malformed": 2, "oversize": 1, "version": 1})
        );
    }
}
