//! The reflex actor: the hands on a host.
//!
//! It subscribes to its publishers (one, or every publisher of a cluster) for `all/`, its host
//! and its groups, runs every action it
//! receives through the resource-graph engine ([`engine`]) and reports back to the manager as
//! events: `actor/result` once an action's graph first converged (or failed), `actor/repaired`
//! each time the engine repairs drift afterwards, `actor/error` when a later check fails, and
//! `actor/msg` for what a `msg` resource says, `actor/up` each time its subscription reaches a
//! publisher, and `actor/converged` /
//! `actor/diverged` each time the actor as a whole (every graph idle and converged for
//! `converged_timeout`) crosses over.
//!
//! An action stays in force: its graph keeps running, watched and repaired, until an action with
//! the same name replaces it — diffed against the running graph, so unchanged resources keep
//! their watches and state — or an empty graph removes it. Graphs in force are kept under the
//! state dir and converge again after a restart, before any new action is taken.
//!
//! **Several publishers.** Each publisher numbers what it publishes in its own sequence, so
//! the actor keeps one intake per publisher (the last seq taken in per topic, gaps, ticks and
//! catch-ups from that publisher's replay door, its own last seq on disk), and one set of the
//! action ids taken in across all of them: an action that two publishers deliver (a dead
//! manager's outbox sent on by the leader's publisher) is applied once.
//!
//! Threads: one owns the SUB sockets (ZeroMQ sockets are not thread-safe), the result sender
//! ([`bus::sender`]) owns the PUSH socket back to the manager and takes events from any task
//! without blocking, and a tokio runtime runs the serve loop, the graphs and the replay
//! requests.
//!
//! Where things are: `sub` (the SUB thread and the subscriptions), `replay` (catching up from
//! the publisher's log), `verify` (the signed envelope and its target), `intake` (order,
//! duplicates, replays, expiry), `serve` (the serve loop), `graph_task` (one named graph and
//! its reports), `store` (the graphs kept on disk), `policy` (what this host accepts at all:
//! a graph it refuses never runs, see [`Policy`]), `trim` (memory given back after a burst).
//!
//! ```no_run
//! use std::sync::{atomic::AtomicBool, Arc};
//! use std::time::Duration;
//!
//! let cfg = actor::Config {
//!     publishers: vec![actor::Publisher {
//!         publish: "tcp://127.0.0.1:4511".into(),
//!         replay: Some("tcp://127.0.0.1:4512".into()),
//!     }],
//!     managers: vec!["tcp://127.0.0.1:4510".into()],
//!     name: "web1".into(),
//!     groups: vec!["web".into()],
//!     max_frame: bus::MAX_FRAME,
//!     state: None,
//!     graphviz: None,
//!     converged_timeout: Duration::from_secs(5),
//!     security: bus::secure::Security::Insecure,
//!     sign_key: None,
//!     policy: actor::Policy::strict(),
//!     http: None,
//! };
//! // Runs until the flag is set (from a signal handler, say).
//! actor::run(cfg, Arc::new(AtomicBool::new(false)))?;
//! # Ok::<(), actor::ActorError>(())
//! ```

#![deny(missing_docs)]

mod graph_task;
mod intake;
mod metrics;
mod policy;
mod rejected;
mod replay;
mod serve;
mod store;
mod sub;
mod trim;
mod verify;

