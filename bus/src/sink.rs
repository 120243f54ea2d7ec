//! The smallest receiver of the delivery protocol: a PULL ingest and an acks door that
//! acknowledges every event as soon as it is read. For the tests of senders and for tools that
//! only need to see what a sender sends; the manager is the real receiver.

use crate::delivery::{Ack, Batch, Hello};
use crate::sockets::SocketError;
use crate::Event;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A PULL ingest and its acks door on loopback.
pub struct Sink {
    pull: zmq::Socket,
    door: zmq::Socket,
    /// The next number expected per stream.
    next: HashMap<String, u64>,
    routes: HashMap<String, Vec<u8>>,
    /// The ingest endpoint senders connect to.
    pub ingest: String,
}

impl Sink {
    /// Bind on free loopback ports (ingest and its acks door 6 ports above).
    pub fn local() -> Result<Sink, SocketError> {
        let base = crate::endpoints::free_local_base()
            .map_err(|e| SocketError::new("tcp://127.0.0.1:0", io_err(e)))?;
        Sink::bind(&format!("tcp://127.0.0.1:{base}"))
    }

    /// Bind `ingest` and its acks door.
    pub fn bind(ingest: &str) -> Result<Sink, SocketError> {
        let acks = crate::endpoints::acks_for(ingest)
            .ok_or_else(|| SocketError::new(ingest, zmq::Error::EINVAL))?;
        let pull = crate::sockets::bind(zmq::PULL, ingest)?;
        let door = crate::sockets::bind(zmq::ROUTER, &acks)?;
        Ok(Sink {
            pull,
            door,
            next: HashMap::new(),
            routes: HashMap::new(),
            ingest: ingest.to_string(),
        })
    }

    /// The new events of the next frame that has any, within `timeout` (empty after it). Lone
    /// event frames are taken as they are; resent events are skipped.
    pub fn recv(&mut self, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            self.answer_hellos();
            let left = deadline.saturating_duration_since(Instant::now());
            let mut items = [
                self.pull.as_poll_item(zmq::POLLIN),
                self.door.as_poll_item(zmq::POLLIN),
            ];
            let ms = left.as_millis().min(50) as i64;
            if zmq::poll(&mut items, ms).is_err() {
                return Vec::new();
            }
            while let Ok(frame) = self.pull.recv_bytes(zmq::DONTWAIT) {
                let got = self.take(&frame);
                if !got.is_empty() {
                    return got;
                }
            }
            if left.is_zero() {
                return Vec::new();
            }
        }
    }

    /// `n` new events, within `timeout` in all (fewer after it).
    pub fn recv_n(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            out.extend(self.recv(left));
        }
        out
    }

    fn take(&mut self, frame: &[u8]) -> Vec<Event> {
        if !crate::delivery::is_batch(frame) {
            return crate::decode::<Event>(frame).into_iter().collect();
        }
        let Ok(b) = Batch::decode(frame, crate::MAX_FRAME) else {
            return Vec::new();
        };
        let next = *self.next.get(b.stream).unwrap_or(&0);
        if b.first > next {
            return Vec::new();
        }
        let skip = (next - b.first) as usize;
        let got: Vec<Event> = b.events[skip.min(b.events.len())..]
            .iter()
            .filter_map(|e| crate::decode(e).ok())
            .collect();
        let stream = b.stream.to_string();
        self.next
            .insert(stream.clone(), b.first + b.events.len() as u64);
        self.ack(&stream);
        got
    }

    fn answer_hellos(&mut self) {
        while let Ok(parts) = self.door.recv_multipart(zmq::DONTWAIT) {
            let [route, body] = &parts[..] else {
                continue;
            };
            if let Ok(h) = crate::decode::<Hello>(body) {
                self.next.entry(h.stream.clone()).or_insert(h.from);
                self.routes.insert(h.stream.clone(), route.clone());
                self.ack(&h.stream);
            }
        }
    }

    fn ack(&self, stream: &str) {
        let Some(route) = self.routes.get(stream) else {
            return;
        };
        let ack = crate::encode(&Ack {
            stream: stream.to_string(),
            next: self.next.get(stream).copied().unwrap_or(0),
        });
        if self
            .door
            .send(&route[..], zmq::SNDMORE | zmq::DONTWAIT)
            .is_ok()
        {
            let _ = self.door.send(ack, zmq::DONTWAIT);
        }
    }
}

fn io_err(e: std::io::Error) -> zmq::Error {
    zmq::Error::from_raw(e.raw_os_error().unwrap_or(0))
}
