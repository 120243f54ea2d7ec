//! One resource in a running graph (its [`Node`]) and the task that converges it
//! ([`NodeTask`]): wait for dependencies, watch, check-apply with the metaparams around it,
//! publish each outcome.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use graph::Vertex;
use tokio::sync::OwnedSemaphorePermit;

use super::limit::Bucket;
use super::signal::Stop;
use super::{lock, EngineEvent, Msg, Shared};
use crate::resource::{ApplyCtx, Outcome, OwnWrites, Poke, Poked, Resource, WatchGuard};

/// A node's state, as its dependents see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum NodeState {
    /// No outcome yet.
    Pending = 0,
    /// The last outcome succeeded.
    Ok = 1,
    /// The last outcome failed (or was skipped).
    Failed = 2,
}

impl NodeState {
    /// How `Running::states` and the DOT output name it.
    pub(super) fn name(self) -> &'static str {
        match self {
            NodeState::Ok => "converged",
            NodeState::Failed => "failed",
            NodeState::Pending => "pending",
        }
    }
}

/// A [`NodeState`] that tasks read and write without a lock.
pub(super) struct AtomicState(AtomicU8);

impl AtomicState {
    fn new(state: NodeState) -> AtomicState {
        AtomicState(AtomicU8::new(state as u8))
    }

    pub(super) fn load(&self) -> NodeState {
        NodeState::from_u8(self.0.load(Ordering::SeqCst))
    }

    fn swap(&self, state: NodeState) -> NodeState {
        NodeState::from_u8(self.0.swap(state as u8, Ordering::SeqCst))
    }
}

impl NodeState {
    fn from_u8(n: u8) -> NodeState {
        match n {
            1 => NodeState::Ok,
            2 => NodeState::Failed,
            _ => NodeState::Pending,
        }
    }
}

/// One resource in a running graph. Survives swaps when its vertex is equal.
pub(super) struct Node {
    /// Unique within the run; tells a replaced node's messages from its successor's.
    pub serial: u64,
    /// What the resource should be: what a swap compares.
    pub vertex: Vertex,
    pub res: Arc<dyn Resource>,
    pub poke: Poke,
    /// Taken by the node's task when it is spawned.
    pub poke_rx: Mutex<Option<Poked>>,
    pub state: AtomicState,
    pub reported: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub links: Mutex<Links>,
    /// A refresh arrived and was not consumed yet (mirrored on disk under `state_dir`).
    pub refresh: AtomicBool,
    /// Check-applies this node ran.
    pub checks: AtomicU64,
    pub stop: Stop,
}

/// A node's neighbours in the current graph: boxed, and nothing at all for a node without
/// any (most nodes of most graphs kept on a host are alone in theirs).
#[derive(Default)]
pub(super) struct Links(Option<Box<Neighbours>>);

pub(super) struct Neighbours {
    deps: Vec<Arc<Node>>,
    dependents: Vec<Dependent>,
    /// The sender of each of `vertex.recv`, in the same order.
    senders: Vec<Arc<Node>>,
}

impl Links {
    pub(super) fn new(
        deps: Vec<Arc<Node>>,
        dependents: Vec<Dependent>,
        senders: Vec<Arc<Node>>,
    ) -> Links {
        if deps.is_empty() && dependents.is_empty() && senders.is_empty() {
            return Links(None);
        }
        Links(Some(Box::new(Neighbours {
            deps,
            dependents,
            senders,
        })))
    }

    pub(super) fn deps(&self) -> &[Arc<Node>] {
        self.0.as_ref().map_or(&[], |n| &n.deps)
    }

    pub(super) fn dependents(&self) -> &[Dependent] {
        self.0.as_ref().map_or(&[], |n| &n.dependents)
    }

    pub(super) fn senders(&self) -> &[Arc<Node>] {
        self.0.as_ref().map_or(&[], |n| &n.senders)
    }
}

/// A node waiting for this one.
pub(super) struct Dependent {
    /// Weak: a dependency must not keep a removed dependent alive.
    pub node: Weak<Node>,
    /// Along a `notify` edge: a change sends it a refresh.
    pub notify: bool,
}

