//! The outbox: actions wait here, durable, until the publisher has logged them.
//!
//! Each action a rule appends gets the next number of this manager's outbox and is staged with
//! the group of events that made it ([`Outbox::side_writes`]); only once the group is committed
//! does it go out on the `ipc://` link ([`Outbox::committed`]), as a [`Linked`] frame. The
//! publisher answers on its ack PUB with the highest number it has in its own durable log
//! ([`LinkAck`]); what that covers is forgotten (deleted with the next commit). When no ack
//! moves on for [`RESEND_AFTER`] while actions wait, they are sent again from the oldest; the
//! publisher recognises numbers it has logged. After a restart, whatever the outbox holds is
//! sent again.
//!
//! Clustered, the outbox lives in etcd with the group's other writes, each member's under its
//! own namespace (`<member id>/` before every key), so a member started again under its id
//! takes its outbox back; a group that lost a race takes its actions back
//! ([`Outbox::discard`]), and each commit deletes at most a bounded number of acknowledged
//! entries (etcd limits the writes of one transaction).
//!
//! The outbox id is made once per state dir and kept, so a publisher tells a wiped manager's
//! new numbering from resends of the old one.

use bus::delivery::{LinkAck, Linked};
use bus::Action;
use registers::{Registers, SideWrite};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The side space of outbox entries (key: the number, big-endian).
pub const SPACE: u8 = 0x81;
/// The side space of the outbox's own marks (its id, its next number).
pub const META: u8 = 0x82;
/// Send again what waits when the publisher acknowledged nothing for this long.
pub const RESEND_AFTER: Duration = Duration::from_secs(1);
/// Most actions waiting before the manager stops taking events (back-pressure on senders).
pub const MAX_WAITING: usize = 1_000_000;

/// The manager's outbox and its two link sockets.
pub struct Outbox {
    id: String,
    /// The next number to give.
    next: u64,
    /// Unacknowledged actions by number: committed ones and the group being built.
    waiting: BTreeMap<u64, Vec<u8>>,
    /// Numbers below this are committed.
    committed: u64,
    /// The next number to send on the link.
    cursor: u64,
    /// Everything up to this is in the publisher's log.
    acked: u64,
    /// Acknowledged numbers whose entries are still to delete in a commit.
    forget_from: u64,
    last_progress: Instant,
    link: zmq::Socket,
    acks: zmq::Socket,
    /// Actions sent again after no acknowledgement came in time.
    pub resent: u64,
    /// Prefix of every key (clustered: the member id and a slash; else empty).
    ns: Vec<u8>,
    /// Most acknowledged entries deleted by one commit.
    max_forget: u64,
    /// The last number the pending commit deletes.
    forget_planned: u64,
    /// Bytes of the actions of the group being built.
    pending_bytes: usize,
}

