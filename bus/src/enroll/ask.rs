//! The enroll door's one request and its reply, and the client side a host uses to ask.
//!
//! A host's key arrives at the door unknown (ZAP lets it in there only, as `key:<hex>`), so
//! the request carries nothing but the name the host wants: the key is the one its CURVE
//! handshake proved, never something it writes.

use super::State;
use crate::secure::Security;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// The largest request the door reads: a name is at most [`crate::keys::MAX_NAME`] bytes.
pub const MAX_REQUEST: i64 = 1024;

/// What a host asks at the enroll door.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    /// The name it wants to be enrolled under.
    pub name: String,
}

/// The door's answer: where the name stands, or why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AskReply {
    /// The name and where it stands.
    Known {
        /// Pending, accepted or rejected.
        state: State,
        /// The name.
        name: String,
        /// The fingerprint of the key the handshake proved.
        fingerprint: String,
        /// Its groups (empty until accepted).
        groups: Vec<String>,
    },
    /// Refused (a name bound to another key, a bad name, too many pending).
    Error {
        /// Why.
        error: String,
    },
}

/// Asking failed.
#[derive(Debug, Error)]
pub enum AskError {
    /// The socket could not be made.
    #[error(transparent)]
    Socket(#[from] crate::sockets::SocketError),
    /// ZeroMQ failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// No answer in time (no manager, or the handshake was refused).
    #[error("no answer from the enroll door {0} in time")]
    Timeout(String),
    /// The answer is not a reply.
    #[error("the enroll door {endpoint} answered nonsense: {why}")]
    Garbled {
        /// The door.
        endpoint: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Ask the manager's enroll door at `endpoint` to enroll this node's key as `name`; waits up
/// to `timeout` for the answer.
pub fn ask(
    endpoint: &str,
    sec: &Security,
    name: &str,
    timeout: Duration,
) -> Result<AskReply, AskError> {
    // A fresh REQ socket per question: one that timed out cannot be asked again.
    let s = crate::secure::connect(zmq::REQ, endpoint, sec)?;
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    s.set_linger(0)?;
    s.set_rcvtimeo(ms)?;
    s.set_sndtimeo(ms)?;
    let req = serde_json::to_vec(&AskRequest {
        name: name.to_string(),
    })
    .map_err(|e| AskError::Garbled {
        endpoint: endpoint.to_string(),
        why: e.to_string(),
    })?;
    match s.send(req, 0).and_then(|()| s.recv_bytes(0)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AskError::Garbled {
            endpoint: endpoint.to_string(),
            why: e.to_string(),
        }),
        Err(zmq::Error::EAGAIN) => Err(AskError::Timeout(endpoint.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// How often a host that is not accepted yet asks again.
pub const ASK_EVERY: Duration = Duration::from_secs(10);

/// How long one question waits for the door; no answer means ask again at once.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Ask at once and every [`ASK_EVERY`] until the manager says accepted: true then, false when
/// `stop` was set first. Tells the operator once, clearly, what to run on the control node.
///
/// Hosts (actors, beacons) call this before they connect anything else: libzmq 4.3 gives up
/// on a connection whose handshake ZAP refused (it never reconnects), so a socket connected
/// while its key was still pending would stay dead after the operator accepts it.
pub fn wait_until_accepted(
    endpoint: &str,
    sec: &Security,
    name: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> bool {
    wait_until_accepted_at(&[endpoint], sec, name, stop)
}

/// [`wait_until_accepted`] at the enroll doors of several managers (a cluster's): asked in
/// turn, moving to the next whenever one does not answer, until one says accepted. The
/// managers of a cluster each keep their enrollment store: a key must be accepted on every
/// manager a host may fall over to (or `keys/enrolled/` copied to each).
pub fn wait_until_accepted_at<S: AsRef<str>>(
    endpoints: &[S],
    sec: &Security,
    name: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> bool {
    use std::sync::atomic::Ordering;
    let mut told: Option<String> = None;
    let mut at = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(endpoint) = endpoints
            .get(at % endpoints.len().max(1))
            .map(AsRef::as_ref)
        else {
            return false;
        };
        let (said, wait) = match ask(endpoint, sec, name, ASK_TIMEOUT) {
            Ok(AskReply::Known {
                state: State::Accepted,
                groups,
                ..
            }) => {
                tracing::info!(name = %name, groups = ?groups, "enrolled on the manager");
                if told.is_some() {
                    // Accepted just now: give the publisher, which follows the store on its
                    // own (every 100 ms), time to see it before our SUB's one handshake.
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                return true;
            }
            Ok(AskReply::Known {
                state: State::Pending,
                fingerprint,
                ..
            }) => (
                format!(
                    "waiting to be accepted on the manager: reflex keys accept {name} \
                     (fingerprint {fingerprint})"
                ),
                ASK_EVERY,
            ),
            Ok(AskReply::Known {
                state: State::Rejected,
                fingerprint,
                ..
            }) => (
                format!(
                    "the manager rejected this key (fingerprint {fingerprint}) for {name}; \
                     `reflex keys revoke {name}` there lets it enroll again"
                ),
                ASK_EVERY,
            ),
            Ok(AskReply::Error { error }) => (
                format!("the manager refused to enroll {name}: {error}"),
                ASK_EVERY,
            ),
            // No manager yet: the timeout was the wait; the next door is asked at once.
            Err(e) => {
                at += 1;
                let said = if endpoints.len() > 1 {
                    let all: Vec<&str> = endpoints.iter().map(AsRef::as_ref).collect();
                    format!(
                        "cannot ask a manager to enroll {name} yet: no answer from {}",
                        all.join(", ")
                    )
                } else {
                    format!("cannot ask the manager to enroll {name} yet: {e}")
                };
                (said, Duration::ZERO)
            }
        };
        if told.as_deref() != Some(said.as_str()) {
            tracing::warn!("{said}");
            told = Some(said);
        }
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    false
}
