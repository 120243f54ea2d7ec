//! The one sled tree under the registers, the staging area in front of it, and the group commit.
//!
//! Every key in the tree starts with a space byte: the registers' kinds use bytes below
//! [`SIDE_SPACE_MIN`], an owner's side writes (the manager's delivery marks and outbox) the bytes
//! from it up. Writes go to the staging area only; [`Store::commit`] turns the staging area and
//! the side writes into one `sled::Batch` (applied atomically) and one fsync, so a crash leaves
//! all of a group or none of it.
//!
//! The committed data lives in sled by default, or in a [`SharedStore`] (etcd, for a cluster of
//! managers: the `cluster` crate). With a shared store every committed read is recorded with the
//! version it was read at, and the commit hands the reads and the writes to the store, which
//! applies the writes only if no key read has changed since (an optimistic transaction): a
//! group that lost a race is discarded whole with [`RegisterError::Conflict`], for its owner to
//! run again. The sled path records nothing and is otherwise unchanged.

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
pub type Staged = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A committed entry of a shared store: full key, value, version.
pub type Versioned = (Vec<u8>, Vec<u8>, i64);

/// Committed keys read by a group (full key) and the version each was read at (0 = absent).
pub type ReadSet = BTreeMap<Vec<u8>, i64>;

/// Committed register data kept elsewhere than in a local sled (etcd, for several managers).
///
/// Keys are full keys (the space byte first, as in sled); values are the same bytes sled would
/// hold, so every decoder is shared. A version is whatever the store compares at commit (etcd's
/// `mod_revision`); 0 means absent.
pub trait SharedStore: Send + Sync {
    /// The committed value of `key` and its version.
    fn get(&self, key: &[u8]) -> Result<(Option<Vec<u8>>, i64), RegisterError>;
    /// Committed entries whose key starts with `prefix`: key, value, version, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Versioned>, RegisterError>;
    /// Apply `writes` (None = delete) atomically and durably, only if every key of `reads` is
    /// still at its version; [`RegisterError::Conflict`] (nothing written) otherwise.
    fn commit(&self, reads: &ReadSet, writes: &Staged) -> Result<(), RegisterError>;
}

/// Where committed data lives.
#[derive(Clone)]
enum Backend {
    Sled { db: sled::Db, tree: sled::Tree },
    Shared(Arc<dyn SharedStore>),
}

/// What a group has staged, and (shared store only) what it read.
#[derive(Default)]
pub(crate) struct Staging {
    writes: Staged,
    reads: ReadSet,
}

/// The tree and its staging area, shared by every clone of the store.
#[derive(Clone)]
pub(crate) struct Store {
    backend: Backend,
    staged: Arc<Mutex<Staging>>,
    /// A batch was applied whose fsync has not yet succeeded.
    unflushed: Arc<AtomicBool>,
}

