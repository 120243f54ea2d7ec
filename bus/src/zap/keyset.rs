//! The accepted keys the ZAP handler answers from: shared between the handler thread and
//! whoever enrolls and revokes (the manager), updated in place.

use crate::keys::{PublicKey, Role};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

/// Who an accepted key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The enrolled name: the User-Id its messages carry.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The groups it was enrolled with (a host's `group/<g>/` topics); empty for others.
    pub groups: Vec<String>,
}

#[derive(Default)]
struct Peers {
    by_key: HashMap<PublicKey, Peer>,
    by_name: HashMap<String, PublicKey>,
}

impl Peers {
    /// Bind `key` to `peer`, dropping whatever either was bound to before.
    fn insert(&mut self, key: PublicKey, peer: Peer) {
        if let Some(old_key) = self.by_name.remove(&peer.name) {
            self.by_key.remove(&old_key);
        }
        if let Some(old_peer) = self.by_key.remove(&key) {
            self.by_name.remove(&old_peer.name);
        }
        self.by_name.insert(peer.name.clone(), key);
        self.by_key.insert(key, peer);
    }
}

/// Accepted keys → (name, role). Cheap to clone: clones share one set, so the manager's
/// changes are what the handler answers from at the next handshake.
///
/// A name has one key: inserting a name again replaces its old key.
#[derive(Clone, Default)]
pub struct KeySet {
    peers: Arc<RwLock<Peers>>,
    generation: Arc<AtomicU64>,
    /// The enrollment store the set mirrors, re-read on an unknown key (see
    /// [`KeySet::follow_store`]).
    source: Arc<RwLock<Option<Source>>>,
}

struct Source {
    follow: crate::enroll::Follow,
    /// When the store was last read in full.
    last_read: Option<std::time::Instant>,
}

/// Read the store in full for an unknown key at most this often: strangers' keys arriving
/// while the store keeps changing (pending requests at the enroll door) cost at most this many
/// reads. A key refused meanwhile is dialed again by its owner (the actor's subscription, the
/// sender) and gets in then.
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("len", &self.len())
            .field("generation", &self.generation())
            .finish()
    }
}

impl KeySet {
    /// An empty set: every key is refused.
    pub fn new() -> KeySet {
        KeySet::default()
    }

