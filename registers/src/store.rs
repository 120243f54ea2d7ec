//! The one sled tree under the registers, the staging area in front of it, and the group commit.
//!
//! Every key in the tree starts with a space byte: the registers' kinds use bytes below
//! [`SIDE_SPACE_MIN`], an owner's side writes (the manager's delivery marks and outbox) the bytes
//! from it up. Writes go to the staging area only; [`Store::commit`] turns the staging area and
//! the side writes into one `sled::Batch` (applied atomically) and one fsync, so a crash leaves
//! all of a group or none of it.

use crate::RegisterError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Plain keys and their values.
pub(crate) const VALUES: u8 = 0;
/// Time windows of samples.
pub(crate) const WINDOWS: u8 = 1;
/// Correlation marks.
pub(crate) const MARKS: u8 = 2;
/// Throttles (`once_within`, `accumulate`).
pub(crate) const THROTTLES: u8 = 3;

/// The lowest space byte a [`SideWrite`] may use; the registers keep the bytes below it.
pub const SIDE_SPACE_MIN: u8 = 0x80;

/// The tree that holds everything since the one-tree layout.
const TREE: &str = "registers";

/// The trees of the layout before it, and the space each one moves into.
const OLD_TREES: [(&str, u8); 4] = [
    ("values", VALUES),
    ("windows", WINDOWS),
    ("marks", MARKS),
    ("throttles", THROTTLES),
];

/// A write outside the registers that commits with them: the manager's delivery marks and
/// outbox. `space` is the owner's (a byte >= [`SIDE_SPACE_MIN`]; the registers use the bytes
/// below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideWrite {
    /// The owner's space byte.
    pub space: u8,
    /// The key inside that space.
    pub key: Vec<u8>,
    /// The new value; None removes the key.
    pub value: Option<Vec<u8>>,
}

/// One committed side entry: its key (without the space byte) and its value.
pub type SideEntry = (Vec<u8>, Vec<u8>);

/// Staged writes by full key (space byte first); None is a staged delete. Ordered, so prefix
/// scans merge it with sled in key order.
type Staged = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The tree and its staging area, shared by every clone of the store.
#[derive(Clone)]
pub(crate) struct Store {
    db: sled::Db,
    tree: sled::Tree,
    staged: Arc<Mutex<Staged>>,
    /// A batch was applied whose fsync has not yet succeeded.
    unflushed: Arc<AtomicBool>,
}

/// The staging area locked: reads see staged writes first, then sled. A read-modify-write done
/// through one `Txn` is atomic, since nothing reaches the staging area or the tree without the
/// lock.
pub(crate) struct Txn<'a> {
    tree: &'a sled::Tree,
    staged: MutexGuard<'a, Staged>,
}

fn full_key(space: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(space);
    k.extend_from_slice(key);
    k
}

fn check_side(space: u8) -> Result<(), RegisterError> {
    if space < SIDE_SPACE_MIN {
        Err(RegisterError::SideSpace { space })
    } else {
        Ok(())
    }
}

impl Store {
    /// Bytes the store takes on disk (sled's own count of its files).
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The store on `db`, moving an old four-tree layout into the one tree first.
    pub(crate) fn new(db: sled::Db) -> Result<Store, RegisterError> {
        let tree = db.open_tree(TREE)?;
        migrate(&db, &tree)?;
        Ok(Store {
            db,
            tree,
            staged: Arc::new(Mutex::new(BTreeMap::new())),
            unflushed: Arc::new(AtomicBool::new(false)),
        })
    }

