//! Registers: the persistent state rules read and write, so events can be correlated over time.
//!
//! Values are JSON-shaped ([`serde_json::Value`]: int, float, string, bool, array, map) stored as
//! msgpack in sled under the state dir. On top of plain keys the store keeps, each in a space of
//! its own (a one-byte key prefix in the one sled tree) so they never collide with user keys:
//!
//! - expiry times ([`Registers::expire`]): an expired key reads as absent and is purged;
//! - time windows of samples ([`Registers::window`]) with count/sum/avg/min/max;
//! - marks for correlation ([`Registers::mark`], [`Registers::seen`]);
//! - throttles ([`Registers::once_within`], [`Registers::accumulate`]).
//!
//! Every read-modify-write is atomic (it runs under the store's lock), so concurrent writers
//! never lose an update.
//!
//! Durability: every write is staged in memory, and every read sees the staged writes first
//! (a staged delete reads as absent), then sled. Nothing staged reaches sled until its owner
//! calls [`Registers::commit`]: the staged writes, together with the owner's own
//! [`SideWrite`]s (the manager's delivery marks and outbox), go into sled as one atomic batch,
//! followed by one fsync. So a group of events commits as one: after a crash, even a SIGKILL
//! at any instruction, either all of a group's register changes and side writes are there or
//! none of them. [`Registers::flush`] is a commit without side writes, and
//! [`Registers::flush_if_dirty`] commits only when something is staged. What was staged and
//! not committed is lost by a crash or a drop, by design: the owner commits once the group's
//! effects are decided, and acknowledges only after that.
//!
//! Several managers ([`Registers::shared`]): the committed data lives in a [`SharedStore`]
//! (etcd, implemented by the `cluster` crate) instead of sled, under the same API and
//! semantics. Staging is the same; every committed key a group reads is recorded with its
//! version, and [`Registers::commit`] becomes one transaction that applies the group's writes
//! and side writes only if none of those keys changed meanwhile. A group that lost a race
//! fails with [`RegisterError::Conflict`] and is discarded whole; its owner runs its events
//! again on fresh data. The group is everything read and staged since the last commit. So `incr` stays atomic across managers, and a group's register changes
//! and its "done" marks still commit together or not at all.
//!
//! A store written before the one-tree layout (four sled trees) is moved into it at open,
//! once, in one batch.
//!
//! Every operation that depends on time has an `_at` form taking "now" in Unix milliseconds,
//! so its semantics are tested without sleeping.

#![deny(missing_docs)]

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use store::{Space, Store, MARKS, THROTTLES, VALUES, WINDOWS};
use thiserror::Error;

mod store;

pub use store::{ReadSet, SharedStore, SideEntry, SideWrite, Staged, Versioned, SIDE_SPACE_MIN};

