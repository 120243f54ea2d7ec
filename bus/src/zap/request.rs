//! ZAP requests and replies (ZeroMQ RFC 27) and the decision between them: pure functions over
//! frames, so the handler thread only moves bytes, and a fuzzer can drive [`decide`] directly.

use super::{KeySet, Mode, Peer};
use crate::keys::{PublicKey, Role};

/// The only ZAP version there is.
pub const VERSION: &[u8] = b"1.0";

/// The security mechanism a peer's handshake used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism<'a> {
    /// No security at all.
    Null,
    /// User name and password in clear text.
    Plain {
        /// The user name.
        user: &'a [u8],
    },
    /// CURVE, with the client's long-term public key.
    Curve(PublicKey),
    /// Anything else (GSSAPI): never accepted.
    Other(&'a [u8]),
}

/// A ZAP request, borrowed from its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Echoed in the reply so libzmq can match it.
    pub request_id: &'a [u8],
    /// The server socket's ZAP domain (empty when unset).
    pub domain: &'a [u8],
    /// The peer's IP address.
    pub address: &'a [u8],
    /// The routing id the peer announced (empty for most socket types).
    pub identity: &'a [u8],
    /// How it authenticated.
    pub mechanism: Mechanism<'a>,
}

/// Why a request is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer than the six frames every request has.
    Short,
    /// A version other than "1.0".
    Version,
    /// The credentials do not fit the mechanism (a CURVE key that is not 32 bytes, ...).
    Credentials,
}

impl Malformed {
    /// The reply's status text.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Short => "malformed request: fewer than 6 frames",
            Malformed::Version => "malformed request: version is not 1.0",
            Malformed::Credentials => "malformed request: credentials do not fit the mechanism",
        }
    }
}

impl<'a> Request<'a> {
    /// Parse the frames of one request.
    pub fn parse(frames: &'a [Vec<u8>]) -> Result<Request<'a>, Malformed> {
        let [version, request_id, domain, address, identity, mechanism, credentials @ ..] = frames
        else {
            return Err(Malformed::Short);
        };
        if version.as_slice() != VERSION {
            return Err(Malformed::Version);
        }
        let mechanism = match (mechanism.as_slice(), credentials) {
            (b"NULL", []) => Mechanism::Null,
            (b"PLAIN", [user, _password]) => Mechanism::Plain { user },
            (b"CURVE", [key]) => Mechanism::Curve(PublicKey(
                key.as_slice()
                    .try_into()
                    .map_err(|_| Malformed::Credentials)?,
            )),
            (b"NULL" | b"PLAIN" | b"CURVE", _) => return Err(Malformed::Credentials),
            (other, _) => Mechanism::Other(other),
        };
        Ok(Request {
            request_id,
            domain,
            address,
            identity,
            mechanism,
        })
    }
}

/// A reply's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: let the peer in.
    Allow,
    /// 400: refuse it.
    Deny,
    /// 500: the request itself was broken (libzmq refuses the peer too).
    Error,
}

impl Status {
    /// The code as the reply frame carries it.
    pub fn code(self) -> &'static str {
        match self {
            Status::Allow => "200",
            Status::Deny => "400",
            Status::Error => "500",
        }
    }
}

/// An unknown CURVE key that tried to connect: what the manager records as pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// The key.
    pub key: PublicKey,
    /// The server socket's ZAP domain.
    pub domain: String,
    /// The peer's IP address.
    pub address: String,
    /// The routing id it announced (a name it claims; unchecked), often empty.
    pub identity: Vec<u8>,
}

/// What a request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An accepted key, or NULL/PLAIN in insecure mode (then the peer is `None`).
    Accepted(Option<Peer>),
    /// An unknown CURVE key, refused.
    Unknown(Unknown),
    /// An unknown CURVE key let in at the enroll door only, as User-Id [`pending_user_id`]
    /// with Role [`PENDING_ROLE`]: it may ask to be enrolled there and do nothing else.
    Enrolling(Unknown),
    /// NULL or PLAIN in secure mode, or an unsupported mechanism.
    Refused,
    /// The request did not parse.
    Malformed(Malformed),
}

/// A reply and what led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The reply's frames, ready to send.
    pub reply: Vec<Vec<u8>>,
    /// The outcome, for counters and the unknown-key callback.
    pub outcome: Outcome,
}

