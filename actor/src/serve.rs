//! The serve loop: the [`Actor`] takes actions in (live, or replayed while catching up), keeps
//! one graph task per name in force, and reports the actor's convergence as a whole.

use crate::graph_task::{result_data, Cmd, Crossed, Ctx, InForce, Named};
use crate::intake::{Admit, Intake, Seen, Source};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::rejected::{self, Reason};
use crate::replay::{catch_up, Fetched, Replay};
use crate::store::{LastSeqs, Store};
use crate::sub::{Inbound, Msg};
use crate::verify::{Refused, Verify};
use crate::{ActorError, Config};
use bus::Action;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One publisher followed: its own numbering, catch-ups and connection.
struct Feed {
    /// Its PUB endpoint (for the log and `actor/up`).
    publish: String,
    /// What the last seq taken in from it is kept under in the store.
    key: String,
    intake: Intake,
    replay: Option<Replay>,
    /// Since when the connection to it is lost, if it is.
    lost_since: Option<Instant>,
}

/// The serve loop's state.
pub(crate) struct Actor {
    name: String,
    groups: Vec<String>,
    engine: engine::Engine,
    store: Option<Store>,
    /// What this host accepts at all.
    policy: Policy,
    /// Shared with every graph task: one copy, not one per graph.
    ctx: Arc<Ctx>,
    /// The graphs in force by name, with their convergence.
    graphs: HashMap<String, InForce>,
    /// The last serial handed to a graph task.
    serials: u64,
    /// Whether `actor/converged` (rather than `actor/diverged`) was the last one reported.
    converged_reported: bool,
    /// The publishers followed, as in [`Config::publishers`].
    feeds: Vec<Feed>,
    /// The ids taken in lately, from any publisher.
    seen: Seen,
    /// The envelope and target checks every frame goes through first.
    verify: Verify,
    /// The last sequence applied per publisher (see [`Feed::key`]), as kept in the store.
    last_seqs: LastSeqs,
    /// Catch-ups in flight, oldest first: from which publisher, why each began; each ends with
    /// its replayed frames.
    catch_ups: VecDeque<CatchUp>,
    /// Graphs kept for a while ([`bus::Life::For`]): name -> (action id, release time, Unix ms).
    leases: HashMap<String, (String, u64)>,
    /// One-shot graphs ([`bus::Life::Once`]) converging now.
    once: tokio::task::JoinSet<()>,
    inbound: mpsc::Receiver<Inbound>,
    crossings: mpsc::UnboundedReceiver<Crossed>,
    stop: Arc<AtomicBool>,
    metrics: Metrics,
    trim: crate::trim::Trim,
}

/// A catch-up in flight: from which publisher, why it began, and its fetch.
type CatchUp = (usize, Why, JoinHandle<Fetched>);

/// What woke the serve loop.
enum Wake {
    Inbound(Inbound),
    Crossed(Crossed),
    CaughtUp(usize, Why, Fetched),
    Tick,
    Stop,
}

/// Why a catch-up began.
#[derive(Clone, Copy, PartialEq)]
enum Why {
    /// The subscription reached a publisher.
    Connected,
    /// A live action named one before it never received.
    Gap,
}

