//! The task that runs one named graph: it owns the engine's `Running`, reports the graph's first
//! outcome as `actor/result`, then repairs, failures and messages as they happen, tells the serve
//! loop each time the graph crosses between converged and diverged, and swaps in later actions.

use crate::store::safe_name;
use bus::{Action, Event};
use engine::os::atomic_write;
use serde_json::json;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// One named graph in force, as the serve loop holds it.
pub(crate) struct InForce {
    /// Tells this incarnation's convergence reports from a later one's.
    pub(crate) serial: u64,
    /// Whether this graph was last reported idle and converged: the one place the actor's
    /// convergence is kept.
    pub(crate) converged: bool,
    pub(crate) cmds: Cmds,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// The way to a graph task's commands: a queue and a wake-up, far smaller than a tokio
/// channel (which allocates a 32-slot block and a 512-byte channel up front, per graph).
pub(crate) struct Cmds(Arc<CmdQueue>);

/// What the task takes its commands from.
struct CmdRx(Arc<CmdQueue>);

#[derive(Default)]
struct CmdQueue {
    queue: Mutex<VecDeque<Cmd>>,
    ready: Notify,
    /// The task is gone: nothing sent is taken any more.
    task_gone: AtomicBool,
    /// The `Cmds` is gone: nothing more will be sent.
    sender_gone: AtomicBool,
}

impl Cmds {
    /// Queue `cmd` for the task; back as an error when the task is gone.
    pub(crate) fn send(&self, cmd: Cmd) -> Result<(), mpsc::error::SendError<Cmd>> {
        let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if self.0.task_gone.load(Ordering::SeqCst) {
            return Err(mpsc::error::SendError(cmd));
        }
        queue.push_back(cmd);
        drop(queue);
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Drop for Cmds {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::SeqCst);
        self.0.ready.notify_one();
    }
}

impl CmdRx {
    /// The next command; `None` once the sender is gone and all is taken. Cancel-safe.
    async fn recv(&self) -> Option<Cmd> {
        loop {
            {
                let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(cmd) = queue.pop_front() {
                    if queue.is_empty() {
                        *queue = VecDeque::new();
                    }
                    return Some(cmd);
                }
                if self.0.sender_gone.load(Ordering::SeqCst) {
                    return None;
                }
            }
            // A send between the look and here left a permit: this returns at once.
            self.0.ready.notified().await;
        }
    }
}

impl Drop for CmdRx {
    fn drop(&mut self) {
        // Under the lock, so a send sees either the queue taken or the task gone.
        let queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.task_gone.store(true, Ordering::SeqCst);
        drop(queue);
    }
}

impl InForce {
    /// Hand a running graph to its own task, which reports on it and takes its commands.
    /// `started` is `None` for a restored graph whose first report was already taken.
    pub(crate) fn start(
        ctx: &Arc<Ctx>,
        running: engine::Running,
        action: Action,
        started: Option<Instant>,
        serial: u64,
    ) -> InForce {
        let queue = Arc::new(CmdQueue::default());
        let (cmds, cmd_rx) = (Cmds(Arc::clone(&queue)), CmdRx(queue));
        let conv = running.convergence();
        let task = tokio::spawn(graph_task(Box::new(Task {
            ctx: Arc::clone(ctx),
            running,
            action: Named::of(&action),
            started,
            cmds: cmd_rx,
            serial,
            conv,
            queued: VecDeque::new(),
        })));
        InForce {
            serial,
            converged: false,
            cmds,
            task,
        }
    }

