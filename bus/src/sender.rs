//! A sender that keeps every event until the manager says it is done ([`crate::delivery`]).
//!
//! [`Sender::send`] never blocks: it hands the encoded event to the sender's own thread over an
//! `inproc` socket, or counts it as overflowed when the sender holds its limit already (the
//! manager away for long, or slower than the application). The thread numbers the events in
//! the sender's stream, PUSHes them to the manager's ingest in [`Batch`] frames (whatever is
//! waiting goes out at once, in one frame: no delay for a lone event, fewer frames under load),
//! says [`Hello`] at the acks door every heartbeat, forgets what an [`Ack`] covers, and, when no
//! acknowledgement came for [`SenderConfig::resend_after`] while it holds events, sends them
//! all again from the oldest (the manager skips what it has done already).
//!
//! **Several managers** ([`SenderConfig::managers`], a cluster's): the sender talks to one at
//! a time, the first at start. When the one it talks to has said nothing at all (no ack, not
//! even the answer to a hello) for [`SenderConfig::resend_after`] or two heartbeats, whichever
//! is longer, at the moment it would send again, it closes its sockets, connects to the next
//! manager in the list (round the list), says hello there and sends everything it holds
//! unacknowledged from the oldest. A manager that answers but is slow keeps the
//! sender: resending to it is what one manager gets. In a cluster every manager forwards to
//! the owner and acknowledges from the stream's mark, which all managers share, so what the old
//! manager had done is skipped and acknowledged by the new one. Acks are only ever taken from
//! the sockets of the manager talked to now: the old one's are closed (linger 0), so a late
//! ack from it is never read; and an ack says only "done below `next`", true whichever member
//! of one cluster says it. The managers of a list must be one cluster (one manager key, marks
//! in one etcd): two independent managers each keep their own marks, and a stream moved
//! between them would be taken again from where the hello says.
//!
//! **One manager** is dialed again the same way once silent: a manager that refused our key
//! (not accepted there yet) has a connection libzmq gave up on and never retries.
//!
//! What it holds lives in memory, and, with [`SenderConfig::spool`], on disk too
//! ([`crate::spool`]: synced in groups on the sender's thread, before it is sent): a sender
//! started again on the same spool resumes the same stream, numbers and held events included,
//! so the manager takes each event once. Without a spool a sender that is killed loses what
//! was not acknowledged yet; [`Sender::pending`] says how much that is at any time.

use crate::delivery::{Ack, Batch, Hello, MAX_BATCH_EVENTS};
use crate::secure::Security;
use crate::sockets::SocketError;
use crate::spool::{Spool, SpoolError};
use crate::Event;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// A socket could not be made or connected.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Its thread could not start.
    #[error("cannot start the sender's thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The spool is in use by another sender or cannot be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// No manager given, or one whose endpoint cannot be used.
    #[error(
        "bad manager endpoint {0:?}: expected tcp://HOST:PORT (its acks door is 6 ports above)"
    )]
    Endpoint(String),
}

impl SenderConfig {
    /// The managers' ingest endpoints, comma-separated (for messages).
    pub fn ingests(&self) -> String {
        let all: Vec<&str> = self.managers.iter().map(|m| m.ingest.as_str()).collect();
        all.join(",")
    }
}

/// One manager a sender may talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerEndpoints {
    /// The manager's ingest endpoint (PUSH connects here).
    pub ingest: String,
    /// The manager's acks door (DEALER connects here).
    pub acks: String,
}

impl ManagerEndpoints {
    /// The manager whose ingest is `ingest`, its acks door 6 ports above
    /// ([`crate::endpoints::acks_for`]); `None` when `ingest` ends in no port.
    pub fn from_ingest(ingest: &str) -> Option<ManagerEndpoints> {
        Some(ManagerEndpoints {
            ingest: ingest.to_string(),
            acks: crate::endpoints::acks_for(ingest)?,
        })
    }
}