impl Actor {
    pub(crate) fn new(
        cfg: Config,
        topics: Vec<String>,
        inbound: mpsc::Receiver<Inbound>,
        out: crate::graph_task::Out,
        stop: Arc<AtomicBool>,
        metrics: Metrics,
    ) -> Result<Actor, ActorError> {
        let (crossed, crossings) = mpsc::unbounded_channel();
        if cfg.sign_key.is_none() {
            tracing::warn!("insecure mode: actions are NOT verified (no pinned signing key)");
        }
        let verify = Verify {
            key: cfg.sign_key,
            name: cfg.name.clone(),
            groups: cfg.groups.clone(),
            max_frame: cfg.max_frame,
        };
        let store = cfg.state.as_deref().map(|s| Store::new(s, &cfg.name));
        let last_seqs = store.as_ref().map(Store::last_seqs).unwrap_or_default();
        let one = cfg.publishers.len() == 1;
        let feeds = cfg
            .publishers
            .into_iter()
            .map(|p| {
                // One publisher keeps its seq under the issuer alone, as before there could be
                // several; each of several under the issuer and its endpoint.
                let key = if one {
                    verify.issuer()
                } else {
                    format!("{} {}", verify.issuer(), p.publish)
                };
                let mut intake = Intake::default();
                intake.saw(last_seqs.get(&key).copied().unwrap_or(0));
                Feed {
                    replay: p.replay.map(|endpoint| Replay {
                        endpoint,
                        topics: topics.clone(),
                        max_frame: cfg.max_frame,
                        security: cfg.security.clone(),
                    }),
                    publish: p.publish,
                    key,
                    intake,
                    lost_since: None,
                }
            })
            .collect();
        let mut engine = engine::Engine::new()?;
        engine.observe_checks(metrics.observer());
        Ok(Actor {
            engine,
            metrics,
            store,
            policy: cfg.policy,
            ctx: Arc::new(Ctx {
                host: cfg.name.clone(),
                out,
                crossed,
                idle: cfg.converged_timeout,
                graphviz: cfg.graphviz,
            }),
            name: cfg.name,
            groups: cfg.groups,
            graphs: HashMap::new(),
            serials: 0,
            converged_reported: true,
            feeds,
            seen: Seen::default(),
            verify,
            last_seqs,
            catch_ups: VecDeque::new(),
            leases: HashMap::new(),
            once: tokio::task::JoinSet::new(),
            inbound,
            crossings,
            stop,
            trim: crate::trim::Trim::new(),
        })
    }

