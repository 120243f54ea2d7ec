//! The on-disk graph store: the graphs in force, kept under the state dir so that they converge
//! again after a restart, the last sequence applied per issuer, and each graph's engine state
//! (its pending refreshes).
//!
//! **Group commit, off the critical path.** The graphs and the last sequences live together in
//! one append-only log, `<state>/actor-<name>/graphs.log` (format in `log`). The serve loop
//! never writes it: [`Store::save`], [`Store::remove`] and [`Store::save_last_seqs`] queue the
//! change for the store's own thread and return at once, so the next action may start. That
//! thread takes everything queued, writes it as ONE checksummed frame (many graphs' records
//! and the last sequences as of the last of them), fsyncs once, and starts over, at most once
//! every 5 ms; the more actions arrive meanwhile, the bigger the next group.
//!
//! **Crash safety.** A frame counts whole or not at all (checksum and length; a torn tail is
//! cut off when the store is opened), and the serve loop queues a graph before its sequence, so
//! the durable sequence never says "applied" of a graph that is not durable too. After a crash
//! the actor resumes from that durable sequence: the publisher's log is the source of truth and
//! replays what came after it, and the intake skips what it has seen by id. A graph applied
//! but not yet durable is then applied again, which converges to the same state (the file
//! resource's own write stays atomic and fsynced); nothing is lost.
//!
//! **Compaction.** When the log has grown to twice what it held after the last compaction (and
//! past [`COMPACT_MIN`]), the store thread rewrites it as a snapshot of what is in force: a temp
//! file, fsynced, renamed over the log, the directory fsynced.
//!
//! A store written by an older actor (`graphs/*.json` and `issuers.json`) is read once and
//! carried into a new log, then removed.

mod log;

use bus::Action;
use engine::os::hex;
use log::{Live, Record};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

/// Issuer key id -> the last sequence applied from it.
pub(crate) type LastSeqs = std::collections::BTreeMap<String, u64>;

/// The log is compacted no sooner than at this size.
const COMPACT_MIN: u64 = 4 << 20;
/// The most bytes of records one group commit takes; the rest waits for the next one.
const MAX_GROUP: usize = 4 << 20;
/// The least time between two group commits. The store is off the critical path (the
/// publisher's log is what the actor resumes from), so waiting costs nothing but a few
/// milliseconds more to replay after a crash.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);
/// Frame size in a snapshot: also about the most a compaction holds of the graphs' bodies.
const SNAPSHOT_CHUNK: usize = 64 << 10;

/// Where the actor keeps its graphs and their engine state: `<state>/actor-<name>/`.
pub(crate) struct Store {
    engine: PathBuf,
    /// What the log said when the store was opened, until `load`/`last_seqs` take it.
    recovered: Mutex<Recovered>,
    /// To the store thread; `None` when the log could not be opened (nothing is kept).
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Recovered {
    graphs: Vec<Vec<u8>>,
    seqs: LastSeqs,
}

/// A change queued for the store thread.
enum Op {
    Put {
        name: String,
        body: Vec<u8>,
    },
    Remove(String),
    Seqs(LastSeqs),
    /// Answered once everything queued before it is durable.
    #[cfg_attr(not(test), allow(dead_code))]
    Flush(mpsc::Sender<()>),
}

impl Store {
    pub(crate) fn new(state: &Path, name: &str) -> Store {
        Store::open(state, name, COMPACT_MIN)
    }