/// How a [`Sender`] reaches the managers and how much it holds.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The managers, in the order they are tried: the first at start, the next when the one
    /// talked to falls silent (see the module doc). One for a single control node.
    pub managers: Vec<ManagerEndpoints>,
    /// CURVE (this host's key pair, the pinned manager key) or the explicit insecure mode.
    pub security: Security,
    /// Most events held unacknowledged; past it, [`Sender::send`] counts overflow.
    pub retain: usize,
    /// Send everything held again when no acknowledgement came for this long.
    pub resend_after: Duration,
    /// How often to say hello at the acks door (also the sender's heartbeat).
    pub heartbeat: Duration,
    /// The stream id; `None` makes a new one.
    pub stream: Option<String>,
    /// Largest encoded event accepted; a larger one is refused at [`Sender::send`] (the
    /// manager would refuse it, and it would be resent forever).
    pub max_event: usize,
    /// Keep what is held on disk too, in this sled directory ([`crate::spool`]); the stream
    /// id comes from it when it has one. `None`: memory only.
    pub spool: Option<PathBuf>,
    /// With a spool, most bytes of events held; past it (or past `retain`), overflow.
    pub spool_bytes: u64,
    /// The least time between two takings of what the application queued: a busy sender
    /// then wakes once per `gather` and sends what came meanwhile together, rather than once
    /// per event. Zero (the default): each event goes at once. The actor's results use a
    /// couple of milliseconds.
    pub gather: Duration,
}

impl SenderConfig {
    /// Defaults for a manager whose ingest is `ingest` (acks door 6 ports above): 100,000
    /// events held, resend after 1 s, hello every second.
    pub fn new(ingest: &str, security: &Security) -> SenderConfig {
        SenderConfig::with_managers(&[ingest], security)
    }

    /// [`SenderConfig::new`] for the managers of one cluster, by their ingest endpoints, in
    /// the order they are tried. An endpoint without a port gets an acks door [`Sender::start`]
    /// refuses, naming it.
    pub fn with_managers<S: AsRef<str>>(ingests: &[S], security: &Security) -> SenderConfig {
        let managers = ingests
            .iter()
            .map(|i| {
                let ingest = i.as_ref();
                ManagerEndpoints::from_ingest(ingest).unwrap_or_else(|| ManagerEndpoints {
                    ingest: ingest.to_string(),
                    acks: String::new(),
                })
            })
            .collect();
        SenderConfig {
            managers,
            security: security.clone(),
            retain: 100_000,
            resend_after: Duration::from_secs(1),
            heartbeat: Duration::from_secs(1),
            stream: None,
            max_event: crate::MAX_FRAME - 4_096,
            spool: None,
            spool_bytes: 64 << 20,
            gather: Duration::ZERO,
        }
    }
}

/// What a sender has done, shared between the application and the sender's thread.
#[derive(Default)]
struct Counts {
    stop: AtomicBool,
    queued: AtomicU64,
    acked: AtomicU64,
    overflowed: AtomicU64,
    refused: AtomicU64,
    resent: AtomicU64,
}

/// A non-blocking, acknowledged event sender; shareable between threads (`Arc<Sender>`).
pub struct Sender {
    inbox: Mutex<zmq::Socket>,
    counts: Arc<Counts>,
    stream: String,
    max_event: usize,
    thread: Option<JoinHandle<()>>,
}

/// Most frames waiting between the application and the sender's thread.
const INBOX: i32 = 10_000;
/// Largest batch frame, in bytes of events (a lone larger event still goes alone).
const BATCH_BYTES: usize = 256 * 1024;

