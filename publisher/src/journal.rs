//! The durable log: one sled tree, `journal`, holding everything the publisher must not lose,
//! under one-byte prefixes:
//!
//! | key | value |
//! | --- | --- |
//! | `a` + seq (8 bytes, big-endian) | the sealed action frame, as published |
//! | `n` + action name | the seq of that name's newest action (pruning keeps it) |
//! | `o` + outbox id | the highest link number logged from it, and when it was last seen |
//! | `p` | the highest seq pruned |
//! | `c` | present only while stopped cleanly (every published seq is in the log) |
//!
//! One tree because a [`sled::Batch`] is atomic on one tree only: a group's actions, the names
//! they replace, the outbox numbers they cover and the pruning they cause land together or not
//! at all, with no transaction retries on the hot path.

use crate::PublisherError;
use std::collections::HashMap;

const ACTION: u8 = b'a';
const NAME: u8 = b'n';
const OUTBOX: u8 = b'o';
const PRUNED: &[u8] = b"p";
const CLEAN: &[u8] = b"c";

/// How often (in seqs) pruning is considered.
const PRUNE_EVERY: u64 = 1024;

/// What is known about one outbox when the log is opened.
pub(crate) struct StoredOutbox {
    pub(crate) id: String,
    /// The highest link number logged.
    pub(crate) acked: u64,
    /// The seq the publisher was at when it last heard from the outbox: the oldest is the one
    /// forgotten when there are too many.
    pub(crate) stamp: u64,
}

/// The publisher's log tree.
pub(crate) struct Journal {
    tree: sled::Tree,
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 1);
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn action_key(seq: u64) -> Vec<u8> {
    key(ACTION, &seq.to_be_bytes())
}

/// The number in an 8-byte big-endian value or key tail; our own bytes, but a short one reads as
/// its low bytes rather than panicking.
pub(crate) fn seq_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(b)
}

impl Journal {
    /// Open the journal in `db`, moving in the log of an older publisher (the trees `actions`
    /// and `latest`) the first time.
    pub(crate) fn open(db: &sled::Db) -> Result<Journal, PublisherError> {
        let tree = db.open_tree("journal")?;
        let journal = Journal { tree };
        journal.migrate(db)?;
        Ok(journal)
    }

    fn migrate(&self, db: &sled::Db) -> Result<(), PublisherError> {
        let names = db.tree_names();
        let has = |n: &str| names.iter().any(|t| t.as_ref() == n.as_bytes());
        if !has("actions") && !has("latest") {
            return Ok(());
        }
        let (actions, latest) = (db.open_tree("actions")?, db.open_tree("latest")?);
        let mut batch = sled::Batch::default();
        for item in actions.iter() {
            let (k, v) = item?;
            batch.insert(action_key(seq_of(&k)), v);
        }
        for item in latest.iter() {
            let (k, v) = item?;
            // The old tree kept the pruned mark under "\0pruned" among the names.
            if k.as_ref() == b"\0pruned" {
                batch.insert(PRUNED, v);
            } else {
                batch.insert(key(NAME, &k), v);
            }
        }
        // That publisher flushed before it published: every seq it gave is in its log.
        batch.insert(CLEAN, &[1u8]);
        self.tree.apply_batch(batch)?;
        db.flush()?;
        db.drop_tree("actions")?;
        db.drop_tree("latest")?;
        db.flush()?;
        tracing::info!("moved the action log into the journal tree");
        Ok(())
    }

    /// Mark a clean stop: everything published is in the log (flushed).
    pub(crate) fn mark_clean(&self, db: &sled::Db) -> Result<(), PublisherError> {
        self.tree.insert(CLEAN, &[1u8])?;
        db.flush()?;
        Ok(())
    }

    /// Whether the last run stopped cleanly; the mark is taken away (durably) first, so a crash
    /// of this run is never taken for a clean stop.
    pub(crate) fn take_clean(&self, db: &sled::Db) -> Result<bool, PublisherError> {
        let clean = self.tree.remove(CLEAN)?.is_some();
        db.flush()?;
        Ok(clean)
    }

    /// The seq after the newest logged action (pruning always keeps the newest).
    pub(crate) fn next_seq(&self) -> Result<u64, PublisherError> {
        Ok(match self.tree.scan_prefix([ACTION]).next_back() {
            Some(item) => seq_of(&item?.0) + 1,
            None => 1,
        })
    }

