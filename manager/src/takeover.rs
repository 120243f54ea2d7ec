//! Clustered: the leader publishes what a dead member left in its outbox.
//!
//! A member's outbox lives in etcd under its id (`r/x81/<id>/<number>`), so it outlives the
//! member. While a member is not live (its key under `members/` gone: killed, or left) and its
//! outbox still holds entries, the leader sends them, as they are stored (the dead outbox's id
//! and numbers), to its *own* publisher, once a second from the oldest, each frame saying that
//! everything below the oldest was logged already ([`bus::delivery::Linked::after`]): the
//! publisher takes them in order, recognises the numbers it has (a resend), and acknowledges
//! them under the dead outbox's id. The leader deletes the acknowledged entries, in etcd
//! transactions guarded by the member's absence ([`cluster::delete_while_gone`]): a member that
//! came back under its id in the meantime keeps its outbox and sends it itself.
//!
//! An entry the dead member's publisher had logged but not yet acknowledged when the member
//! died (at most what was in flight) is published once more, by this publisher, under a
//! sequence of its own: actors skip an action id they already took in (as after a publisher
//! killed between its publish and its fsync).

use crate::outbox::SPACE;
use crate::ManagerError;
use bus::delivery::{LinkAck, Linked};
use cluster::EtcdStore;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the leader looks for dead members' outboxes and sends what they hold again.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Most entries sent per dead member per scan.
const MAX_SEND: usize = 4_096;

/// The leader's takeover of dead members' outboxes (see the module doc).
pub(crate) struct Takeover {
    /// A PUSH of its own on this manager's link to its publisher.
    link: zmq::Socket,
    /// A SUB of its own on the publisher's acks, subscribed to each dead outbox's id.
    acks: zmq::Socket,
    /// Outbox id → the member it belonged to, for the outboxes subscribed to.
    outboxes: HashMap<String, String>,
    last_scan: Instant,
    store: Arc<EtcdStore>,
    /// Most deletes in one transaction.
    max_ops: usize,
    /// Per dead member, the highest number deleted (the mirror learns deletions a moment
    /// later).
    forgotten: HashMap<String, u64>,
    /// Entries of dead members' outboxes deleted once a publisher acknowledged them.
    pub(crate) taken_over: u64,
}

impl Takeover {
    /// Connect to the publisher's link and acks (`ipc://` in the state dir).
    pub(crate) fn new(
        endpoints: &bus::Endpoints,
        store: Arc<EtcdStore>,
        max_txn_ops: usize,
    ) -> Result<Takeover, ManagerError> {
        let link = bus::sockets::connect(zmq::PUSH, &endpoints.link)?;
        let acks = bus::sockets::connect(zmq::SUB, &endpoints.link_acks)?;
        Ok(Takeover {
            link,
            acks,
            outboxes: HashMap::new(),
            last_scan: Instant::now(),
            store,
            max_ops: max_txn_ops.saturating_sub(1).max(1),
            forgotten: HashMap::new(),
            taken_over: 0,
        })
    }

    /// Take the publisher's acks (forgetting what they cover) and, on the leader once a second,
    /// send what dead members' outboxes hold.
    pub(crate) fn turn(&mut self, node: &crate::clustered::Node) -> Result<(), ManagerError> {
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        while let Ok(parts) = self.acks.recv_multipart(zmq::DONTWAIT) {
            let Some(ack) = parts
                .get(1)
                .and_then(|b| bus::decode_with_limit::<LinkAck>(b, 1_024).ok())
            else {
                continue;
            };
            if let Some(member) = self.outboxes.get(&ack.outbox) {
                let e = acked.entry(member.clone()).or_default();
                *e = (*e).max(ack.upto);
            }
        }
        for (member, upto) in acked {
            self.forget(node, &member, upto)?;
        }
        if node.leader.is_leader() && self.last_scan.elapsed() >= SCAN_EVERY {
            self.last_scan = Instant::now();
            self.send(node)?;
        }
        Ok(())
    }

    /// The outbox entries of members not live now: member → (number, stored frame), oldest
    /// first.
    fn dead_entries(&self, node: &crate::clustered::Node) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
        let live: HashSet<String> = node.members.ids().into_iter().collect();
        let root = self.store.etcd_key(&[SPACE]);
        let me = node.id();
        self.store.mirror().read(|snap| {
            let mut out: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
            for (k, v) in snap.scan(&root) {
                let rest = &k[root.len()..];
                let Some(slash) = rest.iter().position(|b| *b == b'/') else {
                    continue;
                };
                let (Ok(id), Ok(n)) = (
                    std::str::from_utf8(&rest[..slash]),
                    <[u8; 8]>::try_from(&rest[slash + 1..]),
                ) else {
                    continue;
                };
                if id == me || live.contains(id) {
                    continue;
                }
                out.entry(id.to_string())
                    .or_default()
                    .push((u64::from_be_bytes(n), v.to_vec()));
            }
            for entries in out.values_mut() {
                entries.sort_unstable_by_key(|(n, _)| *n);
            }
            out
        })
    }

    fn send(&mut self, node: &crate::clustered::Node) -> Result<(), ManagerError> {
        for (member, entries) in self.dead_entries(node) {
            let Some(&(oldest, _)) = entries.first() else {
                continue;
            };
            let mut sent = 0;
            for (_, frame) in entries.iter().take(MAX_SEND) {
                let Ok(mut l) = bus::decode::<Linked>(frame) else {
                    tracing::warn!(%member, "a dead member's outbox entry does not decode: left");
                    continue;
                };
                if !self.outboxes.contains_key(&l.outbox) {
                    self.acks.set_subscribe(l.outbox.as_bytes())?;
                    self.outboxes.insert(l.outbox.clone(), member.clone());
                    tracing::info!(%member, outbox = %l.outbox, waiting = entries.len(), from = oldest, "taking over a dead member's outbox");
                }
                l.after = l.after.max(oldest.saturating_sub(1));
                if self.link.send(bus::encode(&l), zmq::DONTWAIT).is_err() {
                    break;
                }
                sent += 1;
            }
            tracing::debug!(%member, sent, "a dead member's outbox sent to this publisher");
        }
        Ok(())
    }

    /// Delete `member`'s entries up to `upto` (acknowledged by the publisher), while it is not
    /// live.
    fn forget(
        &mut self,
        node: &crate::clustered::Node,
        member: &str,
        upto: u64,
    ) -> Result<(), ManagerError> {
        let Some(entries) = self.dead_entries(node).remove(member) else {
            return Ok(());
        };
        let done = self.forgotten.get(member).copied().unwrap_or(0);
        let keys: Vec<Vec<u8>> = entries
            .iter()
            .filter(|(n, _)| *n <= upto && *n > done)
            .map(|(n, _)| {
                let mut k = vec![SPACE];
                k.extend_from_slice(member.as_bytes());
                k.push(b'/');
                k.extend_from_slice(&n.to_be_bytes());
                self.store.etcd_key(&k)
            })
            .collect();
        for chunk in keys.chunks(self.max_ops) {
            if cluster::delete_while_gone(&node.etcd, member, chunk)? {
                self.taken_over += chunk.len() as u64;
                self.forgotten.insert(member.to_string(), upto);
            } else {
                tracing::info!(%member, "member came back: its outbox is its own again");
                break;
            }
        }
        Ok(())
    }
}
