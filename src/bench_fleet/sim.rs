//! The simulated hosts of `reflex bench fleet`: ZeroMQ contexts made through libzmq's C API,
//! the hosts' sockets, and the worker threads that say their hellos and read what they receive.

use super::*;

/// ZeroMQ contexts made through libzmq's C API: the `zmq` crate cannot set a context's socket
/// limit (ZMQ_MAX_SOCKETS, 1,023 by default), and a context here holds thousands of sockets.
mod raw {
    use std::os::raw::{c_int, c_void};

    extern "C" {
        fn zmq_ctx_new() -> *mut c_void;
        fn zmq_ctx_set(ctx: *mut c_void, option: c_int, value: c_int) -> c_int;
        fn zmq_ctx_term(ctx: *mut c_void) -> c_int;
        fn zmq_socket(ctx: *mut c_void, kind: c_int) -> *mut c_void;
        fn zmq_errno() -> c_int;
    }

    const ZMQ_IO_THREADS: c_int = 1;
    const ZMQ_MAX_SOCKETS: c_int = 2;

    /// libzmq's number of a socket type (zmq.h; the `zmq` crate keeps its mapping private).
    pub(super) fn kind_raw(kind: zmq::SocketType) -> c_int {
        use zmq::SocketType::*;
        match kind {
            PAIR => 0,
            PUB => 1,
            SUB => 2,
            REQ => 3,
            REP => 4,
            DEALER => 5,
            ROUTER => 6,
            PULL => 7,
            PUSH => 8,
            XPUB => 9,
            XSUB => 10,
            STREAM => 11,
        }
    }

    /// A context; terminated when dropped, which waits for its sockets: drop them first.
    pub struct Ctx(*mut c_void);

    // SAFETY: a libzmq context is thread-safe (sockets are not, and are `zmq::Socket`s).
    unsafe impl Send for Ctx {}
    unsafe impl Sync for Ctx {}

    pub(super) fn last_error() -> zmq::Error {
        // SAFETY: reads libzmq's thread-local errno.
        zmq::Error::from_raw(unsafe { zmq_errno() })
    }

    impl Ctx {
        pub fn new(io_threads: i32, max_sockets: i32) -> zmq::Result<Ctx> {
            // SAFETY: plain libzmq calls on the context made here.
            unsafe {
                let ctx = zmq_ctx_new();
                if ctx.is_null() {
                    return Err(last_error());
                }
                let c = Ctx(ctx);
                if zmq_ctx_set(ctx, ZMQ_IO_THREADS, io_threads) != 0
                    || zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, max_sockets) != 0
                {
                    return Err(last_error());
                }
                Ok(c)
            }
        }

        pub fn socket(&self, kind: zmq::SocketType) -> zmq::Result<zmq::Socket> {
            // SAFETY: a socket of this live context, owned by the `zmq::Socket` from here on
            // (closed when dropped, before the context: see `Fleet`'s field order).
            unsafe {
                let s = zmq_socket(self.0, kind_raw(kind));
                if s.is_null() {
                    return Err(last_error());
                }
                Ok(zmq::Socket::from_raw(s))
            }
        }
    }

    impl Drop for Ctx {
        fn drop(&mut self) {
            // SAFETY: terminating our own context once; EINTR means try again.
            unsafe { while zmq_ctx_term(self.0) != 0 && zmq_errno() == libc::EINTR {} }
        }
    }
}

/// One sender of a simulated host: the ingest PUSH (connected, idle) and the acks DEALER.
pub(super) struct SimSender {
    pub(super) _push: zmq::Socket,
    pub(super) dealer: zmq::Socket,
    pub(super) hello: Vec<u8>,
    /// An ack arrived since it connected (or since the manager was restarted).
    pub(super) acked: bool,
}

pub(super) struct SimHost {
    pub(super) sub: zmq::Socket,
    pub(super) senders: Vec<SimSender>,
    /// The action of the round in flight arrived.
    pub(super) got: bool,
}

/// What the workers count, read by the main thread.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) hellos: AtomicU64,
    pub(super) hello_bytes: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) ack_bytes: AtomicU64,
    /// Senders with an ack since they connected.
    pub(super) acked: AtomicI64,
    pub(super) ticks: AtomicU64,
    pub(super) actions: AtomicU64,
    /// Workers ready for a fan-out round.
    pub(super) armed: AtomicUsize,
}

pub(super) enum Cmd {
    Add(Vec<SimHost>),
    /// Forget every ack seen (the manager was killed): answer when done.
    ForgetAcks(mpsc::Sender<()>),
    /// Watch every SUB closely for the next action to `all`: answer with the instants each
    /// host's SUB held it.
    Fanout(mpsc::Sender<Vec<Instant>>),
}

