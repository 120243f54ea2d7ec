//! Clustered: the leader publishes what a dead member left in its outbox.
//!
//! A member's outbox lives in etcd under its id (`r/x81/<id>/<number>`), so it outlives the
//! member. While a member is not live (its key under `members/` gone: killed, or left) and its
//! outbox still holds entries, the leader sends them, as they are stored (the dead outbox's id
//! and numbers), to its *own* publisher, once a second from the oldest, each frame saying that
//! everything below the oldest was logged already ([`bus::delivery::Linked::after`]): the
//! publisher takes them in order, recognises the numbers it has (a resend), and acknowledges
//! them under the dead outbox's id.
//!
//! **One sender at a time.** Before it sends a dead member's outbox, the leader *claims* it
//! ([`cluster::Leadership::claim`]: one transaction that puts `takeover/<id>` on the leader's
//! lease only while it leads and the member's key is absent, checked by etcd, not by this
//! manager's view of the members). It deletes acknowledged entries only under its claim
//! ([`cluster::Leadership::delete_claimed`]). A member that joins again under its id waits,
//! once joined (so no new claim can be made), until no claim is left
//! ([`cluster::wait_unclaimed`]) before it opens its outbox. The leader, seeing it live, stops
//! sending, and releases the claim once its publisher acknowledged everything it had sent
//! (those entries deleted: the member does not send them again), or [`RELEASE_AFTER`] after
//! it saw the member live, closing its link first so nothing it queued goes out later. A
//! leader that dies takes its claim with its lease. So the leader and the member never send
//! the same outbox at once; what can still go out twice is an entry the leader's publisher
//! logs after the release (its acknowledgement later than [`RELEASE_AFTER`]), and, as below,
//! what the dead member's publisher had in flight.
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
/// How long after it saw a member live again the leader waits for its publisher to
/// acknowledge what it sent of that member's outbox before it hands the outbox back anyway.
pub const RELEASE_AFTER: Duration = Duration::from_secs(5);
/// How often the claims held are looked at.
const HAND_BACK_EVERY: Duration = Duration::from_millis(100);

/// A dead member's outbox this leader has claimed.
#[derive(Debug, Default)]
struct Claim {
    /// The highest number sent to this publisher.
    sent: u64,
    /// The highest number the publisher acknowledged.
    acked: u64,
    /// When the member was first seen live again (the leader stops sending then).
    live_since: Option<Instant>,
}

