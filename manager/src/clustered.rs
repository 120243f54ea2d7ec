//! The manager's side of a cluster (`reflex manager --cluster etcd://...`): several managers
//! share registers, membership, a leader and the partition of senders through etcd (the
//! `cluster` crate), and each processes only the streams it owns.
//!
//! - **Registers** live in etcd ([`cluster::EtcdStore`]); a group commits as one transaction
//!   that compares every key it read, stream marks included ([`Streams`](crate::delivery)
//!   reads them with `side_get`), and writes the register changes, the marks and the outbox
//!   together. A group that lost a race ([`registers::RegisterError::Conflict`]) is discarded
//!   and run again from its inputs ([`Input`]), which this module keeps until the commit.
//! - **Ownership**: a batch belongs to its *partition key* ([`partition_key`]): the sender's
//!   name for a host key (so all of a host's streams go to one manager), else the stream itself
//!   (the admin, or no CURVE). Its owner is the rendezvous winner over the live members.
//! - **Forwarding**: a manager that receives a batch it does not own pushes it, with the
//!   sender's authenticated name, to the owner's *peer door* (a PULL socket bound on a free
//!   port of the ingest address, announced in the member's key; with CURVE only the admin key
//!   may speak there, as at the control socket). It neither processes nor acknowledges it; the
//!   owner processes it and commits its stream mark in etcd, and the receiving manager, which
//!   mirrors every mark, acknowledges the sender from that mark ([`crate::delivery`]'s relay).
//!   A forwarded batch that arrives at a manager that does not own it (views of the members
//!   differ for a moment) is dropped: the sender sends it again after a second without an ack.
//! - **Bounded groups**: etcd refuses a transaction of more than `--max-txn-ops` compares or
//!   writes; a group ends before it reaches [`Node::budget`] of either.
//! - **Liveness**: the manager stops (an error, so its supervisor starts it again under a new
//!   lease) as soon as its lease is not surely held ([`cluster::Membership::is_alive`]), before
//!   etcd can have given its streams to another.

use crate::ManagerError;
use bus::secure::{Door, Security};
use bus::Event;
use cluster::{Cluster, EtcdStore, Leadership, Members, Membership};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a manager joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    pub url: String,
    /// The key prefix of this reflex cluster (`/reflex`).
    pub prefix: String,
    /// The member lease TTL: how long a dead manager keeps its streams.
    pub ttl: Duration,
    /// This member's id (stable across restarts: its outbox is kept under it).
    pub id: String,
    /// etcd's `--max-txn-ops` (128 by default): a group ends before it needs more.
    pub max_txn_ops: usize,
    /// How this manager dials the others' peer doors (the admin key, pinning the manager
    /// key; or insecure).
    pub peer_security: Security,
}

/// Default etcd `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Most bytes a group writes before it ends (etcd's request limit is 1.5 MiB).
pub const MAX_GROUP_BYTES: usize = 512 * 1024;
/// Most times a group that keeps losing races is run again before it is dropped (its senders
/// send it again, unacknowledged).
pub const MAX_RERUNS: u32 = 8;
/// Most bytes of a member's announcement read from etcd.
const MAX_INFO: usize = 4_096;

/// Something a group took in, kept until the group commits, to run it again after a conflict.
pub(crate) enum Input {
    /// A frame from the ingest (or a peer): its bytes, its sender's name, and whether a peer
    /// forwarded it.
    Frame(Vec<u8>, Option<String>, bool),
    /// An event made by the manager itself outside any rule (presence, rule loads, enrolment).
    Event(Event),
}

/// The pause before running a group again after its `reruns`-th lost race: random, up to
/// 2^reruns ms (at most 64 ms), so managers racing on the same keys fall out of step.
pub fn backoff(reruns: u32) -> Duration {
    let cap = 1u64 << reruns.min(6);
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    // xorshift: enough to spread pauses, nothing depends on it.
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_micros(x % (cap * 1_000 + 1))
}

