//! The ZAP handler (ZeroMQ RFC 27) that decides who may connect, and fails closed.
//!
//! libzmq asks the socket bound at `inproc://zeromq.zap.01` of a context about every CURVE
//! handshake on that context's server sockets (and about NULL ones on sockets that set a ZAP
//! domain). With nothing bound there it lets **every** CURVE client in. So a process that serves
//! CURVE starts the handler with [`install`] before any socket binds, and keeps it for the
//! process's life: [`install`] hands out a `&'static` handler that cannot be dropped.
//!
//! The handler answers from a [`KeySet`] the manager keeps current (accepted keys → name and
//! role): an accepted key gets in, and every message it sends carries `User-Id` = its name and
//! a `Role` property; an unknown key is refused everywhere but at the enroll door (where it may
//! only ask to be enrolled) and reported through a callback (so it can be
//! listed as pending); NULL and PLAIN are refused unless the handler is in [`Mode::Insecure`];
//! a malformed request is answered 500 and counted. Nothing a peer sends can make it panic or
//! stop answering.
//!
//! Revoking a key (removing it from the set) refuses its next handshake; connections already
//! up are for receivers to cut, by checking each message's `User-Id` against the set (see
//! [`KeySet::generation`]).

mod keyset;
mod request;

pub use keyset::{KeySet, Peer};
pub use request::{
    decide, parse_pending_user_id, pending_user_id, Decision, Malformed, Mechanism, Outcome,
    Request, Status, Unknown, PENDING_PREFIX, PENDING_ROLE,
};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

/// Where libzmq looks for the handler.
pub const ENDPOINT: &str = "inproc://zeromq.zap.01";

/// How often the handler thread looks at its stop flag while idle.
const IDLE_POLL_MS: i64 = 100;

/// Whether peers without CURVE may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only accepted CURVE keys get in.
    Secure,
    /// NULL and PLAIN peers get in too (the explicit `--insecure`); CURVE keys are still
    /// checked.
    Insecure,
}

/// The handler could not start.
#[derive(Debug, Error)]
pub enum ZapError {
    /// Its socket could not be made or bound (another handler holds the endpoint).
    #[error("ZAP handler: {0}")]
    Socket(#[from] crate::sockets::SocketError),
    /// The process-wide handler is already installed.
    #[error("the ZAP handler of this process is already installed")]
    AlreadyInstalled,
    /// Its thread could not be started.
    #[error("ZAP handler thread: {0}")]
    Thread(std::io::Error),
}

/// What the handler has answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ZapCounts {
    /// Handshakes let in.
    pub accepted: u64,
    /// Unknown CURVE keys refused.
    pub unknown: u64,
    /// Unknown CURVE keys let in at the enroll door (to ask for enrollment only).
    pub enrolling: u64,
    /// NULL, PLAIN or other mechanisms refused.
    pub refused: u64,
    /// Malformed requests answered 500.
    pub malformed: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    unknown: AtomicU64,
    enrolling: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
}

