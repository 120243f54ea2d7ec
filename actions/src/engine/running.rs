//! [`Running`]: one graph at work. Installing a graph's nodes, linking them along its
//! edges, spawning their tasks, and collecting what they report.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph::{Edge, Graph, Vertex};
use tokio::task::JoinHandle;

use super::convergence::Convergence;
use super::node::{Dependent, Links, Node, NodeTask};
use super::serial::BySerial;
use super::{lock, Build, EngineEvent, Msg, Report, Shared};
use crate::resource::Outcome;

/// A first outcome and when it came.
pub(super) type First = (Result<Outcome, String>, Instant);

/// A handle on one running graph. Dropping it aborts every task (and so every watch).
pub struct Running {
    pub(super) shared: Arc<Shared>,
    pub(super) build: Build,
    pub(super) started: Instant,
    /// The current graph, in graph order.
    pub(super) nodes: Vec<Arc<Node>>,
    /// The current graph's edges (indices into `nodes`).
    pub(super) edges: Vec<Edge>,
    /// Each node task by node serial, in the order spawned (a graph of one keeps one pair,
    /// not a hash table).
    pub(super) handles: Vec<(u64, JoinHandle<()>)>,
    /// First outcomes for the current report, by node serial, with the node's position.
    pub(super) firsts: HashMap<u64, (usize, Option<First>), BySerial>,
    pub(super) missing: usize,
    /// Events that arrived while the first report was still being collected.
    backlog: VecDeque<EngineEvent>,
    /// Boxed: kept for the graph's life, and most of a `Report` is empty.
    pub(super) report: Option<Box<Report>>,
}