impl Node {
    /// A node for `vertex`, not linked nor running yet.
    pub(super) fn new(serial: u64, vertex: Vertex, res: Arc<dyn Resource>, refresh: bool) -> Node {
        let (poke, poke_rx) = Poke::channel();
        Node {
            serial,
            vertex,
            res,
            poke,
            poke_rx: Mutex::new(Some(poke_rx)),
            state: AtomicState::new(NodeState::Pending),
            reported: AtomicBool::new(false),
            last_error: Mutex::new(None),
            links: Mutex::default(),
            refresh: AtomicBool::new(refresh),
            checks: AtomicU64::new(0),
            stop: Stop::new(),
        }
    }

    /// `kind:name`.
    pub(super) fn id(&self) -> &str {
        self.vertex.id()
    }
}

enum Deps {
    Ready,
    Pending,
    Failed(String),
}

/// One resource's task.
pub(super) struct NodeTask {
    pub node: Arc<Node>,
    pub poke_rx: Poked,
    pub shared: Arc<Shared>,
}

impl NodeTask {
    pub(super) async fn run(mut self) {
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
        self.poke_rx.clear();

        let meta = &self.node.vertex.meta;
        let (poll, limit, burst) = (meta.poll, meta.limit, meta.burst);
        // Held for the life of the task; dropping it stops the watch.
        let mut _guard: Option<WatchGuard> = None;
        // With `poll`, a timer replaces the watch.
        let mut watching = poll.is_some();
        let mut ticker = poll.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        });
        let mut bucket = limit.map(|rate| Bucket::new(rate, burst));
        loop {
            self.shared.status.modify(|s| s.busy += 1);
            let result = if watching {
                None
            } else {
                // Boxed, like the check below: a task spends its life waiting for pokes, and
                // an inline check would make every idle task as big as a running one.
                match Box::pin(self.start_watch()).await {
                    Some(Ok(guard)) => {
                        _guard = guard;
                        watching = true;
                        None
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None => {
                        self.shared.status.modify(|s| s.busy -= 1);
                        return;
                    }
                }
            };
            let result = match result {
                Some(failed) => failed,
                None => match Box::pin(self.check_with_meta(&mut bucket)).await {
                    Some(result) => result,
                    None => {
                        self.shared.status.modify(|s| s.busy -= 1);
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
        for dep in lock(&self.node.links).deps() {
            match dep.state.load() {
                NodeState::Failed => return Deps::Failed(dep.id().to_string()),
                NodeState::Pending => pending = true,
                NodeState::Ok => {}
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
            _ = self.node.stop.wait() => false,
            _ = self.poke_rx.recv() => true,
            _ = tick => true,
        }
    }

    /// Sleep unless stopped first; false when stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.node.stop.wait() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Start the watch, retrying per `meta.retry`/`meta.delay`. `None` when stopped.
    async fn start_watch(&mut self) -> Option<Result<Option<WatchGuard>, String>> {
        let meta = &self.node.vertex.meta;
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
            tracing::info!(id = %self.node.id(), attempt, error = %err, "watch failed; retrying");
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
        let meta = self.node.vertex.meta.clone();
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
                    _ = self.node.stop.wait() => return None,
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
                own: Some(OwnWrites {
                    hub: Arc::clone(self.shared.watch_ctx.files()),
                    poke: self.node.poke.clone(),
                }),
            };
            self.shared.checks.fetch_add(1, Ordering::Relaxed);
            self.node.checks.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = self.check(ctx, meta.timeout).await?;
            if let Some(observe) = &self.shared.observe {
                observe(started.elapsed());
            }
            drop(permits);
            match result {
                Ok(outcome) => {
                    // Consumed only by a real apply: noop mode leaves it for later.
                    if refresh && apply {
                        self.node.refresh.store(false, Ordering::SeqCst);
                        self.shared.persist_refresh(self.node.id(), false);
                    }
                    return Some(Ok(outcome));
                }
                Err(e) if meta.retry < 0 || attempt < meta.retry => {
                    attempt += 1;
                    tracing::info!(id = %self.node.id(), attempt, error = %e, "check-apply failed; retrying");
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
        for (r, from) in self.node.vertex.recv.iter().zip(links.senders()) {
            let (field, key) = (&r.field, &r.key);
            let value = from
                .res
                .sent()
                .and_then(|mut sent| sent.remove(key))
                .ok_or_else(|| format!("recv.{field}: {} has not sent `{key}` yet", from.id()))?;
            recv.insert(field.clone(), value);
        }
        Ok(recv)
    }

    /// One check-apply, polled under `catch_unwind` so a panic becomes this resource's error;
    /// a timeout cuts it off and a stop drops it (killing an exec's children). In this task,
    /// not one of its own: a task per check cost a spawn and a wake-up for every action.
    /// `None` when stopped.
    async fn check(
        &mut self,
        ctx: ApplyCtx,
        timeout: Option<Duration>,
    ) -> Option<Result<Outcome, String>> {
        let res = Arc::clone(&self.node.res);
        let inner = CatchUnwind(res.check_apply(&ctx));
        let limit = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        // Leaving the select drops the check on a stop or a timeout, and with it whatever it
        // holds (an exec's children are killed on drop).
        let joined = tokio::select! {
            biased;
            _ = self.node.stop.wait() => None,
            joined = inner => Some(Some(joined)),
            _ = limit => Some(None),
        };
        match joined {
            Some(Some(Ok(result))) => Some(result.map_err(|e| e.to_string())),
            Some(Some(Err(payload))) => {
                Some(Err(format!("check panicked: {}", panic_message(&*payload))))
            }
            Some(None) => {
                let ms = timeout.map_or(0, |t| t.as_millis());
                Some(Err(format!("check-apply timed out after {ms} ms")))
            }
            None => None,
        }
    }

    /// Publish one outcome: counters for `converged`, state, refreshes and pokes for
    /// dependents, and the first report or an event.
    fn record(&mut self, result: Result<Outcome, String>, checked: bool) {
        let node = &self.node;
        let id = node.id();
        let now = Instant::now();
        let first = !node.reported.swap(true, Ordering::SeqCst);
        let active = first || !matches!(result, Ok(Outcome::Converged));
        match &result {
            Ok(Outcome::Converged) => tracing::debug!(%id, "converged"),
            Ok(Outcome::Changed) => tracing::debug!(%id, "changed"),
            Ok(Outcome::WouldChange) => tracing::debug!(%id, "would change (noop)"),
            Err(error) => tracing::warn!(%id, %error, "failed"),
        }
        *lock(&node.last_error) = result.as_ref().err().cloned();
        let state = if result.is_ok() {
            NodeState::Ok
        } else {
            NodeState::Failed
        };
        let old = node.state.swap(state);
        let changed = result == Ok(Outcome::Changed);
        // mgmt: a change downstream-pokes dependents so they re-check against it (with a
        // refresh along notify edges); a state move lets waiting dependents start (or give
        // up).
        if old != state || changed {
            let dependents: Vec<(Arc<Node>, bool)> = lock(&node.links)
                .dependents()
                .iter()
                .filter_map(|d| d.node.upgrade().map(|n| (n, d.notify)))
                .collect();
            for (d, notify) in dependents {
                if changed && notify && !d.refresh.swap(true, Ordering::SeqCst) {
                    self.shared.persist_refresh(d.id(), true);
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
                Ok(_) => Some(Msg::Event(EngineEvent::Changed { id: id.to_string() })),
                Err(error) => Some(Msg::Event(EngineEvent::Failed {
                    id: id.to_string(),
                    error,
                })),
            }
        };
        let said = changed.then(|| node.res.message()).flatten();
        if let Some(msg) = msg {
            self.shared.events.push(msg);
        }
        if let Some(text) = said {
            self.shared.events.push(Msg::Event(EngineEvent::Message {
                id: id.to_string(),
                text,
            }));
        }
        // Status last: whoever waits on convergence and also reads the events then finds
        // this outcome's event already queued, so "repaired" is told before "diverged".
        self.shared.status.modify(|s| {
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
    }
}

/// A future whose panic is its output (as `Err` with the payload) instead of unwinding.
struct CatchUnwind<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| std::pin::Pin::new(inner).poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(payload) => std::task::Poll::Ready(Err(payload)),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}
