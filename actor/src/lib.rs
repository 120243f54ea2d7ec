//! The reflex actor: the hands on a host.
//!
//! It subscribes to the publisher for `all/`, its host and its groups, runs every action it
//! receives through the resource-graph engine ([`actions`]) and reports back to the manager as
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
//! Threads: one owns the SUB socket, one owns the PUSH socket back to the manager (ZeroMQ sockets
//! are not thread-safe), and a tokio runtime runs the graphs.

use bus::{Action, Event, Target};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

#[derive(Debug, Error)]
pub enum ActorError {
    #[error(transparent)]
    Socket(#[from] bus::sockets::SocketError),
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("engine: {0}")]
    Engine(#[from] actions::EngineError),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Publisher PUB endpoint to subscribe to.
    pub publish: String,
    /// Manager ingest endpoint results go to.
    pub ingest: String,
    /// This actor's host name (its `host/<name>/` topic).
    pub name: String,
    pub groups: Vec<String>,
    pub max_frame: usize,
    /// The stack's state dir; the actor keeps its graphs (and their pending refreshes) under
    /// `<state>/actor-<name>/` and converges them again after a restart. `None`: nothing is
    /// kept.
    pub state: Option<PathBuf>,
    /// Write each graph as `<dir>/<name>.dot` (graphviz) whenever it converged or changed.
    pub graphviz: Option<PathBuf>,
    /// Idle time after which the actor reports `actor/converged`.
    pub converged_timeout: Duration,
    /// Publisher replay endpoint: on each (re)connection the actor asks it for the actions in
    /// force for its topics that it has not seen (it was down, or started late). `None`: live
    /// actions only.
    pub replay: Option<String>,
}

/// What the SUB thread hands the runtime.
enum Inbound {
    Action(Box<Action>),
    /// An action from the publisher's log, fetched after (re)connecting.
    Replayed(Box<Action>),
    /// The subscription reached a publisher (first connect or reconnect).
    Subscribed,
}

/// Run an actor until `stop` is set.
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<(), ActorError> {
    for t in Target::subscriptions(&cfg.name, &cfg.groups) {
        // Validate names early: a group with a slash would silently never match.
        if Target::parse(t.trim_end_matches('/')).is_err() {
            return Err(ActorError::Runtime(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad actor name or group: topic {t:?}"),
            )));
        }
    }
    let (out_tx, out_rx) = std_mpsc::channel::<Event>();
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(1024);

    let push = bus::sockets::connect(zmq::PUSH, &cfg.ingest)?;
    let sender = std::thread::Builder::new()
        .name("actor-push".into())
        .spawn(move || push_loop(push, out_rx))?;

    let (sub, watch) = bus::sockets::connect_watched(zmq::SUB, &cfg.publish)?;
    for topic in Target::subscriptions(&cfg.name, &cfg.groups) {
        sub.set_subscribe(topic.as_bytes())?;
    }
    let sub_stop = stop.clone();
    let seen = Arc::new(AtomicU64::new(0));
    let replay = cfg.replay.clone().map(|endpoint| Replay {
        endpoint,
        topics: Target::subscriptions(&cfg.name, &cfg.groups),
        seen: seen.clone(),
        max_frame: cfg.max_frame,
    });
    let max_frame = cfg.max_frame;
    let receiver = std::thread::Builder::new()
        .name("actor-sub".into())
        .spawn(move || sub_loop(sub, watch, in_tx, max_frame, replay, &sub_stop))?;

    tracing::info!(name = %cfg.name, groups = ?cfg.groups, publish = %cfg.publish, ingest = %cfg.ingest, "actor up");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(cfg, in_rx, out_tx, stop.clone(), seen));
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    // The runtime is gone, so every sender of the result channel is dropped: the push thread
    // sends what is left and ends.
    drop(rt);
    let _ = sender.join();
    result
}

fn push_loop(push: zmq::Socket, rx: std_mpsc::Receiver<Event>) {
    for ev in rx {
        // Blocking send: results queue (up to the HWM) while the manager is away.
        if let Err(e) = push.send(bus::encode(&ev), 0) {
            tracing::error!("cannot send {} to the manager: {e}", ev.tag);
        }
    }
}

/// Where and what to ask the publisher's replay socket.
struct Replay {
    endpoint: String,
    topics: Vec<String>,
    /// The highest sequence number the actor has taken in.
    seen: Arc<AtomicU64>,
    max_frame: usize,
}

