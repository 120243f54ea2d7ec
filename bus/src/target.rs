//! Publish targets and their topic frames. The trailing slash on every topic keeps `host/web1/`
//! from matching `host/web10/` under ZeroMQ's prefix subscriptions.

use thiserror::Error;

/// Who an action is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Host(String),
    Group(String),
}

#[derive(Debug, Error, PartialEq)]
#[error("bad target {0:?}: expected \"all\", \"host/<name>\" or \"group/<name>\" (name without '/' or spaces)")]
pub struct TargetError(pub String);

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', ' ', '\t', '\n', '\0'])
}

impl Target {
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
}
