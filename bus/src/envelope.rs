//! Signed actions: the envelope the publisher seals every action in and actors open.
//!
//! The publisher numbers actions, so it is the signer (with the control node's key, see
//! [`key`]). A frame is the codec's version byte, then the msgpack array
//! `[header, signature, body]`: `body` is the action as [`crate::encode`] makes it, `header`
//! the msgpack of a [`Header`] binding the key id, target, name, sequence, issue time, expiry
//! and the SHA-256 of `body`, and `signature` the ed25519 signature of the header's exact bytes.
//!
//! [`open`] checks in an order that decodes nothing unsigned beyond the outer frame: the
//! signature over the header bytes (strict), then the header, then the body's digest, then the
//! body, whose target, name, sequence and expiry must equal the header's.

pub mod key;

use crate::{Action, DecodeError, Target};
use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

pub use key::{KeyId, ManagerKey, SignKey, SignKeyError};

/// The envelope format this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// Why a frame was refused. Each names what failed.
#[derive(Debug, Error)]
pub enum EnvelopeError {
    /// The outer frame, the header or the body does not parse.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The frame is larger than the receiver accepts.
    #[error("envelope of {size} bytes is over the {limit}-byte limit")]
    Oversize {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The signature does not verify against the pinned key.
    #[error("signature does not verify against the pinned key {pinned}")]
    BadSignature {
        /// The pinned key's id.
        pinned: KeyId,
    },
    /// Signed (validly) by a key other than the pinned one, or naming another key.
    #[error("signed by key {claimed}, not the pinned key {pinned}")]
    UnknownKey {
        /// The key id the header names.
        claimed: String,
        /// The pinned key's id.
        pinned: KeyId,
    },
    /// The body is not the one the header's digest was made of.
    #[error("body digest does not match the signed header")]
    Digest,
    /// The body says something other than the signed header.
    #[error("body {field} does not match the signed header")]
    Mismatch {
        /// Which field differs.
        field: &'static str,
    },
    /// A header version this build does not read.
    #[error("envelope version {0} (this build reads {ENVELOPE_VERSION})")]
    Version(u8),
}

impl From<DecodeError> for EnvelopeError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Oversize { size, limit } => EnvelopeError::Oversize { size, limit },
            other => EnvelopeError::Malformed(other.to_string()),
        }
    }
}

/// What the signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`ENVELOPE_VERSION`].
    pub v: u8,
    /// The signer's key id (hex of its public key).
    pub key: String,
    /// Who the action is for.
    pub target: Target,
    /// The action's name.
    pub name: String,
    /// The publisher's sequence number.
    pub seq: u64,
    /// When it was signed, Unix ms.
    pub issued_ms: u64,
    /// After when it must not run, Unix ms; `None`: never expires.
    pub expires_ms: Option<u64>,
    /// SHA-256 of the body bytes.
    #[serde(with = "digest_bytes")]
    pub digest: [u8; 32],
}

/// A frame that opened: the verified header and the decoded action.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The signed header.
    pub header: Header,
    /// The action, equal to the header in target, name, seq and expiry.
    pub action: Action,
}

/// The outer frame as written.
#[derive(Serialize)]
struct OuterOut<'a>(
    #[serde(serialize_with = "as_bin")] &'a [u8],
    #[serde(serialize_with = "as_bin")] &'a [u8],
    #[serde(serialize_with = "as_bin")] &'a [u8],
);

/// The outer frame as read: borrowed, nothing copied before the signature is checked.
#[derive(Deserialize)]
struct OuterIn<'a>(
    #[serde(borrow)] &'a [u8],
    #[serde(borrow)] &'a [u8],
    #[serde(borrow)] &'a [u8],
);

fn as_bin<S: Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

mod digest_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let b: &[u8] = Deserialize::deserialize(d)?;
        b.try_into()
            .map_err(|_| D::Error::custom(format!("digest of {} bytes, not 32", b.len())))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Seal `action` (already numbered) with `key`, issued at `issued_ms`.
