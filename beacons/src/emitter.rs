//! Sending events to a manager.
//!
//! [`Emitter`] is for programs that emit continuously (beacons, applications) and for
//! `reflex send`: `emit` never blocks the caller. It is a [`bus::sender::Sender`]: every event
//! is kept until the manager acknowledges it (its effects durable) and sent again after a
//! reconnect or a timeout, so a manager that restarts loses nothing. What it holds is bounded
//! (the queue given, 100,000 events by default); past it an event is refused and counted
//! ([`Emitter::dropped`]), never lost silently. With a spool ([`Emitter::spooled`]) what it
//! holds is on disk too, so an emitter started again on the same spool (a beacon restarted while
//! its manager is down) resumes its stream and sends its backlog once the manager is back
//! ([`bus::spool`] says what a crash can lose). An `Emitter` can be shared between threads
//! (`Arc<Emitter>`).

use bus::secure::Security;
use bus::sender::{Sender, SenderConfig, SenderError};
use bus::Event;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Why events could not be sent.
#[derive(Debug, Error)]
pub enum SendError {
    /// The sender could not start.
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// The manager did not acknowledge every event in time.
    #[error(
        "no manager answered at {endpoint}: {pending} event(s) not acknowledged within {secs:.1}s"
    )]
    NoManager {
        /// The managers' ingest endpoints (comma-separated when several).
        endpoint: String,
        /// Events not acknowledged.
        pending: u64,
        /// How long it waited.
        secs: f64,
    },
}

/// A non-blocking, acknowledged event sender with a bounded queue.
pub struct Emitter {
    sender: Sender,
    host: String,
    endpoint: String,
}

impl Emitter {
    /// Connect to a manager's ingest endpoint (and its acks door 6 ports above), secured as
    /// `sec` says; reconnection is automatic.
    pub fn connect(endpoint: &str, host: &str, sec: &Security) -> Result<Emitter, SendError> {
        Emitter::with_config(SenderConfig::new(endpoint, sec), host)
    }

    /// Connect holding at most `queue` events not yet acknowledged.
    pub fn with_queue(
        endpoint: &str,
        host: &str,
        queue: usize,
        sec: &Security,
    ) -> Result<Emitter, SendError> {
        let mut cfg = SenderConfig::new(endpoint, sec);
        cfg.retain = queue.max(1);
        Emitter::with_config(cfg, host)
    }

    /// Connect holding what is not acknowledged on disk too, in the spool directory `spool`
    /// (made when missing): the stream and its held events resume from it.
    pub fn spooled(
        endpoint: &str,
        host: &str,
        sec: &Security,
        spool: &Path,
    ) -> Result<Emitter, SendError> {
        let mut cfg = SenderConfig::new(endpoint, sec);
        cfg.spool = Some(spool.to_path_buf());
        Emitter::with_config(cfg, host)
    }

    /// Connect with a sender configured in full (several managers of one cluster, tried in
    /// turn: [`SenderConfig::with_managers`]).
    pub fn with_config(cfg: SenderConfig, host: &str) -> Result<Emitter, SendError> {
        let endpoint = cfg.ingests();
        Ok(Emitter {
            sender: Sender::start(cfg)?,
            host: host.to_string(),
            endpoint,
        })
    }

    /// Queue an event; never blocks. False (and counted) when it had to be refused.
    pub fn emit(&self, tag: &str, data: Value) -> bool {
        self.send_event(&Event::new(tag, self.host.clone(), data))
    }

    /// Queue a ready event (its own host and tag); never blocks.
    pub fn send_event(&self, ev: &Event) -> bool {
        self.sender.send(ev)
    }

    /// Queue a ready event, waiting while the emitter holds its limit (a tool that would rather
    /// slow down than refuse).
    pub fn send_event_waiting(&self, ev: &Event) -> bool {
        self.sender.send_frame_waiting(bus::encode(ev))
    }

    /// Wait until every event queued so far is acknowledged by the manager.
    pub fn wait_acked(&self, timeout: Duration) -> Result<(), SendError> {
        if self.sender.wait_acked(timeout) {
            Ok(())
        } else {
            Err(SendError::NoManager {
                endpoint: self.endpoint.clone(),
                pending: self.sender.pending(),
                secs: timeout.as_secs_f64(),
            })
        }
    }

    /// The host name events carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Events queued so far.
    pub fn sent(&self) -> u64 {
        self.sender.queued()
    }

    /// Events the manager acknowledged.
    pub fn acked(&self) -> u64 {
        self.sender.acked()
    }

    /// Events queued and not acknowledged yet.
    pub fn pending(&self) -> u64 {
        self.sender.pending()
    }

    /// Events refused because the queue was full (or they were too large).
    pub fn dropped(&self) -> u64 {
        self.sender.overflowed() + self.sender.refused()
    }
}