    // A panic elsewhere while holding the lock cannot leave `Peers` half-changed in a way
    // that matters (each change is one insert or remove), so a poisoned lock is used as is.
    fn read(&self) -> RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apply `f` under the write lock and move the generation on before readers see it.
    fn change<T>(&self, f: impl FnOnce(&mut Peers) -> T) -> T {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut peers);
        self.generation.fetch_add(1, Ordering::Release);
        out
    }

    /// Accept `key` as `peer`.
    pub fn insert(&self, key: PublicKey, peer: Peer) {
        self.change(|p| p.insert(key, peer));
    }

    /// Stop accepting `key`; who it belonged to.
    pub fn remove(&self, key: &PublicKey) -> Option<Peer> {
        self.change(|p| {
            let peer = p.by_key.remove(key)?;
            p.by_name.remove(&peer.name);
            Some(peer)
        })
    }

    /// Stop accepting the key of `name`; the key it had.
    pub fn remove_name(&self, name: &str) -> Option<PublicKey> {
        self.change(|p| {
            let key = p.by_name.remove(name)?;
            p.by_key.remove(&key);
            Some(key)
        })
    }

    /// Make the set exactly `peers` (e.g. the enrollment store's accepted keys, reloaded).
    pub fn replace(&self, peers: impl IntoIterator<Item = (PublicKey, Peer)>) {
        let mut fresh = Peers::default();
        for (key, peer) in peers {
            fresh.insert(key, peer);
        }
        self.change(|p| *p = fresh);
    }

    /// Who `key` belongs to, when it is accepted.
    pub fn get(&self, key: &PublicKey) -> Option<Peer> {
        self.read().by_key.get(key).cloned()
    }

    /// The peer named `name` (with its groups), when one is accepted.
    pub fn peer_named(&self, name: &str) -> Option<Peer> {
        let peers = self.read();
        peers.by_key.get(peers.by_name.get(name)?).cloned()
    }

    /// The role of the peer named `name`, when one is accepted: what a receiver checks a
    /// message's `User-Id` against.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        let peers = self.read();
        let key = peers.by_name.get(name)?;
        peers.by_key.get(key).map(|p| p.role)
    }

    /// Every accepted name and its role, as of now: what a receiver keeps locally and rebuilds
    /// only when [`KeySet::generation`] moves, so its per-message check takes no lock.
    pub fn roles(&self) -> HashMap<String, Role> {
        self.read()
            .by_key
            .values()
            .map(|p| (p.name.clone(), p.role))
            .collect()
    }

    /// Mirror the enrollment store in `dir`: an unknown key makes the handler re-read it
    /// before refusing, when it changed since last read, so a host accepted a moment ago (by
    /// another process: the store is files) is not refused for a stale copy. That matters
    /// because libzmq never retries a handshake ZAP refused: the connection stays dead until
    /// its owner dials again. A stranger's key costs one `stat` of the directory while the
    /// store is unchanged, and at most one full read per [`RELOAD_EVERY`] while it changes.
    pub fn follow_store(&self, dir: &std::path::Path) {
        let mut s = self.source.write().unwrap_or_else(PoisonError::into_inner);
        *s = Some(Source {
            follow: crate::enroll::Follow::new(dir),
            last_read: None,
        });
    }

    /// Re-read the followed store if it changed since it was last read (rate-limited); true
    /// when it was.
    pub(crate) fn reload(&self) -> bool {
        let mut s = self.source.write().unwrap_or_else(PoisonError::into_inner);
        let Some(src) = s.as_mut() else {
            return false;
        };
        if src.last_read.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
            return false;
        }
        match src.follow.poll() {
            Ok(Some(store)) => {
                src.last_read = Some(std::time::Instant::now());
                self.replace(store.peers().collect::<Vec<_>>());
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("ZAP: cannot re-read the enrollment store: {e}");
                false
            }
        }
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }

    /// True when no key is accepted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A number that changes whenever the set does, so a receiver can re-check the senders of
    /// established connections only after a change (revocation) instead of per message.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> Peer {
        Peer {
            name: name.into(),
            role: Role::Host,
            groups: Vec::new(),
        }
    }

    #[test]
    fn one_key_per_name_and_both_indexes_agree() {
        let set = KeySet::new();
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let g0 = set.generation();
        set.insert(a, peer("web1"));
        assert!(set.generation() > g0);
        assert_eq!(set.get(&a), Some(peer("web1")));
        assert_eq!(set.role_of("web1"), Some(Role::Host));
        // A new key for web1 replaces the old one.
        set.insert(b, peer("web1"));
        assert_eq!(set.get(&a), None);
        assert_eq!(set.len(), 1);
        // The same key under another name moves the key.
        set.insert(b, peer("web2"));
        assert_eq!(set.role_of("web1"), None);
        assert_eq!(set.role_of("web2"), Some(Role::Host));
        // The same key and name again changes nothing.
        set.insert(b, peer("web2"));
        assert_eq!(set.role_of("web2"), Some(Role::Host));
        assert_eq!(set.remove(&b), Some(peer("web2")));
        assert!(set.is_empty() && set.role_of("web2").is_none());

        set.replace([(a, peer("x")), (b, peer("y"))]);
        assert_eq!(set.roles().get("y"), Some(&Role::Host));
        assert_eq!(set.remove_name("x"), Some(a));
        assert_eq!(set.len(), 1);
        let shared = set.clone();
        shared.remove(&b);
        assert!(set.is_empty());
    }
}