    /// Stop the graph and wait until its task has stopped its resources.
    pub(crate) async fn stop(self) {
        let _ = self.cmds.send(Cmd::Stop);
        let _ = self.task.await;
    }
}

/// What the serve loop tells a graph task.
pub(crate) enum Cmd {
    /// Diff the running graph against this one (GraphSync) and report the new action.
    Swap {
        graph: graph::Graph,
        action: Box<Action>,
        started: Instant,
        /// The serial the task reports under from now on: a crossing it sent about the
        /// graph before the swap is then told from one about the new graph.
        serial: u64,
    },
    Stop,
}

/// A graph crossed from diverged to converged (or back).
pub(crate) struct Crossed {
    pub(crate) name: String,
    pub(crate) serial: u64,
    pub(crate) converged: bool,
}

/// Where the actor's events go: straight into the result sender (which never blocks), from
/// whichever task makes them, rather than through a thread of its own (one wake-up less per
/// result).
pub(crate) type Out = Arc<dyn Fn(Event) + Send + Sync>;

/// An [`Out`] into a channel (tests read what the actor says from it).
#[cfg(test)]
pub(crate) fn out_to(tx: std::sync::mpsc::Sender<Event>) -> Out {
    Arc::new(move |ev| {
        let _ = tx.send(ev);
    })
}

/// What every graph task shares.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) host: String,
    pub(crate) out: Out,
    pub(crate) crossed: mpsc::UnboundedSender<Crossed>,
    /// Idle time after which a graph counts as converged.
    pub(crate) idle: Duration,
    pub(crate) graphviz: Option<PathBuf>,
}

impl Ctx {
    /// Send an event to the manager.
    pub(crate) fn emit(&self, tag: &str, data: serde_json::Value) {
        (self.out)(Event::new(tag, self.host.clone(), data));
    }

    /// Write the graph's picture, if asked to.
    pub(crate) fn write_dot(&self, name: &str, running: &engine::Running) {
        let Some(dir) = &self.graphviz else { return };
        let file = dir.join(format!("{}.dot", safe_name(name)));
        if let Err(e) = std::fs::create_dir_all(dir)
            .and_then(|()| atomic_write(&file, running.to_dot(name).as_bytes(), None))
        {
            tracing::warn!(file = %file.display(), "cannot write graphviz: {e}");
        }
    }
}

/// What the reports name of an action: its id, name, seq and origin. A graph task keeps this
/// for as long as the graph is in force, so the four strings share one allocation (a whole
/// [`Action`] is about 450 bytes with its strings, this about 130).
pub(crate) struct Named {
    /// `id`, `name`, `origin.event`, `origin.rule`, one after the other.
    text: Box<str>,
    /// Where `name`, `event` and `rule` start in `text`.
    at: [u32; 3],
    seq: u64,
}

