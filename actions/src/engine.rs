//! The engine: one tokio task per resource, mgmt style.
//!
//! A task waits until every dependency (edge source) had a successful outcome, starts its
//! watch, runs check-apply, then sleeps until poked (drift seen by its watch, a dependency
//! that changed, or its `poll` timer) and checks again. Metaparams (retry/delay, timeout,
//! poll, limit/burst, sema, noop) are applied here, once, for every kind.
//!
//! A running graph can be swapped for a new one: resources that compare equal keep their
//! task, watch and state; the rest stop or start (see [`Running::swap`]).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle};

use crate::error::EngineError;
use crate::graph::{Edge, Graph, Recv};
use crate::hub::FileHub;
use crate::meta::Meta;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// Runs graphs. Cheap to clone; every clone shares one file watcher hub, so any number of
/// graphs and resources cost a single inotify instance.
#[derive(Clone)]
pub struct Engine {
    files: Arc<FileHub>,
}

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

// Node states, as dependents see them.
const PENDING: u8 = 0;
const OK: u8 = 1;
const FAILED: u8 = 2;

/// What `converged` needs to know.
#[derive(Debug, Clone, Copy)]
struct Status {
    /// Resources still waiting for their first outcome.
    pending: usize,
    /// Check-applies in progress.
    busy: usize,
    /// Last change, failure, first outcome or swap.
    last_activity: Instant,
}

/// One resource in a running graph. Survives swaps when its resource compares equal.
struct Node {
    /// Unique within the run; tells a replaced node's messages from its successor's.
    serial: u64,
    id: String,
    res: Arc<dyn Resource>,
    meta: Meta,
    /// Received fields as `(field, sender id, key)`: part of what a swap compares.
    recv_spec: Vec<(String, String, String)>,
    poke: Poke,
    /// Taken by the node's task when it is spawned.
    poke_rx: Mutex<Option<mpsc::Receiver<()>>>,
    state: AtomicU8,
    reported: AtomicBool,
    last_error: Mutex<Option<String>>,
    links: Mutex<Links>,
    /// A refresh arrived and was not consumed yet (mirrored on disk under `state_dir`).
    refresh: AtomicBool,
    /// Check-applies this node ran.
    checks: AtomicU64,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct Links {
    deps: Vec<Arc<Node>>,
    /// Weak: a dependency must not keep a removed dependent alive. `bool`: notify edge.
    dependents: Vec<(Weak<Node>, bool)>,
    /// Received fields: `(field, sender, key)`.
    recv: Vec<(String, Arc<Node>, String)>,
}

/// State shared by all tasks of one run.
struct Shared {
    status: watch::Sender<Status>,
    watch_ctx: WatchCtx,
    noop: bool,
    events: mpsc::UnboundedSender<Msg>,
    semas: Mutex<HashMap<(String, usize), Arc<Semaphore>>>,
    refresh_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    watch_starts: AtomicU64,
    checks: AtomicU64,
    next_serial: AtomicU64,
}

/// Serials are unique counters: they hash as themselves (SipHash costs ms on a 10k swap).
type BySerial = std::hash::BuildHasherDefault<SerialHasher>;

#[derive(Default)]
struct SerialHasher(u64);

impl std::hash::Hasher for SerialHasher {
    fn finish(&self) -> u64 {
        // Spread the counter's low bits over the word the table takes its buckets from.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A first outcome and when it came.
type First = (Result<Outcome, String>, Instant);

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
        })
    }

    /// Start every resource task of `graph` at once. Must be called inside a (multi-thread)
    /// tokio runtime.
    pub fn run(&self, graph: Graph, opts: RunOptions) -> Running {
        let started = Instant::now();
        let (status, _) = watch::channel(Status {
            pending: 0,
            busy: 0,
            last_activity: started,
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            status,
            watch_ctx: WatchCtx::new(Arc::clone(&self.files)),
            noop: opts.noop,
            events: events_tx,
            semas: Mutex::default(),
            refresh_dir: opts.state_dir.as_ref().map(|d| d.join("refresh")),
            state_dir: opts.state_dir,
            watch_starts: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            next_serial: AtomicU64::new(0),
        });
        let mut running = Running {
            shared,
            started,
            nodes: Vec::new(),
            edges: Vec::new(),
            handles: HashMap::new(),
            events: events_rx,
            firsts: HashMap::default(),
            missing: 0,
            backlog: VecDeque::new(),
            report: None,
        };
        running.install(graph, started);
        running
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
    /// The current graph, in graph order.
    nodes: Vec<Arc<Node>>,
    /// The current graph's edges (indices into `nodes`).
    edges: Vec<Edge>,
    handles: HashMap<u64, JoinHandle<()>>,
    events: mpsc::UnboundedReceiver<Msg>,
    /// First outcomes for the current report, by node serial, with the node's position.
    firsts: HashMap<u64, (usize, Option<First>), BySerial>,
    missing: usize,
    /// Events that arrived while the first report was still being collected.
    backlog: VecDeque<EngineEvent>,
    report: Option<Report>,
}

