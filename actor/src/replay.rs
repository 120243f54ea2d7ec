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

/// What one catch-up fetched.
#[derive(Default)]
pub(crate) struct Fetched {
    /// The sealed frames, oldest first, not verified yet.
    pub(crate) frames: Vec<Vec<u8>>,
    /// The publisher's last seq when it answered in full: every action up to it for our topics
    /// is in `frames` or superseded. `None` when the replay failed or stopped short.
    pub(crate) covered: Option<u64>,
}

/// Most answers one catch-up asks for (each up to the publisher's page size).
const MAX_PAGES: usize = 100;

impl Replay {
    /// The actions in force for our topics newer than `since`, asked page by page. A publisher
    /// that does not answer in time only costs the replay: live actions still flow.
    fn fetch(&self, since: u64) -> Fetched {
        let mut out = Fetched::default();
        let mut from = since;
        for _ in 0..MAX_PAGES {
            match self.page(from) {
                Ok(page) => {
                    out.frames.extend(page.frames);
                    if !page.more {
                        out.covered = Some(page.last_seq);
                        break;
                    }
                    // The next page starts after the last one received.
                    match page.through {
                        Some(s) if s > from => from = s,
                        _ => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.endpoint, "replay failed: {e}; live actions only");
                    break;
                }
            }
        }
        tracing::info!(
            since,
            replayed = out.frames.len(),
            complete = out.covered.is_some(),
            "replay from the publisher's log"
        );
        out
    }

    /// One answer of the replay socket from `since`.
    fn page(&self, since: u64) -> Result<Page, String> {
        let req = json!({"since": since, "topics": self.topics, "latest_only": true});
        let s = bus::secure::connect(zmq::REQ, &self.endpoint, &self.security)
            .map_err(|e| e.to_string())?;
        s.set_rcvtimeo(ANSWER_MS).map_err(|e| e.to_string())?;
        s.set_linger(0).map_err(|e| e.to_string())?;
        s.send(req.to_string().as_bytes(), 0)
            .map_err(|e| e.to_string())?;
        let mut parts = s.recv_multipart(0).map_err(|e| e.to_string())?.into_iter();
        let header: serde_json::Value = parts
            .next()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or("the answer has no JSON header")?;
        if let Some(e) = header.get("error") {
            return Err(format!("the publisher refused the request: {e}"));
        }
        let last_seq = header
            .get("last_seq")
            .and_then(|v| v.as_u64())
            .ok_or("the answer's header has no last_seq")?;
        let more = header
            .get("more")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let frames: Vec<Vec<u8>> = parts.filter(|f| f.len() <= self.max_frame).collect();
        // Only for where to ask next; the frames are verified by the serve loop.
        let through = frames
            .last()
            .and_then(|f| bus::envelope::peek(f, self.max_frame).ok())
            .map(|h| h.seq);
        Ok(Page {
            frames,
            last_seq,
            more,
            through,
        })
    }
}

/// One answer.
struct Page {
    frames: Vec<Vec<u8>>,
    last_seq: u64,
    more: bool,
    through: Option<u64>,
}

/// Start catching up from `since`: once subscriptions have settled, the replayed actions (none
/// without a replay endpoint, or when the publisher does not answer).
pub(crate) fn catch_up(replay: Option<Replay>, since: u64) -> JoinHandle<Fetched> {
    tokio::spawn(async move {
        tokio::time::sleep(SETTLE).await;
        match replay {
            // The REQ socket is made, used and dropped on that one blocking thread.
            Some(r) => tokio::task::spawn_blocking(move || r.fetch(since))
                .await
                .unwrap_or_default(),
            None => Fetched::default(),
        }
    })
}