use bus::Event;
pub use policy::{Policy, PolicyError, Refusal, STRICT as STRICT_POLICY, UP as UP_POLICY};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// Why the actor could not start or stopped.
#[derive(Debug, Error)]
pub enum ActorError {
    /// The configuration cannot work (a name or group that no topic would match).
    #[error("config: {0}")]
    Config(String),
    /// A socket could not be set up.
    #[error(transparent)]
    Socket(#[from] bus::sockets::SocketError),
    /// The sender of results could not start.
    #[error(transparent)]
    Sender(#[from] bus::sender::SenderError),
    /// ZeroMQ refused an operation.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The engine could not start.
    #[error("engine: {0}")]
    Engine(#[from] engine::EngineError),
    /// A thread or the tokio runtime could not start.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What an actor needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The publishers to follow: one, or every publisher of a cluster. At least one; no
    /// endpoint twice.
    pub publishers: Vec<Publisher>,
    /// The ingest endpoints of the managers results go to, in the order they are tried: one,
    /// or the managers of a cluster (the sender moves to the next when one stops answering).
    pub managers: Vec<String>,
    /// This actor's host name (its `host/<name>/` topic).
    pub name: String,
    /// The groups it belongs to (their `group/<name>/` topics).
    pub groups: Vec<String>,
    /// The largest action frame it decodes; larger ones are dropped as bad.
    pub max_frame: usize,
    /// The stack's state dir; the actor keeps its graphs (and their pending refreshes) under
    /// `<state>/actor-<name>/` and converges them again after a restart. `None`: nothing is
    /// kept.
    pub state: Option<PathBuf>,
    /// Write each graph as `<dir>/<name>.dot` (graphviz) whenever it converged or changed.
    pub graphviz: Option<PathBuf>,
    /// Idle time after which the actor reports `actor/converged`.
    pub converged_timeout: Duration,
    /// CURVE (this host's key pair, the pinned manager key) or the explicit insecure mode, for
    /// every socket.
    pub security: bus::secure::Security,
    /// The pinned public half of the control node's signing key: every action must be sealed
    /// with it. `None` only in the explicit insecure mode, where actions are not verified.
    pub sign_key: Option<bus::envelope::ManagerKey>,
    /// What this host accepts at all: a graph it refuses is reported as `actor/rejected` and
    /// never runs (checked on arrival and on restore from the state dir).
    pub policy: Policy,
    /// Serve Prometheus metrics on this `host:port`; `None`: no HTTP.
    pub http: Option<String>,
}

/// The least time between two batches of results (see [`bus::sender::SenderConfig::gather`]).
const RESULTS_GATHER: Duration = Duration::from_millis(2);

/// One publisher an actor follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// Its PUB endpoint, subscribed to.
    pub publish: String,
    /// Its replay endpoint: on each (re)connection the actor asks it for the actions in force
    /// for its topics that it has not seen (it was down, or started late), and again on a
    /// gap. `None`: live actions only.
    pub replay: Option<String>,
}

/// Run an actor until `stop` is set.
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<(), ActorError> {
    // Validated before anything starts: a group with a slash would silently never match.
    let topics = sub::subscriptions(&cfg)?;
    // Secure, it first asks the managers' enroll doors (next to ingest) until its key is
    // accepted at one, and only then connects (see `bus::enroll::wait_until_accepted_at`).
    let doors: Vec<String> = cfg
        .managers
        .iter()
        .filter_map(|m| bus::endpoints::enroll_for(m))
        .collect();
    if cfg.security.is_secure()
        && !doors.is_empty()
        && !bus::enroll::wait_until_accepted_at(&doors, &cfg.security, &cfg.name, &stop)
    {
        return Ok(());
    }
    let (metrics, registry) = metrics::Metrics::new();
    let _http = match &cfg.http {
        Some(addr) => Some(telemetry::Server::start(addr, registry, None)?),
        None => None,
    };
    let (in_tx, in_rx) = mpsc::channel(1024);

    // Results are kept until the manager acknowledges them (bus::sender); every task hands its
    // events to it directly (it never blocks: an overflow, the manager away for long, is
    // counted and logged by the sender).
    // Results of a burst go in batches (a wake-up of the sender per 2 ms, not per result).
    let push = Arc::new(bus::sender::Sender::start(bus::sender::SenderConfig {
        gather: RESULTS_GATHER,
        ..bus::sender::SenderConfig::with_managers(&cfg.managers, &cfg.security)
    })?);
    let out: graph_task::Out = {
        let (push, metrics) = (Arc::clone(&push), metrics.clone());
        Arc::new(move |ev: Event| {
            metrics.report(&ev);
            push.send(&ev);
        })
    };
    let gauges = std::thread::Builder::new()
        .name("actor-push".into())
        .spawn({
            let (push, metrics, stop) = (Arc::clone(&push), metrics.clone(), stop.clone());
            move || push_gauges(&push, &metrics, &stop)
        })?;
    let receiver = sub::spawn(&cfg, &topics, in_tx, stop.clone())?;

    let publishers: Vec<&str> = cfg.publishers.iter().map(|p| p.publish.as_str()).collect();
    tracing::info!(name = %cfg.name, groups = ?cfg.groups, ?publishers, managers = ?cfg.managers, "actor up");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Checks that block (a file's write and fsync, an http request) wait for one of these
        // rather than each taking a thread of its own: under a burst, 512 threads in fsync only
        // fought over the disk and held memory.
        .max_blocking_threads(64)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        serve::Actor::new(cfg, topics, in_rx, out, stop.clone(), metrics)?
            .serve()
            .await
    });
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let _ = gauges.join();
    // The runtime is gone, and every task with it: give the last results a moment to be
    // acknowledged.
    drop(rt);
    push.wait_acked(Duration::from_secs(2));
    result
}

/// The result sender's gauges (held, overflowed), every 250 ms until the actor stops.
fn push_gauges(push: &bus::sender::Sender, metrics: &metrics::Metrics, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        metrics.sender(push);
        std::thread::sleep(Duration::from_millis(250));
    }
}
