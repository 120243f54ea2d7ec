//! The reflex actor: the hands on a host.
//!
//! It subscribes to the publisher for `all/`, its host and its groups, runs every action it
//! receives through the resource-graph engine ([`actions`]) and reports back to the manager as
//! events: `actor/result` once an action's graph first converged (or failed), `actor/repaired`
//! each time the engine repairs drift afterwards, `actor/error` when a later check fails, and
//! `actor/up` each time its subscription reaches a publisher.
//!
//! An action stays in force: its graph keeps running, watched and repaired, until an action with
//! the same name replaces it (or an empty graph removes it).
//!
//! Threads: one owns the SUB socket, one owns the PUSH socket back to the manager (ZeroMQ sockets
//! are not thread-safe), and a tokio runtime runs the graphs.

use bus::{Action, Event, Target};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

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
}

/// What the SUB thread hands the runtime.
enum Inbound {
    Action(Box<Action>),
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
    let max_frame = cfg.max_frame;
    let receiver = std::thread::Builder::new()
        .name("actor-sub".into())
        .spawn(move || sub_loop(sub, watch, in_tx, max_frame, &sub_stop))?;

    tracing::info!(name = %cfg.name, groups = ?cfg.groups, publish = %cfg.publish, ingest = %cfg.ingest, "actor up");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(cfg, in_rx, out_tx, stop.clone()));
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

fn sub_loop(
    sub: zmq::Socket,
    watch: bus::sockets::HandshakeWatch,
    tx: mpsc::Sender<Inbound>,
    max_frame: usize,
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

/// One named graph in force.
struct InForce {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(
    cfg: Config,
    mut rx: mpsc::Receiver<Inbound>,
    out: std_mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
) -> Result<(), ActorError> {
    let engine = actions::Engine::new()?;
    let mut graphs: HashMap<String, InForce> = HashMap::new();
    let mut last_seq = 0u64;
    let emit = |out: &std_mpsc::Sender<Event>, tag: &str, data: serde_json::Value| {
        let _ = out.send(Event::new(tag, cfg.name.clone(), data));
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) { break; }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let action = match msg {
            Inbound::Subscribed => {
                emit(
                    &out,
                    "actor/up",
                    json!({"name": cfg.name, "groups": cfg.groups, "version": env!("CARGO_PKG_VERSION"), "graphs": graphs.len()}),
                );
                continue;
            }
            Inbound::Action(a) => *a,
        };
        // A restarted publisher continues its numbering, so an old number is a duplicate.
        if action.seq != 0 && action.seq <= last_seq {
            tracing::debug!(seq = action.seq, "duplicate action ignored");
            continue;
        }
        last_seq = action.seq.max(last_seq);
        let started = std::time::Instant::now();
        let report = |status: &str, changed: Vec<String>, errors: Vec<String>, ms: f64| {
            result_data(&action, status, changed, errors, ms)
        };
        if action.expires.is_some_and(|t| t < bus::now_ms()) {
            emit(
                &out,
                "actor/result",
                report(
                    "error",
                    vec![],
                    vec!["expired before it arrived".into()],
                    0.0,
                ),
            );
            continue;
        }
        let graph = match actions::Graph::from_value(&action.graph) {
            Ok(g) => g,
            Err(e) => {
                // The graph in force under this name (if any) keeps running.
                tracing::warn!(name = %action.name, "rejected action {}: {e}", action.id);
                emit(
                    &out,
                    "actor/result",
                    report("error", vec![], vec![e.to_string()], 0.0),
                );
                continue;
            }
        };
        if let Some(old) = graphs.remove(&action.name) {
            let _ = old.stop.send(());
            let _ = old.task.await;
        }
        if graph.is_empty() {
            tracing::info!(name = %action.name, "graph removed");
            emit(
                &out,
                "actor/result",
                report("ok", vec![], vec![], started.elapsed().as_secs_f64() * 1e3),
            );
            continue;
        }
        let mut running = engine.run(graph, actions::RunOptions::default());
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let out2 = out.clone();
        let host = cfg.name.clone();
        let name = action.name.clone();
        let key = action.name.clone();
        let task = tokio::spawn(async move {
            let first = tokio::select! {
                r = running.first_report() => r,
                _ = &mut stop_rx => { running.stop().await; return; }
            };
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let status = if first.ok { "ok" } else { "error" };
            tracing::info!(name = %name, status, changed = first.changed.len(), ms, "action converged");
            let data = result_data(&action, status, first.changed, first.errors, ms);
            let _ = out2.send(Event::new("actor/result", host.clone(), data));
            loop {
                tokio::select! {
                    ev = running.next_event() => match ev {
                        Some(actions::EngineEvent::Changed { id }) => {
                            tracing::info!(name = %name, resource = %id, "drift repaired");
                            let _ = out2.send(Event::new("actor/repaired", host.clone(), json!({"name": name, "action": action.id, "resource": id})));
                        }
                        Some(actions::EngineEvent::Failed { id, error }) => {
                            tracing::warn!(name = %name, resource = %id, "check failed: {error}");
                            let _ = out2.send(Event::new("actor/error", host.clone(), json!({"name": name, "action": action.id, "resource": id, "error": error})));
                        }
                        None => break,
                    },
                    _ = &mut stop_rx => break,
                }
            }
            running.stop().await;
        });
        graphs.insert(
            key,
            InForce {
                stop: stop_tx,
                task,
            },
        );
    }
    for (_, g) in graphs.drain() {
        let _ = g.stop.send(());
        let _ = g.task.await;
    }
    Ok(())
}