impl Running {
    /// Resolves once every resource has its first outcome (converged, changed, failed, or
    /// skipped because a dependency failed). A second call returns the same report.
    pub async fn first_report(&mut self) -> Report {
        self.first_report_progress(|_, _| {}).await
    }

    /// [`Running::first_report`], calling `progress(id, outcome)` as each first outcome
    /// arrives (for a live per-resource view).
    pub async fn first_report_progress(
        &mut self,
        mut progress: impl FnMut(&str, &Result<Outcome, String>),
    ) -> Report {
        if let Some(report) = &self.report {
            return report.clone();
        }
        while self.missing > 0 {
            match self.events.recv().await {
                Some(Msg::First { serial, result, at }) => {
                    if let Some((idx, slot @ None)) = self.firsts.get_mut(&serial) {
                        if let Some(node) = self.nodes.get(*idx) {
                            progress(&node.id, &result);
                        }
                        *slot = Some((result, at));
                        self.missing -= 1;
                    }
                }
                Some(Msg::Event(event)) => self.backlog.push_back(event),
                // Unreachable while `self.shared` holds a sender; report the silent ones.
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
        for node in &self.nodes {
            let id = &node.id;
            match self.firsts.get(&node.serial) {
                Some((_, Some((result, at)))) => {
                    last = last.max(Some(*at));
                    match result {
                        Ok(Outcome::Converged) => {}
                        Ok(Outcome::Changed | Outcome::WouldChange) => changed.push(id.clone()),
                        Err(e) => errors.push(format!("{id}: {e}")),
                    }
                }
                _ => errors.push(format!("{id}: task ended before its first outcome")),
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
    /// the graph was stopped.
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
                // A First of a node replaced meanwhile, or a late one; nothing to report.
                Msg::First { .. } => continue,
            }
        }
    }

    /// Resolves when every resource has had its first outcome, no check-apply is in
    /// progress, and nothing changed or failed for `idle`.
    pub async fn converged(&self, idle: Duration) {
        self.convergence().converged(idle).await
    }

    /// A handle to wait on convergence without borrowing the `Running` (so a task can wait
    /// for events and convergence at once).
    pub fn convergence(&self) -> Convergence {
        Convergence {
            rx: self.shared.status.subscribe(),
            mark: None,
        }
    }

    /// Replace the running graph by `graph`, mgmt's GraphSync: a resource that compares
    /// equal (same kind, name, fields and metaparams) keeps running — its watch is not
    /// restarted and its state is kept; every other new resource starts and every resource
    /// not in `graph` stops (its watch dropped, its pending refresh discarded). Edges are
    /// rewired in place. Returns once removed resources have stopped; collect the new
    /// report with [`Running::first_report`].
    pub async fn swap(&mut self, graph: Graph) -> SwapStats {
        let now = Instant::now();
        // Diff by id against the running nodes, borrowing ids (no copies) to stay fast on
        // big graphs.
        enum Plan {
            Kept(usize),
            New(Arc<dyn Resource>, Meta, Vec<(String, String, String)>),
        }
        let specs = recv_specs(&graph);
        let n_old = self.nodes.len();
        let mut keep = vec![false; n_old];
        // Old nodes replaced by a changed resource of the same id (their refresh stays).
        let mut replaced = vec![false; n_old];
        let mut plan = Vec::with_capacity(graph.nodes.len());
        // The new graph's copies of kept resources: freed off this task (10k frees are ms).
        let mut discard: Vec<Arc<dyn Resource>> = Vec::with_capacity(graph.nodes.len());
        {
            let index: HashMap<&str, usize> = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.id.as_str(), i))
                .collect();
            for ((res, meta), spec) in graph.nodes.into_iter().zip(graph.metas).zip(specs) {
                match index.get(res.id()).copied() {
                    Some(i) => {
                        let o = &self.nodes[i];
                        if o.meta == meta && o.recv_spec == spec && o.res.compare(&*res) {
                            keep[i] = true;
                            plan.push(Plan::Kept(i));
                            discard.push(res);
                        } else {
                            replaced[i] = true;
                            plan.push(Plan::New(res, meta, spec));
                        }
                    }
                    None => plan.push(Plan::New(res, meta, spec)),
                }
            }
        }
        tokio::task::spawn_blocking(move || drop(discard));
        let old = std::mem::take(&mut self.nodes);
        let mut added = Vec::new();
        let mut kept = 0;
        let nodes: Vec<Arc<Node>> = plan
            .into_iter()
            .map(|p| match p {
                Plan::Kept(i) => {
                    kept += 1;
                    Arc::clone(&old[i])
                }
                Plan::New(res, meta, spec) => {
                    let node = self.new_node(res, meta, spec);
                    added.push(Arc::clone(&node));
                    node
                }
            })
            .collect();
        let removed: Vec<(Arc<Node>, bool)> = old
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !keep[*i])
            .map(|(i, n)| (n, replaced[i]))
            .collect();
        for (r, _) in &removed {
            r.stop.send_replace(true);
        }
        let mut unreported = 0;
        for (r, replaced) in &removed {
            if let Some(h) = self.handles.remove(&r.serial) {
                // A task that panicked has ended too.
                let _ = h.await;
            }
            if !r.reported.load(Ordering::SeqCst) {
                unreported += 1;
            }
            *lock(&r.links) = Links::default();
            if !replaced {
                self.shared.persist_refresh(&r.id, false);
            }
        }