    /// Run until `stop` is set or the SUB thread is gone, then stop every graph.
    pub(crate) async fn serve(mut self) -> Result<(), ActorError> {
        self.restore().await;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            match self.next(&mut tick).await {
                Wake::Inbound(Inbound { from, msg }) => match msg {
                    Msg::Connected => self.connected(from),
                    Msg::Lost => self.lost(from),
                    Msg::Tick { topic, last } => self.ticked(from, &topic, last),
                    Msg::Frames(frames) => {
                        for checked in self.verify.check_all(&frames) {
                            match checked {
                                Ok(a) => self.take_live(from, a).await,
                                Err(refused) => self.reject(&refused),
                            }
                        }
                    }
                },
                Wake::CaughtUp(from, why, fetched) => self.caught_up(from, why, fetched).await,
                Wake::Crossed(c) => self.crossed(c),
                Wake::Tick => {
                    self.release_leases().await;
                    telemetry::set_gauge(&self.metrics.graphs, self.graphs.len() + self.once.len());
                    telemetry::set_gauge(&self.metrics.inbound, self.inbound.len());
                    if self.trim.due(Instant::now()) {
                        bus::trim::release();
                    }
                }
                Wake::Stop => break,
            }
        }
        for (_, _, handle) in self.catch_ups.drain(..) {
            handle.abort();
        }
        self.once.shutdown().await;
        for (_, g) in self.graphs.drain() {
            g.stop().await;
        }
        Ok(())
    }

    /// Wait for the next thing to do; the tick is how often `stop` is looked at.
    async fn next(&mut self, tick: &mut tokio::time::Interval) -> Wake {
        loop {
            tokio::select! {
                m = self.inbound.recv() => return m.map_or(Wake::Stop, Wake::Inbound),
                Some(c) = self.crossings.recv() => return Wake::Crossed(c),
                (from, why, fetched) = next_catch_up(&mut self.catch_ups) => return Wake::CaughtUp(from, why, fetched),
                Some(_) = self.once.join_next() => {}
                _ = tick.tick() => return if self.stop.load(Ordering::Relaxed) {
                    Wake::Stop
                } else {
                    Wake::Tick
                },
            }
        }
    }

    /// Graphs kept by a previous run converge again before any new action is taken, those
    /// the policy (perhaps tightened since) still admits.
    async fn restore(&mut self) {
        let Some(store) = &self.store else { return };
        let mut restored = Vec::new();
        for action in store.load() {
            let over = action.expires.is_some_and(|t| t < bus::now_ms());
            match graph::Graph::from_value(&action.graph) {
                // Kept for a while, and the while ended with the actor away: released.
                Ok(_) if over && matches!(action.life, bus::Life::For(_)) => {
                    tracing::info!(name = %action.name, action = %action.id, event = %action.origin.event, "kept graph's time ended while away: released");
                    store.remove(&action.name)
                }
                Ok(g) if !g.is_empty() && self.refused(&action, &g) => store.remove(&action.name),
                Ok(g) if !g.is_empty() => {
                    // The same action replayed (by any publisher) is a duplicate. Its seq
                    // says nothing of the others (one missed before it is still to be fetched).
                    self.seen.remember(&action.id);
                    let running = self.engine.run(g, self.run_options(&action.name));
                    restored.push((action, running));
                }
                Ok(_) => store.remove(&action.name),
                Err(e) => {
                    tracing::error!(name = %action.name, action = %action.id, event = %action.origin.event, "kept graph no longer valid: {e}")
                }
            }
        }
        for (action, mut running) in restored {
            self.lease(&action);
            let report = running.first_report().await;
            tracing::info!(name = %action.name, action = %action.id, event = %action.origin.event, ok = report.ok, changed = report.changed.len(), "restored graph converged");
            self.ctx.write_dot(&action.name, &running);
            self.start(running, action, None);
        }
    }

    /// Start catching up from publisher `from` since `since`.
    fn catch_up(&mut self, from: usize, why: Why, since: u64) {
        let replay = self.feeds[from].replay.clone();
        self.catch_ups
            .push_back((from, why, catch_up(replay, since)));
    }

    /// The subscription reached publisher `from`: catch up on what we have not seen from it.
    /// Its live actions are held from now until that ends.
    fn connected(&mut self, from: usize) {
        let feed = &mut self.feeds[from];
        match feed.lost_since.take() {
            Some(t) => tracing::info!(
                publisher = %feed.publish,
                after_s = t.elapsed().as_secs_f64(),
                "publisher reached again"
            ),
            None => tracing::info!(publisher = %feed.publish, "publisher reached"),
        }
        let since = feed.intake.begin_catch_up();
        self.catch_up(from, Why::Connected, since);
    }

    /// The connection to publisher `from` is gone (it stopped, or its heartbeats did): its
    /// actions cannot reach us until the subscription reconnects and catches up.
    fn lost(&mut self, from: usize) {
        let feed = &mut self.feeds[from];
        if feed.lost_since.is_none() {
            feed.lost_since = Some(Instant::now());
            tracing::warn!(publisher = %feed.publish, "publisher connection lost; reconnecting");
        }
    }

    /// Publisher `from`'s last seq on `topic`: behind it, the tail of a burst was dropped for
    /// us.
    fn ticked(&mut self, from: usize, topic: &str, last: u64) {
        let feed = &mut self.feeds[from];
        if feed.intake.catching_up() || feed.replay.is_none() {
            return;
        }
        if let Some(since) = feed.intake.behind(topic, last) {
            tracing::warn!(publisher = %feed.publish, topic, last, since, "missed actions (the publisher's tick is ahead): fetching them from the replay endpoint");
            feed.intake.begin_gap(since, None);
            self.catch_up(from, Why::Gap, since);
        }
    }

    /// A live action from publisher `from`: taken in now, held behind a catch-up from it in
    /// flight, or, when it shows that actions before it were missed, held while they are
    /// fetched.
    async fn take_live(&mut self, from: usize, action: Action) {
        let feed = &mut self.feeds[from];
        if feed.intake.catching_up() {
            feed.intake.hold(action);
            return;
        }
        if let Some(since) = feed.intake.gap(&action) {
            tracing::warn!(
                publisher = %feed.publish,
                topic = %action.target.topic(),
                prev = action.prev,
                last = since,
                seq = action.seq,
                "missed actions (dropped by the publisher for a slow subscriber): fetching them from the replay endpoint"
            );
            if feed.replay.is_some() {
                feed.intake.begin_gap(since, Some(action));
                self.catch_up(from, Why::Gap, since);
                return;
            }
        }
        self.take(from, action, Source::Live).await;
    }

    /// A catch-up from publisher `from` ended: what it published while we were away (or
    /// missed) comes first, then, after a connection, the announcement that actions reach us,
    /// then what arrived live from it meanwhile.
    async fn caught_up(&mut self, from: usize, why: Why, fetched: Fetched) {
        for chunk in fetched.frames.chunks(crate::sub::BATCH) {
            for checked in self.verify.check_all(chunk) {
                match checked {
                    Ok(a) => self.take(from, a, Source::Replayed).await,
                    Err(refused) => self.reject(&refused),
                }
            }
        }
        if why == Why::Connected {
            self.ctx.emit(
                "actor/up",
                json!({"name": self.name, "groups": self.groups, "version": env!("CARGO_PKG_VERSION"), "graphs": self.graphs.len(), "publisher": self.feeds[from].publish}),
            );
        }
        for a in self.feeds[from].intake.end_catch_up(fetched.covered) {
            self.take_live(from, a).await;
        }
        self.applied_seq(from);
    }

    /// Take one verified action from publisher `from` in: apply it, unless it is a duplicate
    /// (from any publisher), a replay or expired.
    async fn take(&mut self, from: usize, action: Action, source: Source) {
        let claim = |a: &Action, reason| Refused {
            name: Some(a.name.clone()),
            seq: Some(a.seq),
            id: Some(a.id.clone()),
            reason,
        };
        let intake = &mut self.feeds[from].intake;
        match intake.admit(&mut self.seen, action, source, bus::now_ms()) {
            Admit::Apply(action) => {
                self.trim.action();
                // The graph is queued for the store (inside apply) before its sequence is, so
                // no group commit holds the sequence without the graph; the other way round,
                // the sequence would say "applied" of an action never stored, and it would be
                // lost.
                self.apply(action).await;
                self.applied_seq(from);
            }
            Admit::Expired(action) => self.reject(&claim(&action, Reason::Expired)),
            Admit::Replayed { seq, last } => {
                // Only the claim is reported; the action was never taken in.
                let refused = Refused {
                    name: None,
                    seq: Some(seq),
                    id: None,
                    reason: Reason::Replayed { seq, last },
                };
                self.reject(&refused)
            }
            Admit::Skip => {}
        }
    }

    /// Keep the last sequence applied from publisher `from`, queued after its graph (durable
    /// in the same group commit or a later one: a crash resumes from the durable sequence),
    /// never past a gap still being filled.
    fn applied_seq(&mut self, from: usize) {
        let Some(store) = &self.store else { return };
        let feed = &self.feeds[from];
        let seq = feed.intake.safe_seq();
        if seq > self.last_seqs.get(&feed.key).copied().unwrap_or(0) {
            self.last_seqs.insert(feed.key.clone(), seq);
            store.save_last_seqs(&self.last_seqs);
        }
    }

    /// Report a refused frame: nothing of it runs.
    fn reject(&self, r: &Refused) {
        tracing::warn!(name = ?r.name, seq = ?r.seq, action = ?r.id, "action rejected: {}", r.reason.detail());
        self.ctx.emit(
            rejected::TAG,
            rejected::data(r.id.as_deref(), r.name.as_deref(), r.seq, &r.reason),
        );
    }

    /// Put an action's graph in force under its name: started, swapped in, or (empty) removed.
    async fn apply(&mut self, action: Action) {
        let started = Instant::now();
        let graph = match graph::Graph::from_value(&action.graph) {
            Ok(g) => g,
            Err(e) => {
                // The graph in force under this name (if any) keeps running.
                tracing::warn!(name = %action.name, event = %action.origin.event, "rejected action {}: {e}", action.id);
                self.ctx.emit(
                    "actor/result",
                    result_data(
                        &Named::of(&action),
                        "error",
                        vec![],
                        vec![e.to_string()],
                        0.0,
                    ),
                );
                return;
            }
        };
        if graph.is_empty() {
            return self.remove(action, started).await;
        }
        // Before anything runs or is stored; the graph in force under this name keeps running.
        if self.refused(&action, &graph) {
            return;
        }
        if action.life == bus::Life::Once {
            return self.run_once(action, graph, started).await;
        }
        if let Some(store) = &self.store {
            store.save(&action);
        }
        self.lease(&action);
        let name = action.name.clone();
        // The graph in force under this name is diffed against the new one, not restarted.
        let serial = self.serials + 1;
        let (graph, action) = match self.graphs.get_mut(&name) {
            None => (graph, Box::new(action)),
            Some(inf) => match inf.cmds.send(Cmd::Swap {
                graph,
                action: Box::new(action),
                started,
                serial,
            }) {
                Ok(()) => {
                    // A crossing the task sent about the old graph is stale from here on.
                    self.serials = serial;
                    inf.serial = serial;
                    inf.converged = false;
                    self.report_convergence();
                    return;
                }
                // Its task is gone (it cannot normally end by itself): start afresh.
                Err(mpsc::error::SendError(Cmd::Swap { graph, action, .. })) => (graph, action),
                Err(_) => return,
            },
        };
        if let Some(old) = self.graphs.remove(&name) {
            old.task.abort();
        }
        let running = self.engine.run(graph, self.run_options(&name));
        self.start(running, *action, Some(started));
        self.report_convergence();
    }

    /// Whether the policy refuses `graph`; a refusal is reported as `actor/rejected`.
    fn refused(&self, action: &Action, graph: &graph::Graph) -> bool {
        let Err(r) = self.policy.check(graph) else {
            return false;
        };
        tracing::warn!(name = %action.name, rule = %r.rule, event = %action.origin.event, "policy refused action {}: {}", action.id, r.detail);
        let why = Reason::Policy {
            rule: r.rule,
            detail: r.detail,
        };
        self.ctx.emit(
            rejected::TAG,
            rejected::data(Some(&action.id), Some(&action.name), Some(action.seq), &why),
        );
        true
    }

    /// An empty graph: stop and forget the one in force under its name.
    async fn remove(&mut self, action: Action, started: Instant) {
        self.release(&action.name).await;
        let name = &action.name;
        tracing::info!(name = %name, "graph removed");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.ctx.emit(
            "actor/result",
            result_data(&Named::of(&action), "ok", vec![], vec![], ms),
        );
    }

    /// Stop and forget the graph in force under `name`, if any, and its stored copy.
    async fn release(&mut self, name: &str) {
        self.leases.remove(name);
        if let Some(old) = self.graphs.remove(name) {
            old.stop().await;
        }
        if let Some(store) = &self.store {
            store.remove(name);
        }
        self.report_convergence();
    }

    /// Note when a graph kept for a while is released (or that it is kept for good).
    fn lease(&mut self, action: &Action) {
        match (action.life, action.expires) {
            (bus::Life::For(_), Some(until)) => {
                self.leases
                    .insert(action.name.clone(), (action.id.clone(), until));
            }
            _ => {
                self.leases.remove(&action.name);
            }
        }
    }

    /// Release the graphs whose time is up, reporting each as `actor/released`.
    async fn release_leases(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        let now = bus::now_ms();
        let due: Vec<(String, String)> = self
            .leases
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(name, (id, _))| (name.clone(), id.clone()))
            .collect();
        for (name, id) in due {
            self.release(&name).await;
            tracing::info!(name = %name, action = %id, "graph's time is up: released");
            self.ctx
                .emit("actor/released", json!({"name": name, "action": id}));
        }
    }

    /// A one-shot action: the graph in force under its name (if any) is released, and this one
    /// converges once on a task of its own, reports `actor/result`, and stops; nothing of it is
    /// kept or watched.
    async fn run_once(&mut self, action: Action, graph: graph::Graph, started: Instant) {
        self.release(&action.name).await;
        let mut running = self.engine.run(
            graph,
            engine::RunOptions {
                noop: false,
                state_dir: None,
            },
        );
        let ctx = Arc::clone(&self.ctx);
        self.once.spawn(async move {
            let first = running.first_report().await;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let status = if first.ok { "ok" } else { "error" };
            tracing::info!(name = %action.name, action = %action.id, event = %action.origin.event, status, changed = first.changed.len(), ms, "one-shot action converged: released");
            ctx.emit(
                "actor/result",
                result_data(&Named::of(&action), status, first.changed, first.errors, ms),
            );
            running.stop().await;
        });
    }

    /// Hand a running graph to a new task, as the one in force under its name.
    fn start(&mut self, running: engine::Running, action: Action, started: Option<Instant>) {
        self.serials += 1;
        let name = action.name.clone();
        let inf = InForce::start(&self.ctx, running, action, started, self.serials);
        self.graphs.insert(name, inf);
    }

    fn run_options(&self, name: &str) -> engine::RunOptions {
        engine::RunOptions {
            noop: false,
            state_dir: self.store.as_ref().map(|s| s.engine_dir(name)),
        }
    }

    /// A graph task crossed over; a report from an incarnation since replaced is stale.
    fn crossed(&mut self, c: Crossed) {
        if let Some(inf) = self
            .graphs
            .get_mut(&c.name)
            .filter(|g| g.serial == c.serial)
        {
            inf.converged = c.converged;
        }
        self.report_convergence();
    }

    /// Emit `actor/converged` / `actor/diverged` when the actor as a whole crosses over.
    fn report_convergence(&mut self) {
        let now = self.graphs.values().all(|g| g.converged);
        if now == self.converged_reported {
            return;
        }
        self.converged_reported = now;
        let graphs = self.graphs.len();
        if now {
            tracing::info!(graphs, "converged");
            self.ctx.emit(
                "actor/converged",
                json!({"graphs": graphs, "idle_s": self.ctx.idle.as_secs_f64()}),
            );
        } else {
            let mut diverged: Vec<&String> = self
                .graphs
                .iter()
                .filter(|(_, g)| !g.converged)
                .map(|(n, _)| n)
                .collect();
            diverged.sort();
            tracing::info!(?diverged, "diverged");
            self.ctx.emit(
                "actor/diverged",
                json!({"graphs": graphs, "diverged": diverged}),
            );
        }
    }
}