pub fn seal(key: &SignKey, action: &Action, issued_ms: u64) -> Vec<u8> {
    let body = crate::encode(action);
    let header = Header {
        v: ENVELOPE_VERSION,
        key: key.id().to_string(),
        target: action.target.clone(),
        name: action.name.clone(),
        seq: action.seq,
        issued_ms,
        expires_ms: action.expires,
        digest: sha256(&body),
    };
    let header_bytes = crate::encode(&header);
    let signature = key.signing().sign(&header_bytes);
    crate::encode(&OuterOut(&header_bytes, &signature.to_bytes(), &body))
}

/// The parts of a frame, unverified. Nothing may follow them: one signed action has one
/// frame, not many that differ in trailing bytes (the fuzzer found those were accepted).
fn split(frame: &[u8], max_frame: usize) -> Result<OuterIn<'_>, EnvelopeError> {
    let outer = crate::decode_with_limit::<OuterIn>(frame, max_frame)?;
    let body = frame.get(1..).unwrap_or_default();
    let mut walk = rmp_serde::Deserializer::new(body);
    serde::de::IgnoredAny::deserialize(&mut walk)
        .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let rest = walk.into_inner().len();
    if rest > 0 {
        return Err(EnvelopeError::Malformed(format!(
            "{rest} bytes after the envelope"
        )));
    }
    Ok(outer)
}

/// The header of a frame, NOT verified: for routing only (the publisher's replay filter, or
/// naming what a refused frame claimed). Never trust it for anything else.
pub fn peek(frame: &[u8], max_frame: usize) -> Result<Header, EnvelopeError> {
    let outer = split(frame, max_frame)?;
    Ok(crate::decode::<Header>(outer.0)?)
}

/// Open a sealed frame against the pinned key. See the module doc for the order of checks.
pub fn open(frame: &[u8], pinned: &ManagerKey, max_frame: usize) -> Result<Opened, EnvelopeError> {
    open_with(frame, Some(pinned), max_frame)
}

/// Open a sealed frame WITHOUT checking its signature or key: only for an actor in the explicit
/// insecure mode, which warns that actions are not verified. Digest and body still must match.
pub fn open_unverified(frame: &[u8], max_frame: usize) -> Result<Opened, EnvelopeError> {
    open_with(frame, None, max_frame)
}

fn open_with(
    frame: &[u8],
    pinned: Option<&ManagerKey>,
    max_frame: usize,
) -> Result<Opened, EnvelopeError> {
    let OuterIn(header_bytes, signature, body) = split(frame, max_frame)?;
    if let Some(pinned) = pinned {
        verify(header_bytes, signature, pinned)?;
    }
    signed(header_bytes, body, pinned, max_frame)
}

/// Open many sealed frames against the pinned key, as [`open`] opens each: the results in
/// the frames' order. Their signatures are checked together first (ed25519 batch
/// verification, about half the work of one check each under a burst); only when that
/// fails is each checked alone, strictly, so a bad frame costs its batch one more pass and
/// refuses only itself. A batch also accepts a signature that differs from a valid one by a
/// small-order component, which `verify_strict` refuses; the header it covers was still
/// signed by the pinned key, and nothing here identifies a frame by its signature's bytes.
pub fn open_all<F: AsRef<[u8]>>(
    frames: &[F],
    pinned: &ManagerKey,
    max_frame: usize,
) -> Vec<Result<Opened, EnvelopeError>> {
    let outers: Vec<_> = frames
        .iter()
        .map(|f| split(f.as_ref(), max_frame))
        .collect();
    let batch = outers.len() > 1 && {
        let mut messages = Vec::with_capacity(outers.len());
        let mut signatures = Vec::with_capacity(outers.len());
        for o in outers.iter().flatten() {
            if let Ok(s) = Signature::from_slice(o.1) {
                messages.push(o.0);
                signatures.push(s);
            }
        }
        // Every frame must be in the batch for its pass to speak for all of them.
        signatures.len() == outers.len() && {
            let keys = vec![*pinned.verifying(); signatures.len()];
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        }
    };
    outers
        .into_iter()
        .map(|outer| {
            let OuterIn(header_bytes, signature, body) = outer?;
            if !batch {
                verify(header_bytes, signature, pinned)?;
            }
            signed(header_bytes, body, Some(pinned), max_frame)
        })
        .collect()
}

