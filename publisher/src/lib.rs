//! The reflex publisher: the one place actions get their order.
//!
//! A separate process from the manager, linked to it over `ipc://<state>/publisher.ipc`. It
//! PULLs [`bus::delivery::Linked`] frames (action number `n` of a manager's outbox), gives each
//! new action the next sequence number (strictly increasing, never reused, across restarts and
//! kill -9), seals it in a signed envelope ([`bus::envelope`], with the control node's signing
//! key in `<state>/keys/sign.secret`: the publisher numbers, so it signs), logs it durably in
//! sled, and PUBlishes it under the topic frame of its target (`all/`, `host/<name>/`,
//! `group/<name>/`), each action saying the seq of the one before it on the same topic
//! ([`bus::Action::prev`]), and recent topics are ticked with their last seq (see `topics`), so
//! a subscriber that the PUB socket dropped for knows. The log keeps the last [`Config::keep`] actions and the newest of each name.
//!
//! **Log, publish, flush, acknowledge, in groups.** What the link holds at one look (up to 4,096
//! frames) is numbered, sealed and staged in one atomic sled batch (the actions, the names they
//! replace, the highest number logged per outbox, the pruning), applied, published, flushed
//! once, and only then acknowledged to the manager, whose outbox keeps each action until then:
//! the fsync is not on the way to the actors. Numbering resumes from the log, one group further
//! after a crash (a group published but not flushed must not see its seqs given again; actors
//! recognise its actions, resent by the manager, by id).
//!
//! **Link protocol.** Per outbox the publisher takes only the number after the highest it
//! logged: a lower one is a resend (acknowledged again, not numbered, logged or published
//! twice), a higher one follows a lost frame and is dropped unacknowledged (the manager resends
//! in order). Anything that is not a `Linked` frame with a valid outbox id is counted as
//! malformed and dropped. The newest 1,024 outboxes are remembered.
//!
//! **Acknowledgements** go out on a PUB bound at `ipc://<state>/publisher-acks.ipc`
//! ([`bus::Endpoints::link_acks`]), two frames: the outbox id as topic, then
//! [`bus::delivery::LinkAck`] (every number up to `upto` is in the durable log). One is sent
//! after each group commit for every outbox it advanced, at once for a resend, and once a second
//! for every outbox heard from in the last minute (or remembered at start), so a manager that
//! subscribed late or missed one learns where it stands.
//!
//! A REP socket (the replay endpoint) serves the log to actors that were away: a JSON request
//! `{"since": SEQ, "topics": ["all/", "host/web1/"], "latest_only": bool, "limit": N}` is
//! answered with a JSON header frame `{"count", "more", "last_seq", "oldest", "gap"}` followed by
//! one sealed frame per action (oldest first, at most `limit` or [`REPLAY_LIMIT`]; `more` says
//! there are others after them), the very bytes published live, so an actor that was away
//! checks them the same way. Filtering reads the envelope's header, not the body.
//! `latest_only` keeps only the newest action of each name: what is in force, for an actor
//! starting from nothing. `gap` is true when actions after `since` were already pruned from the
//! log.

#![deny(missing_docs)]

mod doors;
mod journal;
mod link;
mod metrics;
mod topics;

use bus::secure::Door;
use bus::{BadFrames, Endpoints};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use thiserror::Error;

