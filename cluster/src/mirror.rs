//! A mirror: a local copy of every key under one etcd prefix, kept coherent by a watch.
//!
//! It starts with one read of the whole prefix at revision R and watches from R + 1, applying
//! each event in order. When the watch breaks (the member it ran on went away) it resumes from
//! the last revision applied; when etcd compacted past that revision, it reads the prefix again.
//! Each entry keeps the revision it was last changed at (etcd's `mod_revision`), and a deleted
//! key leaves a tombstone until the watch has passed it, so a newer fact learned elsewhere (a
//! failed transaction's reads, [`Mirror::learn`]) is never undone by an older event arriving
//! after it.
//!
//! The mirror can be behind etcd, never ahead of it and never torn: whoever decides on what it
//! reads must check those revisions in a transaction (see `registers`).

use crate::{connection::retry, Cluster, ClusterError};
use etcd_client::{EventType, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One key as the mirror knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value; None = deleted (a tombstone, kept until the watch has passed it).
    pub value: Option<Vec<u8>>,
    /// The revision of its last change (0 = never existed).
    pub mod_revision: i64,
}

/// What the mirror holds.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Full etcd keys to their entries (tombstones included).
    pub entries: BTreeMap<Vec<u8>, Entry>,
    /// Every change up to this revision has been applied.
    pub revision: i64,
    /// Bumped on every change, so a waiter sees that something moved.
    pub changes: u64,
}

impl Snapshot {
    /// The live value of `key` and its revision; None when absent.
    pub fn get(&self, key: &[u8]) -> Option<(&[u8], i64)> {
        let e = self.entries.get(key)?;
        e.value.as_deref().map(|v| (v, e.mod_revision))
    }

    /// The revision to compare `key` at in a transaction: its last change, or 0 when the
    /// mirror has never seen it (etcd's `mod_revision` of an absent key is 0, so a compare on
    /// 0 checks it is still absent).
    pub fn revision_of(&self, key: &[u8]) -> i64 {
        self.entries
            .get(key)
            .filter(|e| e.value.is_some())
            .map_or(0, |e| e.mod_revision)
    }

    /// Live entries whose key starts with `prefix`, in key order.
    pub fn scan<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.entries
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_slice(), v)))
    }

    /// Apply one change, unless the mirror already knows a newer one for that key.
    fn apply(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, revision: i64) {
        match self.entries.get(&key) {
            Some(e) if e.mod_revision >= revision => {}
            _ => {
                self.entries.insert(
                    key,
                    Entry {
                        value,
                        mod_revision: revision,
                    },
                );
                self.changes += 1;
            }
        }
    }

    /// Drop tombstones the watch has passed: no event older than them can come any more.
    fn prune(&mut self) {
        let rev = self.revision;
        self.entries
            .retain(|_, e| e.value.is_some() || e.mod_revision > rev);
    }
}

/// A key and what etcd said of it: its value and change revision, or None for absent.
pub type Fact = (Vec<u8>, Option<(Vec<u8>, i64)>);

struct Shared {
    snap: Mutex<Snapshot>,
    changed: Condvar,
}

/// The local copy of one prefix; stops watching on drop.
pub struct Mirror {
    shared: Arc<Shared>,
    prefix: Vec<u8>,
    task: tokio::task::JoinHandle<()>,
}

impl Mirror {
    /// Read every key under `prefix` (a full etcd key prefix) and keep watching it.
    pub fn start(cluster: &Cluster, prefix: &str) -> Result<Mirror, ClusterError> {
        let shared = Arc::new(Shared {
            snap: Mutex::new(Snapshot::default()),
            changed: Condvar::new(),
        });
        let prefix = prefix.as_bytes().to_vec();
        let client = cluster.client();
        let first = cluster.block_on(load(&client, &prefix))?;
        {
            let mut snap = lock(&shared.snap);
            *snap = first;
        }
        let task = cluster.spawn(follow(client, prefix.clone(), shared.clone()));
        Ok(Mirror {
            shared,
            prefix,
            task,
        })
    }

    /// The prefix mirrored.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Look at the mirror under its lock (short: the watch waits meanwhile).
    pub fn read<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&lock(&self.shared.snap))
    }

    /// Apply facts read from etcd elsewhere (a transaction's reads at `revision`): each key to
    /// its value and change revision, None = absent at `revision`. Older than what the mirror
    /// knows is ignored.
    pub fn learn(&self, facts: Vec<Fact>, revision: i64) {
        let mut snap = lock(&self.shared.snap);
        for (key, fact) in facts {
            match fact {
                Some((value, rev)) => snap.apply(key, Some(value), rev),
                None => snap.apply(key, None, revision),
            }
        }
        drop(snap);
        self.shared.changed.notify_all();
    }

    /// Wait until `ready` holds for the mirror, or `timeout`; whether it holds.
    pub fn wait_for(&self, timeout: Duration, mut ready: impl FnMut(&Snapshot) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut snap = lock(&self.shared.snap);
        loop {
            if ready(&snap) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            snap = self
                .shared
                .changed
                .wait_timeout(snap, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Snapshot>) -> MutexGuard<'_, Snapshot> {
    // Each change is applied whole under the lock; a panic elsewhere leaves it sound.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole prefix, at one revision.
async fn load(client: &etcd_client::Client, prefix: &[u8]) -> Result<Snapshot, ClusterError> {
    let resp = retry(|| {
        let mut c = client.clone();
        let p = prefix.to_vec();
        async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
    })
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut snap = Snapshot {
        revision,
        ..Snapshot::default()
    };
    for kv in resp.kvs() {
        snap.entries.insert(
            kv.key().to_vec(),
            Entry {
                value: Some(kv.value().to_vec()),
                mod_revision: kv.mod_revision(),
            },
        );
    }
    Ok(snap)
}

/// Watch from the mirror's revision + 1 for ever: resume after a break, reload after a
/// compaction.
async fn follow(client: etcd_client::Client, prefix: Vec<u8>, shared: Arc<Shared>) {
    loop {
        let from = lock(&shared.snap).revision + 1;
        let mut c = client.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            // Progress notices move the revision on while nothing under the prefix changes.
            .with_progress_notify();
        let mut stream = match c.watch(prefix.clone(), Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "watch could not start, trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "etcd compacted past the mirror: reading the prefix again"
                );
                if let Ok(fresh) = load(&client, &prefix).await {
                    *lock(&shared.snap) = fresh;
                    shared.changed.notify_all();
                }
                break;
            }
            if resp.canceled() {
                break;
            }
            let mut snap = lock(&shared.snap);
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let value = match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                snap.apply(kv.key().to_vec(), value, kv.mod_revision());
            }
            // Where the watch has got to: the last event's revision (never split
            // across responses). A response without events moves it only when it is a
            // progress notice (sent when the watch is level with etcd), not when it is
            // the "created" answer, whose header is etcd's revision with the events
            // from `from` on still to come.
            let rev = match resp.events().last().and_then(|e| e.kv()) {
                Some(kv) => kv.mod_revision(),
                None if !resp.created() => resp.header().map_or(0, |h| h.revision()),
                None => 0,
            };
            if rev > snap.revision {
                snap.revision = rev;
                snap.changes += 1;
            }
            snap.prune();
            drop(snap);
            shared.changed.notify_all();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