/// A ZMTP metadata property (name length as one byte, value length as four): how the reply
/// hands the peer's role to every message it sends (`Message::gets("Role")`).
fn property(name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + name.len() + 4 + value.len());
    // Both are our own short constants (a property name, a role name).
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
    out
}

/// The `Role` property of a key let in at the enroll door only.
pub const PENDING_ROLE: &str = "pending";

/// The prefix of the User-Id of a key let in at the enroll door only.
pub const PENDING_PREFIX: &str = "key:";

/// The User-Id of an unknown key at the enroll door: `key:<hex of its public key>`. No
/// enrolled name can look like it (names have no `:`), so it never passes for a peer.
pub fn pending_user_id(key: &PublicKey) -> String {
    format!("{PENDING_PREFIX}{}", key.to_hex())
}

/// The key of an enroll-door User-Id made by [`pending_user_id`].
pub fn parse_pending_user_id(user_id: &str) -> Option<PublicKey> {
    PublicKey::parse(user_id.strip_prefix(PENDING_PREFIX)?).ok()
}

/// The peer's identity in a reply: its User-Id and its role.
type Who<'a> = Option<(&'a str, &'a str)>;

fn reply(request_id: &[u8], status: Status, text: &str, who: Who<'_>) -> Vec<Vec<u8>> {
    let (user_id, metadata) = match who {
        Some((name, role)) => (name.as_bytes().to_vec(), property("Role", role)),
        None => (Vec::new(), Vec::new()),
    };
    vec![
        VERSION.to_vec(),
        request_id.to_vec(),
        status.code().as_bytes().to_vec(),
        text.as_bytes().to_vec(),
        user_id,
        metadata,
    ]
}

/// Answer one request from `keys`: an accepted CURVE key gets 200 with its name as User-Id and
/// its role as the `Role` property, except a non-admin key at an admin-only door
/// ([`crate::secure::Door::admin_only`]), refused 400; an unknown key 400; NULL and PLAIN 400 unless `mode` is
/// [`Mode::Insecure`]; anything malformed 500. The one exception to "unknown is refused": at
/// the enroll door ([`crate::secure::Door::Enroll`]) an unknown key gets 200 as
/// [`pending_user_id`] with Role [`PENDING_ROLE`], so it can ask to be enrolled.
pub fn decide(keys: &KeySet, mode: Mode, frames: &[Vec<u8>]) -> Decision {
    let req = match Request::parse(frames) {
        Ok(r) => r,
        Err(m) => {
            let id = frames.get(1).map(Vec::as_slice).unwrap_or_default();
            return Decision {
                reply: reply(id, Status::Error, m.as_str(), None),
                outcome: Outcome::Malformed(m),
            };
        }
    };
    let id = req.request_id;
    let (status, text, outcome) = match req.mechanism {
        Mechanism::Curve(key) => match keys.get(&key) {
            // The monitor and control doors are the admin's alone.
            Some(peer)
                if crate::secure::Door::admin_only(req.domain) && peer.role != Role::Admin =>
            {
                (
                    Status::Deny,
                    "this socket is for the admin key only",
                    Outcome::Refused,
                )
            }
            Some(peer) => (Status::Allow, "OK", Outcome::Accepted(Some(peer))),
            None if req.domain == crate::secure::Door::Enroll.as_str().as_bytes() => (
                Status::Allow,
                "OK (unknown key: enrollment only)",
                Outcome::Enrolling(unknown(&req, key)),
            ),
            None => (
                Status::Deny,
                "unknown key: waiting for an operator to accept it",
                Outcome::Unknown(unknown(&req, key)),
            ),
        },
        Mechanism::Null | Mechanism::Plain { .. } if mode == Mode::Insecure => {
            (Status::Allow, "OK (insecure)", Outcome::Accepted(None))
        }
        Mechanism::Null | Mechanism::Plain { .. } => {
            (Status::Deny, "CURVE is required", Outcome::Refused)
        }
        Mechanism::Other(_) => (Status::Deny, "unsupported mechanism", Outcome::Refused),
    };
    let pending;
    let who = match &outcome {
        Outcome::Accepted(Some(p)) => Some((p.name.as_str(), p.role.as_str())),
        Outcome::Enrolling(u) => {
            pending = pending_user_id(&u.key);
            Some((pending.as_str(), PENDING_ROLE))
        }
        _ => None,
    };
    Decision {
        reply: reply(id, status, text, who),
        outcome,
    }
}

