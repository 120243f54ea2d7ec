//! The reflex publisher: the one place actions get their order.
//!
//! A separate process from the manager, linked to it over `ipc://<state>/publisher.ipc`. It
//! PULLs each action, gives it the next sequence number (strictly increasing, across restarts),
//! appends it to a durable log in sled, and PUBlishes it under the topic frame of its target
//! (`all/`, `host/<name>/`, `group/<name>/`). The log keeps the last [`Config::keep`] actions.

use bus::{Action, Endpoints, Target};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PublisherError {
    #[error(transparent)]
    Socket(#[from] bus::sockets::SocketError),
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("action log {path}: {source} (is another publisher running on this state dir?)")]
    Log {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("action log: {0}")]
    Store(#[from] sled::Error),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub endpoints: Endpoints,
    pub state_dir: PathBuf,
    pub max_frame: usize,
    /// How many of the newest actions the log keeps.
    pub keep: u64,
}

pub struct Publisher {
    link: zmq::Socket,
    publish: zmq::Socket,
    log: sled::Tree,
    db: sled::Db,
    next_seq: u64,
    keep: u64,
    max_frame: usize,
    bad: [u64; 4],
    /// Actions published since start.
    pub published: u64,
}

const FLUSH_EVERY: Duration = Duration::from_millis(100);

impl Publisher {
    pub fn new(cfg: &Config) -> Result<Publisher, PublisherError> {
        let path = cfg.state_dir.join("publisher");
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|source| PublisherError::Log { path, source })?;
        let log = db.open_tree("actions")?;
        let next_seq = match log.last()? {
            Some((k, _)) => seq_of(&k) + 1,
            None => 1,
        };
        let link = bus::sockets::bind(zmq::PULL, &cfg.endpoints.link)?;
        let publish = bus::sockets::bind(zmq::PUB, &cfg.endpoints.publish)?;
        tracing::info!(link = %cfg.endpoints.link, publish = %cfg.endpoints.publish, next_seq, "publisher up");
        Ok(Publisher {
            link,
            publish,
            log,
            db,
            next_seq,
            keep: cfg.keep.max(1),
            max_frame: cfg.max_frame,
            bad: [0; 4],
            published: 0,
        })
    }

    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), PublisherError> {
        let mut frame = zmq::Message::new();
        let mut last_flush = Instant::now();
        let mut dirty = false;
        while !stop.load(Ordering::Relaxed) {
            let readable = {
                let mut items = [self.link.as_poll_item(zmq::POLLIN)];
                bus::sockets::poll(&mut items, 100)?;
                items[0].is_readable()
            };
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

    /// Number, log and publish one action frame; false when the frame was bad and dropped.
    fn handle(&mut self, frame: &[u8]) -> Result<bool, PublisherError> {
        let mut action: Action = match bus::decode_with_limit(frame, self.max_frame) {
            Ok(a) => a,
            Err(e) => {
                self.count_bad(e.kind() as usize, &e.to_string());
                return Ok(false);
            }
        };
        let target = match Target::parse(&action.target) {
            Ok(t) => t,
            Err(e) => {
                self.count_bad(3, &e.to_string());
                return Ok(false);
            }
        };
        action.seq = self.next_seq;
        self.next_seq += 1;
        let out = bus::encode(&action);
        self.log.insert(action.seq.to_be_bytes(), out.as_slice())?;
        if action.seq > self.keep && action.seq.is_multiple_of(1024) {
            self.prune(action.seq - self.keep)?;
        }
        self.publish.send(target.topic().as_bytes(), zmq::SNDMORE)?;
        self.publish.send(out, 0)?;
        self.published += 1;
        tracing::debug!(seq = action.seq, name = %action.name, target = %action.target, "published");
        Ok(true)
    }

    fn count_bad(&mut self, kind: usize, why: &str) {
        let n = &mut self.bad[kind.min(3)];
        *n += 1;
        if *n == 1 {
            tracing::warn!(
                "dropped a bad action frame: {why} (further ones of this kind are only counted)"
            );
        }
    }

    /// Drop log entries with a sequence number below `below`.
    fn prune(&self, below: u64) -> Result<(), PublisherError> {
        for item in self.log.range(..below.to_be_bytes()) {
            let (k, _) = item?;
            self.log.remove(k)?;
        }
        Ok(())
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

pub fn run(cfg: Config, stop: &AtomicBool) -> Result<(), PublisherError> {
    let mut p = Publisher::new(&cfg)?;
    p.run(stop)
}
