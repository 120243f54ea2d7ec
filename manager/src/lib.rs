//! The reflex manager: where events are decided on.
//!
//! It binds a PULL socket for events (beacons, `reflex send`, actor results), decodes each
//! frame, runs the matching rules ([`rules`]), and PUSHes the actions they append to the
//! publisher over the `ipc://` link. Every event, rule hit, rule error and action is also
//! republished on a monitor PUB socket for `reflex tail`, and a REP control socket answers
//! status queries. Bad frames are counted by kind, logged once per kind, and never fatal.
//!
//! All sockets live on the one thread that runs [`Manager::run`]: ZeroMQ sockets are not
//! thread-safe, and one thread keeps every host's events in order.

pub mod glob;
pub mod rules;

use bus::monitor;
use bus::{Action, DecodeError, Endpoints, Event};
use registers::Registers;
use rules::{Limits, Produced, Rules};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ManagerError {
    #[error(transparent)]
    Socket(#[from] bus::sockets::SocketError),
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error(transparent)]
    Registers(#[from] registers::RegisterError),
    #[error("rules folder {dir}: {source}")]
    RulesDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to run a manager.
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoints: Endpoints,
    pub state_dir: PathBuf,
    pub rules_dir: PathBuf,
    /// Largest event frame accepted, in bytes.
    pub max_frame: usize,
    pub limits: Limits,
}

/// Counters, as the control socket reports them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub events: u64,
    pub malformed: BTreeMap<&'static str, u64>,
    pub hits: u64,
    pub rule_errors: u64,
    pub actions: u64,
    pub rules: Vec<String>,
}

/// A running manager's sockets and state.
pub struct Manager {
    cfg: Config,
    registers: Registers,
    rules: Rules,
    ingest: zmq::Socket,
    link: zmq::Socket,
    monitor: zmq::Socket,
    control: zmq::Socket,
    stats: Stats,
    produced: Produced,
}

/// How many frames to take in one go before looking at the control socket and flushing.
const BATCH: usize = 4_096;
/// Longest time unflushed register writes may wait while events keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

impl Manager {
    /// Open the register store, load the rules and bind the sockets.
    pub fn new(cfg: Config) -> Result<Manager, ManagerError> {
        let registers = Registers::open(&cfg.state_dir.join("registers"))?;
        let mut rules = Rules::new(registers.clone(), &cfg.limits);
        let errors = rules
            .load_dir(&cfg.rules_dir)
            .map_err(|source| ManagerError::RulesDir {
                dir: cfg.rules_dir.clone(),
                source,
            })?;
        for e in &errors {
            tracing::error!("rule not loaded: {e}");
        }
        for r in rules.rules() {
            tracing::info!(rule = %r.name, globs = ?r.globs, "rule loaded");
        }
        let ep = &cfg.endpoints;
        let ingest = bus::sockets::bind(zmq::PULL, &ep.ingest)?;
        // The publisher binds the link; connecting first is fine: actions queue until it is up.
        let link = bus::sockets::connect(zmq::PUSH, &ep.link)?;
        let monitor = bus::sockets::bind(zmq::PUB, &ep.monitor)?;
        let control = bus::sockets::bind(zmq::REP, &ep.control)?;
        let stats = Stats {
            rules: rules.rules().iter().map(|r| r.name.clone()).collect(),
            ..Stats::default()
        };
        tracing::info!(ingest = %ep.ingest, link = %ep.link, monitor = %ep.monitor, control = %ep.control, rules = stats.rules.len(), "manager up");
        Ok(Manager {
            cfg,
            registers,
            rules,
            ingest,
            link,
            monitor,
            control,
            stats,
            produced: Produced::default(),
        })
    }

