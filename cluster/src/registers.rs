//! Shared registers: the `registers` crate's committed data in etcd, so every manager reads and
//! writes the same registers, with the same Rhai API and semantics.
//!
//! **Keys.** A register key `k` of each kind is `<prefix>/r/v/k` (values), `.../r/w/k`
//! (windows), `.../r/m/k` (marks), `.../r/t/k` (throttles: `once_within`, `accumulate`); the
//! manager's side data (stream marks, and later the outbox) is `.../r/xHH/k` with `HH` its side
//! space byte in hex (`x80` = the streams). The values are the bytes sled would hold (a stored
//! expiry inline, msgpack), decoded by the same code, so a value that does not decode is an
//! error, never a panic.
//!
//! **Reads** come from a [`Mirror`] of `<prefix>/r/` (a full local copy kept by one watch): no
//! round trip. Each committed key a group reads is recorded with its `mod_revision` (0 when
//! absent).
//!
//! **Commit** is one etcd transaction per group:
//!
//! ```text
//! if   mod_revision(k) == rev_read(k)  for every key k the group read
//! then put/delete every staged register write and every side write (the stream marks)
//! else get every key the group read
//! ```
//!
//! Success: the group's writes are durable on a quorum and applied to the mirror at once (the
//! transaction's revision), so this manager reads its own writes without waiting for the watch.
//! Failure: the fresh values from the `else` branch go into the mirror and the group fails with
//! [`RegisterError::Conflict`]; the manager runs its events again. One round trip per group in
//! the common case, two when a group lost a race.
//!
//! **Exactly once across managers.** The manager reads a stream's mark through
//! `Registers::side_get`, so the mark is in the compare set of every group that advances it. Two
//! managers that both take the same event (the partition moving while one of them is slow, or
//! a resend reaching the new owner) both build a group, and only the first transaction to
//! commit wins; the other's compare on the mark fails, its group is discarded, and run again it
//! finds the event done. A manager killed before its transaction left nothing; one killed after
//! it left the event done, and the resent event is recognised by the mark, cluster-wide.
//!
//! **TTLs** stay stored expiry times (not one etcd lease per key): `incr` keeps an expiry the key
//! has, as on sled, and purging is singleton work for the leader. The price: managers' clocks
//! must agree to well under the shortest TTL a rule uses (NTP).
//!
//! **Limits.** etcd refuses a transaction with more than `--max-txn-ops` compares or writes
//! (128 by default; `reflex up --cluster` and the tests start etcd with 10,000) or larger than
//! `--max-request-bytes` (1.5 MiB): a manager on etcd commits its groups before they get there.
//! A prefix scan (`registers::keys`) compares each key it saw, not the keys created under the
//! prefix meanwhile.

use crate::{connection::retry, mirror::Fact, Cluster, ClusterError, Mirror};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use registers::{ReadSet, RegisterError, SharedStore, Staged, Versioned};
use std::sync::Arc;

/// The registers' committed data in etcd (see the module doc).
pub struct EtcdStore {
    cluster: Cluster,
    mirror: Mirror,
    /// `<prefix>/r/`.
    root: String,
}

impl EtcdStore {
    /// Mirror `<prefix>/r/` and commit there.
    pub fn open(cluster: &Cluster) -> Result<Arc<EtcdStore>, ClusterError> {
        let root = cluster.key("r/");
        Ok(Arc::new(EtcdStore {
            cluster: cluster.clone(),
            mirror: Mirror::start(cluster, &root)?,
            root,
        }))
    }

    /// The etcd key of a register store key (space byte first).
    pub fn etcd_key(&self, full: &[u8]) -> Vec<u8> {
        let (space, key) = full.split_first().map_or((0, &[][..]), |(s, k)| (*s, k));
        let mut out = self.root.as_bytes().to_vec();
        match space {
            0 => out.extend_from_slice(b"v/"),
            1 => out.extend_from_slice(b"w/"),
            2 => out.extend_from_slice(b"m/"),
            3 => out.extend_from_slice(b"t/"),
            s => out.extend_from_slice(format!("x{s:02x}/").as_bytes()),
        }
        out.extend_from_slice(key);
        out
    }

