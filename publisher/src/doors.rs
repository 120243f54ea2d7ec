//! Who gets what from the publisher. Every subscriber and every replay request is named by the
//! `User-Id` its CURVE key was accepted under; a host may hold `all/`, `host/<its name>/` and
//! `group/<g>/` for the groups it was enrolled with, nothing else (not `host/`, not the empty
//! prefix that would match everything); the admin may hold anything. Without CURVE (the
//! explicit `--insecure`) nobody is named and everything is allowed.
//!
//! The fan-out is an XPUB socket in manual mode: a subscription takes effect only once
//! [`Doors::serve_subscriptions`] has checked it. XPUB cannot drop one subscriber, so when a key
//! loses access (revoked, rejected, or its groups changed) the publisher closes and rebinds the
//! whole socket: every actor reconnects at once, the ZAP handler refuses the revoked key, the
//! others subscribe again and catch up through replay.

use crate::PublisherError;
use bus::enroll::{store_dir, Follow};
use bus::secure::{Door, Security};
use bus::zap::{KeySet, Mode, Peer};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the enrollment store is looked at (one `stat` when nothing changed).
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// At most one warning per this long about refused subscriptions or replay topics.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The publisher's view of who may have what.
pub(crate) struct Doors {
    /// `None` without CURVE.
    follow: Option<Follow>,
    /// What the ZAP handler answers from.
    keys: KeySet,
    /// Accepted peers by name, as of the last look at the store.
    peers: HashMap<String, Peer>,
    last_look: Instant,
    last_warn: Option<Instant>,
    /// Subscriptions and replay topics refused since start.
    pub(crate) refused: u64,
}

impl Doors {
    /// With CURVE, install the process's ZAP handler (before any socket binds) answering from
    /// the enrollment store of `state_dir`.
    pub(crate) fn new(
        security: &Security,
        state_dir: &std::path::Path,
    ) -> Result<Doors, PublisherError> {
        let keys = KeySet::new();
        let mut doors = Doors {
            follow: None,
            keys: keys.clone(),
            peers: HashMap::new(),
            last_look: Instant::now(),
            last_warn: None,
            refused: 0,
        };
        if security.is_secure() {
            doors.follow = Some(Follow::new(&store_dir(state_dir)));
            doors.look()?;
            doors.keys.follow_store(&store_dir(state_dir));
            bus::zap::install(keys, Mode::Secure, |u| {
                tracing::info!(key = %u.key.fingerprint(), address = %u.address, door = %u.domain, "unknown key refused (it enrolls with the manager)");
            })?;
        }
        Ok(doors)
    }

    /// Re-read the store when it changed; true when some peer lost access it had (then the
    /// fan-out must be rebound).
    fn look(&mut self) -> Result<bool, PublisherError> {
        self.last_look = Instant::now();
        let Some(follow) = &mut self.follow else {
            return Ok(false);
        };
        let Some(store) = follow.poll()? else {
            return Ok(false);
        };
        let fresh: Vec<_> = store.peers().collect();
        let peers: HashMap<String, Peer> = fresh
            .iter()
            .map(|(_, p)| (p.name.clone(), p.clone()))
            .collect();
        // Lost access: gone, or now with fewer rights (a group less, a lower role).
        let lost = self.peers.iter().any(|(name, old)| match peers.get(name) {
            None => true,
            Some(new) => new.role != old.role || old.groups.iter().any(|g| !new.groups.contains(g)),
        });
        self.keys.replace(fresh);
        self.peers = peers;
        Ok(lost)
    }

    /// Look at the store if it is time; true when the fan-out must be rebound.
    pub(crate) fn refresh(&mut self) -> Result<bool, PublisherError> {
        if self.follow.is_none() || self.last_look.elapsed() < FOLLOW_EVERY {
            return Ok(false);
        }
        let lost = self.look()?;
        if lost {
            tracing::warn!("a key lost access: rebinding the fan-out so its subscriptions end");
        }
        Ok(lost)
    }

    /// May the peer named `user` (a message's `User-Id`) have `topic`?
    pub(crate) fn may_have(&self, user: Option<&str>, topic: &[u8]) -> bool {
        if self.follow.is_none() {
            return true;
        }
        // The key set, not `peers`: the ZAP handler may have just re-read the store for this
        // very peer's handshake.
        let Some(peer) = user.and_then(|u| self.keys.peer_named(u)) else {
            return false;
        };
        allowed(&peer, topic)
    }