    /// Run until `stop` is set (SIGINT/SIGTERM), then flush the registers.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), ManagerError> {
        let mut last_flush = Instant::now();
        let mut frame = zmq::Message::new();
        while !stop.load(Ordering::Relaxed) {
            let (ready_ingest, ready_control) = {
                let mut items = [
                    self.ingest.as_poll_item(zmq::POLLIN),
                    self.control.as_poll_item(zmq::POLLIN),
                ];
                bus::sockets::poll(&mut items, 100)?;
                (items[0].is_readable(), items[1].is_readable())
            };
            if ready_ingest {
                for _ in 0..BATCH {
                    match self.ingest.recv(&mut frame, zmq::DONTWAIT) {
                        Ok(()) => self.handle_frame(&frame, stop)?,
                        Err(zmq::Error::EAGAIN) => break,
                        Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if ready_control {
                self.handle_control()?;
            }
            // Flush when idle, and at least every FLUSH_EVERY under load: a write the rules
            // made is on disk soon after the event, even if the process is killed.
            let idle = !ready_ingest;
            if idle || last_flush.elapsed() >= FLUSH_EVERY {
                self.registers.flush_if_dirty()?;
                last_flush = Instant::now();
            }
        }
        self.registers.flush()?;
        tracing::info!("manager stopped");
        Ok(())
    }

    fn handle_frame(&mut self, frame: &[u8], stop: &AtomicBool) -> Result<(), ManagerError> {
        let event: Event = match bus::decode_with_limit(frame, self.cfg.max_frame) {
            Ok(e) => e,
            Err(e) => {
                self.malformed(&e);
                return Ok(());
            }
        };
        self.stats.events += 1;
        let mut topic = String::with_capacity(monitor::EVENT.len() + event.tag.len());
        topic.push_str(monitor::EVENT);
        topic.push_str(&event.tag);
        self.publish_monitor(&topic, frame)?;
        let mut out = std::mem::take(&mut self.produced);
        out.clear();
        self.rules.run(&event, &mut out);
        for hit in &out.hits {
            self.stats.hits += 1;
            self.monitor_msg(monitor::HIT, &hit.rule, hit)?;
        }
        for err in &out.errors {
            self.stats.rule_errors += 1;
            self.monitor_msg(monitor::ERROR, &err.rule, err)?;
        }
        for action in &out.actions {
            self.stats.actions += 1;
            self.send_action(action, stop)?;
        }
        self.produced = out;
        Ok(())
    }

    fn malformed(&mut self, e: &DecodeError) {
        let kind = e.kind();
        let n = self.stats.malformed.entry(kind.as_str()).or_insert(0);
        *n += 1;
        // Logged once per kind: a flood of garbage must not flood the log too.
        if *n == 1 {
            tracing::warn!(
                kind = kind.as_str(),
                "dropped a bad frame: {e} (further ones of this kind are only counted)"
            );
        }
    }

    fn publish_monitor(&self, topic: &str, payload: &[u8]) -> Result<(), ManagerError> {
        // PUB never blocks: with no subscriber, or a slow one past its HWM, the message is dropped.
        self.monitor
            .send(topic.as_bytes(), zmq::SNDMORE | zmq::DONTWAIT)?;
        self.monitor.send(payload, zmq::DONTWAIT)?;
        Ok(())
    }

    fn monitor_msg<T: Serialize>(
        &self,
        prefix: &str,
        name: &str,
        msg: &T,
    ) -> Result<(), ManagerError> {
        let topic = format!("{prefix}{name}");
        self.publish_monitor(&topic, &bus::encode(msg))
    }

    /// Hand an action to the publisher. When the link is full (publisher down for long), wait
    /// rather than drop it: back-pressure then reaches the event senders through ingest's HWM.
    fn send_action(&self, action: &Action, stop: &AtomicBool) -> Result<(), ManagerError> {
        let frame = bus::encode(action);
        let mut warned = false;
        loop {
            match self.link.send(&frame[..], zmq::DONTWAIT) {
                Ok(()) => break,
                Err(zmq::Error::EAGAIN) if !stop.load(Ordering::Relaxed) => {
                    if !warned {
                        tracing::warn!(link = %self.cfg.endpoints.link, "publisher link full; holding events until it drains");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(zmq::Error::EAGAIN) => {
                    tracing::error!(action = %action.id, "stopping with the publisher link full: action not delivered");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.monitor_msg(monitor::ACTION, &action.name, action)
    }

    fn handle_control(&mut self) -> Result<(), ManagerError> {
        let req = self.control.recv_bytes(zmq::DONTWAIT)?;
        let reply = match serde_json::from_slice::<serde_json::Value>(&req) {
            Ok(v) => match v.get("cmd").and_then(|c| c.as_str()) {
                Some("stats") => serde_json::to_value(&self.stats).unwrap_or_default(),
                Some("flush") => match self.registers.flush() {
                    Ok(()) => serde_json::json!({"ok": true}),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                },
                other => {
                    serde_json::json!({"error": format!("unknown command {other:?} (known: stats, flush)")})
                }
            },
            Err(e) => serde_json::json!({"error": format!("request is not JSON: {e}")}),
        };
        self.control.send(reply.to_string().as_bytes(), 0)?;
        Ok(())
    }
}

/// Run a manager until `stop` is set.
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<(), ManagerError> {
    let mut m = Manager::new(cfg)?;
    m.run(&stop)
}