impl Sender {
    /// Connect to the manager and start the sender's thread.
    pub fn start(cfg: SenderConfig) -> Result<Sender, SenderError> {
        let (spool, stream, base, held) = match &cfg.spool {
            Some(path) => {
                let (spool, l) = Spool::open(path, cfg.stream.as_deref())?;
                if !l.held.is_empty() {
                    tracing::info!(stream = %l.stream, from = l.base, held = l.held.len(), spool = %path.display(), "resuming the events the spool holds");
                }
                (Some(spool), l.stream, l.base, l.held)
            }
            None => {
                let stream = cfg
                    .stream
                    .clone()
                    .unwrap_or_else(crate::delivery::new_stream);
                (None, stream, 0, VecDeque::new())
            }
        };
        let inproc = format!("inproc://reflex-sender-{stream}");
        let err = |e| SocketError::new(&inproc, e);
        let ctx = crate::sockets::context();
        let pull = ctx.socket(zmq::PULL).map_err(err)?;
        pull.set_rcvhwm(INBOX).map_err(err)?;
        pull.bind(&inproc).map_err(err)?;
        let inbox = ctx.socket(zmq::PUSH).map_err(err)?;
        inbox.set_sndhwm(INBOX).map_err(err)?;
        inbox.set_linger(0).map_err(err)?;
        inbox.connect(&inproc).map_err(err)?;
        if cfg.managers.is_empty() {
            return Err(SenderError::Endpoint(String::new()));
        }
        if let Some(bad) = cfg.managers.iter().find(|m| m.acks.is_empty()) {
            return Err(SenderError::Endpoint(bad.ingest.clone()));
        }
        let (push, acks) = connect(&cfg.managers[0], &cfg.security)?;
        let counts = Arc::new(Counts::default());
        // Numbers are the stream's: what a spool held counts as queued, not acknowledged.
        let end = base + held.len() as u64;
        counts.queued.store(end, Ordering::Relaxed);
        counts.acked.store(base, Ordering::Relaxed);
        let failover = Failover::new(
            cfg.managers.len(),
            cfg.resend_after.max(cfg.heartbeat * 2),
            Instant::now(),
        );
        let mut run = Run {
            pull,
            push,
            acks,
            failover,
            stream: stream.clone(),
            held_bytes: held.iter().map(|f| f.len() as u64).sum(),
            held,
            base,
            cursor: base,
            spool,
            counts: counts.clone(),
            cfg: cfg.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("reflex-sender".into())
            .spawn(move || run.run())?;
        Ok(Sender {
            inbox: Mutex::new(inbox),
            counts,
            stream,
            max_event: cfg.max_event,
            thread: Some(thread),
        })
    }

    /// Queue an event; never blocks. False (and counted) when it overflowed or is too large.
    pub fn send(&self, ev: &Event) -> bool {
        self.send_frame(crate::encode(ev))
    }

    /// Queue an encoded single-event frame; never blocks.
    pub fn send_frame(&self, frame: Vec<u8>) -> bool {
        self.queue(frame, zmq::DONTWAIT)
    }

    /// Queue an encoded single-event frame, waiting while the sender holds its limit (for a
    /// tool that would rather slow down than refuse: `reflex send --stdin`, the benches).
    pub fn send_frame_waiting(&self, frame: Vec<u8>) -> bool {
        self.queue(frame, 0)
    }

    fn queue(&self, frame: Vec<u8>, flags: i32) -> bool {
        if frame.len() > self.max_event {
            let n = self.counts.refused.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                tracing::warn!(bytes = frame.len(), limit = self.max_event, "refusing an event larger than the manager takes (further ones are only counted)");
            }
            return false;
        }
        let sent = match self.inbox.lock() {
            Ok(s) => s.send(frame, flags),
            // A thread panicked mid-send; the socket itself is still sound.
            Err(poisoned) => poisoned.into_inner().send(frame, flags),
        };
        match sent {
            Ok(()) => {
                self.counts.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                let n = self.counts.overflowed.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    tracing::warn!("events overflow the sender ({e}): the manager is away or slower than this sender; further ones are only counted");
                }
                false
            }
        }
    }

    /// Wait until every event queued so far is acknowledged; false after `timeout`.
    pub fn wait_acked(&self, timeout: Duration) -> bool {
        let target = self.queued();
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// This sender's stream id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Events queued so far (with a spool, counted in the stream: what it held is included).
    pub fn queued(&self) -> u64 {
        self.counts.queued.load(Ordering::Relaxed)
    }

    /// Events the manager acknowledged (done, effects durable).
    pub fn acked(&self) -> u64 {
        self.counts.acked.load(Ordering::Relaxed)
    }

    /// Events queued and not acknowledged yet.
    pub fn pending(&self) -> u64 {
        self.queued().saturating_sub(self.acked())
    }

    /// Events refused because the sender held its limit.
    pub fn overflowed(&self) -> u64 {
        self.counts.overflowed.load(Ordering::Relaxed)
    }

    /// Events refused for being larger than the manager takes.
    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::Relaxed)
    }

    /// Events sent again after no acknowledgement came in time.
    pub fn resent(&self) -> u64 {
        self.counts.resent.load(Ordering::Relaxed)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.counts.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let left = self.pending();
        if left > 0 {
            tracing::warn!(
                stream = %self.stream,
                left,
                "sender closed with events not acknowledged"
            );
        }
    }
}

