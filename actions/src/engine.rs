//! The engine: one tokio task per resource, mgmt style.
//!
//! A task waits until every dependency (edge source) had a successful outcome, starts its
//! watch, runs check-apply, then sleeps until poked (drift seen by its watch, or a
//! dependency that changed) and checks again. Nothing is polled: tasks only run when poked.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};

use crate::error::EngineError;
use crate::graph::Graph;
use crate::hub::FileHub;
use crate::resource::{Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// Runs graphs. Cheap to clone; every clone shares one file watcher hub, so any number of
/// graphs and resources cost a single inotify instance.
#[derive(Clone)]
pub struct Engine {
    files: Arc<FileHub>,
}

/// How to run a graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Check only: report what would change, change nothing.
    pub noop: bool,
}

/// The outcome of every resource's first check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// True when `errors` is empty.
    pub ok: bool,
    /// Ids whose first check changed something (or would have, in noop mode), graph order.
    pub changed: Vec<String>,
    /// `"<id>: <message>"` for each resource whose first check failed or was skipped.
    pub errors: Vec<String>,
    /// From `run()` to the last first outcome.
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
}

// Node states, as dependents see them.
const PENDING: u8 = 0;
const OK: u8 = 1;
const FAILED: u8 = 2;

/// What `converged` needs to know.
#[derive(Debug, Clone, Copy)]
struct Status {
    /// Resources that have had their first outcome.
    firsts: usize,
    /// Check-applies in progress.
    busy: usize,
    /// Last change, failure or first outcome.
    last_activity: Instant,
}

/// State shared by all tasks of one run.
struct Shared {
    ids: Vec<String>,
    states: Vec<AtomicU8>,
    pokes: Vec<Poke>,
    dependents: Vec<Vec<usize>>,
    status: watch::Sender<Status>,
    watch_ctx: WatchCtx,
    apply: bool,
}

impl Shared {
    fn poke_dependents(&self, idx: usize) {
        for &d in &self.dependents[idx] {
            self.pokes[d].poke();
        }
    }
}