    fn refuse(&mut self, user: Option<&str>, what: &str, topic: &[u8]) {
        self.refused += 1;
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warn = Some(Instant::now());
            tracing::warn!(
                user = user.unwrap_or("<none>"),
                topic = %String::from_utf8_lossy(topic),
                refused = self.refused,
                "{what} refused: not this peer's topic"
            );
        }
    }

    /// Apply the subscription messages waiting on the fan-out socket that their senders may
    /// hold; refuse (count, log) the rest.
    pub(crate) fn serve_subscriptions(&mut self, xpub: &zmq::Socket) -> Result<(), zmq::Error> {
        let mut msg = zmq::Message::new();
        loop {
            match xpub.recv(&mut msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(()),
                Err(e) => return Err(e),
            }
            let user = msg.gets("User-Id").map(str::to_string);
            let Some((&kind, topic)) = msg.split_first() else {
                continue;
            };
            let topic = topic.to_vec();
            match kind {
                1 if self.may_have(user.as_deref(), &topic) => xpub.set_subscribe(&topic)?,
                1 => self.refuse(user.as_deref(), "subscription", &topic),
                // Unsubscribing only ever narrows what a peer gets.
                0 => xpub.set_unsubscribe(&topic)?,
                _ => {}
            }
        }
    }

    /// Keep the replay topics `user` may have; the refused ones are returned.
    pub(crate) fn filter_topics(
        &mut self,
        user: Option<&str>,
        topics: &mut Vec<String>,
    ) -> Vec<String> {
        let (keep, refused): (Vec<String>, Vec<String>) = std::mem::take(topics)
            .into_iter()
            .partition(|t| self.may_have(user, t.as_bytes()));
        for t in &refused {
            self.refuse(user, "replay topic", t.as_bytes());
        }
        *topics = keep;
        refused
    }
}

/// The topics a host holds exactly: `all/`, its own, its groups'. The admin holds anything.
fn allowed(peer: &Peer, topic: &[u8]) -> bool {
    if peer.role == bus::Role::Admin {
        return true;
    }
    if peer.role != bus::Role::Host {
        return false;
    }
    let Ok(topic) = std::str::from_utf8(topic) else {
        return false;
    };
    if topic == "all/" {
        return true;
    }
    if let Some(name) = topic
        .strip_prefix("host/")
        .and_then(|t| t.strip_suffix('/'))
    {
        return name == peer.name;
    }
    if let Some(group) = topic
        .strip_prefix("group/")
        .and_then(|t| t.strip_suffix('/'))
    {
        return peer.groups.iter().any(|g| g == group);
    }
    false
}

/// How often the PUB socket pings each subscriber, and how long it waits for any traffic back.
const HEARTBEAT_MS: i32 = 2_000;
const HEARTBEAT_TIMEOUT_MS: i32 = 10_000;

/// Bind the fan-out: XPUB in manual mode at the publish door. After a close (a rebind), the
/// port can stay busy for a moment while libzmq's I/O thread lets go of it: retry briefly.
pub(crate) fn bind_fanout(
    endpoint: &str,
    security: &Security,
    limits: Option<(i32, i32)>,
) -> Result<zmq::Socket, PublisherError> {
    let err = |e| bus::sockets::SocketError::new(endpoint, e);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut s = bus::sockets::socket(zmq::XPUB).map_err(err)?;
        bus::sockets::set_xpub_manual(&mut s).map_err(err)?;
        // A subscriber that stops answering ZMTP pings (a host unplugged, a stalled process)
        // is dropped; it reconnects and catches up from the replay endpoint.
        s.set_heartbeat_ivl(HEARTBEAT_MS).map_err(err)?;
        s.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS).map_err(err)?;
        if let Some((hwm, sndbuf)) = limits {
            s.set_sndhwm(hwm).map_err(err)?;
            s.set_sndbuf(sndbuf).map_err(err)?;
        }
        security.serve(&s, Door::Publish).map_err(err)?;
        match s.bind(endpoint) {
            Ok(()) => return Ok(s),
            Err(zmq::Error::EADDRINUSE) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_holds_exactly_its_own_topics() {
        let web1 = Peer {
            name: "web1".into(),
            role: bus::Role::Host,
            groups: vec!["web".into()],
        };
        for t in ["all/", "host/web1/", "group/web/"] {
            assert!(allowed(&web1, t.as_bytes()), "{t}");
        }
        for t in [
            "",
            "host/",
            "host/web10/",
            "host/web1",
            "host/web2/",
            "group/",
            "group/db/",
            "group/web/x",
            "al",
            "monitor",
        ] {
            assert!(!allowed(&web1, t.as_bytes()), "{t:?}");
        }
        let admin = Peer {
            name: "admin".into(),
            role: bus::Role::Admin,
            groups: vec![],
        };
        assert!(allowed(&admin, b""));
    }
}