/// The replayed actions of a catch-up that ended, the oldest in flight from its publisher
/// (one publisher's catch-ups are taken in the order they began; a slow one does not hold up
/// another publisher's); never, with none. Cancel-safe: a catch-up stays queued until the
/// poll that returns it.
async fn next_catch_up(queue: &mut VecDeque<CatchUp>) -> (usize, Why, Fetched) {
    use std::future::Future;
    std::future::poll_fn(|cx| {
        let mut polled: Vec<usize> = Vec::new();
        for i in 0..queue.len() {
            let from = queue[i].0;
            if polled.contains(&from) {
                continue;
            }
            polled.push(from);
            if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut queue[i].2).poll(cx) {
                let why = queue[i].1;
                queue.remove(i);
                // A catch-up that panicked or was aborted only costs the replay.
                return std::task::Poll::Ready((from, why, r.unwrap_or_default()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(seq: u64, noop: &str) -> Action {
        Action {
            id: format!("a{seq}"),
            name: "g".into(),
            seq,
            target: bus::Target::All,
            graph: json!([{"kind": "noop", "name": noop}]),
            origin: bus::Origin::default(),
            expires: None,
            life: bus::Life::Keep,
            prev: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crossing_sent_before_a_swap_does_not_mark_the_new_graph_converged() {
        let (_keep_inbound_open, inbound) = mpsc::channel(1);
        let (out, _events) = std::sync::mpsc::channel();
        let out = crate::graph_task::out_to(out);
        let cfg = Config {
            publishers: vec![crate::Publisher {
                publish: "tcp://127.0.0.1:1".into(),
                replay: None,
            }],
            managers: Vec::new(),
            name: "web1".into(),
            groups: Vec::new(),
            max_frame: 1024,
            state: None,
            graphviz: None,
            converged_timeout: Duration::from_secs(3600),
            security: bus::secure::Security::Insecure,
            sign_key: None,
            policy: Policy::strict(),
            http: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut actor = Actor::new(
            cfg,
            Vec::new(),
            inbound,
            out,
            stop,
            crate::metrics::Metrics::new().0,
        )
        .expect("actor");
        actor.apply(action(1, "a")).await;
        let before = actor.graphs["g"].serial;
        actor.apply(action(2, "b")).await;
        let after = actor.graphs["g"].serial;
        assert_ne!(before, after, "a swap starts a new serial");

        // What the task said about the old graph, arriving after the swap: stale.
        actor.crossed(Crossed {
            name: "g".into(),
            serial: before,
            converged: true,
        });
        assert!(!actor.graphs["g"].converged);
        // What it says about the new graph counts.
        actor.crossed(Crossed {
            name: "g".into(),
            serial: after,
            converged: true,
        });
        assert!(actor.graphs["g"].converged);
        for (_, g) in actor.graphs.drain() {
            g.stop().await;
        }
    }
}