enum Msg {
    First {
        idx: usize,
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
        })
    }

    /// Start every resource task of `graph` at once. Must be called inside a (multi-thread)
    /// tokio runtime.
    pub fn run(&self, graph: Graph, opts: RunOptions) -> Running {
        let started = Instant::now();
        let ids = graph.ids();
        let n = ids.len();
        let (pokes, poke_rxs): (Vec<Poke>, Vec<mpsc::Receiver<()>>) =
            (0..n).map(|_| Poke::channel()).unzip();
        let (status, _) = watch::channel(Status {
            firsts: 0,
            busy: 0,
            last_activity: started,
        });
        let shared = Arc::new(Shared {
            ids,
            states: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            pokes,
            dependents: graph.dependents,
            status,
            watch_ctx: WatchCtx::new(Arc::clone(&self.files)),
            apply: !opts.noop,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let handles = graph
            .nodes
            .into_iter()
            .zip(graph.deps)
            .zip(poke_rxs)
            .enumerate()
            .map(|(idx, ((res, deps), poke_rx))| {
                let task = NodeTask {
                    idx,
                    res,
                    deps,
                    poke_rx,
                    shared: Arc::clone(&shared),
                    events: events_tx.clone(),
                    stop: stop_rx.clone(),
                    reported: false,
                };
                tokio::spawn(task.run())
            })
            .collect();
        Running {
            shared,
            started,
            handles,
            stop_tx,
            events: events_rx,
            firsts: vec![None; n],
            missing: n,
            backlog: VecDeque::new(),
            report: None,
        }
    }

    /// Directories the shared hub currently watches (one inotify watch each).
    pub fn watched_dirs(&self) -> usize {
        self.files.watched_dirs()
    }
}

/// A handle on one running graph. Dropping it aborts every task (and so every watch).
pub struct Running {
    shared: Arc<Shared>,
    started: Instant,
    handles: Vec<JoinHandle<()>>,
    stop_tx: watch::Sender<bool>,
    events: mpsc::UnboundedReceiver<Msg>,
    firsts: Vec<Option<(Result<Outcome, String>, Instant)>>,
    missing: usize,
    /// Events that arrived while the first report was still being collected.
    backlog: VecDeque<EngineEvent>,
    report: Option<Report>,
}

impl Running {
    /// Resolves once every resource has its first outcome (converged, changed, failed, or
    /// skipped because a dependency failed). A second call returns the same report.
    pub async fn first_report(&mut self) -> Report {
        if let Some(report) = &self.report {
            return report.clone();
        }
        while self.missing > 0 {
            match self.events.recv().await {
                Some(Msg::First { idx, result, at }) => {
                    if self.firsts[idx].is_none() {
                        self.missing -= 1;
                    }
                    self.firsts[idx] = Some((result, at));
                }
                Some(Msg::Event(event)) => self.backlog.push_back(event),
                // Every task is gone; report the silent ones below.
                None => break,
            }
        }
        let report = self.build_report();
        self.report = Some(report.clone());
        report
    }

    fn build_report(&self) -> Report {
        let mut changed = Vec::new();
        let mut errors = Vec::new();
        let mut last = None;
        for (id, first) in self.shared.ids.iter().zip(&self.firsts) {
            match first {
                Some((result, at)) => {
                    last = last.max(Some(*at));
                    match result {
                        Ok(Outcome::Converged) => {}
                        Ok(Outcome::Changed | Outcome::WouldChange) => changed.push(id.clone()),
                        Err(e) => errors.push(format!("{id}: {e}")),
                    }
                }
                None => errors.push(format!("{id}: task ended before its first outcome")),
            }
        }
        Report {
            ok: errors.is_empty(),
            changed,
            errors,
            elapsed: last.map_or_else(
                || self.started.elapsed(),
                |at| at.saturating_duration_since(self.started),
            ),
        }
    }

    /// The next event after the first report: drift repaired (`Changed`) or a later check
    /// that failed (`Failed`). Collects the first report first if nobody did. `None` once
    /// every task has ended.
    pub async fn next_event(&mut self) -> Option<EngineEvent> {
        if self.report.is_none() {
            self.first_report().await;
        }
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        loop {
            match self.events.recv().await? {
                Msg::Event(event) => return Some(event),
                // Cannot happen once the report is complete; harmless if it does.
                Msg::First { .. } => continue,
            }
        }
    }

    /// Resolves when every resource has had its first outcome, no check-apply is in
    /// progress, and nothing changed or failed for `idle`.
    pub async fn converged(&self, idle: Duration) {
        let mut rx = self.shared.status.subscribe();
        loop {
            let status = *rx.borrow_and_update();
            let settled = status.firsts >= self.shared.ids.len() && status.busy == 0;
            let quiet = status.last_activity.elapsed();
            if settled && quiet >= idle {
                return;
            }
            if settled {
                tokio::select! {
                    _ = tokio::time::sleep(idle - quiet) => {}
                    _ = rx.changed() => {}
                }
            } else if rx.changed().await.is_err() {
                // Unreachable while `self` holds the sender; never spin.
                return;
            }
        }
    }

    /// Stop every resource task (killing in-flight commands) and drop every watch; returns
    /// when all tasks have ended.
    pub async fn stop(mut self) {
        self.stop_tx.send_replace(true);
        for handle in std::mem::take(&mut self.handles) {
            // A task that panicked has ended too; nothing more to do for it.
            let _ = handle.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

enum Deps {
    Ready,
    Pending,
    Failed(usize),
}

/// One resource's task.
struct NodeTask {
    idx: usize,
    res: Arc<dyn Resource>,
    deps: Vec<usize>,
    poke_rx: mpsc::Receiver<()>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Msg>,
    stop: watch::Receiver<bool>,
    /// Whether the first outcome was reported.
    reported: bool,
}

impl NodeTask {
    async fn run(mut self) {
        // Dependencies settle first; they poke us whenever their state moves.
        loop {
            match self.deps() {
                Deps::Ready => break,
                Deps::Failed(dep) if !self.reported => {
                    let msg = format!("skipped: dependency {} failed", self.shared.ids[dep]);
                    self.record(Err(msg), false);
                }
                Deps::Failed(_) | Deps::Pending => {}
            }
            if !self.wait_poke().await {
                return;
            }
        }
        // Pokes so far were dependencies settling, not drift: the first check covers them.
        while self.poke_rx.try_recv().is_ok() {}

        // Held for the life of the task; dropping it stops the watch.
        let mut _guard: Option<WatchGuard> = None;
        let mut watching = false;
        loop {
            self.shared.status.send_modify(|s| s.busy += 1);
            let result = if watching {
                Ok(())
            } else {
                let poke = self.shared.pokes[self.idx].clone();
                // A panicking watch must fail this resource, not silently end its task
                // (which would leave the first report waiting forever).
                let watched = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.res.watch(&self.shared.watch_ctx, poke)
                }));
                match watched {
                    Ok(Ok(guard)) => {
                        _guard = guard;
                        watching = true;
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(payload) => Err(format!("watch panicked: {}", panic_message(&*payload))),
                }
            };
            let result = match result {
                Ok(()) => match self.check().await {
                    Some(result) => result,
                    None => {
                        self.shared.status.send_modify(|s| s.busy -= 1);
                        return;
                    }
                },
                Err(e) => Err(e),
            };
            self.record(result, true);
            if !self.wait_poke().await {
                return;
            }
        }
    }

    fn deps(&self) -> Deps {
        let mut pending = false;
        for &dep in &self.deps {
            match self.shared.states[dep].load(Ordering::SeqCst) {
                FAILED => return Deps::Failed(dep),
                PENDING => pending = true,
                _ => {}
            }
        }
        if pending {
            Deps::Pending
        } else {
            Deps::Ready
        }
    }

    /// Wait for a poke; false when the graph is stopping.
    async fn wait_poke(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|stop| *stop) => false,
            poked = self.poke_rx.recv() => poked.is_some(),
        }
    }

    /// One check-apply in its own task, so a panic becomes this resource's error and a stop
    /// can abort it (killing an exec's children). `None` when stopped.
    async fn check(&mut self) -> Option<Result<Outcome, String>> {
        let res = Arc::clone(&self.res);
        let apply = self.shared.apply;
        let mut inner = AbortOnDrop(tokio::spawn(async move { res.check_apply(apply).await }));
        let joined = tokio::select! {
            biased;
            _ = self.stop.wait_for(|stop| *stop) => None,
            joined = &mut inner.0 => Some(joined),
        };
        match joined {
            Some(Ok(result)) => Some(result.map_err(|e| e.to_string())),
            Some(Err(e)) => Some(Err(join_failure(e))),
            None => {
                inner.0.abort();
                // Wait until it is really gone (its child processes killed).
                let _ = (&mut inner.0).await;
                None
            }
        }
    }

    /// Publish one outcome: counters for `converged`, state and pokes for dependents, and
    /// the first report or an event.
    fn record(&mut self, result: Result<Outcome, String>, checked: bool) {
        let id = &self.shared.ids[self.idx];
        let now = Instant::now();
        let first = !self.reported;
        self.reported = true;
        let active = first || !matches!(result, Ok(Outcome::Converged));
        self.shared.status.send_modify(|s| {
            if checked {
                s.busy -= 1;
            }
            if first {
                s.firsts += 1;
            }
            if active {
                s.last_activity = now;
            }
        });
        match &result {
            Ok(Outcome::Converged) => tracing::debug!(%id, "converged"),
            Ok(Outcome::Changed) => tracing::info!(%id, "changed"),
            Ok(Outcome::WouldChange) => tracing::info!(%id, "would change (noop)"),
            Err(error) => tracing::warn!(%id, %error, "failed"),
        }
        let state = if result.is_ok() { OK } else { FAILED };
        let old = self.shared.states[self.idx].swap(state, Ordering::SeqCst);
        // mgmt: a change downstream-pokes dependents so they re-check against it; a state
        // move lets waiting dependents start (or give up).
        if old != state || result == Ok(Outcome::Changed) {
            self.shared.poke_dependents(self.idx);
        }
        let msg = if first {
            Some(Msg::First {
                idx: self.idx,
                result,
                at: now,
            })
        } else {
            match result {
                Ok(Outcome::Converged) => None,
                Ok(_) => Some(Msg::Event(EngineEvent::Changed { id: id.clone() })),
                Err(error) => Some(Msg::Event(EngineEvent::Failed {
                    id: id.clone(),
                    error,
                })),
            }
        };
        if let Some(msg) = msg {
            // The receiver is gone only when the Running was dropped; nobody to tell.
            let _ = self.events.send(msg);
        }
    }
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn join_failure(e: JoinError) -> String {
    if !e.is_panic() {
        return "check was cancelled".to_string();
    }
    format!("check panicked: {}", panic_message(&*e.into_panic()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ResourceError;
    use async_trait::async_trait;

    struct Panicker;

    #[async_trait]
    impl Resource for Panicker {
        fn id(&self) -> &str {
            "test:panic"
        }
        fn watch(&self, _: &WatchCtx, _: Poke) -> Result<Option<WatchGuard>, ResourceError> {
            Ok(None)
        }
        async fn check_apply(&self, _apply: bool) -> Result<Outcome, ResourceError> {
            panic!("boom");
        }
        fn compare(&self, other: &dyn Resource) -> bool {
            other.as_any().is::<Panicker>()
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_that_resources_error() {
        let noop = Graph::from_value(&serde_json::json!([{"kind": "noop", "name": "after"}]))
            .expect("graph")
            .nodes;
        let nodes: Vec<Arc<dyn Resource>> = vec![Arc::new(Panicker), Arc::clone(&noop[0])];
        let graph =
            Graph::assemble(nodes, &[("test:panic".into(), "noop:after".into())]).expect("graph");
        let engine = Engine::new().expect("engine");
        let mut running = engine.run(graph, RunOptions::default());
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