impl Replay {
    /// The actions in force for our topics newer than what we have seen, oldest first. A
    /// publisher that does not answer within 2 s only costs the replay: live actions still flow.
    fn fetch(&self) -> Vec<Action> {
        let since = self.seen.load(Ordering::Relaxed);
        let req = json!({"since": since, "topics": self.topics, "latest_only": true});
        let ask = || -> Result<Vec<Vec<u8>>, String> {
            let s = bus::sockets::connect(zmq::REQ, &self.endpoint).map_err(|e| e.to_string())?;
            s.set_rcvtimeo(2_000).map_err(|e| e.to_string())?;
            s.set_linger(0).map_err(|e| e.to_string())?;
            s.send(req.to_string().as_bytes(), 0)
                .map_err(|e| e.to_string())?;
            s.recv_multipart(0).map_err(|e| e.to_string())
        };
        match ask() {
            Ok(parts) => {
                let actions: Vec<Action> = parts
                    .iter()
                    .skip(1)
                    .filter_map(|f| bus::decode_with_limit(f, self.max_frame).ok())
                    .collect();
                tracing::info!(
                    since,
                    replayed = actions.len(),
                    "replay from the publisher's log"
                );
                actions
            }
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint, "replay failed: {e}; live actions only");
                Vec::new()
            }
        }
    }
}

fn sub_loop(
    sub: zmq::Socket,
    watch: bus::sockets::HandshakeWatch,
    tx: mpsc::Sender<Inbound>,
    max_frame: usize,
    replay: Option<Replay>,
    stop: &AtomicBool,
) {
    let mut bad = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (data, shake) = {
            let mut items = [
                sub.as_poll_item(zmq::POLLIN),
                watch.socket().as_poll_item(zmq::POLLIN),
            ];
            if bus::sockets::poll(&mut items, 100).is_err() {
                continue;
            }
            (items[0].is_readable(), items[1].is_readable())
        };
        if shake && watch.drain() {
            // Subscriptions travel right after the handshake; give them a moment to land
            // before announcing that actions will now reach us.
            std::thread::sleep(Duration::from_millis(50));
            // What was published while we were away comes first; anything that also arrives
            // live is a duplicate by sequence number and is ignored.
            for a in replay.as_ref().map(Replay::fetch).unwrap_or_default() {
                if tx.blocking_send(Inbound::Replayed(Box::new(a))).is_err() {
                    return;
                }
            }
            if tx.blocking_send(Inbound::Subscribed).is_err() {
                return;
            }
        }
        if !data {
            continue;
        }
        while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
            let decoded = match parts.as_slice() {
                [_topic, frame] => {
                    bus::decode_with_limit::<Action>(frame, max_frame).map_err(|e| e.to_string())
                }
                _ => Err(format!("expected 2 frames, got {}", parts.len())),
            };
            match decoded {
                Ok(a) => {
                    if tx.blocking_send(Inbound::Action(Box::new(a))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    bad += 1;
                    if bad == 1 {
                        tracing::warn!(
                            "dropped a bad action frame: {e} (further ones are only counted)"
                        );
                    }
                }
            }
        }
    }
}

/// The data of an `actor/result` event. `origin` names the event and rule that caused the
/// action, so rules reacting to results can correlate them with their cause.
fn result_data(
    action: &Action,
    status: &str,
    changed: Vec<String>,
    errors: Vec<String>,
    ms: f64,
) -> serde_json::Value {
    json!({
        "action": action.id,
        "name": action.name,
        "seq": action.seq,
        "origin": {"event": action.origin.event, "rule": action.origin.rule},
        "status": status,
        "changed": changed,
        "errors": errors,
        "ms": ms,
    })
}

/// One named graph in force: its task owns the engine's `Running`.
struct InForce {
    /// Tells this incarnation's convergence reports from a later one's.
    serial: u64,
    cmds: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl InForce {
    /// Hand a running graph to its own task, which reports on it and takes its commands.
    fn start(
        ctx: &Ctx,
        running: actions::Running,
        action: Action,
        started: Option<Instant>,
        serial: u64,
    ) -> InForce {
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(graph_task(
            ctx.clone(),
            running,
            action,
            started,
            cmd_rx,
            serial,
        ));
        InForce { serial, cmds, task }
    }
}

enum Cmd {
    /// Diff the running graph against this one (GraphSync) and report the new action.
    Swap {
        graph: actions::Graph,
        action: Box<Action>,
        started: Instant,
    },
    Stop,
}

/// What every graph task shares.
#[derive(Clone)]
struct Ctx {
    host: String,
    out: std_mpsc::Sender<Event>,
    conv: mpsc::UnboundedSender<(String, u64, bool)>,
    idle: Duration,
    graphviz: Option<PathBuf>,
}

impl Ctx {
    fn emit(&self, tag: &str, data: serde_json::Value) {
        // Gone only while shutting down; nobody left to tell.
        let _ = self.out.send(Event::new(tag, self.host.clone(), data));
    }

