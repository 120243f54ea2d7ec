//! Clustered: the leader forgets old stream marks (`r/x80/<sender>\0<stream>` in etcd), with
//! the window one manager on sled keeps ([`crate::delivery::to_forget`]): a mark whose stream
//! has been idle (no event done) for [`crate::delivery::FORGET_AFTER_MS`], and, past the bounds
//! (1,024 streams of one sender, 100,000 in all), the idle longest among those idle at least
//! [`crate::delivery::MIN_IDLE_TO_FORGET_MS`].
//!
//! Every [`FORGET_EVERY`] (and at once when it becomes leader) the leader reads the marks from
//! its mirror and deletes the ones to forget in transactions that check it still leads and
//! that each mark is as it read it ([`cluster::Leadership::delete_unchanged`]): a stream that
//! moved meanwhile keeps its mark. A sender that comes back to a forgotten stream says where it
//! stands in its hello (everything below was acknowledged) and goes on from there
//! ([`crate::delivery`]'s hints).

use crate::delivery::{to_forget, SPACE};
use crate::ManagerError;
use cluster::EtcdStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the leader looks for stream marks to forget.
pub const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The leader's forgetting of old stream marks.
pub(crate) struct Forget {
    store: Arc<EtcdStore>,
    /// Most compares in one transaction (the leader's own included).
    max_ops: usize,
    /// None until the first pass as leader.
    last: Option<Instant>,
    /// Marks deleted.
    pub(crate) forgotten: u64,
}

/// One committed mark as the mirror holds it.
struct Mark {
    etcd_key: Vec<u8>,
    key: String,
    seen: u64,
    revision: i64,
}

impl Forget {
    pub(crate) fn new(store: Arc<EtcdStore>, max_txn_ops: usize) -> Forget {
        Forget {
            store,
            max_ops: max_txn_ops.saturating_sub(1).max(1),
            last: None,
            forgotten: 0,
        }
    }

    /// On the leader, every [`FORGET_EVERY`]: forget what is past the window.
    pub(crate) fn turn(&mut self, node: &crate::clustered::Node) -> Result<(), ManagerError> {
        if !node.leader.is_leader() {
            self.last = None;
            return Ok(());
        }
        if self.last.is_some_and(|t| t.elapsed() < FORGET_EVERY) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let marks = self.marks();
        let pairs: Vec<(&str, u64)> = marks.iter().map(|m| (m.key.as_str(), m.seen)).collect();
        let gone = to_forget(&pairs, bus::now_ms());
        if gone.is_empty() {
            return Ok(());
        }
        let keys: Vec<(Vec<u8>, i64)> = gone
            .iter()
            .map(|&i| (marks[i].etcd_key.clone(), marks[i].revision))
            .collect();
        let mut deleted = 0;
        for chunk in keys.chunks(self.max_ops) {
            if node.leader.delete_unchanged(chunk)? {
                deleted += chunk.len();
                continue;
            }
            if !node.leader.is_leader() {
                break;
            }
            // One of them moved: each on its own, the moved one kept.
            for one in chunk {
                if node.leader.delete_unchanged(std::slice::from_ref(one))? {
                    deleted += 1;
                }
            }
        }
        self.forgotten += deleted as u64;
        tracing::info!(
            forgotten = deleted,
            marks = marks.len(),
            "old stream marks forgotten"
        );
        Ok(())
    }

    /// Every stream mark in the mirror that decodes (one that does not is left alone: the
    /// stream starts over when it is read).
    fn marks(&self) -> Vec<Mark> {
        let root = self.store.etcd_key(&[SPACE]);
        self.store.mirror().read(|snap| {
            snap.entries
                .range(root.clone()..)
                .take_while(|(k, _)| k.starts_with(&root))
                .filter_map(|(k, e)| {
                    let v = e.value.as_deref()?;
                    let seen = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
                    let key = std::str::from_utf8(&k[root.len()..]).ok()?.to_string();
                    Some(Mark {
                        etcd_key: k.clone(),
                        key,
                        seen,
                        revision: e.mod_revision,
                    })
                })
                .collect()
        })
    }
}
