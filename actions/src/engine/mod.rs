//! The engine: one tokio task per resource, mgmt style.
//!
//! A task waits until every dependency (edge source) had a successful outcome, starts its
//! watch, runs check-apply, then sleeps until poked (drift seen by its watch, a dependency
//! that changed, or its `poll` timer) and checks again. Metaparams (retry/delay, timeout,
//! poll, limit/burst, sema, noop) are applied here, once, for every kind.
//!
//! A running graph can be swapped for a new one: resources whose vertex is equal keep their
//! task, watch and state; the rest stop or start (see [`Running::swap`]).
//!
//! - this file: the API types and what all tasks of one run share;
//! - `running`: [`Running`], installing and linking a graph's nodes;
//! - `swap`: replacing the running graph, phase by phase;
//! - `node`: one resource's node and the task that converges it;
//! - `convergence`: waiting for a graph to settle;
//! - `refresh`: pending refreshes kept on disk;
//! - `limit`: the `meta.limit` token bucket;
//! - `serial`: the hasher for node serials;
//! - `signal`: the small queue and stop flag graphs and nodes hold.

mod convergence;
mod limit;
mod node;
mod refresh;
mod running;
mod serial;
mod signal;
mod swap;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use graph::{Graph, Spec};
use tokio::sync::Semaphore;

use crate::error::EngineError;
use crate::hub::FileHub;
use crate::resource::{Outcome, Resource, WatchCtx};

pub use convergence::Convergence;
use convergence::Status;
pub use running::Running;

/// Runs graphs. Cheap to clone; every clone shares one file watcher hub, so any number of
/// graphs and resources cost a single inotify instance.
#[derive(Clone)]
pub struct Engine {
    files: Arc<FileHub>,
    observe: Option<Observe>,
}

/// Told how long each check-apply took (for the actor's latency histogram).
pub type Observe = Arc<dyn Fn(Duration) + Send + Sync>;

/// How to run a graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Check only: report what would change, change nothing (`meta.noop` for every
    /// resource).
    pub noop: bool,
    /// Where this graph keeps state that must survive a restart (refreshes sent but not yet
    /// consumed). `None`: nothing is kept.
    pub state_dir: Option<PathBuf>,
}

/// The outcome of every resource's first check (after a swap: of every new resource's first
/// check, kept resources counting with their current state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// True when `errors` is empty.
    pub ok: bool,
    /// Ids whose first check changed something (or would have, in noop mode), graph order.
    pub changed: Vec<String>,
    /// `"<id>: <message>"` for each resource whose first check failed or was skipped.
    pub errors: Vec<String>,
    /// From `run()` (or `swap()`) to the last first outcome.
    pub elapsed: Duration,
}

/// What happened after a resource's first outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// Drift was repaired (in noop mode: drift was seen and would be repaired).
    Changed {
        /// The resource id.
        id: String,
    },
    /// A later check failed.
    Failed {
        /// The resource id.
        id: String,
        /// Why.
        error: String,
    },
    /// A resource (`msg`) has something to say, after a change (the first one included).
    Message {
        /// The resource id.
        id: String,
        /// What it says.
        text: String,
    },
}

/// What a swap did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapStats {
    /// Resources that compared equal and kept running untouched.
    pub kept: usize,
    /// Resources started (new, or changed and so replaced).
    pub added: usize,
    /// Resources stopped (gone, or changed and so replaced).
    pub removed: usize,
}

/// Makes the resource for a spec: [`crate::kinds::build`], or a stand-in in tests.
pub(crate) type Build = Box<dyn Fn(&Spec) -> Arc<dyn Resource> + Send + Sync>;

/// A run's semaphores by `(name, count)`.
type Semas = HashMap<(String, usize), Arc<Semaphore>>;

/// State shared by all tasks of one run.
struct Shared {
    status: Arc<signal::Watch<Status>>,
    watch_ctx: WatchCtx,
    noop: bool,
    events: signal::Queue<Msg>,
    /// Boxed when first used: few graphs use semaphores, and every graph has a `Shared`.
    semas: Mutex<Option<Box<Semas>>>,
    state_dir: Option<PathBuf>,
    watch_starts: AtomicU64,
    checks: AtomicU64,
    next_serial: AtomicU64,
    observe: Option<Observe>,
}

