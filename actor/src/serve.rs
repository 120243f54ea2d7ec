//! The serve loop: the [`Actor`] takes actions in (live, or replayed while catching up), keeps
//! one graph task per name in force, and reports the actor's convergence as a whole.

use crate::graph_task::{result_data, Cmd, Crossed, Ctx, InForce};
use crate::intake::{Admit, Intake, Source};
use crate::policy::Policy;
use crate::rejected::{self, Reason};
use crate::replay::{catch_up, Replay};
use crate::store::{LastSeqs, Store};
use crate::sub::Inbound;
use crate::verify::{Refused, Verify};
use crate::{ActorError, Config};
use bus::{Action, Event};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The serve loop's state.
pub(crate) struct Actor {
    name: String,
    groups: Vec<String>,
    engine: engine::Engine,
    store: Option<Store>,
    /// What this host accepts at all.
    policy: Policy,
    ctx: Ctx,
    /// The graphs in force by name, with their convergence.
    graphs: HashMap<String, InForce>,
    /// The last serial handed to a graph task.
    serials: u64,
    /// Whether `actor/converged` (rather than `actor/diverged`) was the last one reported.
    converged_reported: bool,
    intake: Intake,
    /// The envelope and target checks every frame goes through first.
    verify: Verify,
    /// The last sequence applied per issuer, as kept in the store.
    last_seqs: LastSeqs,
    replay: Option<Replay>,
    /// Catch-ups in flight, oldest first; each ends with its replayed frames.
    catch_ups: VecDeque<JoinHandle<Vec<Vec<u8>>>>,
    inbound: mpsc::Receiver<Inbound>,
    crossings: mpsc::UnboundedReceiver<Crossed>,
    stop: Arc<AtomicBool>,
}

/// What woke the serve loop.
enum Wake {
    Inbound(Inbound),
    Crossed(Crossed),
    CaughtUp(Vec<Vec<u8>>),
    Stop,
}

impl Actor {
    pub(crate) fn new(
        cfg: Config,
        topics: Vec<String>,
        inbound: mpsc::Receiver<Inbound>,
        out: std_mpsc::Sender<Event>,
        stop: Arc<AtomicBool>,
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
        let mut intake = Intake::default();
        intake.saw(last_seqs.get(&verify.issuer()).copied().unwrap_or(0));
        Ok(Actor {
            engine: engine::Engine::new()?,
            store,
            policy: cfg.policy,
            ctx: Ctx {
                host: cfg.name.clone(),
                out,
                crossed,
                idle: cfg.converged_timeout,
                graphviz: cfg.graphviz,
            },
            replay: cfg.replay.map(|endpoint| Replay {
                endpoint,
                topics,
                max_frame: cfg.max_frame,
                security: cfg.security.clone(),
            }),
            name: cfg.name,
            groups: cfg.groups,
            graphs: HashMap::new(),
            serials: 0,
            converged_reported: true,
            intake,
            verify,
            last_seqs,
            catch_ups: VecDeque::new(),
            inbound,
            crossings,
            stop,
        })
    }