impl Outbox {
    /// Read the committed outbox (making its id on first use) and subscribe to its acks.
    /// `namespace`: clustered, the member's key prefix (`<id>/`).
    pub fn open(
        registers: &Registers,
        link: zmq::Socket,
        acks: zmq::Socket,
        namespace: Option<&str>,
    ) -> Result<(Outbox, Option<SideWrite>), crate::ManagerError> {
        let ns = namespace.unwrap_or_default().as_bytes().to_vec();
        let mine = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<(Vec<u8>, Vec<u8>)> {
            entries
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix(ns.as_slice()).map(|k| (k.to_vec(), v)))
                .collect()
        };
        let meta: BTreeMap<Vec<u8>, Vec<u8>> =
            mine(registers.side_entries(META)?).into_iter().collect();
        let (id, new_id) = match meta
            .get(&b"id"[..])
            .and_then(|v| String::from_utf8(v.clone()).ok())
        {
            Some(id) if bus::delivery::valid_stream(&id) => (id, None),
            _ => {
                let id = bus::delivery::new_stream();
                let w = SideWrite {
                    space: META,
                    key: [ns.as_slice(), b"id"].concat(),
                    value: Some(id.as_bytes().to_vec()),
                };
                (id, Some(w))
            }
        };
        let mut waiting: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (k, v) in mine(registers.side_entries(SPACE)?) {
            if let Ok(b) = <[u8; 8]>::try_from(k.as_slice()) {
                waiting.insert(u64::from_be_bytes(b), v);
            }
        }
        // What is no longer here was acknowledged by a publisher (perhaps not the one linked
        // now, or taken over by a clustered leader while this member was away): each frame
        // says so, so the publisher takes the oldest one next.
        if let Some(&oldest) = waiting.keys().next() {
            for frame in waiting.values_mut() {
                if let Ok(mut l) = bus::decode::<Linked>(frame) {
                    if l.after < oldest.saturating_sub(1) {
                        l.after = oldest.saturating_sub(1);
                        *frame = bus::encode(&l);
                    }
                }
            }
        }
        let stored_next = meta
            .get(&b"next"[..])
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1);
        let next = stored_next.max(waiting.keys().next_back().map_or(1, |n| n + 1));
        let first = waiting.keys().next().copied().unwrap_or(next);
        acks.set_subscribe(id.as_bytes())?;
        if !waiting.is_empty() {
            tracing::info!(outbox = %id, waiting = waiting.len(), from = first, "outbox: sending again what the publisher had not acknowledged");
        }
        Ok((
            Outbox {
                id,
                next,
                waiting,
                committed: next,
                cursor: first,
                acked: first - 1,
                forget_from: first,
                last_progress: Instant::now(),
                link,
                acks,
                resent: 0,
                ns,
                max_forget: u64::MAX,
                forget_planned: first - 1,
                pending_bytes: 0,
            },
            new_id,
        ))
    }

    /// Stage `action` in the group being built.
    pub fn push(&mut self, action: &Action) {
        let seq = self.next;
        self.next += 1;
        let frame = bus::encode(&Linked {
            outbox: self.id.clone(),
            seq,
            action: action.clone(),
            // Every number up to the last acknowledged is in a publisher's log.
            after: self.acked,
        });
        self.pending_bytes += frame.len();
        self.waiting.insert(seq, frame);
    }

    /// Delete at most `n` acknowledged entries per commit (clustered: etcd bounds a
    /// transaction's writes).
    pub fn bound_forgets(&mut self, n: usize) {
        self.max_forget = (n as u64).max(1);
    }

    /// What the next commit would write: entries, and bytes of new actions.
    pub fn pending(&self) -> (usize, usize) {
        let new = self.next - self.committed;
        let forgets = (self.acked + 1)
            .saturating_sub(self.forget_from)
            .min(self.max_forget);
        (
            (new + forgets + u64::from(new > 0)) as usize,
            self.pending_bytes,
        )
    }

    /// The group lost a race and is discarded: take its actions back.
    pub fn discard(&mut self) {
        self.waiting.split_off(&self.committed);
        self.next = self.committed;
        self.pending_bytes = 0;
    }

    fn key(&self, seq: u64) -> Vec<u8> {
        [self.ns.as_slice(), &seq.to_be_bytes()].concat()
    }

    /// Actions not yet in the publisher's log.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True when the outbox has something for the next commit.
    pub fn is_dirty(&self) -> bool {
        self.next > self.committed || self.forget_from <= self.acked
    }

    /// What the next commit writes: the group's actions, the deletion of acknowledged ones,
    /// and the next number.
    pub fn side_writes(&mut self) -> Vec<SideWrite> {
        let mut out = Vec::new();
        for (seq, frame) in self.waiting.range(self.committed..) {
            out.push(SideWrite {
                space: SPACE,
                key: self.key(*seq),
                value: Some(frame.clone()),
            });
        }
        let upto = self
            .acked
            .min(self.forget_from.saturating_add(self.max_forget - 1));
        for seq in self.forget_from..=upto {
            out.push(SideWrite {
                space: SPACE,
                key: self.key(seq),
                value: None,
            });
        }
        self.forget_planned = upto;
        if self.next > self.committed {
            out.push(SideWrite {
                space: META,
                key: [self.ns.as_slice(), b"next"].concat(),
                value: Some(self.next.to_be_bytes().to_vec()),
            });
        }
        out
    }

    /// The commit is durable: what it held may go out.
    pub fn committed(&mut self) {
        if self.cursor >= self.committed && self.waiting.range(self.committed..).next().is_some() {
            // Nothing was in flight: the clock starts with what goes out now.
            self.last_progress = Instant::now();
        }
        self.committed = self.next;
        self.pending_bytes = 0;
        self.forget_from = self.forget_from.max(self.forget_planned + 1);
        self.send();
    }

    /// Send committed actions not sent yet, until the link would block.
    pub fn send(&mut self) {
        let from = self.cursor.max(self.acked + 1);
        let mut sent_to = from;
        for (&seq, frame) in self.waiting.range(from..self.committed) {
            match self.link.send(&frame[..], zmq::DONTWAIT) {
                Ok(()) => sent_to = seq + 1,
                Err(_) => break,
            }
        }
        self.cursor = sent_to;
    }

    /// The link-acks socket, to poll.
    pub fn acks_socket(&self) -> &zmq::Socket {
        &self.acks
    }

    /// Take the publisher's acks; forget what they cover.
    pub fn take_acks(&mut self) {
        while let Ok(parts) = self.acks.recv_multipart(zmq::DONTWAIT) {
            let Some(ack) = parts
                .get(1)
                .and_then(|b| bus::decode_with_limit::<LinkAck>(b, 1_024).ok())
            else {
                continue;
            };
            // Never past what was committed: the publisher cannot have what was never sent.
            let upto = ack.upto.min(self.committed.saturating_sub(1));
            if ack.outbox != self.id || upto <= self.acked {
                continue;
            }
            let keep = self.waiting.split_off(&(upto + 1));
            self.waiting = keep;
            self.acked = upto;
            self.cursor = self.cursor.max(upto + 1);
            self.last_progress = Instant::now();
        }
    }

    /// Send everything waiting again when the publisher has been silent for too long.
    pub fn tick(&mut self) {
        let in_flight = self.cursor > self.acked + 1;
        if in_flight && self.last_progress.elapsed() >= RESEND_AFTER {
            self.resent += self.cursor - (self.acked + 1);
            tracing::debug!(outbox = %self.id, from = self.acked + 1, "publisher silent: sending the outbox again");
            self.cursor = self.acked + 1;
            self.last_progress = Instant::now();
            self.send();
        }
    }
}
