//! The reflex publisher: the one place actions get their order.
//!
//! A separate process from the manager, linked to it over `ipc://<state>/publisher.ipc`. It
//! PULLs each action, gives it the next sequence number (strictly increasing, across restarts),
//! seals it in a signed envelope ([`bus::envelope`], with the control node's signing key in
//! `<state>/keys/sign.secret`: the publisher numbers, so it signs), appends the sealed frame to a
//! durable log in sled, and PUBlishes it under the topic frame of its target (`all/`,
//! `host/<name>/`, `group/<name>/`). The log keeps the last [`Config::keep`] actions.
//!
//! A REP socket (the replay endpoint) serves the log to actors that were away: a JSON request
//! `{"since": SEQ, "topics": ["all/", "host/web1/"], "latest_only": bool, "limit": N}` is
//! answered with a JSON header frame `{"count", "last_seq", "oldest", "gap"}` followed by one
//! sealed frame per action (oldest first), the very bytes published live, so an actor that was
//! away checks them the same way. Filtering reads the envelope's header, not the body. `latest_only` keeps only the newest action of each name: what
//! is in force, for an actor starting from nothing. `gap` is true when actions after `since` were
//! already pruned from the log.

#![deny(missing_docs)]

mod doors;

use bus::secure::Door;
use bus::{Action, BadFrames, Endpoints, MalformedKind};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
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
    /// The control node's signing key cannot be made or read.
    #[error("signing key: {0}")]
    SignKey(#[from] bus::envelope::SignKeyError),
}

/// How to run a publisher.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it binds: the link, the PUB fan-out and the replay socket.
    pub endpoints: Endpoints,
    /// The state dir; the log is `<state>/publisher`.
    pub state_dir: PathBuf,
    /// Largest action frame accepted from the link, in bytes.
    pub max_frame: usize,
    /// How many of the newest actions the log keeps.
    pub keep: u64,
    /// CURVE (the control node's key pair) or the explicit insecure mode, for the PUB and
    /// replay sockets. The link is `ipc://` in the 0700 state dir.
    pub security: bus::secure::Security,
}

/// A running publisher's sockets and log.
pub struct Publisher {
    link: zmq::Socket,
    publish: zmq::Socket,
    replay: zmq::Socket,
    doors: doors::Doors,
    publish_endpoint: String,
    security: bus::secure::Security,
    log: sled::Tree,
    /// Action name -> the sequence number of its newest action: pruning keeps those, so the
    /// actions in force can always be replayed.
    latest: sled::Tree,
    db: sled::Db,
    /// What every action is sealed with.
    sign: bus::envelope::SignKey,
    next_seq: u64,
    keep: u64,
    max_frame: usize,
    bad: BadFrames,
    /// Actions published since start.
    pub published: u64,
}

const FLUSH_EVERY: Duration = Duration::from_millis(100);

impl Publisher {
    /// Open the log (numbering resumes after its last action) and bind the sockets.
    pub fn new(cfg: &Config) -> Result<Publisher, PublisherError> {
        let path = cfg.state_dir.join("publisher");
        let db = sled::Config::new()
            .path(&path)
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
        let log = db.open_tree("actions")?;
        let latest = db.open_tree("latest")?;
        let sign = bus::envelope::SignKey::load_or_create(&cfg.state_dir)?;
        let next_seq = match log.last()? {
            Some((k, _)) => seq_of(&k) + 1,
            None => 1,
        };
        // The ZAP handler is bound before any socket, or libzmq would let every key in.
        let doors = doors::Doors::new(&cfg.security, &cfg.state_dir)?;
        let link = bus::sockets::bind(zmq::PULL, &cfg.endpoints.link)?;
        let sec = &cfg.security;
        let publish = doors::bind_fanout(&cfg.endpoints.publish, sec)?;
        let replay = bus::secure::bind(zmq::REP, &cfg.endpoints.replay, sec, Door::Replay)?;
        tracing::info!(link = %cfg.endpoints.link, publish = %cfg.endpoints.publish, replay = %cfg.endpoints.replay, next_seq, sign_key = %sign.id(), "publisher up");
        Ok(Publisher {
            link,
            publish,
            replay,
            doors,
            publish_endpoint: cfg.endpoints.publish.clone(),
            security: cfg.security.clone(),
            log,
            latest,
            db,
            sign,
            next_seq,
            keep: cfg.keep.max(1),
            max_frame: cfg.max_frame,
            bad: BadFrames::new("action frame"),
            published: 0,
        })
    }