    /// Run until `stop` is set or the SUB thread is gone, then stop every graph.
    pub(crate) async fn serve(mut self) -> Result<(), ActorError> {
        self.restore().await;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            match self.next(&mut tick).await {
                Wake::Inbound(Inbound::Connected) => self.connected(),
                Wake::Inbound(Inbound::Frame(f)) => match self.verify.check(&f) {
                    Ok(a) => {
                        if let Some(a) = self.intake.hold(a) {
                            self.take(a, Source::Live).await;
                        }
                    }
                    Err(refused) => self.reject(&refused),
                },
                Wake::CaughtUp(replayed) => self.caught_up(replayed).await,
                Wake::Crossed(c) => self.crossed(c),
                Wake::Stop => break,
            }
        }
        for handle in self.catch_ups.drain(..) {
            handle.abort();
        }
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
                replayed = next_catch_up(&mut self.catch_ups) => return Wake::CaughtUp(replayed),
                _ = tick.tick() => if self.stop.load(Ordering::Relaxed) {
                    return Wake::Stop;
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
            match graph::Graph::from_value(&action.graph) {
                Ok(g) if !g.is_empty() && self.refused(&action, &g) => store.remove(&action.name),
                Ok(g) if !g.is_empty() => {
                    self.intake.saw(action.seq);
                    let running = self.engine.run(g, self.run_options(&action.name));
                    restored.push((action, running));
                }
                Ok(_) => store.remove(&action.name),
                Err(e) => tracing::error!(name = %action.name, "kept graph no longer valid: {e}"),
            }
        }
        for (action, mut running) in restored {
            let report = running.first_report().await;
            tracing::info!(name = %action.name, ok = report.ok, changed = report.changed.len(), "restored graph converged");
            self.ctx.write_dot(&action.name, &running);
            self.start(running, action, None);
        }
    }

    /// The subscription reached a publisher: catch up on what we have not seen. Live actions
    /// are held from now until it ends.
    fn connected(&mut self) {
        let since = self.intake.begin_catch_up();
        self.catch_ups
            .push_back(catch_up(self.replay.clone(), since));
    }

    /// A catch-up ended: what was published while we were away comes first, then the
    /// announcement that actions reach us, then what arrived live meanwhile.
    async fn caught_up(&mut self, replayed: Vec<Vec<u8>>) {
        for f in replayed {
            match self.verify.check(&f) {
                Ok(a) => self.take(a, Source::Replayed).await,
                Err(refused) => self.reject(&refused),
            }
        }
        self.ctx.emit(
            "actor/up",
            json!({"name": self.name, "groups": self.groups, "version": env!("CARGO_PKG_VERSION"), "graphs": self.graphs.len()}),
        );
        for a in self.intake.end_catch_up() {
            self.take(a, Source::Live).await;
        }
    }

    /// Take one verified action in: apply it, unless it is a duplicate, a replay or expired.
    async fn take(&mut self, action: Action, source: Source) {
        let claim = |a: &Action, reason| Refused {
            name: Some(a.name.clone()),
            seq: Some(a.seq),
            id: Some(a.id.clone()),
            reason,
        };
        match self.intake.admit(action, source, bus::now_ms()) {
            Admit::Apply(action) => {
                let seq = action.seq;
                // The graph is queued for the store (inside apply) before its sequence is, so
                // no group commit holds the sequence without the graph; the other way round,
                // the sequence would say "applied" of an action never stored, and it would be
                // lost.
                self.apply(action).await;
                self.applied_seq(seq);
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

    /// Keep the last sequence applied from the pinned issuer, queued after its graph (durable
    /// in the same group commit or a later one: a crash resumes from the durable sequence).
    fn applied_seq(&mut self, seq: u64) {
        let Some(store) = &self.store else { return };
        let issuer = self.verify.issuer();
        if seq > self.last_seqs.get(&issuer).copied().unwrap_or(0) {
            self.last_seqs.insert(issuer, seq);
            store.save_last_seqs(&self.last_seqs);
        }
    }

    /// Report a refused frame: nothing of it runs.
    fn reject(&self, r: &Refused) {
        tracing::warn!(name = ?r.name, seq = ?r.seq, "action rejected: {}", r.reason.detail());
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
                tracing::warn!(name = %action.name, "rejected action {}: {e}", action.id);
                self.ctx.emit(
                    "actor/result",
                    result_data(&action, "error", vec![], vec![e.to_string()], 0.0),
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
        if let Some(store) = &self.store {
            store.save(&action);
        }
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
        tracing::warn!(name = %action.name, rule = %r.rule, "policy refused action {}: {}", action.id, r.detail);
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
        let name = &action.name;
        if let Some(old) = self.graphs.remove(name) {
            old.stop().await;
        }
        if let Some(store) = &self.store {
            store.remove(name);
        }
        self.report_convergence();
        tracing::info!(name = %name, "graph removed");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.ctx.emit(
            "actor/result",
            result_data(&action, "ok", vec![], vec![], ms),
        );
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

/// The replayed actions of the oldest catch-up in flight, once it ends; never, with none.
/// Cancel-safe: the catch-up stays queued until it has ended.
async fn next_catch_up(queue: &mut VecDeque<JoinHandle<Vec<Vec<u8>>>>) -> Vec<Vec<u8>> {
    let Some(oldest) = queue.front_mut() else {
        return std::future::pending().await;
    };
    // A catch-up that panicked or was aborted only costs the replay.
    let replayed = oldest.await.unwrap_or_default();
    queue.pop_front();
    replayed
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
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crossing_sent_before_a_swap_does_not_mark_the_new_graph_converged() {
        let (_keep_inbound_open, inbound) = mpsc::channel(1);
        let (out, _events) = std_mpsc::channel();
        let cfg = Config {
            publish: String::new(),
            ingest: String::new(),
            name: "web1".into(),
            groups: Vec::new(),
            max_frame: 1024,
            state: None,
            graphviz: None,
            converged_timeout: Duration::from_secs(3600),
            replay: None,
            security: bus::secure::Security::Insecure,
            sign_key: None,
            policy: Policy::strict(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut actor = Actor::new(cfg, Vec::new(), inbound, out, stop).expect("actor");
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