impl Running {
    /// A run of `graph`: every node is new.
    pub(super) fn start(shared: Arc<Shared>, build: Build, graph: Graph, now: Instant) -> Running {
        let mut running = Running {
            shared,
            build,
            started: now,
            nodes: Vec::new(),
            edges: Vec::new(),
            handles: Vec::new(),
            firsts: HashMap::default(),
            missing: 0,
            backlog: VecDeque::new(),
            report: None,
        };
        let (vertices, edges) = graph.into_parts();
        // Not `collect()`: that would reuse the vertices' buffer, sized for them, for good.
        let mut nodes: Vec<Arc<Node>> = Vec::with_capacity(vertices.len());
        nodes.extend(vertices.into_iter().map(|v| running.new_node(v)));
        running.firsts = nodes
            .iter()
            .enumerate()
            .map(|(idx, n)| (n.serial, (idx, None)))
            .collect();
        running.missing = nodes.len();
        running.shared.status.modify(|s| {
            s.pending += nodes.len();
            s.last_activity = now;
        });
        running.link(&nodes, &edges);
        running.edges = edges;
        running.handles.reserve_exact(nodes.len());
        for n in &nodes {
            running.spawn(Arc::clone(n));
        }
        running.nodes = nodes;
        running
    }

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
            return Report::clone(report);
        }
        while self.missing > 0 {
            match self.shared.events.pop().await {
                Msg::First { serial, result, at } => {
                    if let Some((idx, slot @ None)) = self.firsts.get_mut(&serial) {
                        if let Some(node) = self.nodes.get(*idx) {
                            progress(node.id(), &result);
                        }
                        *slot = Some((result, at));
                        self.missing -= 1;
                    }
                }
                Msg::Event(event) => self.backlog.push_back(event),
            }
        }
        let report = self.build_report();
        // Needed again only by a swap, which makes its own.
        self.firsts = HashMap::default();
        self.report = Some(Box::new(report.clone()));
        report
    }

    fn build_report(&self) -> Report {
        let mut changed = Vec::new();
        let mut errors = Vec::new();
        let mut last = None;
        for node in &self.nodes {
            let id = node.id();
            match self.firsts.get(&node.serial) {
                Some((_, Some((result, at)))) => {
                    last = last.max(Some(*at));
                    match result {
                        Ok(Outcome::Converged) => {}
                        Ok(Outcome::Changed | Outcome::WouldChange) => changed.push(id.to_string()),
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
    /// that failed (`Failed`). Collects the first report first if nobody did. Never `None`
    /// while the graph runs (stopping it takes the `Running`).
    pub async fn next_event(&mut self) -> Option<EngineEvent> {
        if self.report.is_none() {
            // Boxed: rarely taken, and inline it would grow every waiting task.
            Box::pin(self.first_report()).await;
        }
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        loop {
            match self.shared.events.pop().await {
                Msg::Event(event) => return Some(event),
                // A First of a node replaced meanwhile, or a late one; nothing to report.
                Msg::First { .. } => continue,
            }
        }
    }

    /// The next event if one is queued, without waiting (`None` also before the first
    /// report was collected). Every event is queued before the convergence status moves,
    /// so a task that saw the graph diverge finds the event that made it here.
    pub fn try_next_event(&mut self) -> Option<EngineEvent> {
        self.report.as_ref()?;
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        loop {
            match self.shared.events.try_pop()? {
                Msg::Event(event) => return Some(event),
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
        Convergence::new(Arc::clone(&self.shared.status))
    }

    /// A node for `vertex`, its resource made, its refresh read back from disk.
    pub(super) fn new_node(&self, vertex: Vertex) -> Arc<Node> {
        let res = (self.build)(&vertex.resource);
        let refresh = self.shared.refresh_pending_on_disk(vertex.id());
        let serial = self.shared.next_serial.fetch_add(1, Ordering::Relaxed);
        Arc::new(Node::new(serial, vertex, res, refresh))
    }

    /// Set every node's links from `edges` and its vertex's `recv`; returns the nodes
    /// already reported whose dependencies changed.
    pub(super) fn link(&self, nodes: &[Arc<Node>], edges: &[Edge]) -> Vec<Arc<Node>> {
        let mut deps: Vec<Vec<Arc<Node>>> = vec![Vec::new(); nodes.len()];
        let mut dependents: Vec<Vec<Dependent>> = (0..nodes.len()).map(|_| Vec::new()).collect();
        for e in edges {
            deps[e.to].push(Arc::clone(&nodes[e.from]));
            dependents[e.from].push(Dependent {
                node: Arc::downgrade(&nodes[e.to]),
                notify: e.notify,
            });
        }
        // Only graphs with send/recv pay for the index.
        let index: HashMap<&str, &Arc<Node>> = if nodes.iter().any(|n| !n.vertex.recv.is_empty()) {
            nodes.iter().map(|n| (n.id(), n)).collect()
        } else {
            HashMap::new()
        };
        let mut changed = Vec::new();
        for ((node, deps), dependents) in nodes.iter().zip(deps).zip(dependents) {
            // The graph crate checked every sender exists.
            let senders = node
                .vertex
                .recv
                .iter()
                .filter_map(|r| index.get(r.from.as_str()).map(|n| Arc::clone(n)))
                .collect();
            let mut links = lock(&node.links);
            let same = links.deps().len() == deps.len()
                && links
                    .deps()
                    .iter()
                    .zip(&deps)
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            if !same && node.reported.load(Ordering::SeqCst) {
                changed.push(Arc::clone(node));
            }
            *links = Links::new(deps, dependents, senders);
        }
        changed
    }

    pub(super) fn spawn(&mut self, node: Arc<Node>) {
        let Some(poke_rx) = lock(&node.poke_rx).take() else {
            return;
        };
        let task = NodeTask {
            node: Arc::clone(&node),
            poke_rx,
            shared: Arc::clone(&self.shared),
        };
        self.handles.push((node.serial, tokio::spawn(task.run())));
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
            .map(|n| (n.id().to_string(), n.checks.load(Ordering::Relaxed)))
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
            .map(|n| (n.id().to_string(), n.state.load().name()))
            .collect()
    }

    /// The current graph in DOT, each resource labelled with its live state.
    pub fn to_dot(&self, name: &str) -> String {
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id().to_string()).collect();
        let states: Vec<&str> = self.nodes.iter().map(|n| n.state.load().name()).collect();
        graph::dot::render(name, &ids, Some(&states), &self.edges)
    }

    /// Stop every resource task (killing in-flight commands) and drop every watch; returns
    /// when all tasks have ended. Pending refreshes stay on disk for the next run.
    pub async fn stop(mut self) {
        for n in &self.nodes {
            n.stop.stop();
        }
        for (_, handle) in std::mem::take(&mut self.handles) {
            // A task that panicked has ended too; nothing more to do for it.
            let _ = handle.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (_, handle) in &self.handles {
            handle.abort();
        }
        // Unlink first: in a long chain every node holds its dependency, and dropping the
        // last one would otherwise recurse once per node (a 100k chain overflows the stack).
        for node in &self.nodes {
            *lock(&node.links) = Links::default();
        }
    }
}