/// What a register operation can fail with.
#[derive(Debug, Error)]
pub enum RegisterError {
    /// sled failed (disk full, I/O error, a store another process holds).
    #[error("register store: {0}")]
    Store(#[from] sled::Error),
    /// The stored bytes do not decode.
    #[error("register {key:?} holds a value that cannot be read: {message}")]
    Corrupt {
        /// The register.
        key: String,
        /// Why it does not decode.
        message: String,
    },
    /// `incr` on a register that holds something else.
    #[error("register {key:?} holds {found}, not an integer")]
    NotInteger {
        /// The register.
        key: String,
        /// The JSON type it holds.
        found: &'static str,
    },
    /// `incr` past the range of a 64-bit integer.
    #[error("register {key:?} would overflow")]
    Overflow {
        /// The register.
        key: String,
    },
    /// A duration that is negative, infinite or NaN.
    #[error("{what} must be a finite number of seconds >= 0, not {secs}")]
    BadSeconds {
        /// The argument it was given as.
        what: &'static str,
        /// The number given.
        secs: f64,
    },
    /// A shared store's commit lost a race: a key the group read changed since. Nothing of the
    /// group was written, and its staged writes are dropped; run its events again.
    #[error("a register the group read was changed by another manager: run the group again")]
    Conflict,
    /// A shared store failed (etcd unreachable, a refused transaction). What was staged is
    /// kept for the next commit.
    #[error("shared register store: {0}")]
    Shared(String),
    /// A side write (or a side read) in a space the registers keep for themselves.
    #[error("side space {space:#04x} is below 0x80: those bytes belong to the registers")]
    SideSpace {
        /// The space byte given.
        space: u8,
    },
}

/// Statistics over the samples of a time window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowStats {
    /// How many samples the window holds.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Their mean (0 for an empty window).
    pub avg: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

/// Most samples one window keeps (the oldest go first): bounds memory under event floods.
pub const MAX_WINDOW_SAMPLES: usize = 100_000;

/// A handle on the register store; cheap to clone.
#[derive(Clone)]
pub struct Registers {
    store: Store,
    values: Space,
    windows: Space,
    marks: Space,
    throttles: Space,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

fn millis(what: &'static str, secs: f64) -> Result<u64, RegisterError> {
    if secs.is_finite() && secs >= 0.0 {
        Ok((secs * 1000.0).round() as u64)
    } else {
        Err(RegisterError::BadSeconds { what, secs })
    }
}

/// A stored value: a header byte (0 = no expiry, 1 = an 8-byte expiry time follows), then the
/// value as msgpack. Keeping the expiry inline makes a read one look-up.
struct Stored {
    expires: Option<u64>,
    value: Value,
}

fn pack<T: Serialize>(v: &T) -> Vec<u8> {
    // Our stored types (JSON values, numbers, pairs of them) always serialize.
    rmp_serde::to_vec(v).expect("register types always encode")
}

fn unpack<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RegisterError> {
    rmp_serde::from_slice(bytes).map_err(|e| RegisterError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match self.expires {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
        rmp_serde::encode::write(&mut out, &self.value).expect("JSON values always encode");
        out
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Stored, RegisterError> {
        let corrupt = |m: &str| RegisterError::Corrupt {
            key: key.to_string(),
            message: m.to_string(),
        };
        match bytes.split_first() {
            Some((0, rest)) => Ok(Stored {
                expires: None,
                value: unpack(key, rest)?,
            }),
            Some((1, rest)) if rest.len() >= 8 => {
                let (t, v) = rest.split_at(8);
                let mut b = [0u8; 8];
                b.copy_from_slice(t);
                Ok(Stored {
                    expires: Some(u64::from_be_bytes(b)),
                    value: unpack(key, v)?,
                })
            }
            Some((h, _)) => Err(corrupt(&format!("unknown header byte {h}"))),
            None => Err(corrupt("empty")),
        }
    }

    fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

impl Registers {
    /// Open (or create) the store in `dir`. sled locks the store for one process; a previous
    /// owner that is still shutting down (its flusher thread lets go within its flush interval)
    /// is waited for, up to 3 s, before the lock error is returned.
    pub fn open(dir: &Path) -> Result<Registers, RegisterError> {
        /// sled's page cache for the register store.
        const CACHE_BYTES: u64 = 128 << 20;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match sled::Config::new()
                .path(dir)
                // sled's page cache grows to 1 GiB by default; the hot registers fit in far less.
                .cache_capacity(CACHE_BYTES)
                .flush_every_ms(Some(500))
                .open()
            {
                Ok(db) => {
                    // Registers hold what rules decide on (commands included): owner only.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| RegisterError::from(sled::Error::Io(e)))?;
                    return Registers::with_db(db);
                }
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::Other
                        && e.to_string().contains("lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A throwaway store that lives in memory and vanishes on drop (for `reflex rules test`).
    pub fn temporary() -> Result<Registers, RegisterError> {
        Registers::with_db(sled::Config::new().temporary(true).open()?)
    }

    /// Registers on a shared store (several managers; see the crate doc).
    pub fn shared(store: Arc<dyn SharedStore>) -> Registers {
        Registers::with_store(Store::shared(store))
    }

    fn with_db(db: sled::Db) -> Result<Registers, RegisterError> {
        Ok(Registers::with_store(Store::new(db)?))
    }

    fn with_store(store: Store) -> Registers {
        Registers {
            values: Space::new(&store, VALUES),
            windows: Space::new(&store, WINDOWS),
            marks: Space::new(&store, MARKS),
            throttles: Space::new(&store, THROTTLES),
            store,
        }
    }

    /// The value of `key`, None when it is absent or expired.
    pub fn get(&self, key: &str) -> Result<Option<Value>, RegisterError> {
        self.get_at(key, now_ms())
    }

    /// [`Registers::get`] with "now" given, in Unix milliseconds.
    pub fn get_at(&self, key: &str, now: u64) -> Result<Option<Value>, RegisterError> {
        // Under the lock, so the purge below cannot undo a write made meanwhile.
        let mut txn = self.store.txn();
        let Some(bytes) = txn.get(VALUES, key.as_bytes())? else {
            return Ok(None);
        };
        let stored = Stored::decode(key, &bytes)?;
        if stored.live(now) {
            Ok(Some(stored.value))
        } else {
            // Expired: purge it now.
            txn.put(VALUES, key.as_bytes(), None);
            Ok(None)
        }
    }

    /// Set a value; like Redis' SET, this clears any expiry the key had.
    pub fn set(&self, key: &str, value: &Value) -> Result<(), RegisterError> {
        let stored = Stored {
            expires: None,
            value: value.clone(),
        };
        self.values.insert(key, stored.encode());
        Ok(())
    }

    /// Remove a key (and its window, mark and throttles); true when it held a live value.
    pub fn del(&self, key: &str) -> Result<bool, RegisterError> {
        let mut txn = self.store.txn();
        let old = txn.remove(VALUES, key.as_bytes())?;
        for space in [WINDOWS, MARKS, THROTTLES] {
            txn.remove(space, key.as_bytes())?;
        }
        Ok(match old {
            Some(b) => Stored::decode(key, &b)
                .map(|s| s.live(now_ms()))
                .unwrap_or(true),
            None => false,
        })
    }

    /// Atomically add `by` to an integer register (absent counts as 0) and return the new value.
    /// An expiry the key has is kept.
    pub fn incr(&self, key: &str, by: i64) -> Result<i64, RegisterError> {
        self.incr_at(key, by, now_ms())
    }

    /// [`Registers::incr`] with "now" given, in Unix milliseconds.
    pub fn incr_at(&self, key: &str, by: i64, now: u64) -> Result<i64, RegisterError> {
        self.values.update(key, |old| {
            let (current, expires) = match old.map(|b| Stored::decode(key, b)).transpose()? {
                Some(s) if s.live(now) => match s.value.as_i64() {
                    Some(n) => (n, s.expires),
                    None => {
                        return Err(RegisterError::NotInteger {
                            key: key.to_string(),
                            found: type_name(&s.value),
                        })
                    }
                },
                _ => (0, None),
            };
            let n = current
                .checked_add(by)
                .ok_or_else(|| RegisterError::Overflow {
                    key: key.to_string(),
                })?;
            let stored = Stored {
                expires,
                value: Value::from(n),
            };
            Ok((Some(stored.encode()), n))
        })
    }

    /// Make `key` expire `secs` from now; false when the key does not exist.
    pub fn expire(&self, key: &str, secs: f64) -> Result<bool, RegisterError> {
        self.expire_at(key, secs, now_ms())
    }

    /// [`Registers::expire`] with "now" given, in Unix milliseconds.
    pub fn expire_at(&self, key: &str, secs: f64, now: u64) -> Result<bool, RegisterError> {
        let ms = millis("expire", secs)?;
        self.values.update(key, |old| {
            match old.map(|b| Stored::decode(key, b)).transpose()? {
                Some(s) if s.live(now) => {
                    let stored = Stored {
                        expires: Some(now.saturating_add(ms)),
                        value: s.value,
                    };
                    Ok((Some(stored.encode()), true))
                }
                _ => Ok((old.map(<[u8]>::to_vec), false)),
            }
        })
    }

    /// Remove every expired key; how many were removed.
    pub fn purge_expired(&self) -> Result<usize, RegisterError> {
        self.purge_expired_at(now_ms())
    }

    /// [`Registers::purge_expired`] with "now" given, in Unix milliseconds.
    pub fn purge_expired_at(&self, now: u64) -> Result<usize, RegisterError> {
        let mut txn = self.store.txn();
        let mut n = 0;
        for (k, v) in txn.scan(VALUES, b"")? {
            // Header 1 = has an expiry; only those can be due.
            if v.first() != Some(&1) {
                continue;
            }
            let key = String::from_utf8_lossy(&k);
            if let Ok(s) = Stored::decode(&key, &v) {
                if !s.live(now) {
                    txn.put(VALUES, &k, None);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Live keys starting with `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, RegisterError> {
        Ok(self.entries(prefix)?.into_keys().collect())
    }

    /// Live keys and values starting with `prefix`.
    pub fn entries(&self, prefix: &str) -> Result<BTreeMap<String, Value>, RegisterError> {
        let now = now_ms();
        let mut out = BTreeMap::new();
        for (k, v) in self.values.scan(prefix)? {
            let key = String::from_utf8_lossy(&k).into_owned();
            let s = Stored::decode(&key, &v)?;
            if s.live(now) {
                out.insert(key, s.value);
            }
        }
        Ok(out)
    }

    /// Append a sample to the time window `key` and return statistics over the samples of the
    /// last `secs` (older ones are dropped).
    pub fn window(&self, key: &str, value: f64, secs: f64) -> Result<WindowStats, RegisterError> {
        self.window_at(key, value, secs, now_ms())
    }

    /// [`Registers::window`] with "now" given, in Unix milliseconds.
    pub fn window_at(
        &self,
        key: &str,
        value: f64,
        secs: f64,
        now: u64,
    ) -> Result<WindowStats, RegisterError> {
        let span = millis("window", secs)?;
        self.windows.update(key, |old| {
            let mut samples: Vec<(u64, f64)> = match old {
                Some(b) => unpack(key, b)?,
                None => Vec::new(),
            };
            samples.retain(|(t, _)| now.saturating_sub(*t) <= span);
            samples.push((now, value));
            if samples.len() > MAX_WINDOW_SAMPLES {
                samples.drain(..samples.len() - MAX_WINDOW_SAMPLES);
            }
            let stats = window_stats(&samples);
            Ok((Some(pack(&samples)), stats))
        })
    }

    /// Record that `key` happened now.
    pub fn mark(&self, key: &str) -> Result<(), RegisterError> {
        self.mark_at(key, now_ms())
    }

    /// [`Registers::mark`] with "now" given, in Unix milliseconds.
    pub fn mark_at(&self, key: &str, now: u64) -> Result<(), RegisterError> {
        self.marks.insert(key, now.to_be_bytes().to_vec());
        Ok(())
    }

    /// True when `key` was marked within the last `secs`.
    pub fn seen(&self, key: &str, secs: f64) -> Result<bool, RegisterError> {
        self.seen_at(key, secs, now_ms())
    }

    /// [`Registers::seen`] with "now" given, in Unix milliseconds.
    pub fn seen_at(&self, key: &str, secs: f64, now: u64) -> Result<bool, RegisterError> {
        let span = millis("seen", secs)?;
        Ok(match self.marks.get(key)? {
            Some(b) => read_u64(&b).is_some_and(|t| now.saturating_sub(t) <= span),
            None => false,
        })
    }

    /// True at most once per `secs` for `key`: the first call in a window says yes and opens
    /// the window; later calls inside it say no.
    pub fn once_within(&self, key: &str, secs: f64) -> Result<bool, RegisterError> {
        self.once_within_at(key, secs, now_ms())
    }

    /// [`Registers::once_within`] with "now" given, in Unix milliseconds.
    pub fn once_within_at(&self, key: &str, secs: f64, now: u64) -> Result<bool, RegisterError> {
        let span = millis("once_within", secs)?;
        let tkey = format!("once/{key}");
        self.throttles.update(&tkey, |old| {
            let last = old.and_then(read_u64);
            match last {
                Some(t) if now.saturating_sub(t) < span => Ok((old.map(<[u8]>::to_vec), false)),
                _ => Ok((Some(now.to_be_bytes().to_vec()), true)),
            }
        })
    }

    /// Count an occurrence of `key`; true when `threshold` occurrences fall inside the last
    /// `secs`, and the count then starts again from zero.
    pub fn accumulate(&self, key: &str, threshold: u64, secs: f64) -> Result<bool, RegisterError> {
        self.accumulate_at(key, threshold, secs, now_ms())
    }

    /// [`Registers::accumulate`] with "now" given, in Unix milliseconds.
    pub fn accumulate_at(
        &self,
        key: &str,
        threshold: u64,
        secs: f64,
        now: u64,
    ) -> Result<bool, RegisterError> {
        let span = millis("accumulate", secs)?;
        let tkey = format!("accumulate/{key}");
        let limit = threshold.max(1) as usize;
        self.throttles.update(&tkey, |old| {
            let mut times: Vec<u64> = match old {
                Some(b) => unpack(&tkey, b)?,
                None => Vec::new(),
            };
            times.retain(|t| now.saturating_sub(*t) <= span);
            times.push(now);
            if times.len() > MAX_WINDOW_SAMPLES {
                times.drain(..times.len() - MAX_WINDOW_SAMPLES);
            }
            if times.len() >= limit {
                Ok((None, true))
            } else {
                Ok((Some(pack(&times)), false))
            }
        })
    }

    /// Make every staged write and `side` durable, atomically: after a crash either all of
    /// them are there or none. One batch, one fsync. A side write in a space below
    /// [`SIDE_SPACE_MIN`] is refused before anything is written.
    pub fn commit(&self, side: Vec<SideWrite>) -> Result<(), RegisterError> {
        self.store.commit(side)
    }

    /// The committed side entry `key` of `space`, recorded as read by the group being built: a
    /// shared store commits the group only if it is unchanged then (the manager reads a
    /// stream's mark this way, so two managers cannot both take the same event).
    pub fn side_get(&self, space: u8, key: &[u8]) -> Result<Option<Vec<u8>>, RegisterError> {
        self.store.side_get(space, key)
    }

    /// The committed side entry `key` of `space`, *not* recorded as read: for what decides
    /// nothing (a manager relaying where another manager's stream stands).
    pub fn side_peek(&self, space: u8, key: &[u8]) -> Result<Option<Vec<u8>>, RegisterError> {
        self.store.side_peek(space, key)
    }

    /// The group being built: committed keys read (a shared store compares each at commit),
    /// writes staged, and their bytes. A manager on etcd ends its group before these pass the
    /// store's limits on one transaction.
    pub fn staged_size(&self) -> (usize, usize, usize) {
        self.store.staged_size()
    }

    /// Committed side entries of `space` (key without the space byte, value), in key order:
    /// what the owner reads back at start.
    pub fn side_entries(&self, space: u8) -> Result<Vec<SideEntry>, RegisterError> {
        self.store.side_entries(space)
    }

    /// True when writes are staged and not yet committed (or a commit's fsync failed).
    pub fn is_dirty(&self) -> bool {
        self.store.is_dirty()
    }

    /// Make every write so far durable: [`Registers::commit`] without side writes.
    pub fn flush(&self) -> Result<(), RegisterError> {
        self.commit(Vec::new())
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.store.size_on_disk()
    }

    /// Commit when anything is staged; cheap when nothing is.
    pub fn flush_if_dirty(&self) -> Result<(), RegisterError> {
        if self.is_dirty() {
            self.flush()?;
        }
        Ok(())
    }
}

fn read_u64(b: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = b.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

fn window_stats(samples: &[(u64, f64)]) -> WindowStats {
    let count = samples.len() as u64;
    let sum: f64 = samples.iter().map(|(_, v)| v).sum();
    let min = samples
        .iter()
        .map(|(_, v)| *v)
        .fold(f64::INFINITY, f64::min);
    let max = samples
        .iter()
        .map(|(_, v)| *v)
        .fold(f64::NEG_INFINITY, f64::max);
    WindowStats {
        count,
        sum,
        avg: if count > 0 { sum / count as f64 } else { 0.0 },
        min: if count > 0 { min } else { 0.0 },
        max: if count > 0 { max } else { 0.0 },
    }
}

#[cfg(test)]
mod tests;