    fn write_dot(&self, name: &str, running: &actions::Running) {
        let Some(dir) = &self.graphviz else { return };
        let file = dir.join(format!("{}.dot", safe_name(name)));
        if let Err(e) = std::fs::create_dir_all(dir)
            .and_then(|()| atomic_write(&file, running.to_dot(name).as_bytes()))
        {
            tracing::warn!(file = %file.display(), "cannot write graphviz: {e}");
        }
    }
}

/// Where the actor keeps its graphs and their engine state: `<state>/actor-<name>/`.
struct Store {
    graphs: PathBuf,
    engine: PathBuf,
}

impl Store {
    fn new(state: &Path, name: &str) -> Store {
        let dir = state.join(format!("actor-{}", safe_name(name)));
        Store {
            graphs: dir.join("graphs"),
            engine: dir.join("engine"),
        }
    }

    fn graph_file(&self, name: &str) -> PathBuf {
        self.graphs.join(format!("{}.json", hex(name)))
    }

    fn engine_dir(&self, name: &str) -> PathBuf {
        self.engine.join(hex(name))
    }

    /// Keep `action` as the graph in force under its name.
    fn save(&self, action: &Action) {
        let file = self.graph_file(&action.name);
        let result = serde_json::to_vec(action)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.graphs)?;
                atomic_write(&file, &bytes)
            });
        if let Err(e) = result {
            tracing::error!(name = %action.name, file = %file.display(), "cannot persist graph: {e}");
        }
    }

    /// Forget the graph under `name`, and its engine state (pending refreshes).
    fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.graph_file(name));
        let _ = std::fs::remove_dir_all(self.engine_dir(name));
    }

    /// The graphs kept by a previous run. An unreadable one is logged and skipped.
    fn load(&self) -> Vec<Action> {
        let entries = match std::fs::read_dir(&self.graphs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::error!(dir = %self.graphs.display(), "cannot read kept graphs: {e}");
                return Vec::new();
            }
        };
        let mut actions = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Action>(&b).map_err(|e| e.to_string()))
            {
                Ok(a) => actions.push(a),
                Err(e) => tracing::error!(file = %path.display(), "skipping a kept graph: {e}"),
            }
        }
        actions.sort_by_key(|a| a.seq);
        actions
    }
}