        // The report for this generation: kept resources count with what they are now.
        let mut firsts = HashMap::with_capacity_and_hasher(nodes.len(), BySerial::default());
        for (idx, n) in nodes.iter().enumerate() {
            let carried = n.reported.load(Ordering::SeqCst).then(|| {
                let result = match n.state.load(Ordering::SeqCst) {
                    FAILED => Err(lock(&n.last_error)
                        .clone()
                        .unwrap_or_else(|| "failed".to_string())),
                    _ => Ok(Outcome::Converged),
                };
                (result, now)
            });
            firsts.insert(n.serial, (idx, carried));
        }
        self.missing = firsts.values().filter(|f| f.1.is_none()).count();
        self.firsts = firsts;
        self.report = None;
        self.started = now;
        self.shared.status.send_modify(|s| {
            s.pending = s.pending + added.len() - unreported;
            s.last_activity = now;
        });
        let rewired = self.link(&nodes, graph.edges.clone(), &graph.recvs);
        self.nodes = nodes;
        self.edges = graph.edges;
        for n in &added {
            self.spawn(Arc::clone(n));
        }
        // A kept resource with new dependencies re-checks against them.
        for n in rewired {
            n.poke.poke();
        }
        SwapStats {
            kept,
            added: added.len(),
            removed: removed.len(),
        }
    }

    /// First install: every node is new.
    fn install(&mut self, graph: Graph, now: Instant) {
        let specs = recv_specs(&graph);
        let nodes: Vec<Arc<Node>> = graph
            .nodes
            .into_iter()
            .zip(graph.metas)
            .zip(specs)
            .map(|((res, meta), spec)| self.new_node(res, meta, spec))
            .collect();
        self.firsts = nodes
            .iter()
            .enumerate()
            .map(|(idx, n)| (n.serial, (idx, None)))
            .collect();
        self.missing = nodes.len();
        self.shared.status.send_modify(|s| {
            s.pending += nodes.len();
            s.last_activity = now;
        });
        self.link(&nodes, graph.edges.clone(), &graph.recvs);
        self.edges = graph.edges;
        for n in &nodes {
            self.spawn(Arc::clone(n));
        }
        self.nodes = nodes;
    }

    fn new_node(
        &self,
        res: Arc<dyn Resource>,
        meta: Meta,
        recv_spec: Vec<(String, String, String)>,
    ) -> Arc<Node> {
        let (poke, poke_rx) = Poke::channel();
        let id = res.id().to_string();
        let refresh = self.shared.refresh_pending_on_disk(&id);
        Arc::new(Node {
            serial: self.shared.next_serial.fetch_add(1, Ordering::Relaxed),
            id,
            res,
            meta,
            recv_spec,
            poke,
            poke_rx: Mutex::new(Some(poke_rx)),
            state: AtomicU8::new(PENDING),
            reported: AtomicBool::new(false),
            last_error: Mutex::new(None),
            links: Mutex::default(),
            refresh: AtomicBool::new(refresh),
            checks: AtomicU64::new(0),
            stop: watch::channel(false).0,
        })
    }

    /// Set every node's links from `edges`; returns the nodes whose dependencies changed.
    fn link(&self, nodes: &[Arc<Node>], edges: Vec<Edge>, recvs: &[Vec<Recv>]) -> Vec<Arc<Node>> {
        let mut deps: Vec<Vec<Arc<Node>>> = vec![Vec::new(); nodes.len()];
        let mut dependents: Vec<Vec<(Weak<Node>, bool)>> = vec![Vec::new(); nodes.len()];
        for e in edges {
            deps[e.to].push(Arc::clone(&nodes[e.from]));
            dependents[e.from].push((Arc::downgrade(&nodes[e.to]), e.notify));
        }
        let mut changed = Vec::new();
        for (i, ((node, deps), dependents)) in nodes.iter().zip(deps).zip(dependents).enumerate() {
            let recv = recvs
                .get(i)
                .map(|r| {
                    r.iter()
                        .map(|r| (r.field.clone(), Arc::clone(&nodes[r.from]), r.key.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let mut links = lock(&node.links);
            let same = links.deps.len() == deps.len()
                && links.deps.iter().zip(&deps).all(|(a, b)| Arc::ptr_eq(a, b));
            if !same && node.reported.load(Ordering::SeqCst) {
                changed.push(Arc::clone(node));
            }
            *links = Links {
                deps,
                dependents,
                recv,
            };
        }
        changed
    }

    fn spawn(&mut self, node: Arc<Node>) {
        let Some(poke_rx) = lock(&node.poke_rx).take() else {
            return;
        };
        let task = NodeTask {
            stop: node.stop.subscribe(),
            node: Arc::clone(&node),
            poke_rx,
            shared: Arc::clone(&self.shared),
        };
        self.handles.insert(node.serial, tokio::spawn(task.run()));
    }

    /// Resources that have started a watch, over the whole run (a swap that keeps a resource
    /// does not add to it: the proof that its watch was not restarted).
    pub fn watch_starts(&self) -> u64 {
        self.shared.watch_starts.load(Ordering::Relaxed)
    }

    /// Check-applies started over the whole run.
    pub fn checks(&self) -> u64 {
        self.shared.checks.load(Ordering::Relaxed)
    }

    /// Each resource's id and how many check-applies it ran (in its current incarnation: a
    /// resource replaced by a swap starts again at 0).
    pub fn check_counts(&self) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .map(|n| (n.id.clone(), n.checks.load(Ordering::Relaxed)))
            .collect()
    }

    /// Number of resources in the current graph.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the current graph has no resources.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Each resource's id and live state: `pending`, `converged` or `failed`.
    pub fn states(&self) -> Vec<(String, &'static str)> {
        self.nodes
            .iter()
            .map(|n| (n.id.clone(), state_name(n.state.load(Ordering::SeqCst))))
            .collect()
    }

    /// The current graph in DOT, each resource labelled with its live state.
    pub fn to_dot(&self, name: &str) -> String {
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        let states: Vec<&str> = self
            .nodes
            .iter()
            .map(|n| state_name(n.state.load(Ordering::SeqCst)))
            .collect();
        crate::dot::render(name, &ids, Some(&states), &self.edges)
    }

    /// Stop every resource task (killing in-flight commands) and drop every watch; returns
    /// when all tasks have ended. Pending refreshes stay on disk for the next run.
    pub async fn stop(mut self) {
        for n in &self.nodes {
            n.stop.send_replace(true);
        }
        for (_, handle) in std::mem::take(&mut self.handles) {
            // A task that panicked has ended too; nothing more to do for it.
            let _ = handle.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for handle in self.handles.values() {
            handle.abort();
        }
        // Unlink first: in a long chain every node holds its dependency, and dropping the
        // last one would otherwise recurse once per node (a 100k chain overflows the stack).
        for node in &self.nodes {
            *lock(&node.links) = Links::default();
        }
    }
}

/// Each node's received fields as comparable `(field, sender id, key)`.
fn recv_specs(graph: &Graph) -> Vec<Vec<(String, String, String)>> {
    graph
        .recvs
        .iter()
        .map(|r| {
            r.iter()
                .map(|r| {
                    (
                        r.field.clone(),
                        graph.nodes[r.from].id().to_string(),
                        r.key.clone(),
                    )
                })
                .collect()
        })
        .collect()
}

fn state_name(state: u8) -> &'static str {
    match state {
        OK => "converged",
        FAILED => "failed",
        _ => "pending",
    }
}

/// Waits on a running graph's convergence; see [`Running::convergence`].
pub struct Convergence {
    rx: watch::Receiver<Status>,
    /// `last_activity` when `converged` last resolved.
    mark: Option<Instant>,
}

impl Convergence {
    /// Resolves when every resource has had its first outcome, no check-apply is in
    /// progress, and nothing changed or failed for `idle`.
    pub async fn converged(&mut self, idle: Duration) {
        loop {
            let status = *self.rx.borrow_and_update();
            let settled = status.pending == 0 && status.busy == 0;
            let quiet = status.last_activity.elapsed();
            if settled && quiet >= idle {
                self.mark = Some(status.last_activity);
                return;
            }
            if settled {
                tokio::select! {
                    _ = tokio::time::sleep(idle - quiet) => {}
                    _ = self.rx.changed() => {}
                }
            } else if self.rx.changed().await.is_err() {
                // The graph is gone: nothing will ever change again.
                return;
            }
        }
    }

    /// After `converged` resolved: resolves when something changed, failed, started or was
    /// swapped in since.
    pub async fn diverged(&mut self) {
        loop {
            let status = *self.rx.borrow_and_update();
            let mark = *self.mark.get_or_insert(status.last_activity);
            if status.pending > 0 || status.last_activity != mark {
                self.mark = None;
                return;
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Shared {
    fn refresh_file(&self, id: &str) -> Option<PathBuf> {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        self.refresh_dir.as_ref().map(|d| d.join(hex))
    }

    fn refresh_pending_on_disk(&self, id: &str) -> bool {
        self.refresh_file(id).is_some_and(|f| f.exists())
    }

    /// Mirror a node's pending refresh on disk (the hysteresis of seed 002: a refresh sent
    /// and not consumed must survive a crash, or the state it stands for is lost).
    fn persist_refresh(&self, id: &str, pending: bool) {
        let Some(file) = self.refresh_file(id) else {
            return;
        };
        let result = if pending {
            file.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| write_synced(&file))
        } else {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        if let Err(e) = result {
            tracing::warn!(%id, file = %file.display(), error = %e, "cannot persist pending refresh");
        }
    }

    fn sema(&self, key: &(String, usize)) -> Arc<Semaphore> {
        Arc::clone(
            lock(&self.semas)
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(key.1))),
        )
    }
}

fn write_synced(file: &Path) -> std::io::Result<()> {
    let f = std::fs::File::create(file)?;
    f.sync_all()
}

/// A poisoned lock only means another task panicked mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Deps {
    Ready,
    Pending,
    Failed(String),
}

/// One resource's task.
struct NodeTask {
    node: Arc<Node>,
    poke_rx: mpsc::Receiver<()>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl NodeTask {
    async fn run(mut self) {
        // Dependencies settle first; they poke us whenever their state moves.
        loop {
            match self.deps() {
                Deps::Ready => break,
                Deps::Failed(dep) if !self.node.reported.load(Ordering::SeqCst) => {
                    let msg = format!("skipped: dependency {dep} failed");
                    self.record(Err(msg), false);
                }
                Deps::Failed(_) | Deps::Pending => {}
            }
            if !self.wait_poke(&mut None).await {
                return;
            }
        }
        // Pokes so far were dependencies settling, not drift: the first check covers them.
        while self.poke_rx.try_recv().is_ok() {}

        let meta = self.node.meta.clone();
        // Held for the life of the task; dropping it stops the watch.
        let mut _guard: Option<WatchGuard> = None;
        // With `poll`, a timer replaces the watch.
        let mut watching = meta.poll.is_some();
        let mut ticker = meta.poll.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        });
        let mut bucket = meta.limit.map(|rate| Bucket::new(rate, meta.burst));
        loop {
            self.shared.status.send_modify(|s| s.busy += 1);
            let result = if watching {
                None
            } else {
                match self.start_watch().await {
                    Some(Ok(guard)) => {
                        _guard = guard;
                        watching = true;
                        None
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None => {
                        self.shared.status.send_modify(|s| s.busy -= 1);
                        return;
                    }
                }
            };
            let result = match result {
                Some(failed) => failed,
                None => match self.check_with_meta(&mut bucket).await {
                    Some(result) => result,
                    None => {
                        self.shared.status.send_modify(|s| s.busy -= 1);
                        return;
                    }
                },
            };
            self.record(result, true);
            if !self.wait_poke(&mut ticker).await {
                return;
            }
        }
    }

    fn deps(&self) -> Deps {
        let mut pending = false;
        for dep in &lock(&self.node.links).deps {
            match dep.state.load(Ordering::SeqCst) {
                FAILED => return Deps::Failed(dep.id.clone()),
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

    /// Wait for a poke (or a poll tick); false when the resource is stopping.
    async fn wait_poke(&mut self, ticker: &mut Option<tokio::time::Interval>) -> bool {
        let tick = async {
            match ticker {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|stop| *stop) => false,
            poked = self.poke_rx.recv() => poked.is_some(),
            _ = tick => true,
        }
    }

    /// Sleep unless stopped first; false when stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|stop| *stop) => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Start the watch, retrying per `meta.retry`/`meta.delay`. `None` when stopped.
    async fn start_watch(&mut self) -> Option<Result<Option<WatchGuard>, String>> {
        let meta = &self.node.meta;
        let (retry, delay) = (meta.retry, meta.delay);
        let mut attempt = 0i64;
        loop {
            let poke = self.node.poke.clone();
            // A panicking watch must fail this resource, not silently end its task (which
            // would leave the first report waiting forever).
            let watched = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.node.res.watch(&self.shared.watch_ctx, poke)
            }));
            let err = match watched {
                Ok(Ok(guard)) => {
                    self.shared.watch_starts.fetch_add(1, Ordering::Relaxed);
                    return Some(Ok(guard));
                }
                Ok(Err(e)) => e.to_string(),
                Err(payload) => format!("watch panicked: {}", panic_message(&*payload)),
            };
            if retry >= 0 && attempt >= retry {
                return Some(Err(err));
            }
            attempt += 1;
            tracing::info!(id = %self.node.id, attempt, error = %err, "watch failed; retrying");
            if !self.pause(delay).await {
                return None;
            }
        }
    }

    /// One check-apply with the metaparams around it: rate limit, semaphores, timeout,
    /// retry/delay, noop and refresh. `None` when stopped.
    async fn check_with_meta(
        &mut self,
        bucket: &mut Option<Bucket>,
    ) -> Option<Result<Outcome, String>> {
        let meta = self.node.meta.clone();
        let apply = !(self.shared.noop || meta.noop);
        let mut attempt = 0i64;
        loop {
            if let Some(wait) = bucket.as_mut().map(Bucket::take) {
                if !wait.is_zero() && !self.pause(wait).await {
                    return None;
                }
            }
            let mut permits: Vec<OwnedSemaphorePermit> = Vec::with_capacity(meta.sema.len());
            for key in &meta.sema {
                let sema = self.shared.sema(key);
                let permit = tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|stop| *stop) => return None,
                    p = sema.acquire_owned() => p,
                };
                // Never closed: the engine owns every semaphore and never closes one.
                if let Ok(p) = permit {
                    permits.push(p);
                }
            }
            let refresh = self.node.refresh.load(Ordering::SeqCst);
            let recv = match self.received() {
                Ok(recv) => recv,
                Err(e) => return Some(Err(e)),
            };
            let ctx = ApplyCtx {
                apply,
                refresh,
                recv,
                state_dir: self.shared.state_dir.clone(),
            };
            self.shared.checks.fetch_add(1, Ordering::Relaxed);
            self.node.checks.fetch_add(1, Ordering::Relaxed);
            let result = self.check(ctx, meta.timeout).await?;
            drop(permits);
            match result {
                Ok(outcome) => {
                    // Consumed only by a real apply: noop mode leaves it for later.
                    if refresh && apply {
                        self.node.refresh.store(false, Ordering::SeqCst);
                        self.shared.persist_refresh(&self.node.id, false);
                    }
                    return Some(Ok(outcome));
                }
                Err(e) if meta.retry < 0 || attempt < meta.retry => {
                    attempt += 1;
                    tracing::info!(id = %self.node.id, attempt, error = %e, "check-apply failed; retrying");
                    if !self.pause(meta.delay).await {
                        return None;
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The values this node receives, read from its senders now.
    fn received(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let links = lock(&self.node.links);
        let mut recv = serde_json::Map::new();
        for (field, from, key) in &links.recv {
            let value = from
                .res
                .sent()
                .and_then(|mut sent| sent.remove(key))
                .ok_or_else(|| format!("recv.{field}: {} has not sent `{key}` yet", from.id))?;
            recv.insert(field.clone(), value);
        }
        Ok(recv)
    }

    /// One check-apply in its own task, so a panic becomes this resource's error, a timeout
    /// can cut it off and a stop can abort it (killing an exec's children). `None` when
    /// stopped.
    async fn check(
        &mut self,
        ctx: ApplyCtx,
        timeout: Option<Duration>,
    ) -> Option<Result<Outcome, String>> {
        let res = Arc::clone(&self.node.res);
        let mut inner = AbortOnDrop(tokio::spawn(async move { res.check_apply(&ctx).await }));
        let limit = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let joined = tokio::select! {
            biased;
            _ = self.stop.wait_for(|stop| *stop) => None,
            joined = &mut inner.0 => Some(Some(joined)),
            _ = limit => Some(None),
        };
        match joined {
            Some(Some(Ok(result))) => Some(result.map_err(|e| e.to_string())),
            Some(Some(Err(e))) => Some(Err(join_failure(e))),
            Some(None) => {
                inner.0.abort();
                let _ = (&mut inner.0).await;
                let ms = timeout.map_or(0, |t| t.as_millis());
                Some(Err(format!("check-apply timed out after {ms} ms")))
            }
            None => {
                inner.0.abort();
                // Wait until it is really gone (its child processes killed).
                let _ = (&mut inner.0).await;
                None
            }
        }
    }

    /// Publish one outcome: counters for `converged`, state, refreshes and pokes for
    /// dependents, and the first report or an event.
    fn record(&mut self, result: Result<Outcome, String>, checked: bool) {
        let node = &self.node;
        let id = &node.id;
        let now = Instant::now();
        let first = !node.reported.swap(true, Ordering::SeqCst);
        let active = first || !matches!(result, Ok(Outcome::Converged));
        self.shared.status.send_modify(|s| {
            if checked {
                s.busy -= 1;
            }
            if first {
                s.pending -= 1;
            }
            if active {
                s.last_activity = now;
            }
        });
        match &result {
            Ok(Outcome::Converged) => tracing::debug!(%id, "converged"),
            Ok(Outcome::Changed) => tracing::debug!(%id, "changed"),
            Ok(Outcome::WouldChange) => tracing::debug!(%id, "would change (noop)"),
            Err(error) => tracing::warn!(%id, %error, "failed"),
        }
        *lock(&node.last_error) = result.as_ref().err().cloned();
        let state = if result.is_ok() { OK } else { FAILED };
        let old = node.state.swap(state, Ordering::SeqCst);
        let changed = result == Ok(Outcome::Changed);
        // mgmt: a change downstream-pokes dependents so they re-check against it (with a
        // refresh along notify edges); a state move lets waiting dependents start (or give
        // up).
        if old != state || changed {
            let dependents: Vec<(Arc<Node>, bool)> = lock(&node.links)
                .dependents
                .iter()
                .filter_map(|(d, notify)| d.upgrade().map(|d| (d, *notify)))
                .collect();
            for (d, notify) in dependents {
                if changed && notify && !d.refresh.swap(true, Ordering::SeqCst) {
                    self.shared.persist_refresh(&d.id, true);
                }
                d.poke.poke();
            }
        }
        let msg = if first {
            Some(Msg::First {
                serial: node.serial,
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
        let said = changed.then(|| node.res.message()).flatten();
        // The receiver is gone only when the Running was dropped; nobody to tell.
        if let Some(msg) = msg {
            let _ = self.shared.events.send(msg);
        }
        if let Some(text) = said {
            let _ = self.shared.events.send(Msg::Event(EngineEvent::Message {
                id: id.clone(),
                text,
            }));
        }
    }
}

/// A token bucket for `meta.limit`/`meta.burst`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Bucket {
        Bucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Take one token; how long to wait before using it.
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
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
        async fn check_apply(&self, _ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
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