/// A batch another manager forwarded.
pub(crate) struct Forwarded {
    /// The forwarding manager's authenticated name (`User-Id`; None without CURVE).
    pub(crate) peer: Option<String>,
    /// The sender it claims the batch came from.
    pub(crate) user: String,
    /// The batch frame.
    pub(crate) frame: Vec<u8>,
    /// Where the batch's stream goes on when it has no mark (its sender's hello, heard by the
    /// forwarding manager).
    pub(crate) hint: Option<u64>,
}

/// A manager's membership of the cluster and what goes with it.
pub(crate) struct Node {
    pub(crate) etcd: Cluster,
    pub(crate) member: Membership,
    pub(crate) members: Members,
    pub(crate) leader: Leadership,
    pub(crate) max_txn_ops: usize,
    /// The peer door: batches other managers forward to this one.
    pub(crate) door: zmq::Socket,
    /// Per member: its peer endpoint, the socket to it, when it was dialled and last used.
    peers: HashMap<String, Peer>,
    peer_security: Security,
    /// The inputs of the group being built.
    pub(crate) replay: Vec<Input>,
    /// Batches forwarded to their owner.
    pub(crate) forwarded: u64,
    /// Forwarded batches dropped because this manager does not own them either.
    pub(crate) misrouted: u64,
    /// Groups that lost a race and ran again.
    pub(crate) conflicts: u64,
    last_warned: Option<Instant>,
}

struct Peer {
    endpoint: String,
    socket: zmq::Socket,
    dialled: Instant,
    used: Instant,
}

/// A peer socket idle this long is dialled again before it is used: a connection whose
/// handshake was refused (a peer just started, its keys not yet loaded) never comes back by
/// itself, and a sender resends an unacknowledged batch after a second.
const REDIAL_IDLE: Duration = Duration::from_millis(900);

/// What a member announces in its key.
#[derive(serde::Serialize, serde::Deserialize)]
struct Info {
    /// Its peer door.
    peer: String,
    /// Its ingest (for operators; senders are configured with it).
    ingest: String,
}

/// The partition key of a batch from `user` (its authenticated name, `""` without CURVE) on
/// `stream`: the host for a host key, else the stream.
pub fn partition_key(user: &str, stream: &str, is_admin: bool) -> String {
    if !user.is_empty() && !is_admin {
        user.to_string()
    } else {
        crate::delivery::key(user, stream)
    }
}

/// `tcp://HOST:PORT` → `tcp://HOST:*` (a free port on the ingest's address).
fn any_port(ingest: &str) -> Option<String> {
    let (host, _) = ingest.strip_prefix("tcp://")?.rsplit_once(':')?;
    Some(format!("tcp://{host}:*"))
}

/// A peer endpoint read from etcd: only `tcp://` and bounded, since it is dialled.
fn check_peer(endpoint: &str) -> bool {
    endpoint.len() <= 256
        && endpoint.strip_prefix("tcp://").is_some_and(|r| {
            r.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        })
}