async fn serve(
    cfg: Config,
    mut rx: mpsc::Receiver<Inbound>,
    out: std_mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
) -> Result<(), ActorError> {
    let engine = actions::Engine::new()?;
    let store = cfg.state.as_deref().map(|s| Store::new(s, &cfg.name));
    let (conv_tx, mut conv_rx) = mpsc::unbounded_channel();
    let ctx = Ctx {
        host: cfg.name.clone(),
        out: out.clone(),
        conv: conv_tx,
        idle: cfg.converged_timeout,
        graphviz: cfg.graphviz.clone(),
    };
    let mut graphs: HashMap<String, InForce> = HashMap::new();
    let mut serials = 0u64;
    // Per graph: (serial, converged). The actor is converged when every graph is.
    let mut conv: HashMap<String, (u64, bool)> = HashMap::new();
    let mut converged_reported = true;
    let mut last_seq = 0u64;
    let run_opts = |name: &str| actions::RunOptions {
        noop: false,
        state_dir: store.as_ref().map(|s| s.engine_dir(name)),
    };

    // Graphs kept by a previous run converge again before any new action is taken.
    if let Some(store) = &store {
        let mut restored = Vec::new();
        for action in store.load() {
            match actions::Graph::from_value(&action.graph) {
                Ok(g) if !g.is_empty() => {
                    last_seq = last_seq.max(action.seq);
                    seen.store(last_seq, Ordering::Relaxed);
                    let running = engine.run(g, run_opts(&action.name));
                    restored.push((action, running));
                }
                Ok(_) => store.remove(&action.name),
                Err(e) => tracing::error!(name = %action.name, "kept graph no longer valid: {e}"),
            }
        }
        for (action, mut running) in restored {
            let report = running.first_report().await;
            tracing::info!(name = %action.name, ok = report.ok, changed = report.changed.len(), "restored graph converged");
            ctx.write_dot(&action.name, &running);
            serials += 1;
            conv.insert(action.name.clone(), (serials, false));
            let name = action.name.clone();
            graphs.insert(name, InForce::start(&ctx, running, action, None, serials));
        }
    }

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            Some((name, serial, is)) = conv_rx.recv() => {
                if let Some(entry) = conv.get_mut(&name).filter(|e| e.0 == serial) {
                    entry.1 = is;
                }
                report_convergence(&ctx, &conv, &mut converged_reported);
                continue;
            }
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) { break; }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let action = match msg {
            Inbound::Subscribed => {
                ctx.emit(
                    "actor/up",
                    json!({"name": cfg.name, "groups": cfg.groups, "version": env!("CARGO_PKG_VERSION"), "graphs": graphs.len()}),
                );
                continue;
            }
            Inbound::Action(a) => *a,
            // An action that expired while we were away is history, not an error to report.
            Inbound::Replayed(a) if a.expires.is_some_and(|t| t < bus::now_ms()) => continue,
            Inbound::Replayed(a) => *a,
        };
        // A restarted publisher continues its numbering, so an old number is a duplicate.
        if action.seq != 0 && action.seq <= last_seq {
            tracing::debug!(seq = action.seq, "duplicate action ignored");
            continue;
        }
        last_seq = action.seq.max(last_seq);
        seen.store(last_seq, Ordering::Relaxed);
        let started = Instant::now();
        let report =
            |status: &str, errors: Vec<String>| result_data(&action, status, vec![], errors, 0.0);
        if action.expires.is_some_and(|t| t < bus::now_ms()) {
            ctx.emit(
                "actor/result",
                report("error", vec!["expired before it arrived".into()]),
            );
            continue;
        }
        let graph = match actions::Graph::from_value(&action.graph) {
            Ok(g) => g,
            Err(e) => {
                // The graph in force under this name (if any) keeps running.
                tracing::warn!(name = %action.name, "rejected action {}: {e}", action.id);
                ctx.emit("actor/result", report("error", vec![e.to_string()]));
                continue;
            }
        };
        let name = action.name.clone();
        if graph.is_empty() {
            if let Some(old) = graphs.remove(&name) {
                let _ = old.cmds.send(Cmd::Stop);
                let _ = old.task.await;
            }
            if let Some(store) = &store {
                store.remove(&name);
            }
            conv.remove(&name);
            report_convergence(&ctx, &conv, &mut converged_reported);
            tracing::info!(name = %name, "graph removed");
            let ms = started.elapsed().as_secs_f64() * 1e3;
            ctx.emit(
                "actor/result",
                result_data(&action, "ok", vec![], vec![], ms),
            );
            continue;
        }
        if let Some(store) = &store {
            store.save(&action);
        }
        let action = Box::new(action);
        // The graph in force under this name is diffed against the new one, not restarted.
        let action = match graphs.get(&name) {
            Some(inf) => match inf.cmds.send(Cmd::Swap {
                graph,
                action,
                started,
            }) {
                Ok(()) => {
                    conv.insert(name.clone(), (inf.serial, false));
                    report_convergence(&ctx, &conv, &mut converged_reported);
                    continue;
                }
                // Its task is gone (it cannot normally end by itself): start afresh.
                Err(mpsc::error::SendError(Cmd::Swap { graph, action, .. })) => {
                    Some((graph, action))
                }
                Err(_) => None,
            },
            None => Some((graph, action)),
        };
        let Some((graph, action)) = action else {
            continue;
        };
        if let Some(old) = graphs.remove(&name) {
            old.task.abort();
        }
        let running = engine.run(graph, run_opts(&name));
        serials += 1;
        conv.insert(name.clone(), (serials, false));
        report_convergence(&ctx, &conv, &mut converged_reported);
        graphs.insert(
            name,
            InForce::start(&ctx, running, *action, Some(started), serials),
        );
    }
    for (_, g) in graphs.drain() {
        let _ = g.cmds.send(Cmd::Stop);
        let _ = g.task.await;
    }
    Ok(())
}

/// Emit `actor/converged` / `actor/diverged` when the actor as a whole crosses over.
fn report_convergence(ctx: &Ctx, conv: &HashMap<String, (u64, bool)>, reported: &mut bool) {
    let now = conv.values().all(|(_, c)| *c);
    if now == *reported {
        return;
    }
    *reported = now;
    if now {
        tracing::info!(graphs = conv.len(), "converged");
        ctx.emit(
            "actor/converged",
            json!({"graphs": conv.len(), "idle_s": ctx.idle.as_secs_f64()}),
        );
    } else {
        let mut diverged: Vec<&String> = conv
            .iter()
            .filter(|(_, (_, c))| !c)
            .map(|(n, _)| n)
            .collect();
        diverged.sort();
        tracing::info!(?diverged, "diverged");
        ctx.emit(
            "actor/diverged",
            json!({"graphs": conv.len(), "diverged": diverged}),
        );
    }
}