    fn open(state: &Path, name: &str, compact_min: u64) -> Store {
        let dir = state.join(format!("actor-{}", safe_name(name)));
        let engine = dir.join("engine");
        match recover(&dir) {
            Ok((file, len, recovered)) => {
                let (tx, rx) = mpsc::channel();
                let writer = Writer {
                    path: dir.join("graphs.log"),
                    dir,
                    file,
                    len,
                    compact_at: compact_min.max(2 * len),
                    compact_min,
                    seqs: recovered.seqs.clone(),
                    seqs_json: Vec::new(),
                };
                let thread = std::thread::Builder::new()
                    .name("actor-store".into())
                    .spawn(move || writer.run(rx));
                match thread {
                    Ok(thread) => {
                        return Store {
                            engine,
                            recovered: Mutex::new(recovered),
                            ops: Some(tx),
                            thread: Some(thread),
                        }
                    }
                    Err(e) => tracing::error!("cannot start the store thread: {e}"),
                }
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), "cannot open the graph store, nothing will be kept: {e}")
            }
        }
        Store {
            engine,
            recovered: Mutex::default(),
            ops: None,
            thread: None,
        }
    }

    fn queue(&self, op: Op) {
        if let Some(ops) = &self.ops {
            // Gone only if the store thread panicked; it logged why.
            let _ = ops.send(op);
        }
    }

    /// The last sequences kept by a previous run (durable ones only).
    pub(crate) fn last_seqs(&self) -> LastSeqs {
        lock(&self.recovered).seqs.clone()
    }

    /// Keep the last sequences, in the group commit after the graphs queued before.
    pub(crate) fn save_last_seqs(&self, last: &LastSeqs) {
        self.queue(Op::Seqs(last.clone()));
    }

    /// The engine's state dir for the graph under `name`.
    pub(crate) fn engine_dir(&self, name: &str) -> PathBuf {
        self.engine.join(hex(name))
    }

    /// Keep `action` as the graph in force under its name (durable with the next group).
    pub(crate) fn save(&self, action: &Action) {
        match serde_json::to_vec(action) {
            Ok(body) => self.queue(Op::Put {
                name: action.name.clone(),
                body,
            }),
            Err(e) => tracing::error!(name = %action.name, "cannot persist graph: {e}"),
        }
    }

    /// Forget the graph under `name`, and its engine state (pending refreshes).
    pub(crate) fn remove(&self, name: &str) {
        self.queue(Op::Remove(name.to_string()));
        let _ = std::fs::remove_dir_all(self.engine_dir(name));
    }

    /// The graphs kept by a previous run, oldest first (taken: a second call returns none).
    /// An unreadable one is logged and skipped.
    pub(crate) fn load(&self) -> Vec<Action> {
        let graphs = std::mem::take(&mut lock(&self.recovered).graphs);
        let mut actions: Vec<Action> = graphs
            .iter()
            .filter_map(|b| match serde_json::from_slice::<Action>(b) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::error!("skipping a kept graph: {e}");
                    None
                }
            })
            .collect();
        actions.sort_by_key(|a| a.seq);
        actions
    }

    /// Wait until everything queued so far is durable.
    #[cfg(test)]
    pub(crate) fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.queue(Op::Flush(tx));
        let _ = rx.recv();
    }
}

impl Drop for Store {
    /// The store thread commits what is queued, then ends.
    fn drop(&mut self) {
        self.ops = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Open (or create) the log, cut a torn tail off, and read what it says.
fn recover(dir: &Path) -> std::io::Result<(File, u64, Recovered)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("graphs.log");
    let mut bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    if !bytes.is_empty() && !bytes.starts_with(log::MAGIC) {
        // Not ours: kept aside, never overwritten.
        let aside = dir.join(format!("graphs.log.unreadable-{}", bus::now_ms()));
        tracing::error!(file = %path.display(), aside = %aside.display(), "graph store is not a store log; set aside, starting empty");
        std::fs::rename(&path, &aside)?;
        bytes.clear();
    }
    if bytes.is_empty() {
        // A new log: what an older store held, if anything, written before its files go.
        let old;
        (bytes, old) = migrate(dir)?;
        replace(dir, &path, |out| out.write_all(&bytes))?;
        for gone in old {
            let _ = std::fs::remove_dir_all(&gone).or_else(|_| std::fs::remove_file(&gone));
        }
    }
    let (live, good) = Live::of(&bytes);
    let recovered = Recovered {
        graphs: live.graphs.values().map(|b| b.to_vec()).collect(),
        seqs: seqs_of(live.seqs),
    };
    drop(live);
    if good < bytes.len() {
        let torn = dir.join("graphs.log.torn");
        tracing::warn!(bytes = bytes.len() - good, file = %torn.display(), "graph store: a torn last group commit was cut off (kept aside)");
        let _ = std::fs::write(&torn, &bytes[good..]);
    }
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    file.set_len(good as u64)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok((file, good as u64, recovered))
}

/// What an older actor's store held (`graphs/*.json`, `issuers.json`) as a log, and the old
/// files to remove once it is written.
fn migrate(dir: &Path) -> std::io::Result<(Vec<u8>, Vec<PathBuf>)> {
    let old_graphs = dir.join("graphs");
    let old_seqs = dir.join("issuers.json");
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&old_graphs) {
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let a: Action = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
                    Ok((a.name, b))
                }) {
                Ok(named) => bodies.push(named),
                Err(e) => tracing::error!(file = %path.display(), "skipping a kept graph: {e}"),
            }
        }
    }
    let seqs = std::fs::read(&old_seqs).unwrap_or_default();
    let live = Live {
        graphs: bodies
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect(),
        seqs: if seqs_of(&seqs).is_empty() {
            b"{}"
        } else {
            &seqs
        },
    };
    if !bodies.is_empty() {
        tracing::info!(graphs = bodies.len(), "graph store carried into graphs.log");
    }
    Ok((live.snapshot(SNAPSHOT_CHUNK)?, vec![old_graphs, old_seqs]))
}