impl Named {
    pub(crate) fn of(action: &Action) -> Named {
        let parts = [
            action.id.as_str(),
            &action.name,
            &action.origin.event,
            &action.origin.rule,
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut at = [0u32; 3];
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                // A frame is far below 4 GiB (bus::MAX_FRAME), so every offset fits.
                at[i - 1] = u32::try_from(text.len()).unwrap_or(u32::MAX);
            }
            text.push_str(part);
        }
        Named {
            text: text.into_boxed_str(),
            at,
            seq: action.seq,
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.at[i - 1] as usize };
        let end = self.at.get(i).map_or(self.text.len(), |&e| e as usize);
        self.text.get(start..end).unwrap_or_default()
    }

    pub(crate) fn id(&self) -> &str {
        self.part(0)
    }

    pub(crate) fn name(&self) -> &str {
        self.part(1)
    }

    pub(crate) fn event(&self) -> &str {
        self.part(2)
    }

    pub(crate) fn rule(&self) -> &str {
        self.part(3)
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

/// The data of an `actor/result` event. `origin` names the event and rule that caused the
/// action, so rules reacting to results can correlate them with their cause.
pub(crate) fn result_data(
    action: &Named,
    status: &str,
    changed: Vec<String>,
    errors: Vec<String>,
    ms: f64,
) -> serde_json::Value {
    json!({
        "action": action.id(),
        "name": action.name(),
        "seq": action.seq(),
        "origin": {"event": action.event(), "rule": action.rule()},
        "status": status,
        "changed": changed,
        "errors": errors,
        "ms": ms,
    })
}

/// What a graph task keeps while it waits: boxed, so the task's future holds one pointer to it
/// rather than (as an async fn's arguments and its locals are stored apart) each field twice.
struct Task {
    ctx: Arc<Ctx>,
    running: engine::Running,
    /// For the reports only: its graph is the engine's and the store's.
    action: Named,
    /// Set while the first report of the graph (or of a swap) is still to come.
    started: Option<Instant>,
    cmds: CmdRx,
    serial: u64,
    conv: engine::Convergence,
    queued: VecDeque<Cmd>,
}

/// Runs one named graph until it is stopped (see the module doc).
async fn graph_task(mut t: Box<Task>) {
    loop {
        if let Some(t0) = t.started.take() {
            if !t.first_report(t0).await {
                Box::pin(t.running.stop()).await;
                return;
            }
        }
        let next = t.idle().await;
        match next {
            Some(Cmd::Swap {
                graph,
                action: new,
                started: t0,
                serial: next,
            }) => {
                t.serial = next;
                let stats = Box::pin(t.running.swap(graph)).await;
                tracing::info!(name = %new.name, action = %new.id, event = %new.origin.event, kept = stats.kept, added = stats.added, removed = stats.removed, "graph swapped");
                t.action = Named::of(&new);
                t.started = Some(t0);
                t.conv = t.running.convergence();
            }
            Some(Cmd::Stop) | None => {
                Box::pin(t.running.stop()).await;
                return;
            }
        }
    }
}

impl Task {
    /// Wait for the graph's first outcome and report it; false when the task was told to stop
    /// meanwhile.
    async fn first_report(&mut self, t0: Instant) -> bool {
        let Task {
            ctx,
            running,
            action,
            cmds,
            queued,
            ..
        } = self;
        let first = loop {
            tokio::select! {
                // Boxed, as every future awaited once: inline, they would make every idle
                // graph's task as big as the biggest of them.
                r = Box::pin(running.first_report()) => break r,
                cmd = cmds.recv() => match cmd {
                    Some(swap @ Cmd::Swap { .. }) => enqueue(ctx, queued, swap),
                    Some(Cmd::Stop) | None => return false,
                },
            }
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let status = if first.ok { "ok" } else { "error" };
        tracing::info!(name = %action.name(), action = %action.id(), event = %action.event(), status, changed = first.changed.len(), ms, "action converged");
        // The picture first, so whoever reacts to the result finds it up to date.
        ctx.write_dot(action.name(), running);
        ctx.emit(
            "actor/result",
            result_data(action, status, first.changed, first.errors, ms),
        );
        true
    }

    /// Report repairs, failures, messages and crossings until a command comes (`None`: the
    /// graph or the serve loop is gone).
    async fn idle(&mut self) -> Option<Cmd> {
        let Task {
            ctx,
            running,
            action,
            cmds,
            serial,
            conv,
            queued,
            ..
        } = self;
        let mut is_converged = false;
        loop {
            if let Some(cmd) = queued.pop_front() {
                return Some(cmd);
            }
            // Only the side that can happen next is waited on, each boxed: a converged graph,
            // the common case, holds nothing but a small divergence future and the command
            // queue's wake-up. Its events wait in the engine's queue meanwhile: every event is
            // queued before the divergence it causes shows.
            if is_converged {
                tokio::select! {
                    biased;
                    () = Box::pin(conv.diverged()) => {
                        // The events that made it diverge are told first.
                        while let Some(ev) = running.try_next_event() {
                            report(ctx, action, ev);
                        }
                        is_converged = false;
                        let _ = ctx.crossed.send(Crossed { name: action.name().to_string(), serial: *serial, converged: false });
                    }
                    cmd = cmds.recv() => match cmd {
                        Some(cmd) => enqueue(ctx, queued, cmd),
                        None => return None,
                    },
                }
                continue;
            }
            tokio::select! {
                // The engine queues an outcome's event before it moves the convergence
                // status, so taking events first tells a repair before the divergence it
                // caused.
                biased;
                ev = Box::pin(running.next_event()) => match ev {
                    Some(ev) => report(ctx, action, ev),
                    None => return None,
                },
                () = Box::pin(conv.converged(ctx.idle)) => {
                    is_converged = true;
                    let _ = ctx.crossed.send(Crossed { name: action.name().to_string(), serial: *serial, converged: true });
                }
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => enqueue(ctx, queued, cmd),
                    None => return None,
                },
            }
        }
    }
}

/// Tell what happened to a graph after its first report: a repair, a failure, a message.
fn report(ctx: &Ctx, action: &Named, ev: engine::EngineEvent) {
    match ev {
        engine::EngineEvent::Changed { id } => {
            tracing::info!(name = %action.name(), action = %action.id(), event = %action.event(), resource = %id, "drift repaired");
            ctx.emit(
                "actor/repaired",
                json!({"name": action.name(), "action": action.id(), "resource": id}),
            );
        }
        engine::EngineEvent::Failed { id, error } => {
            tracing::warn!(name = %action.name(), action = %action.id(), event = %action.event(), resource = %id, "check failed: {error}");
            ctx.emit("actor/error", json!({"name": action.name(), "action": action.id(), "resource": id, "error": error}));
        }
        engine::EngineEvent::Message { id, text } => {
            ctx.emit(
                "actor/msg",
                json!({"name": action.name(), "action": action.id(), "resource": id, "text": text}),
            );
        }
    }
}

/// Queue a command for the task. Of swaps waiting behind one still converging only the newest
/// matters: it replaces the one before it, which is reported as `superseded` (never applied).
/// So a graph replaced faster than it converges holds one waiting swap, not a growing queue.
fn enqueue(ctx: &Ctx, queued: &mut VecDeque<Cmd>, cmd: Cmd) {
    if let (Cmd::Swap { .. }, Some(Cmd::Swap { .. })) = (&cmd, queued.back()) {
        if let Some(Cmd::Swap { action, .. }) = queued.pop_back() {
            tracing::debug!(name = %action.name, action = %action.id, "superseded before it ran");
            ctx.emit(
                "actor/result",
                result_data(&Named::of(&action), "superseded", vec![], vec![], 0.0),
            );
        }
    }
    queued.push_back(cmd);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swap(i: u64) -> Cmd {
        let action = Action {
            id: format!("a{i}"),
            name: "g".into(),
            seq: i,
            target: bus::Target::All,
            graph: json!([{"kind": "noop", "name": "n"}]),
            origin: bus::Origin::default(),
            expires: None,
            life: bus::Life::Keep,
            prev: 0,
        };
        Cmd::Swap {
            graph: graph::Graph::from_value(&action.graph).expect("graph"),
            action: Box::new(action),
            started: Instant::now(),
            serial: i,
        }
    }

    #[test]
    fn swaps_waiting_behind_a_converge_keep_only_the_newest_and_report_the_others() {
        let (out, events) = std::sync::mpsc::channel();
        let (crossed, _crossings) = mpsc::unbounded_channel();
        let ctx = Ctx {
            host: "h".into(),
            out: out_to(out),
            crossed,
            idle: Duration::from_secs(1),
            graphviz: None,
        };
        let mut queued = VecDeque::new();
        for i in 1..=100 {
            enqueue(&ctx, &mut queued, swap(i));
        }
        enqueue(&ctx, &mut queued, Cmd::Stop);
        assert_eq!(queued.len(), 2, "the newest swap, then the stop");
        assert!(matches!(&queued[0], Cmd::Swap { action, .. } if action.seq == 100));
        let superseded: Vec<serde_json::Value> = events.try_iter().map(|e| e.data).collect();
        assert_eq!(superseded.len(), 99);
        assert!(superseded
            .iter()
            .all(|d| d["status"] == "superseded" && d["seq"] != 100));
    }
}
