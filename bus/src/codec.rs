//! Frames on the wire: one version byte, then the message as msgpack (named fields, so a
//! newer peer can add fields without breaking an older one).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The wire version this build speaks.
pub const VERSION: u8 = 1;
/// Default size limit for one frame (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Why a frame was rejected.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The frame has no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The version byte is not [`VERSION`].
    #[error("unknown wire version {0} (this build speaks {VERSION})")]
    Version(u8),
    /// The frame is larger than the receiver accepts.
    #[error("frame of {size} bytes is over the {limit}-byte limit")]
    Oversize {
        /// The frame's size in bytes.
        size: usize,
        /// The limit it is over.
        limit: usize,
    },
    /// The body is not the expected message: bad msgpack, a missing field, or a field that does
    /// not validate (such as a bad target).
    #[error("malformed msgpack: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
}

/// The kinds of bad frame, for counting and for logging once per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedKind {
    /// [`DecodeError::Empty`].
    Empty,
    /// [`DecodeError::Version`].
    Version,
    /// [`DecodeError::Oversize`].
    Oversize,
    /// [`DecodeError::Malformed`].
    Malformed,
}

impl MalformedKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [MalformedKind; 4] = [
        MalformedKind::Empty,
        MalformedKind::Version,
        MalformedKind::Oversize,
        MalformedKind::Malformed,
    ];

    /// The kind's name in counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedKind::Empty => "empty",
            MalformedKind::Version => "version",
            MalformedKind::Oversize => "oversize",
            MalformedKind::Malformed => "malformed",
        }
    }
}

impl DecodeError {
    /// Which kind of bad frame this is.
    pub fn kind(&self) -> MalformedKind {
        match self {
            DecodeError::Empty => MalformedKind::Empty,
            DecodeError::Version(_) => MalformedKind::Version,
            DecodeError::Oversize { .. } => MalformedKind::Oversize,
            DecodeError::Malformed(_) => MalformedKind::Malformed,
        }
    }
}

/// Encode a message as a versioned frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(VERSION);
    // Serializing our own structs and serde_json values into a Vec cannot fail: every type we
    // put on the wire has string map keys and no non-serializable parts.
    rmp_serde::encode::write_named(&mut out, msg).expect("wire types always encode");
    out
}

/// Decode a frame with the default size limit.
pub fn decode<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, DecodeError> {
    decode_with_limit(frame, MAX_FRAME)
}

/// Decode a frame, rejecting frames larger than `limit` bytes before looking inside them.
/// `T` may borrow strings from the frame (zero-copy).
pub fn decode_with_limit<'a, T: Deserialize<'a>>(
    frame: &'a [u8],
    limit: usize,
) -> Result<T, DecodeError> {
    if frame.len() > limit {
        return Err(DecodeError::Oversize {
            size: frame.len(),
            limit,
        });
    }
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    Ok(rmp_serde::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Event, Origin, Target};
    use serde_json::json;

    #[test]
    fn event_round_trips() {
        let e = Event::new(
            "demo/hello",
            "web1",
            json!({"path": "/tmp/x", "n": 3, "ok": true}),
        );
        let back: Event = decode(&encode(&e)).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn action_round_trips() {
        let a = Action {
            id: crate::new_id(),
            name: "hello".into(),
            seq: 7,
            target: Target::Host("web1".into()),
            graph: json!({"resources": [{"kind": "noop", "name": "x"}]}),
            origin: Origin {
                event: "e1".into(),
                rule: "10-hello".into(),
            },
            expires: Some(5),
            life: crate::Life::Keep,
            prev: 0,
        };
        let back: Action = decode(&encode(&a)).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn rejects_bad_frames_by_kind() {
        let good = encode(&Event::new("a/b", "h", json!(null)));
        assert_eq!(
            decode::<Event>(&[]).unwrap_err().kind(),
            MalformedKind::Empty
        );
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(
            decode::<Event>(&v2).unwrap_err().kind(),
            MalformedKind::Version
        );
        let truncated = &good[..good.len() / 2];
        assert_eq!(
            decode::<Event>(truncated).unwrap_err().kind(),
            MalformedKind::Malformed
        );
        assert_eq!(
            decode_with_limit::<Event>(&good, 10).unwrap_err().kind(),
            MalformedKind::Oversize
        );
        let garbage = [VERSION, 0xc1, 0xff, 0x00];
        assert_eq!(
            decode::<Event>(&garbage).unwrap_err().kind(),
            MalformedKind::Malformed
        );
        // An action is not an event.
        let action = encode(&json!({"id": "x"}));
        assert!(decode::<Event>(&action).is_err());
    }

    /// The action as it was on the wire when its target was a plain string.
    #[derive(Serialize)]
    struct StringTargetAction<'a> {
        id: &'a str,
        name: &'a str,
        seq: u64,
        target: &'a str,
        graph: serde_json::Value,
        origin: Origin,
        expires: Option<u64>,
        life: crate::Life,
        prev: u64,
    }

    /// The same action as an [`Action`] with `target` and as a [`StringTargetAction`] with `s`.
    fn both(target: Target, s: &str) -> (Action, StringTargetAction<'_>) {
        let typed = Action {
            id: "a1".into(),
            name: "n".into(),
            seq: 3,
            target,
            graph: json!([]),
            origin: Origin::default(),
            expires: None,
            life: crate::Life::Keep,
            prev: 0,
        };
        let plain = StringTargetAction {
            id: "a1",
            name: "n",
            seq: 3,
            target: s,
            graph: json!([]),
            origin: Origin::default(),
            expires: None,
            life: crate::Life::Keep,
            prev: 0,
        };
        (typed, plain)
    }

    #[test]
    fn a_typed_target_keeps_the_wire_byte_identical() {
        for (target, s) in [
            (Target::All, "all"),
            (Target::Host("web1".into()), "host/web1"),
            (Target::Group("db".into()), "group/db"),
        ] {
            let (typed, plain) = both(target, s);
            assert_eq!(encode(&typed), encode(&plain), "{s}");
        }
    }

    #[test]
    fn a_bad_target_is_a_malformed_frame() {
        for s in ["hosts/x", "host/a/b", "", "all/"] {
            let frame = encode(&both(Target::All, s).1);
            let err = decode::<Action>(&frame).unwrap_err();
            assert_eq!(err.kind(), MalformedKind::Malformed, "{s:?}");
            assert!(err.to_string().contains("bad target"), "{err}");
        }
    }
}
