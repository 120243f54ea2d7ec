//! Catching up after a (re)connection: a REQ to the publisher's replay endpoint for the actions
//! in force for our topics that the actor has not seen (it was down, or started late).
//!
//! The request runs on a blocking task of its own, never on the SUB thread, so live receipt goes
//! on while it is in flight; the serve loop holds back what arrives live meanwhile (see
//! [`crate::intake`]) so the order in which actions take effect stays by sequence number.

use serde_json::json;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long subscriptions get to land after the handshake before the actor counts on them.
const SETTLE: Duration = Duration::from_millis(50);

/// How long the publisher gets to answer a replay request.
const ANSWER_MS: i32 = 2_000;

/// Where and what to ask the publisher's replay socket.
#[derive(Clone)]
pub(crate) struct Replay {
    pub(crate) endpoint: String,
    pub(crate) topics: Vec<String>,
    pub(crate) max_frame: usize,
    pub(crate) security: bus::secure::Security,
}

impl Replay {
    /// The sealed frames of the actions in force for our topics newer than `since`, oldest
    /// first, not verified yet. A publisher that does not answer in time only costs the replay:
    /// live actions still flow.
    fn fetch(&self, since: u64) -> Vec<Vec<u8>> {
        let req = json!({"since": since, "topics": self.topics, "latest_only": true});
        let ask = || -> Result<Vec<Vec<u8>>, String> {
            let s = bus::secure::connect(zmq::REQ, &self.endpoint, &self.security)
                .map_err(|e| e.to_string())?;
            s.set_rcvtimeo(ANSWER_MS).map_err(|e| e.to_string())?;
            s.set_linger(0).map_err(|e| e.to_string())?;
            s.send(req.to_string().as_bytes(), 0)
                .map_err(|e| e.to_string())?;
            s.recv_multipart(0).map_err(|e| e.to_string())
        };
        match ask() {
            Ok(parts) => {
                let actions: Vec<Vec<u8>> = parts
                    .into_iter()
                    .skip(1)
                    .filter(|f| f.len() <= self.max_frame)
                    .collect();
                tracing::info!(
                    since,
                    replayed = actions.len(),
                    "replay from the publisher's log"
                );
                actions
            }
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint, "replay failed: {e}; live actions only");
                Vec::new()
            }
        }
    }
}

/// Start catching up from `since`: once subscriptions have settled, the replayed actions (none
/// without a replay endpoint, or when the publisher does not answer).
pub(crate) fn catch_up(replay: Option<Replay>, since: u64) -> JoinHandle<Vec<Vec<u8>>> {
    tokio::spawn(async move {
        tokio::time::sleep(SETTLE).await;
        match replay {
            // The REQ socket is made, used and dropped on that one blocking thread.
            Some(r) => tokio::task::spawn_blocking(move || r.fetch(since))
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        }
    })
}