/// A worker thread owning a share of the simulated hosts (ZeroMQ sockets live on one thread).
pub(super) struct Worker {
    pub(super) tx: mpsc::Sender<Cmd>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

pub(super) fn worker_loop(rx: mpsc::Receiver<Cmd>, counts: Arc<Counts>) {
    let mut hosts: Vec<SimHost> = Vec::new();
    let mut slot = 0usize;
    let mut next_tick = Instant::now();
    let mut fanout: Option<(mpsc::Sender<Vec<Instant>>, Vec<Instant>, Instant)> = None;
    loop {
        let now = Instant::now();
        let wait = if fanout.is_some() {
            Duration::from_micros(500).min(next_tick.saturating_duration_since(now))
        } else {
            next_tick.saturating_duration_since(now)
        };
        match rx.recv_timeout(wait) {
            Ok(Cmd::Add(mut more)) => hosts.append(&mut more),
            Ok(Cmd::ForgetAcks(done)) => {
                for s in hosts.iter_mut().flat_map(|h| h.senders.iter_mut()) {
                    while s.dealer.recv_bytes(zmq::DONTWAIT).is_ok() {}
                    if s.acked {
                        s.acked = false;
                        counts.acked.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                let _ = done.send(());
            }
            Ok(Cmd::Fanout(reply)) => {
                for h in &mut hosts {
                    drain_sub(h, &counts, false);
                    h.got = false;
                }
                fanout = Some((
                    reply,
                    Vec::with_capacity(hosts.len()),
                    Instant::now() + FANOUT_TIMEOUT,
                ));
                counts.armed.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if now >= next_tick {
            say_hellos(&mut hosts, slot, &counts, fanout.is_none());
            slot = (slot + 1) % SLOTS;
            next_tick += Duration::from_secs(1) / SLOTS as u32;
            if now > next_tick + Duration::from_secs(1) {
                // Far behind (a stall): start the cadence again rather than burst.
                next_tick = now;
            }
        }
        if let Some((_, times, deadline)) = &mut fanout {
            for h in hosts.iter_mut().filter(|h| !h.got) {
                if drain_sub(h, &counts, true) {
                    h.got = true;
                    times.push(Instant::now());
                }
            }
            if times.len() == hosts.len() || Instant::now() > *deadline {
                if let Some((reply, times, _)) = fanout.take() {
                    let _ = reply.send(times);
                }
            }
        }
    }
}

/// Say the hellos of the senders in `slot` (reading the acks of the last ones first).
pub(super) fn say_hellos(hosts: &mut [SimHost], slot: usize, counts: &Counts, read_subs: bool) {
    for h in hosts.iter_mut().skip(slot).step_by(SLOTS) {
        for s in &mut h.senders {
            while let Ok(frame) = s.dealer.recv_bytes(zmq::DONTWAIT) {
                counts.acks.fetch_add(1, Ordering::Relaxed);
                counts
                    .ack_bytes
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                if !s.acked && bus::decode::<Ack>(&frame).is_ok() {
                    s.acked = true;
                    counts.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            if s.dealer.send(&s.hello[..], zmq::DONTWAIT).is_ok() {
                counts.hellos.fetch_add(1, Ordering::Relaxed);
                counts
                    .hello_bytes
                    .fetch_add(s.hello.len() as u64, Ordering::Relaxed);
            }
        }
        if read_subs {
            drain_sub(h, counts, false);
        }
    }
}

/// Read what waits on a host's SUB; true when an action (not a tick) came.
pub(super) fn drain_sub(h: &mut SimHost, counts: &Counts, stop_at_action: bool) -> bool {
    let mut action = false;
    while let Ok(parts) = h.sub.recv_multipart(zmq::DONTWAIT) {
        if parts.len() == 3 && parts[1] == TICK {
            counts.ticks.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.actions.fetch_add(1, Ordering::Relaxed);
            action = true;
            if stop_at_action {
                break;
            }
        }
    }
    action
}

/// The simulated fleet: contexts, workers, and what it takes to make a host.
pub(super) struct Fleet {
    // Workers (and so every socket) go before the contexts: a context ends only once its
    // sockets are closed.
    pub(super) workers: Vec<Worker>,
    pub(super) contexts: Vec<raw::Ctx>,
    pub(super) counts: Arc<Counts>,
    pub(super) hosts: usize,
    pub(super) senders: usize,
    pub(super) server: PublicKey,
    pub(super) publish: String,
    pub(super) ingest: String,
    pub(super) acks: String,
}

impl Fleet {
    pub(super) fn new(
        a: &FleetArgs,
        stack: &BenchStack,
        max_hosts: usize,
    ) -> anyhow::Result<Fleet> {
        let server = match &stack.security {
            Security::Curve { server, .. } => *server,
            Security::Insecure => anyhow::bail!("the fleet bench runs on a CURVE stack"),
        };
        let n_ctx = a.contexts.max(1);
        let per_ctx = max_hosts * (1 + 2 * a.senders as usize) / n_ctx + 64;
        let contexts = (0..n_ctx)
            .map(|_| raw::Ctx::new(a.io_threads.max(1), per_ctx.min(i32::MAX as usize) as i32))
            .collect::<zmq::Result<Vec<_>>>()?;
        let counts = Arc::new(Counts::default());
        let workers = (0..a.workers.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                let c = counts.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("fleet-{i}"))
                    .spawn(move || worker_loop(rx, c))?;
                Ok(Worker {
                    tx,
                    thread: Some(thread),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Fleet {
            workers,
            contexts,
            counts,
            hosts: 0,
            senders: a.senders as usize,
            server,
            publish: stack.endpoints.publish.clone(),
            ingest: stack.endpoints.ingest.clone(),
            acks: stack.endpoints.acks.clone(),
        })
    }

    pub(super) fn name(i: usize) -> String {
        format!("fleet-{i:05}")
    }

    /// Enroll hosts `self.hosts..n` (accepted, each in one group), then connect them.
    pub(super) fn grow(&mut self, state: &std::path::Path, n: usize) -> anyhow::Result<Duration> {
        if n <= self.hosts {
            return Ok(Duration::ZERO);
        }
        let t0 = Instant::now();
        let mut store = bus::enroll::Enrollment::open(&bus::enroll::store_dir(state))?;
        let mut pairs = Vec::with_capacity(n - self.hosts);
        for i in self.hosts..n {
            let pair = KeyPair::generate()?;
            let group = format!("g{}", i % GROUPS);
            store.enroll(&Fleet::name(i), pair.public(), Role::Host, &[group])?;
            pairs.push((i, pair));
        }
        drop(store);
        let enrolled = t0.elapsed();
        // The daemons follow the store every 100-200 ms: let every copy hold the whole set
        // before any new key knocks, so no ZAP check answers from a copy read mid-enrollment.
        std::thread::sleep(Duration::from_secs(1));
        let mut batches: Vec<Vec<SimHost>> = (0..self.workers.len()).map(|_| Vec::new()).collect();
        for (i, pair) in pairs {
            let host = self.host(i, &pair)?;
            batches[i % self.workers.len()].push(host);
        }
        for (w, batch) in self.workers.iter().zip(batches) {
            w.tx.send(Cmd::Add(batch))
                .map_err(|_| anyhow::anyhow!("a fleet worker stopped"))?;
        }
        self.hosts = n;
        Ok(enrolled)
    }

    pub(super) fn host(&self, i: usize, pair: &KeyPair) -> anyhow::Result<SimHost> {
        let ctx = &self.contexts[i % self.contexts.len()];
        let name = Fleet::name(i);
        let dial = |kind, ep: &str| -> anyhow::Result<zmq::Socket> {
            let s = ctx.socket(kind)?;
            s.set_linger(0)?;
            s.set_sndhwm(bus::sockets::HWM)?;
            s.set_rcvhwm(bus::sockets::HWM)?;
            pair.curve_client(&s, &self.server)?;
            if kind == zmq::SUB {
                // As the actor's subscription does (actor/src/sub.rs).
                s.set_heartbeat_ivl(1_000)?;
                s.set_heartbeat_timeout(5_000)?;
                for t in bus::Target::subscriptions(&name, &[format!("g{}", i % GROUPS)]) {
                    s.set_subscribe(t.as_bytes())?;
                }
            }
            s.connect(ep)
                .map_err(|e| anyhow::anyhow!("{ep}: {e} (host {i})"))?;
            Ok(s)
        };
        let sub = dial(zmq::SUB, &self.publish)?;
        let senders = (0..self.senders)
            .map(|_| {
                Ok(SimSender {
                    _push: dial(zmq::PUSH, &self.ingest)?,
                    dealer: dial(zmq::DEALER, &self.acks)?,
                    hello: bus::encode(&Hello {
                        stream: bus::delivery::new_stream(),
                        from: 0,
                    }),
                    acked: false,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(SimHost {
            sub,
            senders,
            got: false,
        })
    }

    pub(super) fn acked(&self) -> i64 {
        self.counts.acked.load(Ordering::Relaxed)
    }

    pub(super) fn forget_acks(&self) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        for w in &self.workers {
            w.tx.send(Cmd::ForgetAcks(tx.clone()))
                .map_err(|_| anyhow::anyhow!("a fleet worker stopped"))?;
        }
        for _ in &self.workers {
            rx.recv_timeout(Duration::from_secs(30))
                .map_err(|_| anyhow::anyhow!("a fleet worker did not answer"))?;
        }
        Ok(())
    }

    /// Arm every worker for a fan-out round; returns the channel their arrival times come on.
    pub(super) fn arm(&self) -> anyhow::Result<mpsc::Receiver<Vec<Instant>>> {
        self.counts.armed.store(0, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        for w in &self.workers {
            w.tx.send(Cmd::Fanout(tx.clone()))
                .map_err(|_| anyhow::anyhow!("a fleet worker stopped"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.counts.armed.load(Ordering::Relaxed) < self.workers.len() {
            if Instant::now() > deadline {
                anyhow::bail!("the fleet workers did not arm for the fan-out");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(rx)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the channel stops the worker, which drops its sockets.
            let (dead, _) = mpsc::channel();
            w.tx = dead;
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
