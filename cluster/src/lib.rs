//! Cluster: reflex past one control node. Several managers share membership, a leader, the
//! partition of hosts and (later) the registers through etcd, an existing distributed engine,
//! never a replication protocol of our own (the design brief: as mgmt does).
//!
//! Every key lives under one prefix (`/reflex` by default), so one etcd can serve several
//! reflex clusters:
//!
//! | key | what | lives on |
//! | --- | --- | --- |
//! | `<prefix>/members/<id>` | a live manager, its value what it announces (endpoints) | its lease |
//! | `<prefix>/publishers/<id>` | a live publisher, its value its endpoints (JSON: `publish`, `replay`) | its lease |
//! | `<prefix>/leader` | the id of the member that does singleton work | the leader's lease |
//! | `<prefix>/takeover/<id>` | the leader's claim on dead member `id`'s outbox, while it sends it | the leader's lease |
//! | `<prefix>/r/{v,w,m,t}/<key>` | registers: values, windows, marks, throttles (sled's bytes) | no lease: expiry stored |
//! | `<prefix>/r/xHH/<key>` | the manager's side data in side space `HH` (`x80`: stream marks; `x81`/`x82`: each member's outbox, `<id>/…`) | no lease |
//!
//! The pieces, one file each:
//!
//! - [`endpoints`]: `etcd://HOST:PORT[,HOST:PORT...]`, parsed strictly;
//! - [`Cluster`] (`connection`): the gRPC client over every endpoint and the one-thread tokio
//!   runtime the background work runs on (the daemons are synchronous); retries of calls that
//!   are safe to repeat when a member goes away;
//! - [`Membership`]: join with a lease kept alive in the background; a member counts itself
//!   gone from the moment its last answered renewal plus the TTL has passed, before etcd can
//!   give its hosts away;
//! - [`Mirror`]: a local copy of a prefix kept by a watch (resumed after a break, reloaded after
//!   a compaction), with each key's revision, so decisions read locally and are checked in a
//!   transaction;
//! - [`Members`] and [`partition::owner`]: the owner of a host is its rendezvous hash winner
//!   over the live members; every manager computes it from the same watched set, so they agree,
//!   and a dead manager's hosts (only those) move within its lease TTL;
//! - [`Leadership`]: a lease-guarded leader key taken by a transaction; its create revision is
//!   a fencing token;
//! - [`EtcdStore`] (`registers`): the registers' committed data in etcd; reads from a mirror,
//!   one transaction per group that compares the revision of every key read and writes the
//!   register changes and the "done" marks together (the module doc has the whole design).
//!
//! Agreement on owners is eventual (each manager sees a member leave when its watch says so),
//! so the partition alone never makes anything exactly-once: it keeps a host's events on one
//! manager in the steady state (order, no conflicts). Exactly-once comes from committing each
//! group's effects and its "done" marks in one etcd transaction that compares what it read.
//!
//! ```no_run
//! # fn main() -> Result<(), cluster::ClusterError> {
//! let etcd = cluster::Cluster::connect("etcd://127.0.0.1:2379", "/reflex")?;
//! let me = cluster::Membership::join(&etcd, "m1", b"tcp://10.0.0.1:4510", cluster::DEFAULT_TTL)?;
//! let members = cluster::Members::watch(&etcd)?;
//! let leader = cluster::Leadership::campaign(&etcd, &me);
//! if members.owner("web1").as_deref() == Some(me.id()) { /* process web1's events */ }
//! if leader.is_leader() { /* presence, purges */ }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod connection;
pub mod endpoints;
mod leader;
mod membership;
mod mirror;
pub mod partition;
pub mod registers;

pub use connection::{retry, transient, txn_rate, Cluster, CALL_TIMEOUT, RETRY_FOR};
pub use leader::{current_leader, wait_unclaimed, Leadership, TAKEOVER};
pub use membership::{announced, check_id, Membership, DEFAULT_TTL, MEMBERS, PUBLISHERS};
pub use mirror::{Entry, Mirror, Snapshot};
pub use partition::Members;
pub use registers::EtcdStore;

/// What a cluster operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `--cluster` URL does not parse.
    #[error("bad cluster URL {url:?}: {why}")]
    BadUrl {
        /// The URL given (cut at 200 characters).
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The key prefix is not `/name` without a trailing slash.
    #[error("bad key prefix {0:?}: it must start with / and not end with one (e.g. /reflex)")]
    BadPrefix(String),
    /// A member id that cannot be a key segment.
    #[error("bad member id {0:?}: 1 to 128 of A-Z a-z 0-9 . - _")]
    BadId(String),
    /// Another live member holds this id.
    #[error("member id {0:?} is held by a live member")]
    MemberTaken(String),
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The runtime for the etcd client could not start.
    #[error("etcd client runtime: {0}")]
    Runtime(std::io::Error),
    /// A value in etcd that does not decode.
    #[error("etcd key {key:?} holds a value that cannot be read: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why it does not decode.
        message: String,
    },
}
