//! Sending events to a manager.
//!
//! [`Emitter`] is for programs that emit continuously (beacons, applications): `emit` never
//! blocks the caller; when the queue to the manager is full (manager away, or slower than the
//! sender), the event is dropped and counted. The queue is the PUSH socket's send high-water
//! mark; ZeroMQ reconnects to a manager that went away by itself, and what was queued meanwhile
//! goes out then. An `Emitter` can be shared between threads (`Arc<Emitter>`): the socket is
//! behind a mutex held only for the non-blocking send.
//!
//! [`send_once`] is for one event that must arrive (`reflex send`): it waits for a connected
//! manager, up to a timeout.

use bus::secure::Security;
use bus::Event;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;

/// Why events could not be sent.
#[derive(Debug, Error)]
pub enum SendError {
    /// The socket could not be made or connected.
    #[error(transparent)]
    Socket(#[from] bus::sockets::SocketError),
    /// Nothing took the events in time.
    #[error("no manager answered at {endpoint} within {secs:.1}s")]
    NoManager {
        /// The manager's ingest endpoint.
        endpoint: String,
        /// How long it waited.
        secs: f64,
    },
    /// Sending failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A non-blocking event sender with a bounded queue.
pub struct Emitter {
    socket: Mutex<zmq::Socket>,
    host: String,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl Emitter {
    /// Connect to a manager's ingest endpoint, secured as `sec` says; reconnection is
    /// automatic.
    pub fn connect(endpoint: &str, host: &str, sec: &Security) -> Result<Emitter, SendError> {
        Emitter::with_queue(endpoint, host, bus::sockets::HWM, sec)
    }

    /// Connect with a queue of at most `queue` events waiting for the manager.
    pub fn with_queue(
        endpoint: &str,
        host: &str,
        queue: i32,
        sec: &Security,
    ) -> Result<Emitter, SendError> {
        let socket = bus::sockets::socket(zmq::PUSH)
            .map_err(|e| bus::sockets::SocketError::new(endpoint, e))?;
        sec.dial(&socket)?;
        socket.set_sndhwm(queue)?;
        // Keep nothing at exit: an emitter must never hold its application open.
        socket.set_linger(0)?;
        socket
            .connect(endpoint)
            .map_err(|e| bus::sockets::SocketError::new(endpoint, e))?;
        Ok(Emitter {
            socket: Mutex::new(socket),
            host: host.to_string(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue an event; never blocks. False (and counted) when it had to be dropped.
    pub fn emit(&self, tag: &str, data: Value) -> bool {
        self.send_event(&Event::new(tag, self.host.clone(), data))
    }

    /// Queue a ready event (its own host and tag); never blocks.
    pub fn send_event(&self, ev: &Event) -> bool {
        let frame = bus::encode(ev);
        let sent = match self.socket.lock() {
            Ok(s) => s.send(frame, zmq::DONTWAIT),
            // A thread panicked mid-send; the socket itself is still sound.
            Err(poisoned) => poisoned.into_inner().send(frame, zmq::DONTWAIT),
        };
        match sent {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    tracing::warn!("dropping events: {e} (the queue to the manager is full; further drops are only counted)");
                }
                false
            }
        }
    }

    /// The host name events carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Events handed to the socket so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Send one event and return once it has gone to a connected manager, or fail after `timeout`.
pub fn send_once(
    endpoint: &str,
    ev: &Event,
    timeout: Duration,
    sec: &Security,
) -> Result<(), SendError> {
    // An own context: dropping it (zmq_ctx_term) waits, up to the linger, until the frame has
    // really been written. The process-wide context is never terminated, so it would not.
    let ctx = zmq::Context::new();
    let socket = ctx
        .socket(zmq::PUSH)
        .map_err(|e| bus::sockets::SocketError::new(endpoint, e))?;
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    sec.dial(&socket)?;
    // Queue only to completed connections, so the send waits for a manager that is really there.
    socket.set_immediate(true)?;
    socket.set_sndtimeo(ms)?;
    socket.set_linger(ms)?;
    socket
        .connect(endpoint)
        .map_err(|e| bus::sockets::SocketError::new(endpoint, e))?;
    let sent = socket.send(bus::encode(ev), 0);
    drop(socket);
    drop(ctx);
    match sent {
        Ok(()) => Ok(()),
        Err(zmq::Error::EAGAIN) => Err(SendError::NoManager {
            endpoint: endpoint.to_string(),
            secs: timeout.as_secs_f64(),
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn free_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://127.0.0.1:{}", l.local_addr().unwrap().port())
    }

    #[test]
    fn send_once_fails_clearly_without_a_manager() {
        let ep = free_endpoint();
        let err = send_once(
            &ep,
            &Event::new("t/x", "h", json!(1)),
            Duration::from_millis(300),
            &Security::Insecure,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no manager answered"), "{err}");
    }

    #[test]
    fn send_once_and_emitter_deliver_to_a_real_pull_socket() {
        let ep = free_endpoint();
        let pull = bus::sockets::bind(zmq::PULL, &ep).unwrap();
        send_once(
            &ep,
            &Event::new("t/once", "h", json!({"a": 1})),
            Duration::from_secs(5),
            &Security::Insecure,
        )
        .unwrap();
        let em = Emitter::connect(&ep, "h2", &Security::Insecure).unwrap();
        assert!(em.emit("t/emit", json!(2)));
        pull.set_rcvtimeo(5_000).unwrap();
        let a: Event = bus::decode(&pull.recv_bytes(0).unwrap()).unwrap();
        let b: Event = bus::decode(&pull.recv_bytes(0).unwrap()).unwrap();
        assert_eq!(
            (a.tag.as_str(), b.tag.as_str(), b.host.as_str()),
            ("t/once", "t/emit", "h2")
        );
    }

    #[test]
    fn emitter_queues_until_a_manager_comes_and_reconnects_after_it_left() {
        let ep = free_endpoint();
        let em = Emitter::connect(&ep, "h", &Security::Insecure).unwrap();
        // No manager yet: queued, not dropped.
        assert!(em.emit("t/early", json!(1)));
        let pull = bus::sockets::bind(zmq::PULL, &ep).unwrap();
        pull.set_rcvtimeo(10_000).unwrap();
        let a: Event = bus::decode(&pull.recv_bytes(0).unwrap()).unwrap();
        assert_eq!(a.tag, "t/early");
        // The manager goes away and comes back on the same endpoint.
        drop(pull);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // ZeroMQ closes a socket in the background: the port frees a moment later.
        let pull = loop {
            match bus::sockets::bind(zmq::PULL, &ep) {
                Ok(s) => break s,
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        pull.set_rcvtimeo(200).unwrap();
        let got = loop {
            em.emit("t/again", json!(2));
            if let Ok(b) = pull.recv_bytes(0) {
                break bus::decode::<Event>(&b).unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "no reconnect");
        };
        assert_eq!(got.tag, "t/again");
    }

    #[test]
    fn emitter_is_shared_between_threads() {
        let ep = free_endpoint();
        let pull = bus::sockets::bind(zmq::PULL, &ep).unwrap();
        pull.set_rcvtimeo(10_000).unwrap();
        let em = std::sync::Arc::new(Emitter::connect(&ep, "h", &Security::Insecure).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let em = em.clone();
                std::thread::spawn(move || {
                    for j in 0..100 {
                        em.emit("t/thread", json!([i, j]));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..400 {
            bus::decode::<Event>(&pull.recv_bytes(0).unwrap()).unwrap();
        }
        assert_eq!(em.sent(), 400);
    }

    #[test]
    fn emitter_counts_drops_instead_of_blocking() {
        let ep = free_endpoint();
        // No manager: the connect-side pipe holds up to the HWM, the rest are dropped at once.
        let em = Emitter::with_queue(&ep, "h", 1_000, &Security::Insecure).unwrap();
        let mut ok = 0;
        for i in 0..300_000 {
            if em.emit("t/flood", json!(i)) {
                ok += 1;
            }
        }
        assert!(em.dropped() >= 290_000, "dropped only {}", em.dropped());
        assert_eq!(em.sent(), ok);
        assert_eq!(em.sent() + em.dropped(), 300_000);
    }
}
