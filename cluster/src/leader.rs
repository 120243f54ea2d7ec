//! Leader election: singleton work (presence and down detection, register purges) runs on one
//! member only.
//!
//! The leader is whoever holds `<prefix>/leader`, a key written on the holder's membership
//! lease by a transaction that succeeds only while the key is absent (`create_revision == 0`).
//! The others watch the key and try again the moment it is deleted: a leader that leaves
//! revokes its lease, and one that dies stops renewing it, so its key goes at the latest one TTL
//! after its last renewal, and a new leader follows within that TTL. The key's create revision
//! is a fencing token: singleton writes can carry a compare on it, so a leader that lost its
//! lease while paused cannot write after its successor was elected.

use crate::{check_id, connection::retry, Cluster, ClusterError, Membership, MEMBERS};
use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Campaigns for leadership for as long as it lives (resigns on drop, by leaving with the
/// membership or by [`Leadership::resign`]).
pub struct Leadership {
    cluster: Cluster,
    key: String,
    /// The member campaigning, and its lease (claims live on it).
    id: String,
    lease: i64,
    elected: Arc<AtomicBool>,
    /// The leader key's create revision while this member holds it.
    token: Arc<AtomicI64>,
    alive: Box<dyn Fn() -> bool + Send + Sync>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Campaign as `member`, on its lease.
    pub fn campaign(cluster: &Cluster, member: &Membership) -> Leadership {
        let key = cluster.key("leader");
        let elected = Arc::new(AtomicBool::new(false));
        let token = Arc::new(AtomicI64::new(0));
        let task = cluster.spawn(campaign(
            cluster.client(),
            key.clone(),
            member.id().to_string(),
            member.lease(),
            elected.clone(),
            token.clone(),
        ));
        let state = member.lease_state();
        Leadership {
            cluster: cluster.clone(),
            key,
            id: member.id().to_string(),
            lease: member.lease(),
            elected,
            token,
            alive: Box::new(move || state.alive()),
            task,
        }
    }

    /// True while this member leads: elected and its lease surely held.
    pub fn is_leader(&self) -> bool {
        self.elected.load(Ordering::Acquire) && (self.alive)()
    }

    /// The fencing token while this member leads (the leader key's create revision).
    pub fn token(&self) -> Option<i64> {
        self.is_leader().then(|| self.token.load(Ordering::Acquire))
    }

    /// Delete `keys` (full etcd keys, each with the `mod_revision` it was read at) in one
    /// transaction, only while this member leads (the leader key still has its token as
    /// create revision: a leader paused past its lease cannot delete after its successor was
    /// elected) and none of them changed since it was read: true when done, false when not
    /// leading or one of them moved (nothing deleted then).
    pub fn delete_unchanged(&self, keys: &[(Vec<u8>, i64)]) -> Result<bool, ClusterError> {
        let Some(token) = self.token() else {
            return Ok(false);
        };
        let mut when = vec![Compare::create_revision(
            self.key.as_str(),
            CompareOp::Equal,
            token,
        )];
        when.extend(
            keys.iter()
                .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)),
        );
        let txn = Txn::new().when(when).and_then(
            keys.iter()
                .map(|(k, _)| TxnOp::delete(k.clone(), None))
                .collect::<Vec<_>>(),
        );
        self.txn(txn)
    }

    /// Claim member `id`'s outbox, to send it on: one transaction that puts
    /// `<prefix>/takeover/<id>` (this member's id, on its lease) only while this member leads
    /// and `id` is not live (its key under `members/` absent). True: the outbox is this
    /// leader's to send and to delete from ([`Leadership::delete_claimed`]) until it releases
    /// the claim ([`Leadership::release_claim`]) or its lease ends; a member that joins again
    /// under `id` waits for that ([`wait_unclaimed`]) before it sends its outbox itself, so the
    /// two never send it at once. False: not leading, or `id` is live.
    pub fn claim(&self, id: &str) -> Result<bool, ClusterError> {
        check_id(id)?;
        let Some(token) = self.token() else {
            return Ok(false);
        };
        let member = self.cluster.key(&format!("{MEMBERS}/{id}"));
        let claim = self.cluster.key(&format!("{TAKEOVER}/{id}"));
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.key.as_str(), CompareOp::Equal, token),
                Compare::create_revision(member.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(
                claim.as_str(),
                self.id.as_str(),
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        self.txn(txn)
    }

    /// Delete `keys` (full etcd keys of member `id`'s outbox) in one transaction, only while
    /// this member holds the claim on `id`'s outbox: true when done.
    pub fn delete_claimed(&self, id: &str, keys: &[Vec<u8>]) -> Result<bool, ClusterError> {
        check_id(id)?;
        let claim = self.cluster.key(&format!("{TAKEOVER}/{id}"));
        let txn = Txn::new()
            .when([Compare::value(
                claim.as_str(),
                CompareOp::Equal,
                self.id.as_str(),
            )])
            .and_then(
                keys.iter()
                    .map(|k| TxnOp::delete(k.clone(), None))
                    .collect::<Vec<_>>(),
            );
        self.txn(txn)
    }

    /// Give up the claim on `id`'s outbox, if this member holds it (a successor's is left).
    pub fn release_claim(&self, id: &str) -> Result<(), ClusterError> {
        check_id(id)?;
        let claim = self.cluster.key(&format!("{TAKEOVER}/{id}"));
        let txn = Txn::new()
            .when([Compare::value(
                claim.as_str(),
                CompareOp::Equal,
                self.id.as_str(),
            )])
            .and_then([TxnOp::delete(claim.as_str(), None)]);
        self.txn(txn).map(|_| ())
    }

    fn txn(&self, txn: Txn) -> Result<bool, ClusterError> {
        let client = self.cluster.client();
        let resp = self.cluster.block_on(retry(|| {
            let mut c = client.clone();
            let txn = txn.clone();
            async move { c.txn(txn).await }
        }))?;
        Ok(resp.succeeded())
    }

    /// Who leads now, asking etcd (one round trip).
    pub fn leader(&self) -> Result<Option<String>, ClusterError> {
        current_leader(&self.cluster)
    }

    /// Stop campaigning and give leadership up if held (the key goes now, not at the TTL).
    pub fn resign(self) -> Result<(), ClusterError> {
        self.task.abort();
        let token = self.token.load(Ordering::Acquire);
        if self.elected.swap(false, Ordering::AcqRel) && token > 0 {
            let mut client = self.cluster.client();
            let key = self.key.clone();
            // Only the key this member created: never a successor's.
            let txn = Txn::new()
                .when([Compare::create_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    token,
                )])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            self.cluster
                .block_on(async move { client.txn(txn).await })?;
        }
        Ok(())
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a leader claims a dead member's outbox: `<prefix>/takeover/<id>`, on its lease.
pub const TAKEOVER: &str = "takeover";

/// As member `id`, joined (so no new claim on its outbox can be made): wait until no leader
/// holds a claim on its outbox ([`Leadership::claim`]), polling, at most `timeout`. True when
/// there is none (or it went); false after `timeout` with one still there.
pub fn wait_unclaimed(
    cluster: &Cluster,
    id: &str,
    timeout: Duration,
) -> Result<bool, ClusterError> {
    check_id(id)?;
    let claim = cluster.key(&format!("{TAKEOVER}/{id}"));
    let deadline = std::time::Instant::now() + timeout;
    let mut told = false;
    loop {
        let client = cluster.client();
        let resp = cluster.block_on(retry(|| {
            let mut c = client.clone();
            let k = claim.clone();
            async move { c.get(k, None).await }
        }))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(true);
        };
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        if !told {
            tracing::info!(%id, leader = %String::from_utf8_lossy(kv.value()), "the leader is sending this member's outbox: waiting until it hands it back");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Who holds `<prefix>/leader` now (one round trip).
pub fn current_leader(cluster: &Cluster) -> Result<Option<String>, ClusterError> {
    let key = cluster.key("leader");
    let client = cluster.client();
    let resp = cluster.block_on(retry(|| {
        let mut c = client.clone();
        let k = key.clone();
        async move { c.get(k, None).await }
    }))?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => match std::str::from_utf8(kv.value()) {
            Ok(id) => Ok(Some(id.to_string())),
            Err(_) => Err(ClusterError::Corrupt {
                key,
                message: "the leader id is not UTF-8".into(),
            }),
        },
    }
}

/// Try to take the key; when someone holds it, wait for its delete and try again.
async fn campaign(
    client: etcd_client::Client,
    key: String,
    id: String,
    lease: i64,
    elected: Arc<AtomicBool>,
    token: Arc<AtomicI64>,
) {
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                id.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = match retry(|| {
            let mut c = client.clone();
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "leader campaign failed, trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let rev = resp.header().map_or(0, |h| h.revision());
        // Whose key it is, and its create revision.
        let holder = if resp.succeeded() {
            Some((id.clone(), rev))
        } else {
            resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                    (
                        String::from_utf8_lossy(kv.value()).into_owned(),
                        kv.create_revision(),
                    )
                }),
                _ => None,
            })
        };
        match &holder {
            Some((who, created)) if *who == id => {
                token.store(*created, Ordering::Release);
                if !elected.swap(true, Ordering::AcqRel) {
                    tracing::info!(id, token = created, "elected leader");
                }
            }
            Some((who, _)) => {
                if elected.swap(false, Ordering::AcqRel) {
                    tracing::warn!(id, leader = %who, "leadership lost");
                }
                tracing::debug!(leader = %who, "following");
            }
            // Gone between the compare and the get: try again at once.
            None => continue,
        }
        // Back when the key is deleted, or when the watch could not tell (it ended): the
        // transaction above then says who holds it; a leader that still does stays one
        // without a blip (its lease, checked by is_leader, covers the meantime).
        wait_for_delete(&client, &key, rev + 1).await;
    }
}

/// Return when `key` is deleted at or after `from` (or the watch cannot tell: the caller then
/// looks again, which is always safe).
async fn wait_for_delete(client: &etcd_client::Client, key: &str, from: i64) {
    let mut c = client.clone();
    let options = WatchOptions::new().with_start_revision(from);
    let Ok(mut stream) = c.watch(key, Some(options)).await else {
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    };
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.canceled() || resp.compact_revision() > 0 {
                    return;
                }
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return;
                }
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    }
}