/// The PUSH to `m`'s ingest and the DEALER to its acks door, lingering 0: what is not
/// acknowledged is held (and resent) by the sender, not by libzmq.
fn connect(
    m: &ManagerEndpoints,
    security: &Security,
) -> Result<(zmq::Socket, zmq::Socket), SocketError> {
    let push = crate::secure::connect(zmq::PUSH, &m.ingest, security)?;
    let acks = crate::secure::connect(zmq::DEALER, &m.acks, security)?;
    for s in [&push, &acks] {
        s.set_linger(0)
            .map_err(|e| SocketError::new(&m.ingest, e))?;
    }
    Ok((push, acks))
}

/// Which of a sender's managers it talks to, and when it moves to the next: when, at the
/// moment it would send again (no progress for `resend_after`), the manager talked to has
/// said nothing at all for `silent_after`. A live manager answers every hello (each
/// heartbeat), even while the stream does not move (its owner changing in a cluster), so a
/// sender stays with a manager that is slow and leaves one that is gone or refuses it.
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    count: usize,
    current: usize,
    /// When the manager talked to last said anything, or when the sender turned to it.
    heard: Instant,
    silent_after: Duration,
}

impl Failover {
    /// Talking to the first of `count` managers from `now`.
    pub(crate) fn new(count: usize, silent_after: Duration, now: Instant) -> Failover {
        Failover {
            count: count.max(1),
            current: 0,
            heard: now,
            silent_after,
        }
    }

    /// The manager talked to now (an index into the list).
    #[cfg(test)]
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// The manager talked to said something (any ack of the stream) at `now`.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.heard = self.heard.max(now);
    }

    /// The stream made no progress in time (the sender is about to send again) at `now`: the
    /// manager to turn to, when the one talked to has been silent too long: the next one, or
    /// the same one dialed again when it is the only one (a manager that refused our key
    /// never hears from a connection libzmq gave up on). From then on, silence is counted
    /// from `now`.
    pub(crate) fn stalled(&mut self, now: Instant) -> Option<usize> {
        if now.saturating_duration_since(self.heard) < self.silent_after {
            return None;
        }
        self.current = (self.current + 1) % self.count;
        self.heard = now;
        Some(self.current)
    }
}

/// The sender's thread: its sockets and what it holds.
struct Run {
    pull: zmq::Socket,
    /// PUSH and DEALER to the manager talked to now (the failover's current one).
    push: zmq::Socket,
    acks: zmq::Socket,
    failover: Failover,
    stream: String,
    /// Events `base..base + held.len()` of the stream, oldest first.
    held: VecDeque<Vec<u8>>,
    held_bytes: u64,
    base: u64,
    /// The next event to send.
    cursor: u64,
    /// Where held events are kept on disk too; dropped (memory only) after a write failed.
    spool: Option<Spool>,
    counts: Arc<Counts>,
    cfg: SenderConfig,
}

impl Run {
    fn end(&self) -> u64 {
        self.base + self.held.len() as u64
    }