/// Runs one named graph: reports its first outcome as `actor/result`, then repairs and
/// failures as they happen, convergence transitions, and swaps in later actions.
/// `started` is `None` for a restored graph whose first report was already taken.
async fn graph_task(
    ctx: Ctx,
    mut running: actions::Running,
    mut action: Action,
    mut started: Option<Instant>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    serial: u64,
) {
    let name = action.name.clone();
    let mut conv = running.convergence();
    let mut queued: VecDeque<Cmd> = VecDeque::new();
    loop {
        if let Some(t0) = started.take() {
            let first = loop {
                tokio::select! {
                    r = running.first_report() => break r,
                    cmd = cmds.recv() => match cmd {
                        Some(swap @ Cmd::Swap { .. }) => queued.push_back(swap),
                        Some(Cmd::Stop) | None => { running.stop().await; return; }
                    },
                }
            };
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let status = if first.ok { "ok" } else { "error" };
            tracing::info!(name = %name, status, changed = first.changed.len(), ms, "action converged");
            // The picture first, so whoever reacts to the result finds it up to date.
            ctx.write_dot(&name, &running);
            ctx.emit(
                "actor/result",
                result_data(&action, status, first.changed, first.errors, ms),
            );
        }
        let mut is_converged = false;
        let next = loop {
            if let Some(cmd) = queued.pop_front() {
                break Some(cmd);
            }
            tokio::select! {
                ev = running.next_event() => match ev {
                    Some(actions::EngineEvent::Changed { id }) => {
                        tracing::info!(name = %name, resource = %id, "drift repaired");
                        ctx.emit("actor/repaired", json!({"name": name, "action": action.id, "resource": id}));
                    }
                    Some(actions::EngineEvent::Failed { id, error }) => {
                        tracing::warn!(name = %name, resource = %id, "check failed: {error}");
                        ctx.emit("actor/error", json!({"name": name, "action": action.id, "resource": id, "error": error}));
                    }
                    Some(actions::EngineEvent::Message { id, text }) => {
                        ctx.emit("actor/msg", json!({"name": name, "action": action.id, "resource": id, "text": text}));
                    }
                    None => break None,
                },
                now = transition(&mut conv, is_converged, ctx.idle) => {
                    is_converged = now;
                    let _ = ctx.conv.send((name.clone(), serial, now));
                }
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => queued.push_back(cmd),
                    None => break None,
                },
            }
        };
        match next {
            Some(Cmd::Swap {
                graph,
                action: new,
                started: t0,
            }) => {
                let stats = running.swap(graph).await;
                tracing::info!(name = %name, kept = stats.kept, added = stats.added, removed = stats.removed, "graph swapped");
                action = *new;
                started = Some(t0);
                conv = running.convergence();
            }
            Some(Cmd::Stop) | None => {
                running.stop().await;
                return;
            }
        }
    }
}

/// Resolves with the new state once a graph crosses from diverged to converged or back.
async fn transition(conv: &mut actions::Convergence, converged: bool, idle: Duration) -> bool {
    if converged {
        conv.diverged().await;
        false
    } else {
        conv.converged(idle).await;
        true
    }
}

/// `name` as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `name` hex-encoded: a collision-free file name for any graph name.
fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Write via a temp file and rename, so a crash never leaves half a file.
fn atomic_write(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_graphs_round_trip_and_names_are_file_safe() {
        let dir = std::env::temp_dir().join(format!("reflex-actor-store-{}", std::process::id()));
        let store = Store::new(&dir, "web/1");
        assert!(store.graphs.starts_with(dir.join("actor-web_1")));
        let action = Action {
            id: "a1".into(),
            name: "deploy/app".into(),
            seq: 7,
            target: Target::All,
            graph: json!([{"kind": "noop", "name": "n"}]),
            origin: bus::Origin::default(),
            expires: None,
        };
        store.save(&action);
        assert_eq!(store.load(), vec![action.clone()]);
        assert!(store
            .graph_file("deploy/app")
            .ends_with("6465706c6f792f617070.json"));
        store.remove("deploy/app");
        assert!(store.load().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
