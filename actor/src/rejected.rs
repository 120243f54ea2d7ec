//! `actor/rejected`: the one event for an action this host refused, whoever refused it (the
//! signature check, the target, sequence and expiry checks, or the host's own policy). Nothing
//! of a rejected action runs; the graph in force under its name (if any) keeps running.

use serde_json::{json, Value};

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The envelope does not parse, or its signature does not verify against the pinned key.
    BadSignature(String),
    /// Signed for a target that is not this host, its groups or `all`.
    WrongTarget(String),
    /// A sequence number at or below the last one applied from that issuer.
    Replayed {
        /// The action's sequence.
        seq: u64,
        /// The last one applied from its issuer.
        last: u64,
    },
    /// Past its expiry time.
    Expired,
    /// The host's policy refuses it: which rule of the policy, and what it refused.
    Policy {
        /// The policy rule, e.g. `file.paths`.
        rule: String,
        /// What was refused, e.g. `file:/etc/shadow is under no allowed prefix`.
        detail: String,
    },
}

impl Reason {
    /// The short name a rule can match on: `signature`, `target`, `replayed`, `expired`,
    /// `policy`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Reason::BadSignature(_) => "signature",
            Reason::WrongTarget(_) => "target",
            Reason::Replayed { .. } => "replayed",
            Reason::Expired => "expired",
            Reason::Policy { .. } => "policy",
        }
    }

    /// A sentence for the operator.
    pub(crate) fn detail(&self) -> String {
        match self {
            Reason::BadSignature(why) => format!("bad signature: {why}"),
            Reason::WrongTarget(t) => format!("target {t} is not this host, its groups or all"),
            Reason::Replayed { seq, last } => {
                format!("sequence {seq} is at or below {last}, the last applied from its issuer")
            }
            Reason::Expired => "expired".to_string(),
            Reason::Policy { rule, detail } => format!("policy {rule}: {detail}"),
        }
    }
}

/// The data of an `actor/rejected` event. `action`, `name` and `seq` are what the envelope
/// claims (unverified when the signature is what failed); absent ones are null.
pub(crate) fn data(
    action: Option<&str>,
    name: Option<&str>,
    seq: Option<u64>,
    why: &Reason,
) -> Value {
    let mut d = json!({
        "action": action,
        "name": name,
        "seq": seq,
        "reason": why.kind(),
        "detail": why.detail(),
    });
    if let Reason::Policy { rule, .. } = why {
        d["rule"] = json!(rule);
    }
    d
}

/// The event's tag.
pub(crate) const TAG: &str = "actor/rejected";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refusals_name_their_rule() {
        let why = Reason::Policy {
            rule: "file.paths".into(),
            detail: "file:/etc/shadow is under no allowed prefix".into(),
        };
        let d = data(Some("a1"), Some("motd"), Some(7), &why);
        assert_eq!(d["reason"], "policy");
        assert_eq!(d["rule"], "file.paths");
        assert!(d["detail"].as_str().unwrap().contains("/etc/shadow"));
        let d = data(
            None,
            None,
            None,
            &Reason::BadSignature("does not verify".into()),
        );
        assert_eq!(
            (d["reason"].as_str(), d["action"].is_null()),
            (Some("signature"), true)
        );
        assert!(d.get("rule").is_none());
    }
}