    fn staged(&self) -> MutexGuard<'_, Staged> {
        // A panic while holding the lock cannot leave the map half-changed (each write is one
        // insert), so a poisoned lock is still sound to use.
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock the staging area for reads and writes.
    pub(crate) fn txn(&self) -> Txn<'_> {
        Txn {
            tree: &self.tree,
            staged: self.staged(),
        }
    }

    /// True when writes are staged, or a committed group still waits for its fsync.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.staged().is_empty() || self.unflushed.load(Ordering::Acquire)
    }

    /// Apply every staged write and `side` as one atomic batch, then fsync.
    pub(crate) fn commit(&self, side: Vec<SideWrite>) -> Result<(), RegisterError> {
        for w in &side {
            check_side(w.space)?;
        }
        {
            let mut staged = self.staged();
            if !staged.is_empty() || !side.is_empty() {
                let mut batch = sled::Batch::default();
                for (k, v) in staged.iter() {
                    match v {
                        Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                        None => batch.remove(k.as_slice()),
                    }
                }
                for w in side {
                    let k = full_key(w.space, &w.key);
                    match w.value {
                        Some(v) => batch.insert(k, v),
                        None => batch.remove(k),
                    }
                }
                // On failure the staging area is kept whole, so a later commit retries it.
                self.tree.apply_batch(batch)?;
                staged.clear();
                self.unflushed.store(true, Ordering::Release);
            }
        }
        // The fsync runs without the lock: writers stage the next group meanwhile.
        match self.db.flush() {
            Ok(_) => {
                self.unflushed.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                self.unflushed.store(true, Ordering::Release);
                Err(e.into())
            }
        }
    }

    /// Committed entries of side space `space`, key without the space byte, in key order.
    pub(crate) fn side_entries(&self, space: u8) -> Result<Vec<SideEntry>, RegisterError> {
        check_side(space)?;
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([space]) {
            let (k, v) = item?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

impl Txn<'_> {
    /// The bytes of `key` in `space`: the staged write if there is one, else sled's.
    pub(crate) fn get(&self, space: u8, key: &[u8]) -> Result<Option<Vec<u8>>, RegisterError> {
        let k = full_key(space, key);
        match self.staged.get(&k) {
            Some(staged) => Ok(staged.clone()),
            None => Ok(self.tree.get(&k)?.map(|v| v.to_vec())),
        }
    }

    /// Stage `value` (None = delete) for `key` in `space`.
    pub(crate) fn put(&mut self, space: u8, key: &[u8], value: Option<Vec<u8>>) {
        self.staged.insert(full_key(space, key), value);
    }

    /// Stage the removal of `key` in `space` when it is there; what it held.
    pub(crate) fn remove(
        &mut self,
        space: u8,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RegisterError> {
        let old = self.get(space, key)?;
        if old.is_some() {
            self.put(space, key, None);
        }
        Ok(old)
    }

    /// Every entry of `space` whose key starts with `prefix` (key without the space byte),
    /// staged writes laid over sled's, in key order.
    pub(crate) fn scan(
        &self,
        space: u8,
        prefix: &[u8],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, RegisterError> {
        let start = full_key(space, prefix);
        let mut out = BTreeMap::new();
        for item in self.tree.scan_prefix(&start) {
            let (k, v) = item?;
            out.insert(k[1..].to_vec(), v.to_vec());
        }
        for (k, v) in self
            .staged
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
        {
            match v {
                Some(v) => out.insert(k[1..].to_vec(), v.clone()),
                None => out.remove(&k[1..]),
            };
        }
        Ok(out)
    }
}

/// Move a store written in the four-tree layout into the one tree: all of it in one batch,
/// fsynced, and only then the old trees dropped. A crash before the drops leaves the old trees
/// for the next open to move again, which rewrites the same entries, so it is safe to repeat.
fn migrate(db: &sled::Db, tree: &sled::Tree) -> Result<(), RegisterError> {
    let names = db.tree_names();
    let present: Vec<(&str, u8)> = OLD_TREES
        .into_iter()
        .filter(|(name, _)| names.iter().any(|n| n.as_ref() == name.as_bytes()))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    let mut moved = 0usize;
    for (name, space) in &present {
        for item in db.open_tree(name)?.iter() {
            let (k, v) = item?;
            batch.insert(full_key(*space, &k), v);
            moved += 1;
        }
    }
    tree.apply_batch(batch)?;
    db.flush()?;
    for (name, _) in &present {
        db.drop_tree(name)?;
    }
    db.flush()?;
    tracing::info!(moved, "registers moved into the one-tree layout");
    Ok(())
}

/// One kind of register data (values, windows, marks or throttles): its space of the store.
#[derive(Clone)]
pub(crate) struct Space {
    byte: u8,
    store: Store,
}

impl Space {
    pub(crate) fn new(store: &Store, byte: u8) -> Space {
        Space {
            byte,
            store: store.clone(),
        }
    }

    /// The bytes of `key`, staged or committed.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RegisterError> {
        self.store.txn().get(self.byte, key.as_bytes())
    }

    /// Stage `value` for `key`.
    pub(crate) fn insert(&self, key: &str, value: Vec<u8>) {
        self.store.txn().put(self.byte, key.as_bytes(), Some(value));
    }

    /// Run a read-modify-write on `key` under the lock; `f` gets the current bytes and returns
    /// the new bytes (None = remove) and a result. Nothing is staged when the bytes stay as
    /// they were (a throttle that says no, an expiry on an absent key).
    pub(crate) fn update<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>) -> Result<(Option<Vec<u8>>, R), RegisterError>,
    ) -> Result<R, RegisterError> {
        let mut txn = self.store.txn();
        let old = txn.get(self.byte, key.as_bytes())?;
        let (new, result) = f(old.as_deref())?;
        if new != old {
            txn.put(self.byte, key.as_bytes(), new);
        }
        Ok(result)
    }

    /// Entries whose key starts with `prefix`, staged over committed, in key order.
    pub(crate) fn scan(&self, prefix: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, RegisterError> {
        self.store.txn().scan(self.byte, prefix.as_bytes())
    }

    /// How many entries the space holds, staged over committed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.scan("").map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
impl Store {
    /// The names of the sled trees the store holds (to see the old layout is gone).
    pub(crate) fn tree_names(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    }
}
