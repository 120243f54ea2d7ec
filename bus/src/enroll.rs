//! The enrollment store: who may speak, in salt-key's model. A key that connects unknown
//! becomes **pending**; an operator **accepts** it (giving the host its groups: a host's
//! groups come from here, never from what the host claims) or **rejects** it, and may later
//! **revoke** it (forget it, so it has to enroll again).
//!
//! A name is bound to the first key it was submitted with: the same name with another key is
//! refused, and keeps being refused, until an operator revokes the name. So a host that shows
//! up under an enrolled name with a new key cannot take that name over.
//!
//! On disk it is one JSON file per name under `<state>/keys/enrolled/` (see [`store_dir`]),
//! written atomically, 0600, in a 0700 directory. Names come from the network, so they are
//! checked by [`check_name`] before they reach a file name. A file that does not
//! parse is an error naming it.
//!
//! ```
//! use bus::keys::{PublicKey, Role};
//! use bus::enroll::{Enrollment, State};
//!
//! let state = tempfile::tempdir().unwrap();
//! let mut store = Enrollment::open(&bus::enroll::store_dir(state.path())).unwrap();
//! let key = PublicKey([7; 32]);
//! store.submit("web1", &key).unwrap();
//! assert_eq!(store.get("web1").unwrap().state, State::Pending);
//! store.accept("web1", &["web".to_string()]).unwrap();
//! let (name, role, groups) = store.lookup_by_key(&key).unwrap();
//! assert_eq!((name, role, groups), ("web1", Role::Host, &["web".to_string()][..]));
//! ```

use crate::keys::{check_name, NameError, PublicKey, Role};
use crate::private::{self, Existing, PrivateError};
use crate::zap::Peer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// At most this many keys wait as pending: a flood of strangers' keys stops growing the store
/// here (each is refused at the door anyway).
pub const MAX_PENDING: usize = 1000;

/// An entry file is a few hundred bytes; anything far larger is not one.
const MAX_ENTRY_FILE: u64 = 64 * 1024;

/// The store's directory under a state dir: `<state>/keys/enrolled`.
pub fn store_dir(state: &Path) -> PathBuf {
    crate::keys::key_dir(state).join("enrolled")
}

/// Where an enrolled name stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Seen, waiting for an operator.
    Pending,
    /// May speak.
    Accepted,
    /// Refused by an operator; stays refused until revoked.
    Rejected,
}

impl State {
    /// `pending`, `accepted` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Accepted => "accepted",
            State::Rejected => "rejected",
        }
    }
}

/// One enrolled name and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The host's (or admin's) name: what its messages carry as User-Id.
    pub name: String,
    /// Its CURVE public key.
    pub key: PublicKey,
    /// What it may do.
    pub role: Role,
    /// Where it stands.
    pub state: State,
    /// Its groups, given at acceptance.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When its state last changed (Unix ms).
    pub since: u64,
}

/// A store operation failed.
#[derive(Debug, Error)]
pub enum EnrollError {
    /// The store's directory or a file in it cannot be used, or a file is not an entry.
    #[error(transparent)]
    Private(#[from] PrivateError),
    /// A name or group is not a valid name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No entry has that name.
    #[error("no key named {0:?} (see `reflex keys list`)")]
    NotFound(String),
    /// The name is enrolled with another key.
    #[error(
        "{name} is {} with key {enrolled}; refusing key {offered} under that name (if the host \
         was really re-keyed, `reflex keys revoke {name}` and let it enroll again)",
        .state.as_str()
    )]
    KeyMismatch {
        /// The name.
        name: String,
        /// Its entry's state.
        state: State,
        /// The fingerprint of the key it has.
        enrolled: String,
        /// The fingerprint of the key offered.
        offered: String,
    },
    /// The key is enrolled under another name.
    #[error("key {key} is already enrolled as {name}; one key is one host")]
    KeyInUse {
        /// The key's fingerprint.
        key: String,
        /// The name it has.
        name: String,
    },
    /// [`MAX_PENDING`] keys are pending already.
    #[error("{MAX_PENDING} keys are pending already; accept or reject some first")]
    TooManyPending,
}

/// What a submission found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// New: now pending.
    Pending,
    /// Already there, with this key, in this state (nothing changed).
    Known(State),
}

/// The enrollment store, loaded in memory and written through to disk on every change.
#[derive(Debug)]
pub struct Enrollment {
    dir: PathBuf,
    entries: BTreeMap<String, Entry>,
    by_key: HashMap<PublicKey, String>,
    /// [`MAX_PENDING`]; lower in tests, which would otherwise write a thousand files.
    max_pending: usize,
}