fn seqs_of(json: &[u8]) -> LastSeqs {
    if json.is_empty() {
        return LastSeqs::new();
    }
    serde_json::from_slice(json).unwrap_or_else(|e| {
        tracing::error!("unreadable last sequences in the graph store: {e}");
        LastSeqs::new()
    })
}

/// Write a temp file with `write`, fsync it, rename it over `path`, fsync `dir`; returns what
/// `write` did.
fn replace<T>(
    dir: &Path,
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let tmp = path.with_extension("log.tmp");
    let mut out = BufWriter::with_capacity(64 << 10, File::create(&tmp)?);
    let made = write(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    Ok(made)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The store thread's state.
struct Writer {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes in the log, all of them whole frames.
    len: u64,
    compact_at: u64,
    compact_min: u64,
    /// The last sequences as of the changes committed or in the group being made.
    seqs: LastSeqs,
    seqs_json: Vec<u8>,
}

impl Writer {
    fn run(mut self, ops: mpsc::Receiver<Op>) {
        let mut frame = Vec::new();
        let mut last = std::time::Instant::now() - GATHER;
        // Blocks until something is queued; ends once the Store is dropped and all is done.
        while let Ok(first) = ops.recv() {
            // At most one commit per GATHER: a burst of actions makes a few big groups rather
            // than a wake-up, a write and an fsync for each action.
            std::thread::sleep(GATHER.saturating_sub(last.elapsed()));
            last = std::time::Instant::now();
            let mut group = vec![first];
            let mut size = 0;
            while size < MAX_GROUP {
                let Ok(op) = ops.try_recv() else { break };
                if let Op::Put { body, .. } = &op {
                    size += body.len();
                }
                group.push(op);
            }
            self.commit(group, &mut frame);
            if self.len >= self.compact_at {
                self.compact();
            }
        }
    }

    /// One group: one frame, one write, one fsync; then the flushes waiting on it.
    fn commit(&mut self, group: Vec<Op>, frame: &mut Vec<u8>) {
        let mut records = Vec::with_capacity(group.len());
        let mut flushes = Vec::new();
        let mut seqs_moved = false;
        for op in &group {
            match op {
                Op::Put { name, body } => records.push(Record::Put { name, body }),
                Op::Remove(name) => records.push(Record::Remove { name }),
                Op::Seqs(s) => {
                    self.seqs.clone_from(s);
                    seqs_moved = true;
                }
                Op::Flush(done) => flushes.push(done),
            }
        }
        if !records.is_empty() || seqs_moved {
            if seqs_moved || self.seqs_json.is_empty() {
                self.seqs_json = serde_json::to_vec(&self.seqs).unwrap_or_else(|_| b"{}".to_vec());
            }
            frame.clear();
            log::encode(frame, &self.seqs_json, records);
            let written = self
                .file
                .write_all(frame)
                .and_then(|()| self.file.sync_data());
            match written {
                Ok(()) => self.len += frame.len() as u64,
                Err(e) => {
                    tracing::error!(file = %self.path.display(), "cannot commit graphs to the store: {e}");
                    // Whatever part of the frame got in would hide every later one: cut it.
                    if let Err(e) = self.file.set_len(self.len) {
                        tracing::error!(file = %self.path.display(), "cannot cut a failed commit: {e}");
                    }
                }
            }
            // Big groups are rare; do not keep their buffer.
            if frame.capacity() > 1 << 20 {
                *frame = Vec::new();
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Rewrite the log as a snapshot of what is in force. Streamed: the old log is read a
    /// frame at a time for where each graph's latest body lies, then the bodies are copied
    /// into the new one a frame at a time, so the actor's memory does not jump with the log.
    fn compact(&mut self) {
        let result = File::open(&self.path).and_then(|src| {
            let index = log::Index::of(&src, self.len)?;
            let len = replace(&self.dir, &self.path, |out| {
                index.snapshot(&src, out, SNAPSHOT_CHUNK)
            })?;
            let file = OpenOptions::new().append(true).open(&self.path)?;
            Ok((file, len))
        });
        match result {
            Ok((file, len)) => {
                tracing::debug!(before = self.len, after = len, "graph store compacted");
                self.file = file;
                self.len = len;
            }
            Err(e) => {
                tracing::error!(file = %self.path.display(), "cannot compact the graph store: {e}")
            }
        }
        // Tried again only after as much growth again, even when it failed.
        self.compact_at = self.compact_min.max(2 * self.len);
    }
}

/// A poisoned lock only means a thread panicked while holding it; the data is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `name` as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
pub(crate) fn safe_name(name: &str) -> String {
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

#[cfg(test)]
mod tests;