    /// Every outbox remembered.
    pub(crate) fn outboxes(&self) -> Result<Vec<StoredOutbox>, PublisherError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([OUTBOX]) {
            let (k, v) = item?;
            let Ok(id) = std::str::from_utf8(&k[1..]) else {
                continue;
            };
            let (acked, stamp) = v.split_at(v.len().min(8));
            out.push(StoredOutbox {
                id: id.to_string(),
                acked: seq_of(acked),
                stamp: seq_of(stamp),
            });
        }
        Ok(out)
    }

    /// Stage one numbered, sealed action.
    pub(crate) fn stage_action(batch: &mut sled::Batch, seq: u64, name: &str, sealed: &[u8]) {
        batch.insert(action_key(seq), sealed);
        batch.insert(key(NAME, name.as_bytes()), &seq.to_be_bytes());
    }

    /// Stage where an outbox stands.
    pub(crate) fn stage_outbox(batch: &mut sled::Batch, id: &str, acked: u64, stamp: u64) {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&acked.to_be_bytes());
        v[8..].copy_from_slice(&stamp.to_be_bytes());
        batch.insert(key(OUTBOX, id.as_bytes()), &v);
    }

    /// Stage forgetting an outbox.
    pub(crate) fn stage_forget(batch: &mut sled::Batch, id: &str) {
        batch.remove(key(OUTBOX, id.as_bytes()));
    }

    /// When the seqs `first..=last` of a group cross a multiple of [`PRUNE_EVERY`], stage
    /// dropping the actions more than `keep` behind `last`, except the newest action of each
    /// name (still in force on the actors). `group` names the group's own actions, staged but
    /// not in the tree yet: a name they replace is no longer in force, and those of them
    /// already too old are dropped in the same batch that logs them.
    pub(crate) fn stage_prune(
        &self,
        batch: &mut sled::Batch,
        last: u64,
        keep: u64,
        group: &[(u64, String)],
    ) -> Result<(), PublisherError> {
        let Some(&(first, _)) = group.first() else {
            return Ok(());
        };
        if last <= keep || (first - 1) / PRUNE_EVERY == last / PRUNE_EVERY {
            return Ok(());
        }
        let below = last - keep;
        let newest: HashMap<&str, u64> = group.iter().map(|(s, n)| (n.as_str(), *s)).collect();
        let mut pruned = None;
        for item in self.tree.range(action_key(0)..action_key(below)) {
            let (k, v) = item?;
            let seq = seq_of(&k);
            let in_force = bus::envelope::peek(&v, usize::MAX).ok().is_some_and(|h| {
                match newest.get(h.name.as_str()) {
                    Some(&s) => s == seq,
                    None => self
                        .tree
                        .get(key(NAME, h.name.as_bytes()))
                        .ok()
                        .flatten()
                        .is_some_and(|s| seq_of(&s) == seq),
                }
            });
            if !in_force {
                batch.remove(k.as_ref());
                pruned = Some(seq);
            }
        }
        for (seq, name) in group.iter().take_while(|(s, _)| *s < below) {
            if newest.get(name.as_str()) != Some(seq) {
                batch.remove(action_key(*seq));
                pruned = Some(*seq);
            }
        }
        if let Some(seq) = pruned {
            // Both runs go oldest first: the last one dropped is the highest.
            batch.insert(PRUNED, &seq.to_be_bytes());
        }
        Ok(())
    }

    /// Commit a staged group.
    pub(crate) fn apply(&self, batch: sled::Batch) -> Result<(), PublisherError> {
        Ok(self.tree.apply_batch(batch)?)
    }

    /// The oldest seq still logged, if any.
    pub(crate) fn oldest(&self) -> Result<Option<u64>, PublisherError> {
        Ok(match self.tree.scan_prefix([ACTION]).next() {
            Some(item) => Some(seq_of(&item?.0)),
            None => None,
        })
    }

    /// The highest seq pruned so far (0 for none).
    pub(crate) fn pruned_through(&self) -> Result<u64, PublisherError> {
        Ok(self.tree.get(PRUNED)?.map(|v| seq_of(&v)).unwrap_or(0))
    }

    /// The logged actions after `since`, oldest first: (seq, sealed frame).
    pub(crate) fn since(
        &self,
        since: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), PublisherError>> {
        let start = action_key(since.saturating_add(1));
        self.tree
            .range(start..[ACTION + 1].to_vec())
            .map(|item| item.map(|(k, v)| (seq_of(&k), v)).map_err(Into::into))
    }
}
