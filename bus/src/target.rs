//! Publish targets and their topic frames. The trailing slash on every topic keeps `host/web1/`
//! from matching `host/web10/` under ZeroMQ's prefix subscriptions.
//!
//! On the wire a target is the plain string it displays as (`all`, `host/<name>`,
//! `group/<name>`), and decoding parses it with [`Target::parse`]: a frame naming a bad target
//! is a malformed frame, like any other that does not decode.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Who an action is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every actor.
    All,
    /// The actor of one host.
    Host(String),
    /// Every actor in a group.
    Group(String),
}

/// A string that is not a target; it holds the string.
#[derive(Debug, Error, PartialEq)]
#[error("bad target {0:?}: expected \"all\", \"host/<name>\" or \"group/<name>\" (name without '/' or spaces)")]
pub struct TargetError(pub String);

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', ' ', '\t', '\n', '\0'])
}

impl Target {
    /// Parse `all`, `host/<name>` or `group/<name>`: the one parser of targets.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        let bad = || TargetError(s.to_string());
        if s == "all" {
            return Ok(Target::All);
        }
        let (kind, name) = s.split_once('/').ok_or_else(bad)?;
        if !valid_name(name) {
            return Err(bad());
        }
        match kind {
            "host" => Ok(Target::Host(name.to_string())),
            "group" => Ok(Target::Group(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// The topic frame the publisher sends this target's actions under.
    pub fn topic(&self) -> String {
        match self {
            Target::All => "all/".to_string(),
            Target::Host(h) => format!("host/{h}/"),
            Target::Group(g) => format!("group/{g}/"),
        }
    }

    /// The topics an actor named `host` in `groups` subscribes to.
    pub fn subscriptions(host: &str, groups: &[String]) -> Vec<String> {
        let mut subs = vec![Target::All.topic(), Target::Host(host.to_string()).topic()];
        subs.extend(groups.iter().map(|g| Target::Group(g.clone()).topic()));
        subs
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Host(h) => write!(f, "host/{h}"),
            Target::Group(g) => write!(f, "group/{g}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        Target::parse(s)
    }
}

/// A target equals the string it displays as, so `action.target == "host/web1"` reads plainly.
impl PartialEq<str> for Target {
    fn eq(&self, other: &str) -> bool {
        match self {
            Target::All => other == "all",
            Target::Host(h) => other.strip_prefix("host/") == Some(h.as_str()),
            Target::Group(g) => other.strip_prefix("group/") == Some(g.as_str()),
        }
    }
}

impl PartialEq<&str> for Target {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Target;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a target: \"all\", \"host/<name>\" or \"group/<name>\"")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Target, E> {
                Target::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_topics() {
        assert_eq!(Target::parse("all").unwrap().topic(), "all/");
        assert_eq!(Target::parse("host/web1").unwrap().topic(), "host/web1/");
        assert_eq!(Target::parse("group/db").unwrap().topic(), "group/db/");
        for bad in [
            "",
            "host/",
            "host/a/b",
            "hosts/a",
            "web1",
            "group/a b",
            "all/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        // Prefix subscriptions cannot confuse a host with a longer name.
        let a = Target::Host("a".into()).topic();
        let ab = Target::Host("ab".into()).topic();
        assert!(!ab.starts_with(&a));
    }

    #[test]
    fn equals_its_string_and_only_that() {
        for s in ["all", "host/web1", "group/db"] {
            let t = Target::parse(s).unwrap();
            assert_eq!(t, s);
            assert_eq!(t.to_string(), s);
        }
        assert_ne!(Target::Host("web1".into()), "group/web1");
        assert_ne!(Target::Host("web1".into()), "host/web10");
        assert_ne!(Target::All, "all/");
    }

    #[test]
    fn json_is_the_plain_string_and_bad_ones_do_not_decode() {
        let t = Target::Group("db".into());
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"group/db\"");
        assert_eq!(serde_json::from_str::<Target>("\"group/db\"").unwrap(), t);
        assert!(serde_json::from_str::<Target>("\"hosts/x\"").is_err());
        assert!(serde_json::from_str::<Target>("3").is_err());
    }
}