impl Enrollment {
    /// Open (making it 0700 when missing) the store in `dir`, reading every entry.
    pub fn open(dir: &Path) -> Result<Enrollment, EnrollError> {
        private::ensure_dir(dir)?;
        let mut store = Enrollment {
            dir: dir.to_path_buf(),
            entries: BTreeMap::new(),
            by_key: HashMap::new(),
            max_pending: MAX_PENDING,
        };
        let listing = std::fs::read_dir(dir).map_err(|source| PrivateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for item in listing {
            let item = item.map_err(|source| PrivateError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let file_name = item.file_name();
            // Dot-files are temp files of an interrupted write: never entries.
            if file_name.to_string_lossy().starts_with('.') {
                continue;
            }
            let entry = store.read_entry(&item.path())?;
            store.by_key.insert(entry.key, entry.name.clone());
            store.entries.insert(entry.name.clone(), entry);
        }
        Ok(store)
    }

    fn read_entry(&self, path: &Path) -> Result<Entry, EnrollError> {
        let bad = |why: String| {
            EnrollError::from(PrivateError::Damaged {
                path: path.to_path_buf(),
                why,
            })
        };
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .ok_or_else(|| bad("not an entry file (<name>.json)".into()))?;
        let bytes = private::read(path, MAX_ENTRY_FILE)?
            .ok_or_else(|| bad("vanished while the store was read".into()))?;
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        check_name(&entry.name).map_err(|e| bad(e.to_string()))?;
        if entry.name != stem {
            return Err(bad(format!("holds the entry of {:?}", entry.name)));
        }
        for g in &entry.groups {
            check_name(g).map_err(|e| bad(format!("group: {e}")))?;
        }
        if let Some(other) = self.by_key.get(&entry.key) {
            return Err(bad(format!("has the same key as {other}")));
        }
        Ok(entry)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Write `entry` through to disk, then into memory.
    fn put(&mut self, entry: Entry) -> Result<(), EnrollError> {
        let mut text = serde_json::to_vec_pretty(&entry).map_err(|e| PrivateError::Damaged {
            path: self.path(&entry.name),
            why: e.to_string(),
        })?;
        text.push(b'\n');
        private::write(&self.path(&entry.name), &text, Existing::Replace)?;
        self.by_key.insert(entry.key, entry.name.clone());
        self.entries.insert(entry.name.clone(), entry);
        Ok(())
    }

    /// The entry of `name`, checked to exist.
    fn existing(&self, name: &str) -> Result<&Entry, EnrollError> {
        check_name(name)?;
        self.entries
            .get(name)
            .ok_or_else(|| EnrollError::NotFound(name.to_string()))
    }

    /// Refuse `key` for `name` when either is bound to something else.
    fn check_binding(&self, name: &str, key: &PublicKey) -> Result<Option<&Entry>, EnrollError> {
        check_name(name)?;
        if let Some(e) = self.entries.get(name) {
            if e.key != *key {
                return Err(EnrollError::KeyMismatch {
                    name: name.to_string(),
                    state: e.state,
                    enrolled: e.key.fingerprint(),
                    offered: key.fingerprint(),
                });
            }
            return Ok(Some(e));
        }
        if let Some(other) = self.by_key.get(key) {
            return Err(EnrollError::KeyInUse {
                key: key.fingerprint(),
                name: other.clone(),
            });
        }
        Ok(None)
    }

    /// A host named `name` offered `key` (it connected, or asked to enroll): an unknown name
    /// becomes pending; a known name with the same key stays as it is; a known name with
    /// another key is refused with [`EnrollError::KeyMismatch`] and nothing changes.
    pub fn submit(&mut self, name: &str, key: &PublicKey) -> Result<Submitted, EnrollError> {
        if let Some(e) = self.check_binding(name, key)? {
            return Ok(Submitted::Known(e.state));
        }
        let pending = self
            .entries
            .values()
            .filter(|e| e.state == State::Pending)
            .count();
        if pending >= self.max_pending {
            return Err(EnrollError::TooManyPending);
        }
        self.put(Entry {
            name: name.to_string(),
            key: *key,
            role: Role::Host,
            state: State::Pending,
            groups: Vec::new(),
            since: crate::now_ms(),
        })?;
        Ok(Submitted::Pending)
    }

    /// Accept `name` (pending or rejected) with `groups`; for a name accepted already, set its
    /// groups.
    pub fn accept(&mut self, name: &str, groups: &[String]) -> Result<&Entry, EnrollError> {
        for g in groups {
            check_name(g)?;
        }
        let mut e = self.existing(name)?.clone();
        let mut groups = groups.to_vec();
        groups.sort();
        groups.dedup();
        if e.state != State::Accepted {
            e.since = crate::now_ms();
        }
        e.state = State::Accepted;
        e.groups = groups;
        self.put(e)?;
        self.existing(name)
    }

    /// Reject `name` (pending or accepted): its key is refused from now on.
    pub fn reject(&mut self, name: &str) -> Result<&Entry, EnrollError> {
        let mut e = self.existing(name)?.clone();
        if e.state != State::Rejected {
            e.state = State::Rejected;
            e.since = crate::now_ms();
            self.put(e)?;
        }
        self.existing(name)
    }

    /// Forget `name` whatever its state: its key is refused, and the next time it connects it
    /// is pending again, with whatever key it then has. Returns the entry it had.
    pub fn revoke(&mut self, name: &str) -> Result<Entry, EnrollError> {
        self.existing(name)?;
        private::remove(&self.path(name))?;
        let e = self
            .entries
            .remove(name)
            .ok_or_else(|| EnrollError::NotFound(name.to_string()))?;
        self.by_key.remove(&e.key);
        Ok(e)
    }

    /// Enroll `key` as `name` directly, accepted with `role` and `groups`: for the keys the
    /// control node makes itself (`reflex up`'s own host, the admin key). Refused like
    /// [`submit`](Self::submit) when the name or key is bound to something else.
    pub fn enroll(
        &mut self,
        name: &str,
        key: &PublicKey,
        role: Role,
        groups: &[String],
    ) -> Result<&Entry, EnrollError> {
        if self.check_binding(name, key)?.is_none() {
            self.put(Entry {
                name: name.to_string(),
                key: *key,
                role,
                state: State::Pending,
                groups: Vec::new(),
                since: crate::now_ms(),
            })?;
        }
        if let Some(e) = self.entries.get(name).filter(|e| e.role != role) {
            let mut e = e.clone();
            e.role = role;
            self.put(e)?;
        }
        self.accept(name, groups)
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Every entry, by name.
    pub fn list(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Who an accepted key belongs to: name, role and groups. `None` for a key that is
    /// unknown, pending or rejected.
    pub fn lookup_by_key(&self, key: &PublicKey) -> Option<(&str, Role, &[String])> {
        let e = self.entries.get(self.by_key.get(key)?)?;
        (e.state == State::Accepted).then_some((e.name.as_str(), e.role, e.groups.as_slice()))
    }

    /// The accepted keys, as the ZAP handler's [`crate::zap::KeySet`] takes them
    /// (`keys.replace(store.peers())`).
    pub fn peers(&self) -> impl Iterator<Item = (PublicKey, Peer)> + '_ {
        self.entries
            .values()
            .filter(|e| e.state == State::Accepted)
            .map(|e| {
                (
                    e.key,
                    Peer {
                        name: e.name.clone(),
                        role: e.role,
                        groups: e.groups.clone(),
                    },
                )
            })
    }
}

/// Follows a store another process changes (the publisher follows the manager's; the manager
/// follows `reflex keys` run offline): one `stat` of the directory per [`Follow::poll`] while
/// nothing changed, a re-read when something did. Every change is a rename into the directory,
/// which moves its modification time (for a fraction of a second after a change, every poll
/// reads: see [`SAME_TICK`]).
#[derive(Debug)]
pub struct Follow {
    dir: PathBuf,
    seen: Option<std::time::SystemTime>,
}

impl Follow {
    /// Follow the store in `dir`; the first [`Follow::poll`] always reads it.
    pub fn new(dir: &Path) -> Follow {
        Follow {
            dir: dir.to_path_buf(),
            seen: None,
        }
    }

    /// The store as it is now, when it changed since the last call; `None` when it did not.
    pub fn poll(&mut self) -> Result<Option<Enrollment>, EnrollError> {
        let io = |source| PrivateError::Io {
            path: self.dir.clone(),
            source,
        };
        private::ensure_dir(&self.dir)?;
        // Stat before reading: a change landing during the read moves the time again, so the
        // next poll reads once more instead of missing it.
        let stamp = std::fs::metadata(&self.dir)
            .and_then(|m| m.modified())
            .map_err(io)?;
        if self.seen == Some(stamp) {
            return Ok(None);
        }
        let store = Enrollment::open(&self.dir)?;
        // The kernel stamps times from a clock that ticks every few ms: a second change within
        // the tick of the one just read would leave the time as it is. So a time that recent
        // is not taken as seen, and the next poll reads again.
        let settled = std::time::SystemTime::now()
            .duration_since(stamp)
            .is_ok_and(|age| age >= SAME_TICK);
        self.seen = settled.then_some(stamp);
        Ok(Some(store))
    }
}

/// A directory time at least this old cannot be shared by a change still to come.
const SAME_TICK: std::time::Duration = std::time::Duration::from_millis(100);

mod ask;
pub use ask::{
    ask, wait_until_accepted, wait_until_accepted_at, AskError, AskReply, AskRequest, ASK_EVERY,
    MAX_REQUEST,
};

#[cfg(test)]
mod tests;