/// Send one event and return once the manager acknowledged it, or fail after `timeout`.
pub fn send_once(
    endpoint: &str,
    ev: &Event,
    timeout: Duration,
    sec: &Security,
) -> Result<(), SendError> {
    let em = Emitter::connect(endpoint, &ev.host, sec)?;
    em.send_event(ev);
    em.wait_acked(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::sink::Sink;
    use serde_json::json;
    use std::time::Instant;

    #[test]
    fn send_once_fails_clearly_without_a_manager() {
        let err = send_once(
            "tcp://127.0.0.1:9",
            &Event::new("t/x", "h", json!(1)),
            Duration::from_millis(300),
            &Security::Insecure,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("1 event(s) not acknowledged"),
            "{err}"
        );
    }

    #[test]
    fn send_once_and_emitter_deliver_to_a_real_receiver() {
        let mut sink = Sink::local().unwrap();
        let ep = sink.ingest.clone();
        let once = std::thread::spawn(move || {
            send_once(
                &ep,
                &Event::new("t/once", "h", json!({"a": 1})),
                Duration::from_secs(10),
                &Security::Insecure,
            )
        });
        let a = sink.recv_n(1, Duration::from_secs(10));
        // Acknowledged: send_once returns only then.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !once.is_finished() && Instant::now() < deadline {
            sink.recv(Duration::from_millis(20));
        }
        once.join().unwrap().unwrap();
        let em = Emitter::connect(&sink.ingest, "h2", &Security::Insecure).unwrap();
        assert!(em.emit("t/emit", json!(2)));
        let b = sink.recv_n(1, Duration::from_secs(10));
        assert_eq!(
            (a[0].tag.as_str(), b[0].tag.as_str(), b[0].host.as_str()),
            ("t/once", "t/emit", "h2")
        );
    }

    #[test]
    fn emitter_holds_events_until_a_manager_comes_and_after_it_left() {
        let sink = Sink::local().unwrap();
        let ep = sink.ingest.clone();
        drop(sink);
        let em = Emitter::connect(&ep, "h", &Security::Insecure).unwrap();
        // No manager yet: held, not dropped.
        assert!(em.emit("t/early", json!(1)));
        let deadline = Instant::now() + Duration::from_secs(20);
        let bind = || loop {
            match Sink::bind(&ep) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut sink = bind();
        assert_eq!(sink.recv_n(1, Duration::from_secs(10))[0].tag, "t/early");
        // The manager goes away and comes back on the same endpoint.
        drop(sink);
        assert!(em.emit("t/again", json!(2)));
        let mut sink = bind();
        // The first one may come again: this receiver is new and never acknowledged it.
        let mut got = Vec::new();
        while !got.iter().any(|e: &Event| e.tag == "t/again") && Instant::now() < deadline {
            got.extend(sink.recv(Duration::from_millis(100)));
        }
        let tags: Vec<&str> = got.iter().map(|e| e.tag.as_str()).collect();
        assert!(
            tags == ["t/again"] || tags == ["t/early", "t/again"],
            "{tags:?}"
        );
        assert_eq!(em.dropped(), 0);
    }

    #[test]
    fn a_spooled_emitter_started_again_sends_what_the_first_one_held() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let sink = Sink::local().unwrap();
        let ep = sink.ingest.clone();
        drop(sink);
        let em = Emitter::spooled(&ep, "h", &Security::Insecure, &spool).unwrap();
        assert!(em.emit("t/held", json!(1)));
        drop(em);
        let em = Emitter::spooled(&ep, "h", &Security::Insecure, &spool).unwrap();
        assert_eq!(em.pending(), 1, "held across the restart");
        assert!(em.emit("t/later", json!(2)));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sink = loop {
            match Sink::bind(&ep) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tags: Vec<String> = sink
            .recv_n(2, Duration::from_secs(10))
            .into_iter()
            .map(|e| e.tag)
            .collect();
        assert_eq!(tags, ["t/held", "t/later"]);
        while em.pending() > 0 && Instant::now() < deadline {
            sink.recv(Duration::from_millis(20));
        }
        assert_eq!(em.pending(), 0);
    }

    #[test]
    fn emitter_is_shared_between_threads() {
        let mut sink = Sink::local().unwrap();
        let em =
            std::sync::Arc::new(Emitter::connect(&sink.ingest, "h", &Security::Insecure).unwrap());
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
        assert_eq!(sink.recv_n(400, Duration::from_secs(10)).len(), 400);
        assert_eq!(em.sent(), 400);
    }

    #[test]
    fn emitter_counts_drops_instead_of_blocking() {
        // No manager: the emitter holds up to its queue, the rest are refused at once.
        let em = Emitter::with_queue("tcp://127.0.0.1:9", "h", 1_000, &Security::Insecure).unwrap();
        let mut ok = 0;
        for i in 0..300_000 {
            if em.emit("t/flood", json!(i)) {
                ok += 1;
            }
        }
        assert!(em.dropped() >= 250_000, "dropped only {}", em.dropped());
        assert_eq!(em.sent(), ok);
        assert_eq!(em.sent() + em.dropped(), 300_000);
    }
}
