//! The reflex manager: where events are decided on.
//!
//! It binds a PULL socket for events (beacons, `reflex send`, actor results), decodes each
//! frame, runs the matching rules ([`rules`]), and PUSHes the actions they append to the
//! publisher over the `ipc://` link. Every event, rule hit, rule error and action is also
//! republished on a monitor PUB socket for `reflex tail`, and a REP control socket answers
//! status queries. Bad frames are counted by kind, logged once per kind, and never fatal.
//! No event value becomes shell syntax: a rule whose exec shell line holds one unquoted fails
//! ([`shell`]), and [`lint`] finds such rules before they run (`reflex rules check`).
//!
//! Who may speak is [`trust`]'s: the ZAP handler's keys from the enrollment store, the enroll
//! door where an unknown host asks to be enrolled, and the check of each frame's `User-Id`
//! (a host key speaks only for its own host; a revoked key is cut off on open connections).
//!
//! All sockets live on the one thread that runs [`Manager::run`]: ZeroMQ sockets are not
//! thread-safe, and one thread keeps every host's events in order.

#![deny(missing_docs)]

pub mod clustered;
pub mod delivery;
pub mod glob;
pub mod history;
pub mod lint;
mod marks;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod presence;
pub mod rules;
pub mod shell;
mod takeover;
pub mod trust;
pub mod watch;

use bus::monitor;
use bus::secure::Door;
use bus::{BadFrames, Endpoints, Event};
use registers::Registers;
use rules::Change;
use rules::{Limits, Produced, Rules};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the manager could not start or had to stop.
#[derive(Debug, Error)]
pub enum ManagerError {
    /// A socket could not be bound or connected.
    #[error(transparent)]
    Socket(#[from] bus::sockets::SocketError),
    /// A socket failed while running.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The register store failed.
    #[error(transparent)]
    Registers(#[from] registers::RegisterError),
    /// The rules folder cannot be watched.
    #[error("watching the rules folder {dir}: {source}")]
    Watch {
        /// The rules folder.
        dir: PathBuf,
        /// What inotify said.
        #[source]
        source: std::io::Error,
    },
    /// The enrollment store, the admin key or the ZAP handler cannot be set up.
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    /// The history folder cannot be made or read.
    #[error("history {dir}: {source}")]
    History {
        /// The history folder.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server (metrics, page) cannot start.
    #[error("http: {0}")]
    Http(std::io::Error),
    /// etcd (clustered mode) refused or could not be reached.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// This manager's cluster lease is no longer surely held: another may own its streams now.
    /// It stops (its supervisor starts it again, under a new lease).
    #[error("cluster lease lost: this manager stopped taking events (its streams may be another member's now)")]
    LeaseLost,
    /// The rules folder cannot be read.
    #[error("rules folder {dir}: {source}")]
    RulesDir {
        /// The rules folder.
        dir: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
}

/// Events deeper than this (rule-emitted chains) are dropped with a `manager/loop` event.
pub const MAX_DEPTH: u32 = 8;

/// How to run a manager.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it binds (ingest, monitor, control) and connects (the link).
    pub endpoints: Endpoints,
    /// The state dir; registers are `<state>/registers`.
    pub state_dir: PathBuf,
    /// The folder of `*.rhai` rule files.
    pub rules_dir: PathBuf,
    /// Largest event frame accepted, in bytes.
    pub max_frame: usize,
    /// What one rule run may use.
    pub limits: Limits,
    /// Host name on the manager's own events (`manager/...`).
    pub host: String,
    /// Watch the rules folder and pick up changes live.
    pub watch_rules: bool,
    /// CURVE (the manager's key pair) or the explicit insecure mode, for ingest, monitor and
    /// control.
    pub security: bus::secure::Security,
    /// Heartbeats a host may miss in a row before it is `host/<name>/down`.
    pub missed_heartbeats: u32,
    /// How much history to keep under `<state>/history` ([`history`]); `None`: none.
    pub history: Option<history::Retention>,
    /// Serve `/metrics` and the page ([`page`]) on this `host:port`; `None`: no HTTP.
    pub http: Option<String>,
    /// Run as one of several managers sharing registers and work through etcd ([`clustered`]);
    /// `None`: alone, registers in sled under the state dir.
    pub cluster: Option<clustered::ClusterConfig>,
}

/// Counters, as the control socket reports them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Events taken in (from outside and from inside the manager).
    pub events: u64,
    /// Frames dropped because they did not decode, by kind.
    pub malformed: BadFrames,
    /// Rule runs that went through.
    pub hits: u64,
    /// Rule runs that failed.
    pub rule_errors: u64,
    /// Actions handed to the publisher.
    pub actions: u64,
    /// Events refused because a host key sent them for another host.
    pub forged: u64,
    /// Frames dropped because their sender's key is no longer accepted (revoked while its
    /// connection was up).
    pub revoked: u64,
    /// Events dropped for a chain deeper than [`MAX_DEPTH`].
    pub loops: u64,
    /// Rule files reloaded after a change.
    pub reloads: u64,
    /// Events skipped because they were done already (a sender's resend).
    pub duplicates: u64,
    /// Batches dropped because an event before them had not arrived (the sender resends).
    pub gaps: u64,
    /// Senders' streams remembered.
    pub streams: usize,
    /// Actions in the outbox, not yet in the publisher's log.
    pub outbox: usize,
    /// Outbox actions sent to the publisher again.
    pub outbox_resent: u64,
    /// Group commits (one fsync each).
    pub commits: u64,
    /// Hosts whose heartbeats arrive.
    pub hosts_up: usize,
    /// Hosts that missed too many heartbeats.
    pub hosts_down: usize,
    /// The loaded rules, in run order.
    pub rules: Vec<String>,
    /// The rules disabled for failing.
    pub disabled: Vec<String>,
    /// Bytes of history on disk.
    pub history_bytes: u64,
    /// History records lost to write errors.
    pub history_dropped: u64,
    /// Clustered: batches forwarded to the manager that owns them.
    pub forwarded: u64,
    /// Clustered: forwarded batches dropped because this manager does not own them either.
    pub misrouted: u64,
    /// Clustered: groups that lost a race in etcd and ran again.
    pub conflicts: u64,
    /// Clustered: whether this manager is the leader (singleton work).
    pub leader: bool,
    /// Clustered: entries of dead members' outboxes this manager, as the leader, sent to its
    /// publisher and deleted once acknowledged.
    pub taken_over: u64,
    /// Clustered: stream marks this manager, as the leader, forgot (idle past the window).
    pub marks_forgotten: u64,
}

/// The head of an event: what the manager reads before knowing whether any rule wants it.
/// Decoding it checks the whole frame's structure (`data` is walked, not built) and borrows
/// its strings, so an event no rule matches costs no allocation.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    tag: &'a str,
    #[serde(borrow)]
    #[allow(dead_code)]
    host: &'a str,
    #[allow(dead_code)]
    time: u64,
    #[serde(default)]
    #[allow(dead_code)]
    data: serde::de::IgnoredAny,
    #[serde(default)]
    depth: u32,
}

/// A running manager's sockets and state.
pub struct Manager {
    cfg: Config,
    registers: Registers,
    rules: Rules,
    ingest: zmq::Socket,
    monitor: zmq::Socket,
    control: zmq::Socket,
    enroll: zmq::Socket,
    trust: trust::Trust,
    streams: delivery::Streams,
    outbox: outbox::Outbox,
    presence: presence::Presence,
    forged_log: trust::RateLog,
    stats: Stats,
    produced: Produced,
    /// Events made inside the manager (emitted by rules, or about the manager itself), run
    /// right after the event that caused them.
    internal: VecDeque<Event>,
    /// The rules folder watch, the rule files it reported, and when the last one arrived.
    watcher: Option<watch::Watch>,
    pending: BTreeSet<PathBuf>,
    last_change: Instant,
    history: Option<history::Writer>,
    metrics: metrics::Metrics,
    /// The longest the queue of events made inside the manager has been.
    internal_max: usize,
    /// Serves `/metrics` and the page while the manager runs.
    http: Option<telemetry::Server>,
    /// Clustered: the membership, the peers, the group's inputs.
    node: Option<clustered::Node>,
    /// Clustered: the leader's takeover of dead members' outboxes.
    takeover: Option<takeover::Takeover>,
    /// Clustered: the leader's forgetting of old stream marks.
    marks: Option<marks::Forget>,
}

/// How a frame's handling ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Taken whole (run, skipped, forwarded or dropped).
    Done,
    /// Clustered: the group reached etcd's transaction limits before the frame's end. Commit,
    /// then hand the same frame in again (what is done is skipped).
    Full,
}