impl Node {
    /// Connect to etcd, bind the peer door, join (waiting out a previous life's lease under the
    /// same id), watch the members, campaign for leadership, and open the shared registers.
    pub(crate) fn join(
        cfg: &ClusterConfig,
        ingest: &str,
        sec: &Security,
    ) -> Result<(Node, Arc<EtcdStore>), ManagerError> {
        let etcd = Cluster::connect(&cfg.url, &cfg.prefix)?;
        let bind_at = any_port(ingest).ok_or_else(|| {
            ManagerError::Cluster(cluster::ClusterError::BadUrl {
                url: ingest.to_string(),
                why: "a clustered manager's ingest must be tcp://HOST:PORT".into(),
            })
        })?;
        let door = bus::secure::bind(zmq::PULL, &bind_at, sec, Door::Control)?;
        let peer = match door.get_last_endpoint() {
            Ok(Ok(e)) => e,
            _ => bind_at.clone(),
        };
        if peer.contains("0.0.0.0") || peer.contains("[::]") {
            tracing::warn!(%peer, "the peer door is bound on a wildcard address, which other managers cannot dial: bind the ingest to this machine's address");
        }
        let info = serde_json::to_vec(&Info {
            peer: peer.clone(),
            ingest: ingest.to_string(),
        })
        .unwrap_or_default();
        // A manager killed and started again finds its old key until the old lease ends.
        let deadline = Instant::now() + cfg.ttl * 2 + Duration::from_secs(5);
        let member = loop {
            match Membership::join(&etcd, &cfg.id, &info, cfg.ttl) {
                Ok(m) => break m,
                Err(cluster::ClusterError::MemberTaken(id)) if Instant::now() < deadline => {
                    tracing::info!(%id, "member id still held (a previous life's lease): waiting for it to end");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Joined: no leader can claim this member's outbox any more. One that is sending it
        // (this member was dead) hands it back first: never both at once.
        if !cluster::wait_unclaimed(&etcd, &cfg.id, cfg.ttl * 2 + Duration::from_secs(5))? {
            tracing::warn!(id = %cfg.id, "the leader still holds this member's outbox: going on (an action may be published twice; actors skip it by id)");
        }
        let members = Members::watch(&etcd)?;
        let leader = Leadership::campaign(&etcd, &member);
        let store = EtcdStore::open(&etcd)?;
        tracing::info!(id = %cfg.id, %peer, prefix = %cfg.prefix, ttl_s = cfg.ttl.as_secs(), members = ?members.ids(), "joined the cluster");
        Ok((
            Node {
                etcd,
                member,
                members,
                leader,
                max_txn_ops: cfg.max_txn_ops.max(16),
                door,
                peers: HashMap::new(),
                peer_security: cfg.peer_security.clone(),
                replay: Vec::new(),
                forwarded: 0,
                misrouted: 0,
                conflicts: 0,
                last_warned: None,
            },
            store,
        ))
    }

    /// The compares or writes a group may reach before it ends: three quarters of the limit,
    /// the rest left for the event that crosses it.
    pub(crate) fn budget(&self) -> usize {
        self.max_txn_ops * 3 / 4
    }

    /// This member's id.
    pub(crate) fn id(&self) -> &str {
        self.member.id()
    }

    /// The owner of partition key `pk`, when it is not this member.
    pub(crate) fn other_owner(&self, pk: &str) -> Option<String> {
        self.members.owner(pk).filter(|o| o != self.member.id())
    }

    /// Push `frame` from `user` to `owner`'s peer door, with where its stream goes on when it
    /// has no mark (`hint`: the sender's hello, a third part of 8 bytes, big-endian); false
    /// when it could not go (the sender sends it again).
    pub(crate) fn forward(
        &mut self,
        owner: &str,
        user: Option<&str>,
        frame: &[u8],
        hint: Option<u64>,
    ) -> bool {
        let Some(endpoint) = self.peer_endpoint(owner) else {
            self.warn(|| format!("member {owner} announced no usable peer door"));
            return false;
        };
        let redial = match self.peers.get(owner) {
            None => true,
            Some(p) => {
                p.endpoint != endpoint
                    || (p.used.elapsed() >= REDIAL_IDLE && p.dialled.elapsed() >= REDIAL_IDLE)
            }
        };
        if redial {
            match bus::secure::connect(zmq::PUSH, &endpoint, &self.peer_security) {
                Ok(socket) => {
                    // A peer gone away must not keep what it was sent: the senders resend.
                    let _ = socket.set_linger(0);
                    let now = Instant::now();
                    self.peers.insert(
                        owner.to_string(),
                        Peer {
                            endpoint,
                            socket,
                            dialled: now,
                            used: now,
                        },
                    );
                }
                Err(e) => {
                    self.warn(|| format!("cannot dial member {owner}'s peer door: {e}"));
                    return false;
                }
            }
        }
        let Some(peer) = self.peers.get_mut(owner) else {
            return false;
        };
        peer.used = Instant::now();
        let user = user.unwrap_or_default().as_bytes();
        let sent = match hint {
            None => {
                peer.socket.send(user, zmq::SNDMORE | zmq::DONTWAIT).is_ok()
                    && peer.socket.send(frame, zmq::DONTWAIT).is_ok()
            }
            Some(from) => {
                peer.socket.send(user, zmq::SNDMORE | zmq::DONTWAIT).is_ok()
                    && peer
                        .socket
                        .send(frame, zmq::SNDMORE | zmq::DONTWAIT)
                        .is_ok()
                    && peer
                        .socket
                        .send(&from.to_be_bytes()[..], zmq::DONTWAIT)
                        .is_ok()
            }
        };
        if sent {
            self.forwarded += 1;
        }
        sent
    }

    fn peer_endpoint(&self, id: &str) -> Option<String> {
        let raw = self.members.info(id)?;
        if raw.len() > MAX_INFO {
            return None;
        }
        let info: Info = serde_json::from_slice(&raw).ok()?;
        check_peer(&info.peer).then_some(info.peer)
    }

    /// Forget the peer sockets of members that left.
    pub(crate) fn prune_peers(&mut self) {
        if self.peers.is_empty() {
            return;
        }
        let live = self.members.ids();
        self.peers.retain(|id, _| live.contains(id));
    }

    /// Take one message from the peer door: who sent it (its `User-Id`, for the caller to
    /// check it is another manager), the sender it claims, and the frame. `None` when the door
    /// is empty; `Some(None)` for a message that is not two parts.
    pub(crate) fn take_forwarded(&self) -> Result<Option<Option<Forwarded>>, zmq::Error> {
        let mut user = zmq::Message::new();
        match self.door.recv(&mut user, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(None),
            Err(e) => return Err(e),
        }
        let peer = user.gets("User-Id").map(str::to_string);
        if !user.get_more() {
            return Ok(Some(None));
        }
        let mut frame = zmq::Message::new();
        self.door.recv(&mut frame, zmq::DONTWAIT)?;
        let mut extra = frame.get_more();
        let mut hint = None;
        let mut part = 0;
        while extra {
            let mut rest = zmq::Message::new();
            self.door.recv(&mut rest, zmq::DONTWAIT)?;
            extra = rest.get_more();
            if part == 0 {
                hint = <[u8; 8]>::try_from(&rest[..])
                    .ok()
                    .map(u64::from_be_bytes)
                    .filter(|n| *n > 0);
            }
            part += 1;
        }
        let Ok(name) = std::str::from_utf8(&user) else {
            return Ok(Some(None));
        };
        if name.len() > 256 {
            return Ok(Some(None));
        }
        Ok(Some(Some(Forwarded {
            peer,
            user: name.to_string(),
            frame: frame.to_vec(),
            hint,
        })))
    }

    fn warn(&mut self, msg: impl FnOnce() -> String) {
        if self
            .last_warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            tracing::warn!("{}", msg());
            self.last_warned = Some(Instant::now());
        }
    }

    /// Leave the cluster now (the lease revoked: the others take this member's streams at once).
    pub(crate) fn leave(self) {
        let id = self.member.id().to_string();
        drop(self.leader);
        if let Err(e) = self.member.leave() {
            tracing::warn!(%id, "leaving the cluster: {e}");
        }
        drop(self.etcd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_and_peer_endpoints() {
        assert_eq!(partition_key("web1", "s1", false), "web1");
        assert_eq!(partition_key("admin", "s1", true), "admin\0s1");
        assert_eq!(partition_key("", "s1", false), "\0s1");
        assert_eq!(
            any_port("tcp://127.0.0.1:4510").as_deref(),
            Some("tcp://127.0.0.1:*")
        );
        assert_eq!(any_port("ipc:///x"), None);
        assert!(check_peer("tcp://127.0.0.1:40000"));
        assert!(!check_peer("tcp://127.0.0.1:0"));
        assert!(!check_peer("ipc:///tmp/x"));
        assert!(!check_peer("tcp://:1"));
        assert!(!check_peer(&format!("tcp://{}:1", "a".repeat(300))));
    }
}
