//! The connection to etcd: a gRPC client over every endpoint of the URL, and the small tokio
//! runtime it runs on.
//!
//! The manager and the publisher are synchronous (ZeroMQ sockets on their own threads), so the
//! cluster owns one runtime with one worker thread: the lease keep-alives and the watches run
//! there in the background, and the blocking calls ([`Cluster::block_on`]) wait on it.

use crate::{endpoints, ClusterError};
use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long one call to etcd may take before it fails (and is retried where that is safe).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to keep retrying a call that failed on a member that went away.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// A connection to an etcd cluster, with every key of this reflex cluster under `prefix`.
/// Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Cluster {
    /// Connect to `url` (`etcd://HOST:PORT[,HOST:PORT...]`); every key lives under `prefix`
    /// (no trailing slash, e.g. `/reflex`). Fails when no endpoint answers in time.
    pub fn connect(url: &str, prefix: &str) -> Result<Cluster, ClusterError> {
        let endpoints = endpoints::parse(url)?;
        if prefix.is_empty() || prefix.ends_with('/') || !prefix.starts_with('/') {
            return Err(ClusterError::BadPrefix(prefix.to_string()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            // Notice a member that stopped answering (its TCP connection may stay open).
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // Refuse to be served by a member cut off from the quorum.
            .with_require_leader(true);
        let client = rt.block_on(async {
            let mut client = Client::connect(&endpoints, Some(options)).await?;
            // connect() is lazy about members; one call proves one answers.
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        })?;
        Ok(Cluster {
            rt: Arc::new(rt),
            client,
            prefix: prefix.to_string(),
            endpoints,
        })
    }

    /// The key prefix of this reflex cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix/rest`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// The etcd endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A handle on the gRPC client (cheap: it shares the connections).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Run `f` on the cluster's runtime and wait for it. Not from inside a tokio runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Start `f` in the background on the cluster's runtime.
    pub(crate) fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(f)
    }
}

/// True for an error that another try may not meet: the member went away, a timeout, no
/// leader for a moment. Not for a refusal (bad request, permission, key too large).
pub fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic_code::Unavailable
                    | tonic_code::DeadlineExceeded
                    | tonic_code::Unknown
                    | tonic_code::Aborted
                    | tonic_code::Cancelled
            ) || s.message().contains("no leader")
        }
        _ => false,
    }
}

/// gRPC status codes (tonic is etcd-client's transport, already in the build).
mod tonic_code {
    pub use tonic::Code::*;
}

/// Call `op` until it succeeds, fails for good, or [`RETRY_FOR`] has passed. Only for calls
/// that are safe to repeat (reads, puts of the same value, a txn whose compares decide).
pub async fn retry<T, F, Fut>(mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        match op().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, "etcd call failed, trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// etcd's write rate as a bench sees it: `writers` concurrent clients each committing
/// transactions of one put (under `<prefix>/probe/<writer>`) back to back, `n` in all:
/// transactions per second. For `reflex bench cluster`'s model (the bound etcd puts on
/// clustered managers); it writes, so never against a cluster in use.
pub fn txn_rate(cluster: &Cluster, writers: usize, n: usize) -> Result<f64, ClusterError> {
    use etcd_client::{Txn, TxnOp};
    let writers = writers.max(1);
    let per = n.div_ceil(writers);
    let start = std::time::Instant::now();
    let client = cluster.client();
    let keys: Vec<String> = (0..writers)
        .map(|w| cluster.key(&format!("probe/{w}")))
        .collect();
    cluster.block_on(async move {
        let mut tasks = Vec::new();
        for key in keys {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    let txn = Txn::new().and_then([TxnOp::put(key.as_str(), i.to_string(), None)]);
                    c.txn(txn).await?;
                }
                Ok::<_, etcd_client::Error>(())
            }));
        }
        for t in tasks {
            match t.await {
                Ok(r) => r?,
                Err(e) => return Err(ClusterError::Runtime(std::io::Error::other(e))),
            }
        }
        Ok(())
    })?;
    Ok((per * writers) as f64 / start.elapsed().as_secs_f64())
}