/// The staging area locked: reads see staged writes first, then sled. A read-modify-write done
/// through one `Txn` is atomic, since nothing reaches the staging area or the tree without the
/// lock.
pub(crate) struct Txn<'a> {
    backend: &'a Backend,
    staged: MutexGuard<'a, Staging>,
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
        match &self.backend {
            Backend::Sled { db, .. } => db.size_on_disk().unwrap_or(0),
            Backend::Shared(_) => 0,
        }
    }

    /// The store on `db`, moving an old four-tree layout into the one tree first.
    pub(crate) fn new(db: sled::Db) -> Result<Store, RegisterError> {
        let tree = db.open_tree(TREE)?;
        migrate(&db, &tree)?;
        Ok(Store {
            backend: Backend::Sled { db, tree },
            staged: Arc::new(Mutex::new(Staging::default())),
            unflushed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The store on a shared backend.
    pub(crate) fn shared(backend: Arc<dyn SharedStore>) -> Store {
        Store {
            backend: Backend::Shared(backend),
            staged: Arc::new(Mutex::new(Staging::default())),
            unflushed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn staged(&self) -> MutexGuard<'_, Staging> {
        // A panic while holding the lock cannot leave the map half-changed (each write is one
        // insert), so a poisoned lock is still sound to use.
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock the staging area for reads and writes.
    pub(crate) fn txn(&self) -> Txn<'_> {
        Txn {
            backend: &self.backend,
            staged: self.staged(),
        }
    }

    /// True when writes are staged, or a committed group still waits for its fsync.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.staged().writes.is_empty() || self.unflushed.load(Ordering::Acquire)
    }

    /// Apply every staged write and `side` as one atomic batch, then fsync (sled), or as one
    /// transaction checked against the group's reads (a shared store).
    pub(crate) fn commit(&self, side: Vec<SideWrite>) -> Result<(), RegisterError> {
        for w in &side {
            check_side(w.space)?;
        }
        let (db, tree) = match &self.backend {
            Backend::Sled { db, tree } => (db, tree),
            Backend::Shared(shared) => return self.commit_shared(shared.as_ref(), side),
        };
        {
            let mut staged = self.staged();
            if !staged.writes.is_empty() || !side.is_empty() {
                let mut batch = sled::Batch::default();
                for (k, v) in staged.writes.iter() {
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
                tree.apply_batch(batch)?;
                staged.writes.clear();
                self.unflushed.store(true, Ordering::Release);
            }
        }
        // The fsync runs without the lock: writers stage the next group meanwhile.
        match db.flush() {
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

    /// The shared store's commit: one transaction of the staged writes and `side`, on the
    /// condition that nothing the group read has changed. Under the lock, so no write is staged
    /// meanwhile (the transaction is durable when it returns: there is no fsync to overlap).
    /// A conflict discards the group (writes and reads): its owner runs it again on fresh data.
    /// Any other failure keeps it staged, for a later commit to retry.
    fn commit_shared(
        &self,
        shared: &dyn SharedStore,
        side: Vec<SideWrite>,
    ) -> Result<(), RegisterError> {
        let mut staged = self.staged();
        if staged.writes.is_empty() && side.is_empty() {
            staged.reads.clear();
            return Ok(());
        }
        let mut writes = std::mem::take(&mut staged.writes);
        for w in side {
            writes.insert(full_key(w.space, &w.key), w.value);
        }
        match shared.commit(&staged.reads, &writes) {
            Ok(()) => {
                staged.reads.clear();
                Ok(())
            }
            Err(e @ RegisterError::Conflict) => {
                staged.reads.clear();
                Err(e)
            }
            Err(e) => {
                // The side writes are the owner's to give again; keep only what was staged.
                staged.writes = writes
                    .into_iter()
                    .filter(|(k, _)| k.first().is_some_and(|b| *b < SIDE_SPACE_MIN))
                    .collect();
                Err(e)
            }
        }
    }

    /// Record that the group read side key `key` of `space` (a shared store compares it at
    /// commit) and return its committed value; staged side writes are not seen (the owner
    /// keeps its own). With sled, only the read.
    pub(crate) fn side_get(&self, space: u8, key: &[u8]) -> Result<Option<Vec<u8>>, RegisterError> {
        check_side(space)?;
        let k = full_key(space, key);
        match &self.backend {
            Backend::Sled { tree, .. } => Ok(tree.get(&k)?.map(|v| v.to_vec())),
            Backend::Shared(shared) => {
                let (value, version) = shared.get(&k)?;
                self.staged().reads.entry(k).or_insert(version);
                Ok(value)
            }
        }
    }

    /// The committed value of side key `key` of `space`, not recorded as read (a look at the
    /// shared mirror, or sled): for answers that decide nothing, such as relaying an ack.
    pub(crate) fn side_peek(
        &self,
        space: u8,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RegisterError> {
        check_side(space)?;
        let k = full_key(space, key);
        match &self.backend {
            Backend::Sled { tree, .. } => Ok(tree.get(&k)?.map(|v| v.to_vec())),
            Backend::Shared(shared) => Ok(shared.get(&k)?.0),
        }
    }

    /// The size of the group being built: keys read (recorded for the commit's compares),
    /// writes staged, and the bytes of those writes (keys and values).
    pub(crate) fn staged_size(&self) -> (usize, usize, usize) {
        let staged = self.staged();
        let bytes = staged
            .writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        (staged.reads.len(), staged.writes.len(), bytes)
    }

    /// Committed entries of side space `space`, key without the space byte, in key order.
    pub(crate) fn side_entries(&self, space: u8) -> Result<Vec<SideEntry>, RegisterError> {
        check_side(space)?;
        let mut out = Vec::new();
        match &self.backend {
            Backend::Sled { tree, .. } => {
                for item in tree.scan_prefix([space]) {
                    let (k, v) = item?;
                    out.push((k[1..].to_vec(), v.to_vec()));
                }
            }
            Backend::Shared(shared) => {
                for (k, v, _) in shared.scan(&[space])? {
                    out.push((k[1..].to_vec(), v));
                }
            }
        }
        Ok(out)
    }
}

impl Txn<'_> {
    /// The bytes of `key` in `space`: the staged write if there is one, else sled's.
    pub(crate) fn get(&mut self, space: u8, key: &[u8]) -> Result<Option<Vec<u8>>, RegisterError> {
        let k = full_key(space, key);
        if let Some(staged) = self.staged.writes.get(&k) {
            return Ok(staged.clone());
        }
        match self.backend {
            Backend::Sled { tree, .. } => Ok(tree.get(&k)?.map(|v| v.to_vec())),
            Backend::Shared(shared) => {
                let (value, version) = shared.get(&k)?;
                // The first read is the one the group's decision rests on.
                self.staged.reads.entry(k).or_insert(version);
                Ok(value)
            }
        }
    }

    /// Stage `value` (None = delete) for `key` in `space`.
    pub(crate) fn put(&mut self, space: u8, key: &[u8], value: Option<Vec<u8>>) {
        self.staged.writes.insert(full_key(space, key), value);
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
        &mut self,
        space: u8,
        prefix: &[u8],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, RegisterError> {
        let start = full_key(space, prefix);
        let mut out = BTreeMap::new();
        match self.backend {
            Backend::Sled { tree, .. } => {
                for item in tree.scan_prefix(&start) {
                    let (k, v) = item?;
                    out.insert(k[1..].to_vec(), v.to_vec());
                }
            }
            Backend::Shared(shared) => {
                // Each key seen is compared at commit. A key created under the prefix
                // meanwhile is not (a phantom): scans decide nothing the rules rely on today.
                for (k, v, version) in shared.scan(&start)? {
                    out.insert(k[1..].to_vec(), v);
                    self.staged.reads.entry(k).or_insert(version);
                }
            }
        }
        for (k, v) in self
            .staged
            .writes
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
        let Backend::Sled { db, .. } = &self.backend else {
            return Vec::new();
        };
        db.tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    }
}