    /// The store key of an etcd key; None for a key under the root that is not one of ours.
    pub fn store_key(&self, etcd: &[u8]) -> Option<Vec<u8>> {
        let rest = etcd.strip_prefix(self.root.as_bytes())?;
        let slash = rest.iter().position(|b| *b == b'/')?;
        let (seg, key) = (&rest[..slash], &rest[slash + 1..]);
        let space = match seg {
            b"v" => 0,
            b"w" => 1,
            b"m" => 2,
            b"t" => 3,
            [b'x', hex @ ..] if hex.len() == 2 => {
                u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?
            }
            _ => return None,
        };
        let mut out = Vec::with_capacity(1 + key.len());
        out.push(space);
        out.extend_from_slice(key);
        Some(out)
    }

    /// The mirror behind the reads.
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }
}

fn shared_err(e: impl std::fmt::Display) -> RegisterError {
    RegisterError::Shared(e.to_string())
}

impl SharedStore for EtcdStore {
    fn get(&self, key: &[u8]) -> Result<(Option<Vec<u8>>, i64), RegisterError> {
        let k = self.etcd_key(key);
        Ok(self.mirror.read(|s| match s.get(&k) {
            Some((v, rev)) => (Some(v.to_vec()), rev),
            None => (None, 0),
        }))
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<Versioned>, RegisterError> {
        // A prefix of the space byte alone is a whole space: the etcd prefix ends in its slash.
        let p = self.etcd_key(prefix);
        Ok(self.mirror.read(|s| {
            s.scan(&p)
                .filter_map(|(k, v)| {
                    let rev = s.revision_of(k);
                    self.store_key(k).map(|sk| (sk, v.to_vec(), rev))
                })
                .collect()
        }))
    }

    fn commit(&self, reads: &ReadSet, writes: &Staged) -> Result<(), RegisterError> {
        let read_keys: Vec<Vec<u8>> = reads.keys().map(|k| self.etcd_key(k)).collect();
        let compares: Vec<Compare> = read_keys
            .iter()
            .zip(reads.values())
            .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev))
            .collect();
        let puts: Vec<(Vec<u8>, Option<Vec<u8>>)> = writes
            .iter()
            .map(|(k, v)| (self.etcd_key(k), v.clone()))
            .collect();
        let ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.clone(), v.clone(), None),
                None => TxnOp::delete(k.clone(), None),
            })
            .collect();
        let fallback: Vec<TxnOp> = read_keys
            .iter()
            .map(|k| TxnOp::get(k.clone(), None))
            .collect();
        let txn = Txn::new().when(compares).and_then(ops).or_else(fallback);
        let client = self.cluster.client();
        // Safe to repeat after a lost answer: if the first try applied, the compares of a group
        // that read what it wrote fail and the group runs again on what is there; a group
        // that wrote blind writes the same bytes again.
        let resp = self
            .cluster
            .block_on(retry(|| {
                let mut c = client.clone();
                let t = txn.clone();
                async move { c.txn(t).await }
            }))
            .map_err(shared_err)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            let facts: Vec<Fact> = puts
                .into_iter()
                .map(|(k, v)| (k, v.map(|v| (v, revision))))
                .collect();
            self.mirror.learn(facts, revision);
            return Ok(());
        }
        let mut facts: Vec<Fact> = Vec::with_capacity(read_keys.len());
        for (k, r) in read_keys.into_iter().zip(resp.op_responses()) {
            if let TxnOpResponse::Get(g) = r {
                let fact = g
                    .kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision()));
                facts.push((k, fact));
            }
        }
        self.mirror.learn(facts, revision);
        Err(RegisterError::Conflict)
    }
}