/// How many events to take in one group before committing (one fsync per group).
const GROUP: u64 = 4_096;
/// Editors save in bursts (temp file, rename, chmod): wait this long after the last change.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the exposed metrics are brought up to date.
const METRICS_EVERY: Duration = Duration::from_millis(250);
/// How often expired registers are purged.
const PURGE_EVERY: Duration = Duration::from_secs(5);

impl Manager {
    /// Open the register store, load the rules and bind the sockets.
    pub fn new(cfg: Config) -> Result<Manager, ManagerError> {
        let (registers, node, takeover, marks) = match &cfg.cluster {
            None => (
                Registers::open(&cfg.state_dir.join("registers"))?,
                None,
                None,
                None,
            ),
            Some(c) => {
                let (node, store) = clustered::Node::join(c, &cfg.endpoints.ingest, &cfg.security)?;
                let takeover =
                    takeover::Takeover::new(&cfg.endpoints, store.clone(), node.max_txn_ops)?;
                let marks = marks::Forget::new(store.clone(), node.max_txn_ops);
                (
                    Registers::shared(store),
                    Some(node),
                    Some(takeover),
                    Some(marks),
                )
            }
        };
        let mut rules = Rules::new(registers.clone(), &cfg.limits);
        let rules_dir_err = |source| ManagerError::RulesDir {
            dir: cfg.rules_dir.clone(),
            source,
        };
        // Watch before the first load, so a file dropped in meanwhile is not missed.
        let watch_err = |source| ManagerError::Watch {
            dir: cfg.rules_dir.clone(),
            source,
        };
        let watcher = if cfg.watch_rules {
            Some(watch::Watch::new(&cfg.rules_dir).map_err(watch_err)?)
        } else {
            None
        };
        let changes = rules.load_dir(&cfg.rules_dir).map_err(rules_dir_err)?;
        let ep = &cfg.endpoints;
        let sec = &cfg.security;
        // Before any socket binds: libzmq lets every CURVE client in while no handler is bound.
        let trust = trust::Trust::open(&cfg.state_dir, sec)?;
        let ingest = bus::secure::bind(zmq::PULL, &ep.ingest, sec, Door::Ingest)?;
        // The publisher binds the link; connecting first is fine: actions queue until it is up.
        let link = bus::sockets::connect(zmq::PUSH, &ep.link)?;
        let monitor = bus::secure::bind(zmq::PUB, &ep.monitor, sec, Door::Monitor)?;
        let control = bus::secure::bind(zmq::REP, &ep.control, sec, Door::Control)?;
        let enroll = bus::secure::bind(zmq::REP, &ep.enroll, sec, Door::Enroll)?;
        // Strangers knock here: a request larger than a name is not one.
        enroll.set_maxmsgsize(bus::enroll::MAX_REQUEST)?;
        let acks = bus::secure::bind(zmq::ROUTER, &ep.acks, sec, Door::Acks)?;
        // A hello is a stream id: anything much larger is not one.
        acks.set_maxmsgsize(4_096)?;
        let streams = delivery::Streams::open(&registers, acks, node.is_some())?;
        let link_acks = bus::sockets::connect(zmq::SUB, &ep.link_acks)?;
        // Clustered, each member's outbox is its own, under its id (kept across restarts).
        let namespace = node.as_ref().map(|n| format!("{}/", n.id()));
        let (mut outbox, new_id) =
            outbox::Outbox::open(&registers, link, link_acks, namespace.as_deref())?;
        if let Some(n) = &node {
            outbox.bound_forgets(n.budget() / 2);
        }
        // The outbox id is durable before any action carries it.
        registers.commit(new_id.into_iter().collect())?;
        tracing::info!(ingest = %ep.ingest, acks = %ep.acks, link = %ep.link, monitor = %ep.monitor, control = %ep.control, enroll = %ep.enroll, curve = sec.is_secure(), rules = %cfg.rules_dir.display(), streams = streams.len(), outbox = outbox.waiting(), "manager up");
        let presence = presence::Presence::new(cfg.missed_heartbeats);
        let history = match &cfg.history {
            Some(keep) => {
                let dir = history::dir(&cfg.state_dir);
                let w = history::Writer::open(&dir, keep.clone()).map_err(|source| {
                    ManagerError::History {
                        dir: dir.clone(),
                        source,
                    }
                })?;
                tracing::info!(dir = %dir.display(), bytes = w.bytes(), max_bytes = keep.max_bytes, max_age_s = keep.max_age.as_secs(), "history kept");
                Some(w)
            }
            None => None,
        };
        let (metrics, registry) = metrics::Metrics::new(rules.meters());
        let http = match &cfg.http {
            Some(addr) => {
                let page = page::Page::new(&cfg.state_dir).map_err(ManagerError::Http)?;
                let routes: telemetry::Routes = Box::new(move |url| page.answer(url));
                let server = telemetry::Server::start(addr, registry, Some(routes))
                    .map_err(ManagerError::Http)?;
                tracing::info!(url = %format!("http://{}/", server.addr()), token = %page::token_path(&cfg.state_dir).display(), "page up (its token is in the file)");
                Some(server)
            }
            None => None,
        };
        let mut m = Manager {
            cfg,
            registers,
            rules,
            ingest,
            monitor,
            control,
            enroll,
            trust,
            streams,
            outbox,
            presence,
            forged_log: trust::RateLog::default(),
            stats: Stats::default(),
            produced: Produced::default(),
            internal: VecDeque::new(),
            watcher,
            pending: BTreeSet::new(),
            last_change: Instant::now(),
            history,
            metrics,
            internal_max: 0,
            http,
            node,
            takeover,
            marks,
        };
        m.internal.push_back(Event::new(
            "manager/up",
            m.cfg.host.clone(),
            json!({"ingest": m.cfg.endpoints.ingest, "streams": m.streams.len(), "outbox": m.outbox.waiting()}),
        ));
        for c in changes {
            m.announce(c);
        }
        m.refresh_rule_stats();
        Ok(m)
    }