/// Why the publisher could not start or had to stop.
#[derive(Debug, Error)]
pub enum PublisherError {
    /// A socket could not be bound.
    #[error(transparent)]
    Socket(#[from] bus::sockets::SocketError),
    /// A socket failed while running.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The action log could not be opened.
    #[error("action log {path}: {source} (is another publisher running on this state dir?)")]
    Log {
        /// Where the log lives.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// Reading or writing the action log failed.
    #[error("action log: {0}")]
    Store(#[from] sled::Error),
    /// The enrollment store cannot be read.
    #[error(transparent)]
    Enroll(#[from] bus::enroll::EnrollError),
    /// The ZAP handler could not start.
    #[error(transparent)]
    Zap(#[from] bus::zap::ZapError),
    /// The HTTP server (metrics) cannot start.
    #[error("http: {0}")]
    Http(std::io::Error),
    /// The control node's signing key cannot be made or read.
    #[error("signing key: {0}")]
    SignKey(#[from] bus::envelope::SignKeyError),
}

/// How to run a publisher.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it binds: the link and its acks, the PUB fan-out and the replay socket.
    pub endpoints: Endpoints,
    /// The state dir; the log is `<state>/publisher`.
    pub state_dir: PathBuf,
    /// Largest link frame (a `Linked` action) accepted, in bytes.
    pub max_frame: usize,
    /// How many of the newest actions the log keeps.
    pub keep: u64,
    /// CURVE (the control node's key pair) or the explicit insecure mode, for the PUB and
    /// replay sockets. The link is `ipc://` in the 0700 state dir.
    pub security: bus::secure::Security,
    /// The PUB socket's send high-water mark and kernel send buffer, in messages and bytes;
    /// `None`: the defaults ([`bus::sockets::HWM`], the kernel's). Made small only by tests
    /// that need a subscriber to fall behind.
    pub send_limits: Option<(i32, i32)>,
    /// Serve Prometheus metrics on this `host:port`; `None`: no HTTP.
    pub http: Option<String>,
}

/// How often the exposed metrics are brought up to date.
const METRICS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A running publisher's sockets and log.
pub struct Publisher {
    link: zmq::Socket,
    publish: zmq::Socket,
    replay: zmq::Socket,
    doors: doors::Doors,
    publish_endpoint: String,
    security: bus::secure::Security,
    /// Acknowledgements to the manager's outboxes (PUB, topic = outbox id).
    acks: zmq::Socket,
    /// The log, the names in force and where each outbox stands.
    journal: journal::Journal,
    outboxes: link::Outboxes,
    db: sled::Db,
    /// What every action is sealed with.
    sign: bus::envelope::SignKey,
    next_seq: u64,
    keep: u64,
    max_frame: usize,
    bad: BadFrames,
    /// The last seq published on each topic: the next action's `prev` there, and the ticks.
    topics: topics::Topics,
    send_limits: Option<(i32, i32)>,
    /// Actions published since start.
    pub published: u64,
    /// Link frames recognised as resends since start (acknowledged, not logged again).
    pub resent: u64,
    /// Link frames dropped since start because one before them was missing.
    pub gaps: u64,
    /// Groups committed (one flush each) since start.
    pub commits: u64,
    /// Replay requests answered since start.
    pub replays: u64,
    /// Actions sent in replay answers since start.
    pub replayed: u64,
    metrics: metrics::Metrics,
    http: Option<telemetry::Server>,
}

impl Publisher {
    /// Open the log (numbering resumes after its last action) and bind the sockets.
    pub fn new(cfg: &Config) -> Result<Publisher, PublisherError> {
        let path = cfg.state_dir.join("publisher");
        let db = sled::Config::new()
            .path(&path)
            // sled's page cache grows to 1 GiB by default; replays read mostly the newest part.
            .cache_capacity(64 << 20)
            .open()
            .map_err(|source| PublisherError::Log {
                path: path.clone(),
                source,
            })?;
        // The log holds every action, file contents included: only the owner may read it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            PublisherError::Log {
                path: path.clone(),
                source: sled::Error::Io(e),
            }
        })?;
        let journal = journal::Journal::open(&db)?;
        let outboxes = link::Outboxes::load(&journal)?;
        let sign = bus::envelope::SignKey::load_or_create(&cfg.state_dir)?;
        let logged = journal.next_seq()?;
        // Actions are published before their group's flush (see `link`): after a crash, the
        // last group's seqs may have gone out without being kept, so numbering skips it.
        let next_seq = if journal.take_clean(&db)? || logged == 1 {
            logged
        } else {
            logged + link::MAX_GROUP as u64
        };
        // The ZAP handler is bound before any socket, or libzmq would let every key in.
        let doors = doors::Doors::new(&cfg.security, &cfg.state_dir)?;
        let link = bus::sockets::bind(zmq::PULL, &cfg.endpoints.link)?;
        let acks = bus::sockets::bind(zmq::PUB, &cfg.endpoints.link_acks)?;
        let sec = &cfg.security;
        let publish = doors::bind_fanout(&cfg.endpoints.publish, sec, cfg.send_limits)?;
        let replay = bus::secure::bind(zmq::REP, &cfg.endpoints.replay, sec, Door::Replay)?;
        let (metrics, registry) = metrics::Metrics::new();
        let http = match &cfg.http {
            Some(addr) => {
                Some(telemetry::Server::start(addr, registry, None).map_err(PublisherError::Http)?)
            }
            None => None,
        };
        tracing::info!(link = %cfg.endpoints.link, link_acks = %cfg.endpoints.link_acks, publish = %cfg.endpoints.publish, replay = %cfg.endpoints.replay, next_seq, sign_key = %sign.id(), "publisher up");
        Ok(Publisher {
            link,
            publish,
            replay,
            doors,
            publish_endpoint: cfg.endpoints.publish.clone(),
            security: cfg.security.clone(),
            acks,
            journal,
            outboxes,
            db,
            sign,
            next_seq,
            keep: cfg.keep.max(1),
            max_frame: cfg.max_frame,
            bad: BadFrames::new("link frame"),
            topics: topics::Topics::new(),
            send_limits: cfg.send_limits,
            published: 0,
            resent: 0,
            gaps: 0,
            commits: 0,
            replays: 0,
            replayed: 0,
            metrics,
            http,
        })
    }

    /// Serve the link and the replay socket until `stop` is set, then flush the log.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), PublisherError> {
        let mut frame = zmq::Message::new();
        let mut last_metrics = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let (readable, replay, subscriptions) = {
                let mut items = [
                    self.link.as_poll_item(zmq::POLLIN),
                    self.replay.as_poll_item(zmq::POLLIN),
                    self.publish.as_poll_item(zmq::POLLIN),
                ];
                bus::sockets::poll(&mut items, 100)?;
                let [link, replay, publish] = &items;
                (
                    link.is_readable(),
                    replay.is_readable(),
                    publish.is_readable(),
                )
            };
            if subscriptions {
                self.doors.serve_subscriptions(&self.publish)?;
            }
            if self.doors.refresh()? {
                // Closing first frees the port for the new socket (bind_fanout retries briefly).
                self.publish.set_linger(0)?;
                let unbound = bus::sockets::socket(zmq::XPUB)?;
                drop(std::mem::replace(&mut self.publish, unbound));
                self.publish =
                    doors::bind_fanout(&self.publish_endpoint, &self.security, self.send_limits)?;
            }
            if replay {
                self.handle_replay()?;
            }
            if readable {
                // What the link holds now is one group: one batch, one flush, then published.
                let mut group = self.group();
                for _ in 0..link::MAX_GROUP {
                    match self.link.recv(&mut frame, zmq::DONTWAIT) {
                        Ok(()) => {
                            self.admit(&frame, &mut group);
                        }
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                self.commit(group)?;
            }
            self.tick_acks()?;
            self.topics.tick(&self.publish)?;
            if self.http.is_some() && last_metrics.elapsed() >= METRICS_EVERY {
                self.metrics.sync(self);
                last_metrics = std::time::Instant::now();
            }
        }
        self.journal.mark_clean(&self.db)?;
        tracing::info!(published = self.published, "publisher stopped");
        Ok(())
    }

    fn handle_replay(&mut self) -> Result<(), PublisherError> {
        let mut req = zmq::Message::new();
        self.replay.recv(&mut req, zmq::DONTWAIT)?;
        let user = req.gets("User-Id").map(str::to_string);
        let frames = self.answer_replay(&req, user.as_deref())?;
        self.replays += 1;
        // The first frame is the header.
        self.replayed += frames.len().saturating_sub(1) as u64;
        self.replay.send_multipart(frames, 0)?;
        Ok(())
    }

    /// The answer to one replay request (bytes as received) from `user` (its `User-Id`;
    /// `None` without CURVE). Public so the fuzz targets drive the real thing.
    pub fn answer_replay(
        &mut self,
        request: &[u8],
        user: Option<&str>,
    ) -> Result<Vec<Vec<u8>>, PublisherError> {
        Ok(match serde_json::from_slice::<ReplayRequest>(request) {
            Ok(mut r) => {
                // A host is served only its own topics; the rest are named in the header.
                let refused = self.doors.filter_topics(user, &mut r.topics);
                self.replay_frames(&r, &refused)?
            }
            Err(e) => vec![
                serde_json::json!({"error": format!("bad replay request: {e}")})
                    .to_string()
                    .into_bytes(),
            ],
        })
    }

    /// Take one [`bus::delivery::Linked`] frame from the link and commit it alone, as a group
    /// of one: logged, flushed, published and acknowledged as the run loop does. True when it
    /// was new and is now logged; false when it was bad, a resend (acknowledged again) or after
    /// a gap (dropped). Public so the fuzz targets drive it.
    pub fn take_frame(&mut self, frame: &[u8]) -> Result<bool, PublisherError> {
        let mut group = self.group();
        let logged = self.admit(frame, &mut group);
        self.commit(group)?;
        Ok(logged)
    }

    /// The highest number of `outbox` logged (0 for an outbox not known).
    pub fn acked(&self, outbox: &str) -> u64 {
        self.outboxes.acked(outbox)
    }

    /// The header frame and the matching actions after `since`, oldest first.
    fn replay_frames(
        &self,
        r: &ReplayRequest,
        refused: &[String],
    ) -> Result<Vec<Vec<u8>>, PublisherError> {
        let oldest = self.journal.oldest()?.unwrap_or(self.next_seq);
        let pruned_through = self.journal.pruned_through()?;
        let mut picked: Vec<(u64, String, Vec<u8>)> = Vec::new();
        for item in self.journal.since(r.since) {
            let (seq, v) = item?;
            // Our own sealed frames: the header is only read for routing here.
            let Ok(header) = bus::envelope::peek(&v, usize::MAX) else {
                continue;
            };
            if r.topics.contains(&header.target.topic()) {
                picked.push((seq, header.name, v.to_vec()));
            }
        }
        if r.latest_only {
            let mut seen = std::collections::HashSet::new();
            let mut newest_first: Vec<_> = picked
                .into_iter()
                .rev()
                .filter(|(_, name, _)| seen.insert(name.clone()))
                .collect();
            newest_first.reverse();
            picked = newest_first;
        }
        // The oldest first: an actor asks again from the last one it got for the rest.
        let limit = r.limit.unwrap_or(REPLAY_LIMIT).min(REPLAY_LIMIT);
        let more = picked.len() > limit;
        picked.truncate(limit);
        let header = serde_json::json!({
            "count": picked.len(),
            "more": more,
            "last_seq": self.next_seq - 1,
            "oldest": oldest,
            "gap": r.since < pruned_through,
            "refused": refused,
        });
        let mut frames = vec![header.to_string().into_bytes()];
        frames.extend(picked.into_iter().map(|(_, _, f)| f));
        Ok(frames)
    }
}

/// Most actions in one replay answer; past it the header says `more` and the actor asks again.
pub const REPLAY_LIMIT: usize = 10_000;

/// What an actor asks the replay socket for.
#[derive(Debug, serde::Deserialize)]
struct ReplayRequest {
    #[serde(default)]
    since: u64,
    topics: Vec<String>,
    #[serde(default)]
    latest_only: bool,
    #[serde(default)]
    limit: Option<usize>,
}

/// Run a publisher until `stop` is set.
pub fn run(cfg: Config, stop: &AtomicBool) -> Result<(), PublisherError> {
    let mut p = Publisher::new(&cfg)?;
    p.run(stop)
}

#[cfg(test)]
mod tests;