/// The leader's takeover of dead members' outboxes (see the module doc).
pub(crate) struct Takeover {
    /// A PUSH of its own on this manager's link to its publisher.
    link: zmq::Socket,
    /// The link's endpoint, to dial it again (dropping what is queued).
    link_endpoint: String,
    /// The outboxes claimed, by member.
    claims: HashMap<String, Claim>,
    /// A SUB of its own on the publisher's acks, subscribed to each dead outbox's id.
    acks: zmq::Socket,
    /// Outbox id → the member it belonged to, for the outboxes subscribed to.
    outboxes: HashMap<String, String>,
    last_scan: Instant,
    last_hand_back: Instant,
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
            link_endpoint: endpoints.link.clone(),
            claims: HashMap::new(),
            acks,
            outboxes: HashMap::new(),
            last_scan: Instant::now(),
            last_hand_back: Instant::now(),
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
            if let Some(c) = self.claims.get_mut(&member) {
                c.acked = c.acked.max(upto);
            }
            self.forget(node, &member, upto)?;
        }
        self.hand_back(node)?;
        if node.leader.is_leader() && self.last_scan.elapsed() >= SCAN_EVERY {
            self.last_scan = Instant::now();
            self.send(node)?;
        }
        Ok(())
    }

    /// Release the claims this manager should no longer hold: all of them when it no longer
    /// leads; a member's once it is live again and what was sent of its outbox is acknowledged
    /// (or [`RELEASE_AFTER`] passed); a member's whose outbox is empty and acknowledged.
    fn hand_back(&mut self, node: &crate::clustered::Node) -> Result<(), ManagerError> {
        if self.claims.is_empty() {
            return Ok(());
        }
        if self.last_hand_back.elapsed() < HAND_BACK_EVERY {
            return Ok(());
        }
        self.last_hand_back = Instant::now();
        let leading = node.leader.is_leader();
        let live: HashSet<String> = node.members.ids().into_iter().collect();
        let mut release = Vec::new();
        let mut empty = Vec::new();
        let mut redial = false;
        for (member, c) in self.claims.iter_mut() {
            let done = c.acked >= c.sent;
            if !leading {
                release.push(member.clone());
                redial |= !done;
                continue;
            }
            if live.contains(member) {
                let since = *c.live_since.get_or_insert_with(Instant::now);
                if done || since.elapsed() >= RELEASE_AFTER {
                    if !done {
                        tracing::warn!(%member, sent = c.sent, acked = c.acked, "member back: handing its outbox back before this publisher acknowledged all that was sent (an action may be published twice; actors skip it by id)");
                    }
                    release.push(member.clone());
                    redial |= !done;
                }
            } else if done {
                empty.push(member.clone());
            }
        }
        // Sent, acknowledged and deleted: nothing left to claim.
        release.extend(empty.into_iter().filter(|m| self.entries_of(m).is_none()));
        if redial {
            // What is still queued for the publisher must not go out after the release.
            self.link = bus::sockets::connect(zmq::PUSH, &self.link_endpoint)?;
        }
        for member in release {
            self.claims.remove(&member);
            node.leader.release_claim(&member)?;
            tracing::info!(%member, "a dead member's outbox released");
        }
        Ok(())
    }

    /// The outbox entries of `member` (number, stored frame), oldest first; None when empty.
    fn entries_of(&self, member: &str) -> Option<Vec<(u64, Vec<u8>)>> {
        let mut root = self.store.etcd_key(&[SPACE]);
        root.extend_from_slice(member.as_bytes());
        root.push(b'/');
        let mut out: Vec<(u64, Vec<u8>)> = self.store.mirror().read(|snap| {
            snap.scan(&root)
                .filter_map(|(k, v)| {
                    let n = <[u8; 8]>::try_from(&k[root.len()..]).ok()?;
                    Some((u64::from_be_bytes(n), v.to_vec()))
                })
                .collect()
        });
        out.sort_unstable_by_key(|(n, _)| *n);
        (!out.is_empty()).then_some(out)
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
        for (member, mut entries) in self.dead_entries(node) {
            // Deleted already (the mirror learns it a moment later): not sent, not claimed for.
            let deleted = self.forgotten.get(&member).copied().unwrap_or(0);
            entries.retain(|(n, _)| *n > deleted);
            let Some(&(oldest, _)) = entries.first() else {
                continue;
            };
            match self.claims.get(&member) {
                // Live again (the watch says): not sent any more, handed back.
                Some(c) if c.live_since.is_some() => continue,
                Some(_) => {}
                None => {
                    // etcd decides, not this manager's view of the members.
                    if !node.leader.claim(&member)? {
                        tracing::debug!(%member, "not claimed: the member is live or this manager no longer leads");
                        continue;
                    }
                    self.claims.insert(member.clone(), Claim::default());
                }
            }
            let mut sent = 0;
            let mut highest = 0;
            for (n, frame) in entries.iter().take(MAX_SEND) {
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
                highest = *n;
            }
            if let Some(c) = self.claims.get_mut(&member) {
                c.sent = c.sent.max(highest);
            }
            tracing::debug!(%member, sent, "a dead member's outbox sent to this publisher");
        }
        Ok(())
    }

    /// Delete `member`'s entries up to `upto` (acknowledged by the publisher), while this
    /// manager holds the claim on its outbox.
    fn forget(
        &mut self,
        node: &crate::clustered::Node,
        member: &str,
        upto: u64,
    ) -> Result<(), ManagerError> {
        if !self.claims.contains_key(member) {
            return Ok(());
        }
        let Some(entries) = self.entries_of(member) else {
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
            if node.leader.delete_claimed(member, chunk)? {
                self.taken_over += chunk.len() as u64;
                self.forgotten.insert(member.to_string(), upto);
            } else {
                tracing::info!(%member, "the claim on its outbox is gone: its outbox is not this manager's any more");
                self.claims.remove(member);
                break;
            }
        }
        Ok(())
    }
}