fn unknown(req: &Request<'_>, key: PublicKey) -> Unknown {
    Unknown {
        key,
        domain: String::from_utf8_lossy(req.domain).into_owned(),
        address: String::from_utf8_lossy(req.address).into_owned(),
        identity: req.identity.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Role;

    fn frames(mechanism: &str, creds: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut f: Vec<Vec<u8>> = ["1.0", "7", "d", "127.0.0.1", "", mechanism]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        f.extend(creds.iter().map(|c| c.to_vec()));
        f
    }

    #[test]
    fn accepted_unknown_refused_and_malformed() {
        let keys = KeySet::new();
        let good = PublicKey([1; 32]);
        keys.insert(
            good,
            Peer {
                name: "web1".into(),
                role: Role::Host,
                groups: Vec::new(),
            },
        );
        let d = decide(&keys, Mode::Secure, &frames("CURVE", &[&good.0]));
        assert_eq!(d.reply[1], b"7");
        assert_eq!(d.reply[2], b"200");
        assert_eq!(d.reply[4], b"web1");
        assert_eq!(d.reply[5], b"\x04Role\x00\x00\x00\x04host");

        let d = decide(&keys, Mode::Secure, &frames("CURVE", &[&[2; 32]]));
        assert_eq!(d.reply[2], b"400");
        assert!(matches!(d.outcome, Outcome::Unknown(Unknown { key, .. }) if key.0 == [2; 32]));

        for (mech, creds) in [("NULL", vec![]), ("PLAIN", vec![&b"u"[..], b"p"])] {
            let d = decide(&keys, Mode::Secure, &frames(mech, &creds));
            assert_eq!(
                (d.reply[2].as_slice(), &d.outcome),
                (&b"400"[..], &Outcome::Refused)
            );
            let d = decide(&keys, Mode::Insecure, &frames(mech, &creds));
            assert_eq!(d.reply[2], b"200");
            assert!(d.reply[4].is_empty());
        }
        assert_eq!(
            decide(&keys, Mode::Insecure, &frames("GSSAPI", &[])).reply[2],
            b"400"
        );

        // The enroll door lets an unknown key in, as pending; every other door refuses it.
        let stranger = PublicKey([3; 32]);
        let at = |door: crate::secure::Door, key: &PublicKey| {
            let mut f = frames("CURVE", &[&key.0]);
            f[2] = door.as_str().as_bytes().to_vec();
            decide(&keys, Mode::Secure, &f)
        };
        let d = at(crate::secure::Door::Enroll, &stranger);
        assert_eq!(d.reply[2], b"200");
        assert_eq!(d.reply[4], pending_user_id(&stranger).as_bytes());
        assert_eq!(d.reply[5], b"\x04Role\x00\x00\x00\x07pending");
        assert!(matches!(d.outcome, Outcome::Enrolling(Unknown { key, .. }) if key == stranger));
        assert_eq!(
            parse_pending_user_id(&pending_user_id(&stranger)),
            Some(stranger)
        );
        assert_eq!(parse_pending_user_id("web1"), None);
        for door in crate::secure::Door::ALL {
            if door != crate::secure::Door::Enroll {
                let d = at(door, &stranger);
                assert_eq!(d.reply[2], b"400", "{door:?}");
                assert!(matches!(d.outcome, Outcome::Unknown(_)), "{door:?}");
            }
        }
        // A known key at the enroll door is itself.
        assert_eq!(at(crate::secure::Door::Enroll, &good).reply[4], b"web1");

        let mut wrong_version = frames("NULL", &[]);
        wrong_version[0] = b"2.0".to_vec();
        for (bad, why) in [
            (vec![], Malformed::Short),
            (vec![b"1.0".to_vec(), b"9".to_vec()], Malformed::Short),
            (wrong_version, Malformed::Version),
            (frames("CURVE", &[&[1; 31]]), Malformed::Credentials),
            (frames("CURVE", &[]), Malformed::Credentials),
            (frames("NULL", &[b"x"]), Malformed::Credentials),
            (frames("PLAIN", &[b"x"]), Malformed::Credentials),
        ] {
            let d = decide(&keys, Mode::Insecure, &bad);
            assert_eq!(d.outcome, Outcome::Malformed(why), "{bad:?}");
            assert_eq!(d.reply[2], b"500");
            assert_eq!(d.reply.len(), 6);
        }
        assert_eq!(
            decide(&keys, Mode::Secure, &[b"1.0".to_vec(), b"9".to_vec()]).reply[1],
            b"9"
        );
    }
}
