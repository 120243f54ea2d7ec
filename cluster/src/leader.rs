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

use crate::{connection::retry, Cluster, ClusterError, Membership};
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