/// What the tasks tell their `Running`.
enum Msg {
    First {
        serial: u64,
        result: Result<Outcome, String>,
        at: Instant,
    },
    Event(EngineEvent),
}

impl Engine {
    /// Create an engine and its shared inotify watcher.
    pub fn new() -> Result<Engine, EngineError> {
        Ok(Engine {
            files: Arc::new(FileHub::new()?),
            observe: None,
        })
    }

    /// Tell `observe` how long each check-apply of every graph run from now on takes.
    pub fn observe_checks(&mut self, observe: Observe) {
        self.observe = Some(observe);
    }

    /// Start every resource task of `graph` at once. Must be called inside a (multi-thread)
    /// tokio runtime.
    pub fn run(&self, graph: Graph, opts: RunOptions) -> Running {
        self.run_with(graph, opts, Box::new(crate::kinds::build))
    }

    /// [`Engine::run`], making each resource with `build`.
    pub(crate) fn run_with(&self, graph: Graph, opts: RunOptions, build: Build) -> Running {
        let started = Instant::now();
        let status = Arc::new(signal::Watch::new(Status {
            pending: 0,
            busy: 0,
            last_activity: started,
        }));
        let shared = Arc::new(Shared {
            status,
            watch_ctx: WatchCtx::new(Arc::clone(&self.files)),
            noop: opts.noop,
            events: signal::Queue::new(),
            semas: Mutex::default(),
            state_dir: opts.state_dir,
            watch_starts: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            next_serial: AtomicU64::new(0),
            observe: self.observe.clone(),
        });
        Running::start(shared, build, graph, started)
    }

    /// Directories the shared hub currently watches (one inotify watch each).
    pub fn watched_dirs(&self) -> usize {
        self.files.watched_dirs()
    }
}

impl Drop for Shared {
    /// The run is over: whoever waits on its convergence stops waiting.
    fn drop(&mut self) {
        self.status.close();
    }
}

impl Shared {
    /// The run's semaphore `name:count`, made on first use.
    fn sema(&self, key: &(String, usize)) -> Arc<Semaphore> {
        Arc::clone(
            lock(&self.semas)
                .get_or_insert_default()
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(key.1))),
        )
    }
}

/// A poisoned lock only means another task panicked mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ResourceError;
    use crate::resource::{ApplyCtx, Poke, WatchGuard};
    use async_trait::async_trait;
    use graph::kinds::NoopSpec;
    use graph::{GraphBuilder, Vertex};

    struct Panicker;

    #[async_trait]
    impl Resource for Panicker {
        fn watch(&self, _: &WatchCtx, _: Poke) -> Result<Option<WatchGuard>, ResourceError> {
            Ok(None)
        }
        async fn check_apply(&self, _ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
            panic!("boom");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_that_resources_error() {
        let noop = |id: &str| Vertex::new(Spec::Noop(NoopSpec { id: id.into() }));
        let mut builder = GraphBuilder::new();
        builder
            .vertex(noop("test:panic"))
            .and_then(|b| b.vertex(noop("noop:after")))
            .and_then(|b| b.edge("test:panic", "noop:after", false))
            .expect("edges");
        let graph = builder.build().expect("graph");
        let engine = Engine::new().expect("engine");
        // The stand-in for `test:panic`; everything else is what it says.
        let build: Build = Box::new(|spec| match spec.id() {
            "test:panic" => Arc::new(Panicker),
            _ => crate::kinds::build(spec),
        });
        let mut running = engine.run_with(graph, RunOptions::default(), build);
        let report = running.first_report().await;
        assert!(!report.ok);
        assert_eq!(
            report.errors,
            vec![
                "test:panic: check panicked: boom".to_string(),
                "noop:after: skipped: dependency test:panic failed".to_string(),
            ]
        );
        running.stop().await;
    }
}
