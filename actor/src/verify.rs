//! Every action frame, live or replayed, is opened here before anything of it is decoded: the
//! envelope's signature against the pinned key (the control node's signing key), its digest,
//! and its target. What fails is an `actor/rejected` event and nothing of it runs. Sequence and
//! expiry are the intake's (see [`crate::intake`]), on the verified header's values.

use crate::rejected::Reason;
use bus::envelope::{self, ManagerKey};
use bus::{Action, Target};

/// Who issued actions in insecure mode: nobody verified.
const UNVERIFIED: &str = "unverified";

/// The checks, with what they check against.
pub(crate) struct Verify {
    /// `None` only in the explicit insecure mode.
    pub(crate) key: Option<ManagerKey>,
    pub(crate) name: String,
    pub(crate) groups: Vec<String>,
    pub(crate) max_frame: usize,
}

/// A frame that was refused, with what it claimed (unverified) for the report.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) name: Option<String>,
    pub(crate) seq: Option<u64>,
    pub(crate) id: Option<String>,
    pub(crate) reason: Reason,
}

impl Verify {
    /// The issuer the last applied sequence is kept under: the pinned key's id.
    pub(crate) fn issuer(&self) -> String {
        self.key
            .map_or_else(|| UNVERIFIED.to_string(), |k| k.id().to_string())
    }

    /// Open `frame`: the verified action, or why it is refused.
    pub(crate) fn check(&self, frame: &[u8]) -> Result<Action, Box<Refused>> {
        let opened = match &self.key {
            Some(k) => envelope::open(frame, k, self.max_frame),
            None => envelope::open_unverified(frame, self.max_frame),
        };
        self.mine(frame, opened)
    }

    /// Open `frames` as [`Verify::check`] opens each, their signatures checked as a batch:
    /// the results in the frames' order.
    pub(crate) fn check_all(&self, frames: &[Vec<u8>]) -> Vec<Result<Action, Box<Refused>>> {
        match &self.key {
            Some(k) if frames.len() > 1 => envelope::open_all(frames, k, self.max_frame)
                .into_iter()
                .zip(frames)
                .map(|(opened, frame)| self.mine(frame, opened))
                .collect(),
            _ => frames.iter().map(|f| self.check(f)).collect(),
        }
    }

    /// The action of an opened frame, if it is for this actor.
    fn mine(
        &self,
        frame: &[u8],
        opened: Result<envelope::Opened, envelope::EnvelopeError>,
    ) -> Result<Action, Box<Refused>> {
        let opened = opened.map_err(|e| {
            let claim = envelope::peek(frame, self.max_frame).ok();
            Box::new(Refused {
                name: claim.as_ref().map(|h| h.name.clone()),
                seq: claim.map(|h| h.seq),
                id: None,
                reason: Reason::BadSignature(e.to_string()),
            })
        })?;
        let target = &opened.header.target;
        let mine = match target {
            Target::All => true,
            Target::Host(h) => *h == self.name,
            Target::Group(g) => self.groups.contains(g),
        };
        if !mine {
            return Err(Box::new(Refused {
                name: Some(opened.action.name.clone()),
                seq: Some(opened.action.seq),
                id: Some(opened.action.id.clone()),
                reason: Reason::WrongTarget(target.to_string()),
            }));
        }
        Ok(opened.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(target: &str) -> Action {
        Action {
            id: bus::new_id(),
            name: "n".into(),
            seq: 5,
            target: Target::parse(target).unwrap(),
            graph: json!([]),
            origin: Default::default(),
            expires: None,
            life: bus::Life::Keep,
            prev: 0,
        }
    }

    #[test]
    fn signature_and_target_are_checked() {
        let k = envelope::SignKey::generate().unwrap();
        let v = Verify {
            key: Some(k.public()),
            name: "web1".into(),
            groups: vec!["db".into()],
            max_frame: bus::MAX_FRAME,
        };
        for t in ["all", "host/web1", "group/db"] {
            assert!(v.check(&envelope::seal(&k, &action(t), 1)).is_ok(), "{t}");
        }
        let e = v
            .check(&envelope::seal(&k, &action("host/web2"), 1))
            .unwrap_err();
        assert_eq!(e.reason.kind(), "target");
        let other = envelope::SignKey::generate().unwrap();
        let e = v
            .check(&envelope::seal(&other, &action("all"), 1))
            .unwrap_err();
        assert_eq!((e.reason.kind(), e.seq), ("signature", Some(5)));
        let e = v.check(b"garbage").unwrap_err();
        assert_eq!((e.reason.kind(), e.name), ("signature", None));
    }
}