    fn run(&mut self) {
        let mut last_progress = Instant::now();
        let mut last_hello: Option<Instant> = None;
        let mut last_take = Instant::now() - self.cfg.gather;
        while !self.counts.stop.load(Ordering::Relaxed) {
            if last_hello.is_none_or(|t| t.elapsed() >= self.cfg.heartbeat) {
                let hello = crate::encode(&Hello {
                    stream: self.stream.clone(),
                    from: self.base,
                });
                // Dropped when the door is unreachable: the next heartbeat says it again.
                let _ = self.acks.send(hello, zmq::DONTWAIT);
                last_hello = Some(Instant::now());
            }
            let room = self.room();
            let unsent = self.cursor < self.end();
            let (inbox, acks, writable) = {
                let mut items = [
                    self.pull.as_poll_item(if room {
                        zmq::POLLIN
                    } else {
                        zmq::PollEvents::empty()
                    }),
                    self.acks.as_poll_item(zmq::POLLIN),
                    self.push.as_poll_item(if unsent {
                        zmq::POLLOUT
                    } else {
                        zmq::PollEvents::empty()
                    }),
                ];
                if zmq::poll(&mut items, 50).is_err() {
                    continue;
                }
                (
                    items[0].is_readable(),
                    items[1].is_readable(),
                    items[2].is_writable(),
                )
            };
            if acks && self.take_acks() {
                last_progress = Instant::now();
            }
            if inbox {
                std::thread::sleep(self.cfg.gather.saturating_sub(last_take.elapsed()));
                last_take = Instant::now();
                self.take_inbox();
            }
            if inbox || writable || acks {
                self.send_unsent();
            }
            if !self.held.is_empty() && last_progress.elapsed() >= self.cfg.resend_after {
                if let Some(next) = self.failover.stalled(Instant::now()) {
                    if self.turn_to(next) {
                        // Say hello at once: the new manager learns where the stream stands.
                        last_hello = None;
                    }
                }
                let again = self.cursor.saturating_sub(self.base);
                if again > 0 {
                    self.counts.resent.fetch_add(again, Ordering::Relaxed);
                    tracing::debug!(stream = %self.stream, from = self.base, again, "no acknowledgement in time: sending again");
                }
                self.cursor = self.base;
                last_progress = Instant::now();
                self.send_unsent();
            }
        }
        // Closed: what the application queued is kept too, not only what was taken.
        if self.spool.is_some() {
            self.take_inbox();
        }
    }

    /// Close the sockets to the manager talked to and connect to manager `next`: what the old
    /// one still had queued is dropped (linger 0) and its late acks are never read. False
    /// (the old sockets kept, the next stall tries the one after) when the new ones cannot be
    /// made.
    fn turn_to(&mut self, next: usize) -> bool {
        let Some(to) = self.cfg.managers.get(next) else {
            return false;
        };
        match connect(to, &self.cfg.security) {
            Ok((push, acks)) => {
                let which = if self.cfg.managers.len() > 1 {
                    "the next one"
                } else {
                    "it again"
                };
                tracing::warn!(stream = %self.stream, to = %to.ingest, held = self.held.len(), "the manager talked to is silent: dialing {which} and sending what is held there");
                self.push = push;
                self.acks = acks;
                true
            }
            Err(e) => {
                tracing::error!(stream = %self.stream, "cannot connect to the next manager: {e}");
                false
            }
        }
    }

    fn room(&self) -> bool {
        self.held.len() < self.cfg.retain
            && (self.spool.is_none() || self.held_bytes < self.cfg.spool_bytes)
    }

    fn take_inbox(&mut self) {
        while self.room() {
            let Ok(frame) = self.pull.recv_bytes(zmq::DONTWAIT) else {
                break;
            };
            let n = self.end();
            if let Some(Err(e)) = self.spool.as_mut().map(|s| s.insert(n, &frame)) {
                self.spool_failed(e);
            }
            self.held_bytes += frame.len() as u64;
            self.held.push_back(frame);
        }
        // One sync for all taken in this turn, before any of them is sent.
        if let Some(Err(e)) = self.spool.as_mut().map(Spool::sync) {
            self.spool_failed(e);
        }
    }

    fn spool_failed(&mut self, e: SpoolError) {
        tracing::error!(stream = %self.stream, "{e}: holding events in memory only from now on");
        self.spool = None;
    }

    /// Send what is not sent yet, in batches, until the socket would block.
    fn send_unsent(&mut self) {
        while self.cursor < self.end() {
            let from = (self.cursor - self.base) as usize;
            let mut bytes = 0;
            let mut n = 0;
            for f in self.held.range(from..) {
                if n == MAX_BATCH_EVENTS || (n > 0 && bytes + f.len() > BATCH_BYTES) {
                    break;
                }
                bytes += f.len();
                n += 1;
            }
            let events: Vec<&[u8]> = self.held.range(from..from + n).map(Vec::as_slice).collect();
            let frame = Batch::encode(&self.stream, self.cursor, &events);
            match self.push.send(frame, zmq::DONTWAIT) {
                Ok(()) => self.cursor += n as u64,
                Err(_) => break,
            }
        }
    }