    /// Run until `stop` is set (SIGINT/SIGTERM), then commit what is staged.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), ManagerError> {
        let mut last_purge = Instant::now();
        let mut last_presence = Instant::now();
        let mut last_metrics = Instant::now();
        let mut frame = zmq::Message::new();
        let mut user = String::new();
        let secure = self.trust.is_secure();
        // Events about the initial load go out first.
        self.drain_roots()?;
        self.commit()?;
        while !stop.load(Ordering::Relaxed) {
            if self.node.as_ref().is_some_and(|n| !n.member.is_alive()) {
                // Before etcd can give this member's streams to another: take nothing more.
                tracing::error!("cluster lease not renewed in time: stopping");
                return Err(ManagerError::LeaseLost);
            }
            let timeout = if self.pending.is_empty() { 100 } else { 20 };
            // Back-pressure: with the publisher away for long, events wait at their senders.
            let take = self.outbox.waiting() < outbox::MAX_WAITING;
            let ready = {
                let mut items = [
                    self.ingest.as_poll_item(if take {
                        zmq::POLLIN
                    } else {
                        zmq::PollEvents::empty()
                    }),
                    self.control.as_poll_item(zmq::POLLIN),
                    self.enroll.as_poll_item(zmq::POLLIN),
                    self.streams.door().as_poll_item(zmq::POLLIN),
                    self.outbox.acks_socket().as_poll_item(zmq::POLLIN),
                    // The rules watch, read only when it has something: no syscall per batch.
                    zmq::PollItem::from_fd(0, zmq::PollEvents::empty()),
                    // The peer door (clustered).
                    zmq::PollItem::from_fd(0, zmq::PollEvents::empty()),
                ];
                // Only the slots in use are polled (an fd with no events still reports hangups).
                let mut n = 5;
                let (mut watch_at, mut peer_at) = (None, None);
                if let Some(w) = &self.watcher {
                    items[n] = zmq::PollItem::from_fd(w.fd(), zmq::POLLIN);
                    watch_at = Some(n);
                    n += 1;
                }
                if let Some(node) = &self.node {
                    items[n] = node.door.as_poll_item(zmq::POLLIN);
                    peer_at = Some(n);
                    n += 1;
                }
                bus::sockets::poll(&mut items[..n], timeout)?;
                let mut ready = [false; 7];
                for (r, i) in ready.iter_mut().zip(&items[..n]) {
                    *r = i.is_readable();
                }
                let at = |slot: Option<usize>| slot.is_some_and(|i| ready[i]);
                [
                    ready[0],
                    ready[1],
                    ready[2],
                    ready[3],
                    ready[4],
                    at(watch_at),
                    at(peer_at),
                ]
            };
            let [ready_ingest, ready_control, ready_enroll, ready_door, ready_link_acks, ready_watch, ready_peer] =
                ready;
            if ready_link_acks {
                self.outbox.take_acks();
            }
            if ready_door {
                for user in self.streams.serve_door(secure)? {
                    if self.trust.is_admin(Some(&user)) {
                        continue;
                    }
                    if let Some((tag, data)) = self.presence.heard(&user) {
                        tracing::info!(host = %user, "host up");
                        self.internal.push_back(Event::new(tag, user, data));
                    }
                }
                self.drain_roots()?;
            }
            if last_presence.elapsed() >= presence::HEARTBEAT / 2 {
                for (tag, data) in self.presence.check() {
                    let host = data["host"].as_str().unwrap_or_default().to_string();
                    tracing::warn!(%host, missed = self.presence.missed, "host down: no heartbeat");
                    self.internal.push_back(Event::new(tag, host, data));
                }
                self.drain_roots()?;
                last_presence = Instant::now();
            }
            if ready_ingest {
                // One group: until GROUP events are in or the socket is empty.
                let until = self.stats.events + GROUP;
                while self.stats.events < until {
                    match self.ingest.recv(&mut frame, zmq::DONTWAIT) {
                        Ok(()) => {
                            // Copied out: `gets` borrows the frame mutably.
                            let sender = secure.then(|| {
                                user.clear();
                                user.push_str(frame.gets("User-Id").unwrap_or_default());
                                user.as_str()
                            });
                            self.take_input(&frame, sender, false)?
                        }
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                // Before anything else may write: a group commits whole, on its own.
                self.commit()?;
            }
            if ready_peer {
                self.take_forwarded()?;
                self.commit()?;
            }
            if ready_control {
                self.handle_control()?;
            }
            if ready_enroll {
                self.handle_enroll()?;
            }
            self.trust.follow();
            // Rule reloads happen here, between events: every event is run by either the old
            // or the new rule set, whole.
            if ready_watch {
                self.collect_rule_changes();
            }
            if !self.pending.is_empty() && self.last_change.elapsed() >= DEBOUNCE {
                self.apply_rule_changes();
                self.drain_roots()?;
            }
            // Clustered, purging is singleton work: the leader's.
            let purger = self.node.as_ref().is_none_or(|n| n.leader.is_leader());
            if !ready_ingest && purger && last_purge.elapsed() >= PURGE_EVERY {
                let n = self.registers.purge_expired()?;
                if n > 0 {
                    tracing::debug!(purged = n, "expired registers purged");
                }
                if let Some(h) = &mut self.history {
                    h.prune(bus::now_ms());
                }
                last_purge = Instant::now();
            }
            // The group is done: its effects, stream marks and actions become durable
            // together, and only then are they acknowledged and sent on.
            self.commit()?;
            self.streams.send_acks();
            if let Some(node) = &mut self.node {
                // Streams forwarded from here: ack their senders as their owners commit.
                self.streams.relay_acks();
                if last_purge.elapsed() >= PURGE_EVERY {
                    node.prune_peers();
                }
            }
            self.outbox.send();
            self.outbox.tick();
            if let (Some(t), Some(n)) = (&mut self.takeover, &self.node) {
                t.turn(n)?;
            }
            if let (Some(f), Some(n)) = (&mut self.marks, &self.node) {
                f.turn(n)?;
            }
            // After the commit: the history tells what was decided, never what was not.
            if let Some(h) = &mut self.history {
                h.flush();
            }
            if self.http.is_some() && last_metrics.elapsed() >= METRICS_EVERY {
                self.sync_metrics();
                last_metrics = Instant::now();
            }
        }
        self.commit()?;
        if let Some(h) = &mut self.history {
            h.flush();
        }
        if let Some(node) = self.node.take() {
            // The lease revoked now: the others take this member's streams at once.
            node.leave();
        }
        tracing::info!("manager stopped");
        Ok(())
    }

    /// Commit the group built since the last commit, atomically and durably (one fsync): the
    /// register changes, the streams' marks and the outbox. Then ack the streams and send the
    /// actions.
    ///
    /// Clustered, the commit is one etcd transaction that holds only if nothing the group read
    /// changed meanwhile; a group that lost a race is discarded (its register writes, stream
    /// marks and actions) and run again from its inputs, up to [`clustered::MAX_RERUNS`] times.
    fn commit(&mut self) -> Result<(), ManagerError> {
        let mut reruns = 0;
        loop {
            if !self.registers.is_dirty() && !self.streams.is_dirty() && !self.outbox.is_dirty() {
                if let Some(n) = &mut self.node {
                    n.replay.clear();
                }
                return Ok(());
            }
            let mut side = self.streams.side_writes();
            side.extend(self.outbox.side_writes());
            match self.registers.commit(side) {
                Ok(()) => {
                    self.stats.commits += 1;
                    self.streams.committed();
                    self.outbox.committed();
                    if let Some(n) = &mut self.node {
                        n.replay.clear();
                    }
                    return Ok(());
                }
                Err(registers::RegisterError::Conflict) if self.node.is_some() => {
                    self.streams.discard();
                    self.outbox.discard();
                    let inputs = match &mut self.node {
                        Some(n) => {
                            n.conflicts += 1;
                            std::mem::take(&mut n.replay)
                        }
                        None => Vec::new(),
                    };
                    reruns += 1;
                    if reruns > clustered::MAX_RERUNS {
                        // Unacknowledged: the senders send these events again.
                        tracing::warn!(inputs = inputs.len(), "a group lost {reruns} races in a row: dropped, its senders will send it again");
                        return Ok(());
                    }
                    tracing::debug!(
                        inputs = inputs.len(),
                        reruns,
                        "group lost a race in etcd: running it again"
                    );
                    // Managers racing on the same keys take turns: a short random pause,
                    // longer after each loss.
                    std::thread::sleep(clustered::backoff(reruns));
                    self.rerun(inputs)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Run a discarded group's inputs again, as they came. A frame that fills the group stops
    /// the rerun: what was not run is not acknowledged, and comes again from its sender.
    fn rerun(&mut self, inputs: Vec<clustered::Input>) -> Result<(), ManagerError> {
        for input in inputs {
            match input {
                clustered::Input::Frame(frame, sender, from_peer) => {
                    self.record(clustered::Input::Frame(
                        frame.clone(),
                        sender.clone(),
                        from_peer,
                    ));
                    if self.handle_frame(&frame, sender.as_deref(), from_peer)? == Handled::Full {
                        break;
                    }
                }
                clustered::Input::Event(ev) => {
                    self.internal.push_back(ev);
                    self.drain_roots()?;
                }
            }
        }
        Ok(())
    }

    /// Keep an input of the group being built (clustered only: to run it again on a conflict).
    fn record(&mut self, input: clustered::Input) {
        if let Some(n) = &mut self.node {
            n.replay.push(input);
        }
    }

    /// Take one frame from the ingest (or, `from_peer`, forwarded by another manager) into the
    /// group; a frame that fills a clustered group is taken in again after a commit.
    fn take_input(
        &mut self,
        frame: &[u8],
        sender: Option<&str>,
        from_peer: bool,
    ) -> Result<(), ManagerError> {
        if self.node.is_none() {
            self.handle_frame(frame, sender, from_peer)?;
            return Ok(());
        }
        loop {
            self.record(clustered::Input::Frame(
                frame.to_vec(),
                sender.map(str::to_string),
                from_peer,
            ));
            match self.handle_frame(frame, sender, from_peer)? {
                Handled::Done => return Ok(()),
                Handled::Full => self.commit()?,
            }
        }
    }

    /// Take what other managers forwarded (clustered): at most a group's worth per turn.
    fn take_forwarded(&mut self) -> Result<(), ManagerError> {
        let secure = self.trust.is_secure();
        for _ in 0..GROUP {
            let Some(node) = &self.node else {
                return Ok(());
            };
            match node.take_forwarded()? {
                None => return Ok(()),
                // Not two parts: nothing to take.
                Some(None) => {}
                Some(Some(f)) => {
                    // Only another manager (the admin key, as at the control socket) may
                    // claim who sent a batch.
                    if secure && !self.trust.is_admin(f.peer.as_deref()) {
                        continue;
                    }
                    let sender = secure.then_some(f.user.as_str());
                    if let Some(from) = f.hint {
                        // Where the stream goes on without a mark: the hello the forwarding
                        // manager heard.
                        if let Ok(b) = bus::delivery::Batch::decode(&f.frame, self.cfg.max_frame) {
                            let key = delivery::key(sender.unwrap_or_default(), b.stream);
                            self.streams.set_hint(&key, from);
                        }
                    }
                    self.take_input(&f.frame, sender, true)?;
                }
            }
        }
        Ok(())
    }

    /// Run the events the manager made itself (outside a rule); clustered, they are kept with
    /// the group's inputs.
    fn drain_roots(&mut self) -> Result<(), ManagerError> {
        if let Some(n) = &mut self.node {
            n.replay
                .extend(self.internal.iter().cloned().map(clustered::Input::Event));
        }
        self.drain_internal()
    }

    /// Clustered: true when the group being built is near etcd's limits on one transaction.
    fn group_full(&self) -> bool {
        let Some(node) = &self.node else {
            return false;
        };
        let (reads, writes, bytes) = self.registers.staged_size();
        let (ops, side_bytes) = self.outbox.pending();
        let budget = node.budget();
        reads >= budget
            || writes + self.streams.dirty_len() + ops >= budget
            || bytes + side_bytes >= clustered::MAX_GROUP_BYTES
    }

    fn collect_rule_changes(&mut self) {
        let Some(watch) = &mut self.watcher else {
            return;
        };
        let changed = watch.changed();
        let mut any = false;
        for p in changed.paths {
            if rules::is_rule_file(&p) {
                self.pending.insert(p);
                any = true;
            }
        }
        if changed.overflow {
            // Changes were lost: look again at every rule there is or was.
            tracing::warn!("rules watcher overflowed: rechecking every rule file");
            let known = self.rules.rules().iter().map(|r| r.file.clone());
            self.pending.extend(known);
            let present = rules::rule_files(&self.cfg.rules_dir).unwrap_or_default();
            self.pending.extend(present);
            any = true;
        }
        if any {
            self.last_change = Instant::now();
        }
    }

    fn apply_rule_changes(&mut self) {
        for path in std::mem::take(&mut self.pending) {
            if let Some(change) = self.rules.reload(&path) {
                self.stats.reloads += 1;
                self.announce(change);
            }
        }
        self.refresh_rule_stats();
    }

    fn refresh_rule_stats(&mut self) {
        self.stats.rules = self.rules.rules().iter().map(|r| r.name.clone()).collect();
        self.stats.disabled = self
            .rules
            .rules()
            .iter()
            .filter(|r| r.disabled)
            .map(|r| r.name.clone())
            .collect();
    }

    /// Log a rule load change and queue its `manager/rules/...` event.
    fn announce(&mut self, change: Change) {
        let names: Vec<String> = self.rules.rules().iter().map(|r| r.name.clone()).collect();
        let (tag, data) = match change {
            Change::Loaded { file } => {
                tracing::info!(file = %file.display(), rules = names.len(), "rule loaded");
                (
                    "manager/rules/loaded",
                    json!({"file": file, "rules": names}),
                )
            }
            Change::Removed { file } => {
                tracing::info!(file = %file.display(), "rule removed");
                (
                    "manager/rules/removed",
                    json!({"file": file, "rules": names}),
                )
            }
            Change::Failed(e) => {
                tracing::error!("rule not loaded: {e}");
                (
                    "manager/rules/error",
                    json!({"file": e.file, "line": e.line, "column": e.column, "message": e.message}),
                )
            }
        };
        self.internal
            .push_back(Event::new(tag, self.cfg.host.clone(), data));
    }

    fn handle_frame(
        &mut self,
        frame: &[u8],
        sender: Option<&str>,
        from_peer: bool,
    ) -> Result<Handled, ManagerError> {
        if !self.trust.known(sender) {
            self.stats.revoked += 1;
            let who = sender.unwrap_or_default();
            self.forged_log.warn(|quiet| {
                format!("dropped a frame from {who:?}, whose key is no longer accepted ({quiet} more not logged)")
            });
            return Ok(Handled::Done);
        }
        if !bus::delivery::is_batch(frame) {
            // A lone event, outside any stream: run once, never acknowledged (clustered: by
            // whichever manager received it).
            self.handle_event(frame, sender)?;
            return Ok(Handled::Done);
        }
        let decoded = bus::delivery::Batch::decode(frame, self.cfg.max_frame);
        let Some(batch) = self.stats.malformed.keep(decoded) else {
            return Ok(Handled::Done);
        };
        let user = sender.unwrap_or_default();
        let key = delivery::key(user, batch.stream);
        if let Some(node) = &mut self.node {
            let admin = !user.is_empty() && self.trust.is_admin(sender);
            let pk = clustered::partition_key(user, batch.stream, admin);
            if let Some(owner) = node.other_owner(&pk) {
                if from_peer {
                    // Not ours either (the members seen differently for a moment): the
                    // sender, unacknowledged, sends it again.
                    node.misrouted += 1;
                } else if node.forward(&owner, sender, frame, self.streams.hint(&key)) {
                    self.streams.front(&key);
                }
                return Ok(Handled::Done);
            }
        }
        match self.streams.admit(&key, &batch) {
            delivery::Admit::Gap => {
                self.stats.gaps += 1;
                Ok(Handled::Done)
            }
            delivery::Admit::From(skip) => {
                self.stats.duplicates += skip as u64;
                for (i, ev) in batch.events.iter().enumerate().skip(skip) {
                    if self.group_full() {
                        return Ok(Handled::Full);
                    }
                    self.handle_event(ev, sender)?;
                    // Done whatever became of it: run, refused as forged, or malformed.
                    self.streams.done(&key, batch.first + i as u64);
                }
                Ok(Handled::Done)
            }
        }
    }

    fn handle_event(&mut self, frame: &[u8], sender: Option<&str>) -> Result<(), ManagerError> {
        let decoded = bus::decode_with_limit::<Head>(frame, self.cfg.max_frame);
        let Some(head) = self.stats.malformed.keep(decoded) else {
            return Ok(());
        };
        if self.trust.check_event(sender, head.host) != trust::Verdict::Pass {
            self.stats.forged += 1;
            let (who, host, tag, id) = (sender.unwrap_or_default(), head.host, head.tag, head.id);
            self.forged_log.warn(|quiet| {
                format!("refused {tag} (event {id}) from {who} claiming host {host:?}: a host key speaks only for itself ({quiet} more not logged)")
            });
            return Ok(());
        }
        self.stats.events += 1;
        self.publish_event(head.tag, frame)?;
        if let Some(h) = &mut self.history {
            h.record(history::Kind::Event, frame);
        }
        if head.depth > MAX_DEPTH || !self.rules.wants(head.tag) {
            if head.depth > MAX_DEPTH {
                self.too_deep(head.id, head.tag, head.depth, &[]);
            }
            return self.drain_internal();
        }
        let decoded = bus::decode_with_limit::<Event>(frame, self.cfg.max_frame);
        let Some(event) = self.stats.malformed.keep(decoded) else {
            return Ok(());
        };
        self.process(&event)?;
        self.drain_internal()
    }

    /// Run the events made inside the manager, each through the monitor and the rules.
    fn drain_internal(&mut self) -> Result<(), ManagerError> {
        self.internal_max = self.internal_max.max(self.internal.len());
        while let Some(ev) = self.internal.pop_front() {
            self.stats.events += 1;
            let frame = bus::encode(&ev);
            self.publish_event(&ev.tag, &frame)?;
            if let Some(h) = &mut self.history {
                h.record(history::Kind::Event, &frame);
            }
            if self.rules.wants(&ev.tag) {
                self.process(&ev)?;
            }
        }
        Ok(())
    }

    /// `event`: the id of the event dropped, or of the one whose rule emitted it.
    fn too_deep(&mut self, event: &str, tag: &str, depth: u32, chain: &[String]) {
        self.stats.loops += 1;
        tracing::warn!(event, tag, depth, chain = ?chain, "event chain deeper than {MAX_DEPTH}: dropped (rules emitting in a loop?)");
        self.internal.push_back(Event::new(
            "manager/loop",
            self.cfg.host.clone(),
            json!({"tag": tag, "depth": depth, "chain": chain, "max_depth": MAX_DEPTH}),
        ));
    }

    fn process(&mut self, event: &Event) -> Result<(), ManagerError> {
        let mut out = std::mem::take(&mut self.produced);
        out.clear();
        self.rules.run(event, &mut out);
        for hit in &out.hits {
            self.stats.hits += 1;
            self.note(monitor::HIT, &hit.rule, history::Kind::Hit, hit)?;
        }
        for err in &out.errors {
            self.stats.rule_errors += 1;
            self.note(monitor::ERROR, &err.rule, history::Kind::Error, err)?;
        }
        for action in &out.actions {
            self.stats.actions += 1;
            self.outbox.push(action);
            self.note(monitor::ACTION, &action.name, history::Kind::Action, action)?;
        }
        for (rule, file) in out.disabled.drain(..) {
            self.internal.push_back(Event::new(
                "manager/rules/disabled",
                self.cfg.host.clone(),
                json!({"rule": rule, "file": file, "failures": rules::DISABLE_AFTER}),
            ));
        }
        if !self
            .stats
            .disabled
            .len()
            .eq(&self.rules.rules().iter().filter(|r| r.disabled).count())
        {
            self.refresh_rule_stats();
        }
        for em in out.emitted.drain(..) {
            let mut chain = event.chain.clone();
            chain.push(em.rule);
            let depth = event.depth + 1;
            if depth > MAX_DEPTH {
                self.too_deep(&event.id, &em.tag, depth, &chain);
                continue;
            }
            let mut child = Event::new(em.tag, event.host.clone(), em.data);
            child.depth = depth;
            child.cause = Some(event.id.clone());
            child.chain = chain;
            self.internal.push_back(child);
        }
        self.produced = out;
        Ok(())
    }

    fn publish_event(&self, tag: &str, frame: &[u8]) -> Result<(), ManagerError> {
        let mut topic = String::with_capacity(monitor::EVENT.len() + tag.len());
        topic.push_str(monitor::EVENT);
        topic.push_str(tag);
        self.publish_monitor(&topic, frame)
    }

    fn publish_monitor(&self, topic: &str, payload: &[u8]) -> Result<(), ManagerError> {
        // PUB never blocks: with no subscriber, or a slow one past its HWM, the message is dropped.
        self.monitor
            .send(topic.as_bytes(), zmq::SNDMORE | zmq::DONTWAIT)?;
        self.monitor.send(payload, zmq::DONTWAIT)?;
        Ok(())
    }

    /// Tell the monitor of a hit, an error or an action, and keep it in the history: one
    /// encoding for both.
    fn note<T: Serialize>(
        &mut self,
        prefix: &str,
        name: &str,
        kind: history::Kind,
        msg: &T,
    ) -> Result<(), ManagerError> {
        let topic = format!("{prefix}{name}");
        let frame = bus::encode(msg);
        if let Some(h) = &mut self.history {
            h.record(kind, &frame);
        }
        self.publish_monitor(&topic, &frame)
    }

    fn handle_control(&mut self) -> Result<(), ManagerError> {
        let mut req = zmq::Message::new();
        self.control.recv(&mut req, zmq::DONTWAIT)?;
        // ZAP already keeps host keys off this door; this also cuts a revoked admin key.
        let admin = self.trust.is_admin(req.gets("User-Id"));
        let reply = self.answer_control(&req, admin);
        self.control.send(reply.to_string().as_bytes(), 0)?;
        Ok(())
    }

    /// The answer to one control request (bytes as received), from the admin or not. Public
    /// so the fuzz targets drive the real thing.
    pub fn answer_control(&mut self, request: &[u8], admin: bool) -> Value {
        match serde_json::from_slice::<Value>(request) {
            Ok(_) if !admin => json!({"error": "the control socket is for the admin key only"}),
            Ok(v) => self.control_reply(&v),
            Err(e) => json!({"error": format!("request is not JSON: {e}")}),
        }
    }

    /// Take one ingest frame from `sender` (its `User-Id`; `None` without CURVE) exactly as
    /// the run loop does. Public so the fuzz targets drive the real thing.
    pub fn take_frame(&mut self, frame: &[u8], sender: Option<&str>) -> Result<(), ManagerError> {
        self.take_input(frame, sender, false)
    }

    /// Bring the counts kept elsewhere (streams, outbox, hosts, history) into the stats.
    fn refresh_stats(&mut self) {
        self.stats.streams = self.streams.len();
        self.stats.outbox = self.outbox.waiting();
        self.stats.outbox_resent = self.outbox.resent;
        (self.stats.hosts_up, self.stats.hosts_down) = self.presence.counts();
        if let Some(n) = &self.node {
            self.stats.forwarded = n.forwarded;
            self.stats.misrouted = n.misrouted;
            self.stats.conflicts = n.conflicts;
            self.stats.leader = n.leader.is_leader();
        }
        if let Some(t) = &self.takeover {
            self.stats.taken_over = t.taken_over;
        }
        if let Some(f) = &self.marks {
            self.stats.marks_forgotten = f.forgotten;
        }
        if let Some(h) = &self.history {
            self.stats.history_bytes = h.bytes();
            self.stats.history_dropped = h.dropped;
        }
    }

    fn sync_metrics(&mut self) {
        self.refresh_stats();
        let size = self.registers.size_on_disk();
        self.metrics
            .sync(&self.stats, self.internal_max, Some(size));
    }

    fn control_reply(&mut self, req: &Value) -> Value {
        let str_arg = |k: &str| req.get(k).and_then(Value::as_str);
        let answer = |r: Result<Value, registers::RegisterError>| match r {
            Ok(v) => json!({"ok": v}),
            Err(e) => json!({"error": e.to_string()}),
        };
        match (str_arg("cmd"), str_arg("op")) {
            (Some("stats"), _) => {
                self.refresh_stats();
                serde_json::to_value(&self.stats).unwrap_or_default()
            }
            (Some("flush"), _) => match self.commit() {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"error": e.to_string()}),
            },
            (Some("registers"), Some("list")) => answer(
                self.registers
                    .entries(str_arg("prefix").unwrap_or(""))
                    .map(|m| Value::Object(m.into_iter().collect())),
            ),
            (Some("registers"), Some(op @ ("get" | "set" | "del"))) => {
                let Some(key) = str_arg("key") else {
                    return json!({"error": format!("registers {op} needs a key")});
                };
                match op {
                    "get" => answer(self.registers.get(key).map(|v| v.unwrap_or(Value::Null))),
                    "del" => answer(self.registers.del(key).map(Value::from)),
                    _ => match req.get("value") {
                        Some(v) => answer(self.registers.set(key, v).map(|()| json!(true))),
                        None => json!({"error": "registers set needs a value"}),
                    },
                }
            }
            (Some("keys"), _) => self.trust.keys_command(req),
            (Some("hosts"), _) => json!({"ok": self.presence.hosts()}),
            (cmd, op) => {
                json!({"error": format!("unknown command {cmd:?} {op:?} (known: stats, flush, registers list|get|set|del, keys list|accept|reject|revoke, hosts)")})
            }
        }
    }
}

impl Manager {
    /// Answer one request at the enroll door; a name that became pending is announced as
    /// `manager/keys/pending`.
    fn handle_enroll(&mut self) -> Result<(), ManagerError> {
        let mut req = zmq::Message::new();
        self.enroll.recv(&mut req, zmq::DONTWAIT)?;
        let address = req.gets("Peer-Address").unwrap_or_default().to_string();
        let user = req.gets("User-Id").map(String::from);
        let (reply, pending) = self.trust.enroll_request(&req, user.as_deref(), &address);
        let text = serde_json::to_vec(&reply).unwrap_or_default();
        self.enroll.send(text, 0)?;
        if let Some(data) = pending {
            self.internal.push_back(Event::new(
                "manager/keys/pending",
                self.cfg.host.clone(),
                data,
            ));
            self.drain_roots()?;
        }
        Ok(())
    }
}

/// Run a manager until `stop` is set.
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<(), ManagerError> {
    let mut m = Manager::new(cfg)?;
    m.run(&stop)
}