    /// Serve the link and the replay socket until `stop` is set, then flush the log.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), PublisherError> {
        let mut frame = zmq::Message::new();
        let mut last_flush = Instant::now();
        let mut dirty = false;
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
                self.publish = doors::bind_fanout(&self.publish_endpoint, &self.security)?;
            }
            if replay {
                self.handle_replay()?;
            }
            if readable {
                loop {
                    match self.link.recv(&mut frame, zmq::DONTWAIT) {
                        Ok(()) => {
                            dirty |= self.handle(&frame)?;
                        }
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if dirty && (!readable || last_flush.elapsed() >= FLUSH_EVERY) {
                self.db.flush()?;
                dirty = false;
                last_flush = Instant::now();
            }
        }
        self.db.flush()?;
        tracing::info!(published = self.published, "publisher stopped");
        Ok(())
    }

    fn handle_replay(&mut self) -> Result<(), PublisherError> {
        let mut req = zmq::Message::new();
        self.replay.recv(&mut req, zmq::DONTWAIT)?;
        let user = req.gets("User-Id").map(str::to_string);
        let frames = self.answer_replay(&req, user.as_deref())?;
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

    /// Number, seal, log and publish one action frame from the link, as the run loop does;
    /// false when the frame was bad and dropped. Public so the fuzz targets drive it.
    pub fn take_frame(&mut self, frame: &[u8]) -> Result<bool, PublisherError> {
        self.handle(frame)
    }

    /// The header frame and the matching actions after `since`, oldest first.
    fn replay_frames(
        &self,
        r: &ReplayRequest,
        refused: &[String],
    ) -> Result<Vec<Vec<u8>>, PublisherError> {
        let oldest = match self.log.first()? {
            Some((k, _)) => seq_of(&k),
            None => self.next_seq,
        };
        let pruned_through = self
            .latest
            .get(PRUNED_KEY)?
            .map(|v| seq_of(&v))
            .unwrap_or(0);
        let mut picked: Vec<(u64, String, Vec<u8>)> = Vec::new();
        for item in self.log.range((r.since.saturating_add(1)).to_be_bytes()..) {
            let (k, v) = item?;
            // Our own sealed frames: the header is only read for routing here.
            let Ok(header) = bus::envelope::peek(&v, usize::MAX) else {
                continue;
            };
            if r.topics.contains(&header.target.topic()) {
                picked.push((seq_of(&k), header.name, v.to_vec()));
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
        let limit = r.limit.unwrap_or(10_000);
        if picked.len() > limit {
            picked.drain(..picked.len() - limit);
        }
        let header = serde_json::json!({
            "count": picked.len(),
            "last_seq": self.next_seq - 1,
            "oldest": oldest,
            "gap": r.since < pruned_through,
            "refused": refused,
        });
        let mut frames = vec![header.to_string().into_bytes()];
        frames.extend(picked.into_iter().map(|(_, _, f)| f));
        Ok(frames)
    }

    /// Number, log and publish one action frame; false when the frame was bad and dropped.
    fn handle(&mut self, frame: &[u8]) -> Result<bool, PublisherError> {
        // A bad target does not decode: it is counted as a malformed frame.
        let Some(mut action) = self
            .bad
            .keep(bus::decode_with_limit::<Action>(frame, self.max_frame))
        else {
            return Ok(false);
        };
        if action.name.is_empty() || action.name.contains(char::is_control) {
            let why = format!("bad action name {:?}", action.name);
            self.bad.count(MalformedKind::Malformed, &why);
            return Ok(false);
        }
        action.seq = self.next_seq;
        self.next_seq += 1;
        let out = bus::envelope::seal(&self.sign, &action, bus::now_ms());
        self.log.insert(action.seq.to_be_bytes(), out.as_slice())?;
        self.latest
            .insert(action.name.as_bytes(), &action.seq.to_be_bytes())?;
        if action.seq > self.keep && action.seq.is_multiple_of(1024) {
            self.prune(action.seq - self.keep)?;
        }
        self.publish
            .send(action.target.topic().as_bytes(), zmq::SNDMORE)?;
        self.publish.send(out, 0)?;
        self.published += 1;
        tracing::debug!(seq = action.seq, name = %action.name, target = %action.target, "published");
        Ok(true)
    }

    /// Drop log entries with a sequence number below `below`, except the newest action of each
    /// name (still in force on the actors).
    fn prune(&self, below: u64) -> Result<(), PublisherError> {
        for item in self.log.range(..below.to_be_bytes()) {
            let (k, v) = item?;
            let in_force = bus::envelope::peek(&v, usize::MAX)
                .ok()
                .and_then(|h| self.latest.get(h.name.as_bytes()).ok().flatten())
                .is_some_and(|s| s.as_ref() == k.as_ref());
            if !in_force {
                self.log.remove(&k)?;
                self.latest.insert(PRUNED_KEY, &k)?;
            }
        }
        Ok(())
    }
}

/// Key in the `latest` tree holding the highest pruned sequence number (action names cannot
/// hold control characters, so it cannot collide with one).
const PRUNED_KEY: &[u8] = b"\0pruned";

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

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

/// Run a publisher until `stop` is set.
pub fn run(cfg: Config, stop: &AtomicBool) -> Result<(), PublisherError> {
    let mut p = Publisher::new(&cfg)?;
    p.run(stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;
    use std::time::Duration;

    fn action(name: &str, target: &str) -> Action {
        Action {
            id: bus::new_id(),
            name: name.into(),
            seq: 0,
            target: bus::Target::parse(target).unwrap(),
            graph: json!([]),
            origin: Default::default(),
            expires: None,
        }
    }

    /// What the replay socket answers, each frame verified against the state dir's key.
    fn replay(ep: &str, key: &bus::envelope::ManagerKey, req: Value) -> (Value, Vec<Action>) {
        let s = bus::sockets::connect(zmq::REQ, ep).unwrap();
        s.set_rcvtimeo(5_000).unwrap();
        s.send(req.to_string().as_bytes(), 0).unwrap();
        let parts = s.recv_multipart(0).unwrap();
        let header = serde_json::from_slice(&parts[0]).unwrap();
        (
            header,
            parts[1..]
                .iter()
                .map(|p| bus::envelope::open(p, key, bus::MAX_FRAME).unwrap().action)
                .collect(),
        )
    }

    #[test]
    fn numbers_logs_prunes_and_replays_by_topic() {
        let dir = tempfile::tempdir().unwrap();
        let base = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = Config {
            endpoints: bus::Endpoints::local(base, dir.path()),
            state_dir: dir.path().to_path_buf(),
            max_frame: bus::MAX_FRAME,
            keep: 1_000,
            security: bus::secure::Security::Insecure,
        };
        // The key the publisher will find and sign with.
        let key = bus::envelope::SignKey::load_or_create(dir.path())
            .unwrap()
            .public();
        let stop = Arc::new(AtomicBool::new(false));
        let run = {
            let (cfg, stop) = (cfg.clone(), stop.clone());
            std::thread::spawn(move || run(cfg, &stop))
        };
        let link = bus::sockets::connect(zmq::PUSH, &cfg.endpoints.link).unwrap();
        // "pinned" goes out first and is never replaced: pruning must keep it.
        link.send(bus::encode(&action("pinned", "host/a")), 0)
            .unwrap();
        for i in 0..3_000 {
            let target = if i % 2 == 0 { "host/a" } else { "host/ab" };
            link.send(bus::encode(&action(&format!("n{}", i % 10), target)), 0)
                .unwrap();
        }
        link.send(b"garbage".as_slice(), 0).unwrap();
        link.send(bus::encode(&action("last", "all")), 0).unwrap();
        let ep = cfg.endpoints.replay.clone();
        let mut tries = 0;
        let (header, all) = loop {
            let (h, a) = replay(
                &ep,
                &key,
                json!({"since": 0, "topics": ["all/", "host/a/"]}),
            );
            if h["last_seq"] == json!(3_002) || tries > 100 {
                break (h, a);
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(header["last_seq"], json!(3_002), "garbage was not numbered");
        assert_eq!(header["gap"], json!(true), "older actions were pruned");
        assert!(
            all.windows(2).all(|w| w[0].seq < w[1].seq),
            "oldest first, strictly increasing"
        );
        assert!(
            all.iter()
                .all(|a| a.target == "host/a" || a.target == "all"),
            "host/ab is not host/a"
        );
        assert_eq!(
            all[0].name, "pinned",
            "the newest action of a name survives pruning"
        );
        assert_eq!(all.last().unwrap().name, "last");

        let (_, latest) = replay(
            &ep,
            &key,
            json!({"since": 0, "topics": ["all/", "host/a/"], "latest_only": true}),
        );
        let names: Vec<&str> = latest.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["pinned", "n0", "n2", "n4", "n6", "n8", "last"]);
        let (h, recent) = replay(&ep, &key, json!({"since": 3_000, "topics": ["host/ab/"]}));
        assert_eq!((h["gap"].clone(), recent.len()), (json!(false), 1));
        let s = bus::sockets::connect(zmq::REQ, &ep).unwrap();
        s.set_rcvtimeo(5_000).unwrap();
        s.send("not json", 0).unwrap();
        assert!(String::from_utf8(s.recv_bytes(0).unwrap())
            .unwrap()
            .contains("bad replay request"));

        stop.store(true, Ordering::Relaxed);
        run.join().unwrap().unwrap();
        // Numbering continues across a restart.
        let p = Publisher::new(&cfg).unwrap();
        assert_eq!(p.next_seq, 3_003);
    }
}