    /// Forget what the acknowledgements cover; true when one moved us on.
    fn take_acks(&mut self) -> bool {
        let mut progress = false;
        while let Ok(frame) = self.acks.recv_bytes(zmq::DONTWAIT) {
            let Ok(ack) = crate::decode::<Ack>(&frame) else {
                continue;
            };
            if ack.stream != self.stream {
                continue;
            }
            // The manager talked to is there (it answers), whether or not the stream moved.
            self.failover.heard(Instant::now());
            if ack.next <= self.base {
                continue;
            }
            // Never past what was sent: an ack beyond it would be someone else's stream.
            let next = ack.next.min(self.end());
            let done = (next - self.base) as usize;
            let freed: u64 = self.held.drain(..done).map(|f| f.len() as u64).sum();
            self.held_bytes -= freed;
            if let Some(Err(e)) = self.spool.as_mut().map(|s| s.acked(self.base, next)) {
                self.spool_failed(e);
            }
            self.base = next;
            self.cursor = self.cursor.max(self.base);
            self.counts.acked.store(self.base, Ordering::Relaxed);
            progress = true;
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Sink;
    use serde_json::json;

    fn config(sink: &Sink) -> SenderConfig {
        SenderConfig::new(&sink.ingest, &Security::Insecure)
    }

    #[test]
    fn events_arrive_in_order_and_are_acknowledged() {
        let mut sink = Sink::local().unwrap();
        let s = Sender::start(config(&sink)).unwrap();
        for i in 0..5_000 {
            assert!(s.send(&Event::new("t/x", "h", json!(i))));
        }
        let got = sink.recv_n(5_000, Duration::from_secs(20));
        let seen: Vec<i64> = got.iter().map(|e| e.data.as_i64().unwrap()).collect();
        assert_eq!(seen, (0..5_000).collect::<Vec<_>>());
        // The sink acks as it reads; its door answers the heartbeat with where we stand.
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.acked() < 5_000 && Instant::now() < deadline {
            sink.recv(Duration::from_millis(50));
        }
        assert_eq!((s.acked(), s.pending()), (5_000, 0));
    }

    #[test]
    fn what_a_receiver_lost_is_sent_again() {
        let sink = Sink::local().unwrap();
        let ingest = sink.ingest.clone();
        drop(sink);
        let mut cfg = SenderConfig::new(&ingest, &Security::Insecure);
        cfg.resend_after = Duration::from_millis(200);
        let s = Sender::start(cfg).unwrap();
        // The first receiver reads every frame and dies without acknowledging any.
        let deadline = Instant::now() + Duration::from_secs(20);
        let rebind = |ep: &str| loop {
            match crate::sockets::bind(zmq::PULL, ep) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let lossy = rebind(&ingest);
        lossy.set_rcvtimeo(10_000).unwrap();
        for i in 0..100 {
            s.send(&Event::new("t/x", "h", json!(i)));
        }
        let mut read = 0;
        while read < 100 {
            let f = lossy.recv_bytes(0).unwrap();
            read += Batch::decode(&f, crate::MAX_FRAME).unwrap().events.len();
        }
        drop(lossy);
        let mut sink = loop {
            match Sink::bind(&ingest) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let got = sink.recv_n(100, Duration::from_secs(20));
        let seen: Vec<i64> = got.iter().map(|e| e.data.as_i64().unwrap()).collect();
        assert_eq!(
            seen,
            (0..100).collect::<Vec<_>>(),
            "every event came again, in order"
        );
        assert!(s.resent() >= 100);
        while s.pending() > 0 && Instant::now() < deadline {
            sink.recv(Duration::from_millis(50));
        }
        assert_eq!(s.pending(), 0);
    }

    fn rebind_sink(ingest: &str) -> Sink {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Sink::bind(ingest) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn numbers(got: &[Event]) -> Vec<i64> {
        got.iter().filter_map(|e| e.data.as_i64()).collect()
    }

    #[test]
    fn a_spooled_stream_resumes_after_a_restart_and_each_event_arrives_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::local().unwrap();
        let ingest = sink.ingest.clone();
        let mut cfg = config(&sink);
        cfg.spool = Some(dir.path().join("spool"));
        let s = Sender::start(cfg.clone()).unwrap();
        let stream = s.stream().to_string();
        for i in 0..100 {
            assert!(s.send(&Event::new("t/x", "h", json!(i))));
        }
        assert_eq!(
            numbers(&sink.recv_n(100, Duration::from_secs(20))),
            (0..100).collect::<Vec<_>>()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.pending() > 0 && Instant::now() < deadline {
            sink.recv(Duration::from_millis(20));
        }
        assert_eq!(s.pending(), 0, "acknowledged");
        // The manager goes away; the sender keeps sampling, then restarts too.
        drop(sink);
        for i in 100..200 {
            assert!(s.send(&Event::new("t/x", "h", json!(i))));
        }
        drop(s);
        let s = Sender::start(cfg.clone()).unwrap();
        assert_eq!(s.stream(), stream, "the same stream");
        assert_eq!(
            (s.acked(), s.pending()),
            (100, 100),
            "held across the restart"
        );
        for i in 200..300 {
            assert!(s.send(&Event::new("t/x", "h", json!(i))));
        }
        // A new receiver: it knows the stream only from the hello, at the first held event.
        let mut sink = rebind_sink(&ingest);
        let got = sink.recv_n(200, Duration::from_secs(20));
        assert_eq!(
            numbers(&got),
            (100..300).collect::<Vec<_>>(),
            "in order, none lost"
        );
        while s.pending() > 0 && Instant::now() < deadline {
            sink.recv(Duration::from_millis(20));
        }
        assert_eq!(s.pending(), 0);
        assert!(
            sink.recv(Duration::from_millis(300)).is_empty(),
            "none twice"
        );
        drop(s);
        // Acknowledged events left the spool: a third start holds nothing.
        let s = Sender::start(cfg).unwrap();
        assert_eq!(
            (s.stream(), s.pending(), s.acked()),
            (stream.as_str(), 0, 300)
        );
    }

    #[test]
    fn a_spool_past_its_bound_counts_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SenderConfig::new("tcp://127.0.0.1:9", &Security::Insecure);
        cfg.spool = Some(dir.path().join("spool"));
        cfg.spool_bytes = 20_000;
        let s = Sender::start(cfg.clone()).unwrap();
        let ok = (0..60_000)
            .filter(|i| s.send(&Event::new("t/x", "h", json!(i))))
            .count() as u64;
        assert_eq!(ok + s.overflowed(), 60_000);
        assert!(
            s.overflowed() > 20_000,
            "held far more than the bound: {ok}"
        );
        drop(s);
        let s = Sender::start(cfg).unwrap();
        // Held from the oldest: events 0.. of the stream, the smallest ones.
        let least = crate::encode(&Event::new("t/x", "h", json!(0))).len() as u64;
        assert!(s.pending() > 0);
        assert!(
            s.pending() * least <= 20_000 + 2 * least,
            "{} held",
            s.pending()
        );
    }

    #[test]
    fn an_unreadable_spool_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let aside = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
                .count()
        };
        let mut cfg = SenderConfig::new("tcp://127.0.0.1:9", &Security::Insecure);
        // A file where the spool directory should be.
        let path = dir.path().join("file");
        std::fs::write(&path, b"\x00garbage\xff").unwrap();
        cfg.spool = Some(path.clone());
        let s = Sender::start(cfg.clone()).unwrap();
        assert!(s.send(&Event::new("t/x", "h", json!(1))));
        drop(s);
        assert!(path.is_dir());
        assert_eq!(aside(dir.path()), 1);
        // A spool directory whose store is garbage.
        let sub = tempfile::tempdir().unwrap();
        let path = sub.path().join("spool");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("db"), vec![0xa5; 4096]).unwrap();
        std::fs::write(path.join("conf"), b"not a sled config").unwrap();
        cfg.spool = Some(path.clone());
        let s = Sender::start(cfg.clone()).unwrap();
        assert_eq!(s.pending(), 0);
        drop(s);
        assert_eq!(aside(sub.path()), 1);
        // A spool held by a running sender is in use: an error, never moved aside.
        let s = Sender::start(cfg.clone()).unwrap();
        let err = Sender::start(cfg).err().expect("the spool is in use");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(s);
        assert_eq!(aside(sub.path()), 1);
    }

    #[test]
    fn failover_moves_on_only_from_a_silent_manager_and_goes_round_the_list() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let silent = Duration::from_millis(2_000);
        // One manager: dialed again once silent (it may have refused our key), then silence
        // counts from there.
        let mut one = Failover::new(1, silent, t0);
        assert_eq!(one.stalled(ms(1_000)), None);
        assert_eq!(one.stalled(ms(2_000)), Some(0));
        assert_eq!(one.stalled(ms(3_000)), None);
        assert_eq!(one.current(), 0);
        let mut f = Failover::new(3, silent, t0);
        // Silent, but not long enough yet: resend to the same one.
        assert_eq!(f.stalled(ms(1_000)), None);
        // It answers hellos while the stream does not move (a slow manager, an owner
        // changing): stay.
        f.heard(ms(1_500));
        assert_eq!(f.stalled(ms(3_000)), None);
        // Silent since 1.5 s: the next one, and silence counts from the turn.
        assert_eq!(f.stalled(ms(3_500)), Some(1));
        assert_eq!(f.stalled(ms(4_500)), None);
        assert_eq!(f.stalled(ms(5_500)), Some(2));
        // Round the list.
        assert_eq!(f.stalled(ms(7_500)), Some(0));
        assert_eq!(f.current(), 0);
        // An ack read late, stamped before the turn, does not move the clock back.
        f.heard(ms(7_000));
        assert_eq!(f.stalled(ms(9_400)), None);
        assert_eq!(f.stalled(ms(9_500)), Some(1));
    }

