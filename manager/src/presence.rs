//! Presence: which hosts are up, from the heartbeats their senders say at the acks door.
//!
//! Every sender (an actor's results, a beacon, an application's emitter) says hello once a
//! second ([`bus::sender`]). With CURVE, the hello carries the host's authenticated name, so a
//! host can only keep itself alive. A host heard from for the first time, or again after it
//! was down, is `host/<name>/up`; a host not heard from for [`Presence::missed`] heartbeats in a
//! row is `host/<name>/down`. Both are events like any other: rules react to them. Without
//! CURVE no name is authenticated and presence is not tracked. The admin key is not a host.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often senders say hello (the heartbeat [`bus::sender::SenderConfig::new`] uses).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Heartbeats missed in a row before a host is down, unless configured otherwise.
pub const DEFAULT_MISSED: u32 = 3;
/// Most hosts tracked (the enrolled keys bound it in practice).
pub const MAX_HOSTS: usize = 100_000;

struct Host {
    last: Instant,
    last_ms: u64,
    /// When it last went up or down, Unix ms.
    since_ms: u64,
    up: bool,
}

/// A host as presence knows it (`{"cmd": "hosts"}` on the control socket, for `reflex hosts`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// Heartbeats arrive.
    pub up: bool,
    /// When it last went up or down, Unix ms.
    pub since: u64,
    /// Its last heartbeat, Unix ms.
    pub last: u64,
}

/// The hosts heard from and whether each is up.
pub struct Presence {
    hosts: HashMap<String, Host>,
    /// Heartbeats missed in a row that make a host down.
    pub missed: u32,
}

impl Presence {
    /// Track presence; a host is down after `missed` heartbeats (at least 1).
    pub fn new(missed: u32) -> Presence {
        Presence {
            hosts: HashMap::new(),
            missed: missed.max(1),
        }
    }

    /// A heartbeat from `host`: the `(tag, data)` of its up event when it was not up.
    pub fn heard(&mut self, host: &str) -> Option<(String, Value)> {
        let now = Instant::now();
        let ms = bus::now_ms();
        if let Some(h) = self.hosts.get_mut(host) {
            let was_up = h.up;
            let away = now.duration_since(h.last);
            h.last = now;
            h.last_ms = ms;
            if !was_up {
                h.since_ms = ms;
            }
            h.up = true;
            return (!was_up).then(|| {
                (
                    format!("host/{host}/up"),
                    json!({"host": host, "away_ms": away.as_millis() as u64}),
                )
            });
        }
        if self.hosts.len() >= MAX_HOSTS {
            return None;
        }
        self.hosts.insert(
            host.to_string(),
            Host {
                last: now,
                last_ms: ms,
                since_ms: ms,
                up: true,
            },
        );
        Some((format!("host/{host}/up"), json!({"host": host})))
    }

    /// The `(tag, data)` of a down event for each host that just missed too many heartbeats.
    pub fn check(&mut self) -> Vec<(String, Value)> {
        let limit = HEARTBEAT * self.missed;
        let missed = self.missed;
        let mut out = Vec::new();
        for (name, h) in &mut self.hosts {
            if h.up && h.last.elapsed() > limit {
                h.up = false;
                h.since_ms = bus::now_ms();
                out.push((
                    format!("host/{name}/down"),
                    json!({"host": name, "missed_heartbeats": missed, "last_seen": h.last_ms}),
                ));
            }
        }
        out
    }

    /// Every host heard from since the manager started, by name.
    pub fn hosts(&self) -> std::collections::BTreeMap<&str, Seen> {
        self.hosts
            .iter()
            .map(|(name, h)| {
                (
                    name.as_str(),
                    Seen {
                        up: h.up,
                        since: h.since_ms,
                        last: h.last_ms,
                    },
                )
            })
            .collect()
    }

    /// Hosts up and hosts down.
    pub fn counts(&self) -> (usize, usize) {
        let up = self.hosts.values().filter(|h| h.up).count();
        (up, self.hosts.len() - up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_once_down_after_missed_heartbeats_and_up_again() {
        let mut p = Presence::new(1);
        assert_eq!(
            p.heard("web1").map(|e| e.0).as_deref(),
            Some("host/web1/up")
        );
        assert!(p.heard("web1").is_none(), "already up");
        assert!(p.check().is_empty());
        std::thread::sleep(HEARTBEAT + Duration::from_millis(100));
        let down = p.check();
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].0, "host/web1/down");
        assert_eq!(down[0].1["missed_heartbeats"], 1);
        assert!(p.check().is_empty(), "said once");
        assert_eq!(p.counts(), (0, 1));
        let web1 = p.hosts()["web1"].clone();
        assert!(!web1.up && web1.since >= web1.last + 1_000, "{web1:?}");
        let up = p.heard("web1").expect("up again");
        assert!(up.1["away_ms"].as_u64() >= Some(1_000));
        let again = p.hosts()["web1"].clone();
        assert!(again.up && again.since >= web1.since && again.since == again.last);
    }
}
