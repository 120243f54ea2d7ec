//! Membership: a manager is live while its key `<prefix>/members/<id>` exists, and that key
//! lives on a lease the manager keeps alive.
//!
//! The lease has a TTL (a few seconds). A manager killed, frozen or cut from etcd stops
//! renewing it, etcd deletes the key when the TTL runs out, and every watcher of the member
//! prefix ([`crate::Members`]) sees it leave. The manager itself must stop acting as a member
//! *before* etcd can have given its hosts away, so it counts its lease as lost from the moment
//! the last renewal it sent was answered plus the TTL ([`Membership::is_alive`]): an
//! unanswered renewal never extends it.

use crate::{connection::retry, Cluster, ClusterError};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default lease TTL of a member: how long a dead manager keeps its hosts.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);
/// Where live managers are announced (`<prefix>/members/<id>`).
pub const MEMBERS: &str = "members";
/// Where live publishers are announced (`<prefix>/publishers/<id>`, their endpoints as the
/// value), for actors to learn them.
pub const PUBLISHERS: &str = "publishers";

/// Every live entry under `<prefix>/<dir>/` ([`MEMBERS`], [`PUBLISHERS`]): id and value, read
/// once (a watch is [`crate::Members`]).
pub fn announced(cluster: &Cluster, dir: &str) -> Result<Vec<(String, Vec<u8>)>, ClusterError> {
    let prefix = cluster.key(&format!("{dir}/"));
    let client = cluster.client();
    let resp = cluster.block_on(retry(|| {
        let mut c = client.clone();
        let prefix = prefix.clone();
        async move {
            c.get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
        }
    }))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let id = kv.key().strip_prefix(prefix.as_bytes())?;
            Some((String::from_utf8(id.to_vec()).ok()?, kv.value().to_vec()))
        })
        .collect())
}

/// This process's membership of the cluster; leaves (revokes its lease) on drop.
pub struct Membership {
    cluster: Cluster,
    id: String,
    key: String,
    lease: i64,
    ttl: Duration,
    state: Arc<LeaseState>,
    keeper: tokio::task::JoinHandle<()>,
}

/// What the keep-alive task shares with the handle (and the leadership, which lives on the
/// same lease).
pub(crate) struct LeaseState {
    /// The instant the cluster was joined; `deadline_ms` counts from it.
    start: Instant,
    /// Until when (ms after `start`) the lease is surely held.
    deadline_ms: AtomicU64,
    /// etcd said the lease is gone (expired or revoked): no renewal can bring it back.
    gone: AtomicBool,
}

impl LeaseState {
    pub(crate) fn alive(&self) -> bool {
        !self.gone.load(Ordering::Acquire)
            && (self.start.elapsed().as_millis() as u64) < self.deadline_ms.load(Ordering::Acquire)
    }
}

/// A member id goes into a key: printable, no slash, bounded.
pub fn check_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadId(id.chars().take(200).collect()))
    }
}

impl Membership {
    /// Join as `id`, announcing `info` (what the others need to know, e.g. the endpoints), on a
    /// lease of `ttl` (whole seconds, at least 1). Refused while another live member holds `id`.
    pub fn join(
        cluster: &Cluster,
        id: &str,
        info: &[u8],
        ttl: Duration,
    ) -> Result<Membership, ClusterError> {
        Membership::join_under(cluster, MEMBERS, id, info, ttl)
    }

    /// Join under `<prefix>/<dir>/<id>` instead of `members/`: a publisher announces itself
    /// under [`PUBLISHERS`] this way, on a lease of its own, without counting as a manager
    /// (which would give it hosts).
    pub fn join_under(
        cluster: &Cluster,
        dir: &str,
        id: &str,
        info: &[u8],
        ttl: Duration,
    ) -> Result<Membership, ClusterError> {
        check_id(id)?;
        let ttl_secs = ttl.as_secs().max(1);
        let ttl = Duration::from_secs(ttl_secs);
        let key = cluster.key(&format!("{dir}/{id}"));
        let start = Instant::now();
        let mut client = cluster.client();
        let (lease, taken) = cluster.block_on(async {
            let lease = retry(|| {
                let mut c = client.clone();
                async move { c.lease_grant(ttl_secs as i64, None).await }
            })
            .await?
            .id();
            // Only where no live member holds the id: two managers under one id would both
            // think they own the same hosts.
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    info,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let done = retry(|| {
                let mut c = client.clone();
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
            if !done.succeeded() {
                let _ = client.lease_revoke(lease).await;
            }
            Ok::<_, etcd_client::Error>((lease, !done.succeeded()))
        })?;
        if taken {
            return Err(ClusterError::MemberTaken(id.to_string()));
        }
        let state = Arc::new(LeaseState {
            start,
            // Granted before `start` was read? No: `start` was read before the grant, so
            // counting from it is on the safe side.
            deadline_ms: AtomicU64::new(ttl.as_millis() as u64),
            gone: AtomicBool::new(false),
        });
        let keeper = cluster.spawn(keep_alive(cluster.client(), lease, ttl, state.clone()));
        tracing::info!(id, lease, ttl_s = ttl_secs, "joined the cluster");
        Ok(Membership {
            cluster: cluster.clone(),
            id: id.to_string(),
            key,
            lease,
            ttl,
            state,
            keeper,
        })
    }

    pub(crate) fn lease_state(&self) -> Arc<LeaseState> {
        self.state.clone()
    }

    /// This member's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its key in etcd.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease its key (and its leadership, if any) lives on.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True while the lease is surely held: renewed, and the TTL since the last answered
    /// renewal not yet over. Once false, it stays false: this member must stop acting as one
    /// (its hosts may already be someone else's) and join again under a new lease.
    pub fn is_alive(&self) -> bool {
        self.state.alive()
    }

    /// Leave now: revoke the lease (the key goes at once, the others see it leave).
    pub fn leave(self) -> Result<(), ClusterError> {
        self.keeper.abort();
        self.state.gone.store(true, Ordering::Release);
        let client = self.cluster.client();
        let lease = self.lease;
        self.cluster.block_on(async move {
            retry(|| {
                let mut c = client.clone();
                async move { c.lease_revoke(lease).await }
            })
            .await
            .map(|_| ())
            .or_else(|e| {
                // Already gone (expired) is what leaving wants.
                if e.to_string().contains("not found") {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        })?;
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renew the lease every third of its TTL, over a keep-alive stream made again whenever it
/// breaks (the member it ran on went away). Each answered renewal moves the deadline to the
/// instant the renewal was *sent* plus the TTL etcd granted.
async fn keep_alive(
    client: etcd_client::Client,
    lease: i64,
    ttl: Duration,
    state: Arc<LeaseState>,
) {
    let every = ttl / 3;
    loop {
        let mut c = client.clone();
        let (mut keeper, mut stream) = match c.lease_keep_alive(lease).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(lease, error = %e, "lease keep-alive could not start, trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let sent = state.start.elapsed();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(every.max(Duration::from_millis(300)), stream.message())
                .await
            {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    let until = sent + Duration::from_secs(resp.ttl() as u64);
                    state
                        .deadline_ms
                        .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
                }
                Ok(Ok(Some(_))) => {
                    // TTL 0: etcd no longer has the lease. Nothing brings it back.
                    state.gone.store(true, Ordering::Release);
                    tracing::warn!(lease, "lease expired in etcd: membership lost");
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            }
            tokio::time::sleep(every.saturating_sub(state.start.elapsed() - sent)).await;
        }
        tracing::debug!(lease, "keep-alive stream broke, starting another");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