    #[test]
    fn a_sender_moves_to_the_next_manager_when_the_first_is_gone() {
        let gone = Sink::local().unwrap();
        let first = gone.ingest.clone();
        drop(gone);
        let mut sink = Sink::local().unwrap();
        let mut cfg =
            SenderConfig::with_managers(&[first.as_str(), &sink.ingest], &Security::Insecure);
        cfg.resend_after = Duration::from_millis(100);
        cfg.heartbeat = Duration::from_millis(100);
        let s = Sender::start(cfg).unwrap();
        for i in 0..300 {
            assert!(s.send(&Event::new("t/x", "h", json!(i))));
        }
        let got = sink.recv_n(300, Duration::from_secs(20));
        assert_eq!(
            numbers(&got),
            (0..300).collect::<Vec<_>>(),
            "in order, once"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.pending() > 0 && Instant::now() < deadline {
            sink.recv(Duration::from_millis(20));
        }
        assert_eq!((s.acked(), s.pending()), (300, 0));
        assert!(
            sink.recv(Duration::from_millis(300)).is_empty(),
            "none twice"
        );
    }

    #[test]
    fn a_manager_endpoint_without_a_port_is_refused_by_name() {
        let cfg = SenderConfig::with_managers(
            &["tcp://127.0.0.1:9", "tcp://nowhere"],
            &Security::Insecure,
        );
        let err = Sender::start(cfg).err().expect("refused");
        assert!(err.to_string().contains("tcp://nowhere"), "{err}");
        let none = SenderConfig::with_managers::<&str>(&[], &Security::Insecure);
        assert!(Sender::start(none).is_err());
    }

    #[test]
    fn a_sender_with_no_receiver_counts_overflow_and_never_blocks() {
        let mut cfg = SenderConfig::new("tcp://127.0.0.1:9", &Security::Insecure);
        cfg.retain = 1_000;
        let s = Sender::start(cfg).unwrap();
        let t0 = Instant::now();
        let ok = (0..100_000)
            .filter(|i| s.send(&Event::new("t/x", "h", json!(i))))
            .count() as u64;
        assert!(t0.elapsed() < Duration::from_secs(30));
        assert_eq!(s.queued(), ok);
        assert_eq!(ok + s.overflowed(), 100_000);
        assert!(s.overflowed() > 50_000, "held far more than asked: {ok}");
        assert!(!s.send_frame(vec![1; crate::MAX_FRAME]), "too large");
        assert_eq!(s.refused(), 1);
    }
}