/// The rest of opening a frame whose signature was checked (or, insecure, is not).
fn signed(
    header_bytes: &[u8],
    body: &[u8],
    pinned: Option<&ManagerKey>,
    max_frame: usize,
) -> Result<Opened, EnvelopeError> {
    let header: Header = crate::decode(header_bytes)?;
    if header.v != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(header.v));
    }
    if let Some(pinned) = pinned.filter(|p| header.key != p.id().to_string()) {
        return Err(EnvelopeError::UnknownKey {
            claimed: header.key,
            pinned: pinned.id(),
        });
    }
    check_body(header, body, max_frame)
}

/// The signature over the header's bytes, strictly, against `pinned`.
fn verify(header_bytes: &[u8], signature: &[u8], pinned: &ManagerKey) -> Result<(), EnvelopeError> {
    let signature = Signature::from_slice(signature)
        .map_err(|_| EnvelopeError::Malformed(format!("signature of {} bytes", signature.len())))?;
    if pinned
        .verifying()
        .verify_strict(header_bytes, &signature)
        .is_err()
    {
        // Which key it claims only sharpens the message; both are refusals.
        return Err(match crate::decode::<Header>(header_bytes) {
            Ok(h) if h.key != pinned.id().to_string() => EnvelopeError::UnknownKey {
                claimed: h.key,
                pinned: pinned.id(),
            },
            _ => EnvelopeError::BadSignature {
                pinned: pinned.id(),
            },
        });
    }
    Ok(())
}