impl Counters {
    fn count(&self, outcome: &Outcome) {
        let c = match outcome {
            Outcome::Accepted(_) => &self.accepted,
            Outcome::Unknown(_) => &self.unknown,
            Outcome::Enrolling(_) => &self.enrolling,
            Outcome::Refused => &self.refused,
            Outcome::Malformed(_) => &self.malformed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running ZAP handler. Dropping it stops the handler: only do that with the context it
/// serves (see [`Zap::start`]); the process-wide one from [`install`] is never dropped.
pub struct Zap {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Zap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zap")
            .field("counts", &self.counts())
            .finish()
    }
}

/// Install the process's handler on [`crate::sockets::context`], answering from `keys`; call it
/// before binding any socket. `on_unknown` runs on the handler's thread for each unknown key
/// (keep it short: send it to a channel). A second call fails with
/// [`ZapError::AlreadyInstalled`].
pub fn install(
    keys: KeySet,
    mode: Mode,
    on_unknown: impl Fn(&Unknown) + Send + 'static,
) -> Result<&'static Zap, ZapError> {
    static ZAP: OnceLock<Zap> = OnceLock::new();
    if ZAP.get().is_some() {
        return Err(ZapError::AlreadyInstalled);
    }
    // Binding the endpoint is what makes a second handler fail, even in a race.
    let zap = Zap::start(crate::sockets::context(), keys, mode, on_unknown)?;
    ZAP.set(zap).map_err(|_| ZapError::AlreadyInstalled)?;
    ZAP.get().ok_or(ZapError::AlreadyInstalled)
}

impl Zap {
    /// Start a handler on `ctx`, bound before this returns. For a context of one's own (tests,
    /// an embedded server); the daemons use [`install`].
    pub fn start(
        ctx: &zmq::Context,
        keys: KeySet,
        mode: Mode,
        on_unknown: impl Fn(&Unknown) + Send + 'static,
    ) -> Result<Zap, ZapError> {
        let err = |e| crate::sockets::SocketError::new(ENDPOINT, e);
        let rep = ctx.socket(zmq::REP).map_err(err)?;
        rep.set_linger(0).map_err(err)?;
        rep.bind(ENDPOINT).map_err(err)?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("zap".into())
            .spawn({
                let (counters, stop) = (counters.clone(), stop.clone());
                move || serve(&rep, &keys, mode, &on_unknown, &counters, &stop)
            })
            .map_err(ZapError::Thread)?;
        Ok(Zap {
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// The counters so far.
    pub fn counts(&self) -> ZapCounts {
        let c = &self.counters;
        ZapCounts {
            accepted: c.accepted.load(Ordering::Relaxed),
            unknown: c.unknown.load(Ordering::Relaxed),
            enrolling: c.enrolling.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Zap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The handler loop: one request in, one reply out, until stopped or the context ends.
fn serve(
    rep: &zmq::Socket,
    keys: &KeySet,
    mode: Mode,
    on_unknown: &dyn Fn(&Unknown),
    counters: &Counters,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut items = [rep.as_poll_item(zmq::POLLIN)];
        if let Err(e) = crate::sockets::poll(&mut items, IDLE_POLL_MS) {
            if e == zmq::Error::ETERM {
                return;
            }
            tracing::warn!("ZAP handler: poll: {e}");
            std::thread::sleep(Duration::from_millis(IDLE_POLL_MS as u64));
            continue;
        }
        let frames = match rep.recv_multipart(zmq::DONTWAIT) {
            Ok(f) => f,
            Err(zmq::Error::EAGAIN) => continue,
            Err(zmq::Error::ETERM) => return,
            Err(e) => {
                tracing::warn!("ZAP handler: receive: {e}");
                continue;
            }
        };
        let mut decision = decide(keys, mode, &frames);
        // A key accepted since the set was last loaded: look at the store once more.
        if matches!(decision.outcome, Outcome::Unknown(_)) && keys.reload() {
            decision = decide(keys, mode, &frames);
        }
        counters.count(&decision.outcome);
        match &decision.outcome {
            Outcome::Unknown(u) => {
                tracing::debug!(key = %u.key.fingerprint(), address = %u.address, "ZAP: unknown key refused");
                // A callback that panics must not take the handler (and so all security) down.
                if catch_unwind(AssertUnwindSafe(|| on_unknown(u))).is_err() {
                    tracing::error!("ZAP handler: the unknown-key callback panicked");
                }
            }
            Outcome::Malformed(m) => tracing::debug!("ZAP: {}", m.as_str()),
            Outcome::Refused => tracing::debug!("ZAP: a peer without CURVE refused"),
            Outcome::Enrolling(u) => {
                tracing::debug!(key = %u.key.fingerprint(), address = %u.address, "ZAP: unknown key at the enroll door")
            }
            Outcome::Accepted(_) => {}
        }
        if let Err(e) = rep.send_multipart(decision.reply, 0) {
            if e == zmq::Error::ETERM {
                return;
            }
            tracing::warn!("ZAP handler: reply: {e}");
        }
    }
}