/// The body against the verified header: digest first, then the decoded action's fields.
fn check_body(header: Header, body: &[u8], max_frame: usize) -> Result<Opened, EnvelopeError> {
    if sha256(body) != header.digest {
        return Err(EnvelopeError::Digest);
    }
    let action: Action = crate::decode_with_limit(body, max_frame)?;
    let field = if action.target != header.target {
        Some("target")
    } else if action.name != header.name {
        Some("name")
    } else if action.seq != header.seq {
        Some("seq")
    } else if action.expires != header.expires_ms {
        Some("expiry")
    } else {
        None
    };
    if let Some(field) = field {
        return Err(EnvelopeError::Mismatch { field });
    }
    Ok(Opened { header, action })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Origin;
    use serde_json::json;

    fn action(seq: u64) -> Action {
        Action {
            id: crate::new_id(),
            name: "motd".into(),
            seq,
            target: Target::parse("host/web1").unwrap(),
            graph: json!([{"kind": "file", "name": "/etc/motd", "content": "hi"}]),
            origin: Origin::default(),
            expires: Some(2_000),
            life: crate::Life::Keep,
            prev: 0,
        }
    }

    fn keys() -> (SignKey, ManagerKey) {
        let k = SignKey::generate().unwrap();
        let p = k.public();
        (k, p)
    }

    #[test]
    fn a_sealed_action_opens_with_its_header() {
        let (k, p) = keys();
        let a = action(7);
        let frame = seal(&k, &a, 1_000);
        let o = open(&frame, &p, crate::MAX_FRAME).unwrap();
        assert_eq!(o.action, a);
        assert_eq!(
            (o.header.seq, o.header.issued_ms, o.header.expires_ms),
            (7, 1_000, Some(2_000))
        );
        assert_eq!(o.header.key, p.id().to_string());
        assert_eq!(peek(&frame, crate::MAX_FRAME).unwrap(), o.header);
    }

    #[test]
    fn a_batch_opens_as_each_would_and_a_bad_frame_refuses_only_itself() {
        let (k, p) = keys();
        let (other, _) = keys();
        let frames: Vec<Vec<u8>> = (1..=5).map(|s| seal(&k, &action(s), 1_000)).collect();
        let opened = open_all(&frames, &p, crate::MAX_FRAME);
        let seqs: Vec<u64> = opened
            .iter()
            .map(|o| o.as_ref().unwrap().action.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);

        let mut mixed = frames.clone();
        mixed[1][40] ^= 1; // inside the signed header
        mixed[3] = seal(&other, &action(4), 1_000);
        mixed.push(b"garbage".to_vec());
        let opened = open_all(&mixed, &p, crate::MAX_FRAME);
        let ok: Vec<bool> = opened.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, true, false, true, false]);
        for (o, f) in opened.iter().zip(&mixed) {
            assert_eq!(o.is_ok(), open(f, &p, crate::MAX_FRAME).is_ok());
        }
        assert!(matches!(opened[3], Err(EnvelopeError::UnknownKey { .. })));
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let (k, p) = keys();
        let frame = seal(&k, &action(3), 1_000);
        for i in 0..frame.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = frame.clone();
                bad[i] ^= bit;
                assert!(
                    open(&bad, &p, crate::MAX_FRAME).is_err(),
                    "byte {i} bit {bit:#x} flipped was accepted"
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_envelope_are_refused() {
        // Found by tests/fuzz.rs: a sealed frame with a byte appended verified.
        let (k, p) = keys();
        let mut frame = seal(&k, &action(3), 1_000);
        frame.push(1);
        let e = open(&frame, &p, crate::MAX_FRAME).unwrap_err();
        assert!(matches!(e, EnvelopeError::Malformed(_)), "{e}");
    }

    #[test]
    fn another_key_is_refused_and_named() {
        let (k, _) = keys();
        let (_, pinned) = keys();
        let frame = seal(&k, &action(3), 1_000);
        let e = open(&frame, &pinned, crate::MAX_FRAME).unwrap_err();
        assert!(matches!(e, EnvelopeError::UnknownKey { .. }), "{e}");
    }

    /// Rebuild a frame from its parts, re-signing the header with `key`.
    fn resign(key: &SignKey, header: &Header, body: &[u8]) -> Vec<u8> {
        let hb = crate::encode(header);
        let sig = key.signing().sign(&hb).to_bytes();
        crate::encode(&OuterOut(&hb, &sig, body))
    }

    #[test]
    fn a_swapped_body_or_a_header_claiming_the_pinned_key_is_refused() {
        let (k, p) = keys();
        let frame = seal(&k, &action(3), 1_000);
        let OuterIn(hb, sig, _) = split(&frame, crate::MAX_FRAME).unwrap();
        // A valid header and signature with another action's body.
        let other = crate::encode(&action(4));
        let swapped = crate::encode(&OuterOut(hb, sig, &other));
        let e = open(&swapped, &p, crate::MAX_FRAME).unwrap_err();
        assert!(matches!(e, EnvelopeError::Digest), "{e}");

        // An attacker's key that claims to be the pinned one: the signature fails.
        let (evil, _) = keys();
        let mut h: Header = crate::decode(hb).unwrap();
        let e = open(&resign(&evil, &h, &other), &p, crate::MAX_FRAME).unwrap_err();
        assert!(matches!(e, EnvelopeError::BadSignature { .. }), "{e}");

        // Signed by the right key, but the body says another seq than the header.
        h.digest = sha256(&other);
        let e = open(&resign(&k, &h, &other), &p, crate::MAX_FRAME).unwrap_err();
        assert!(matches!(e, EnvelopeError::Mismatch { field: "seq" }), "{e}");
    }

    #[test]
    fn garbage_and_oversize_are_malformed_not_panics() {
        let (k, p) = keys();
        for junk in [
            &b""[..],
            b"\x01",
            b"\x01\x93\xc4\x00\xc4\x00\xc4\x00",
            b"garbage",
        ] {
            assert!(open(junk, &p, crate::MAX_FRAME).is_err());
            assert!(peek(junk, crate::MAX_FRAME).is_err());
        }
        let frame = seal(&k, &action(1), 1);
        let e = open(&frame, &p, 10).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::Oversize { limit: 10, .. }),
            "{e}"
        );
    }
}
