//! The store's file format: an append-only log of checksummed frames, one per group commit.
//!
//! ```text
//! file    := MAGIC frame*
//! frame   := len:u32 crc:u32 payload            (len = payload length, crc = CRC-32 of it)
//! payload := seqs_len:u32 seqs record*          (seqs = the last sequences, JSON, as of it)
//! record  := op:u8 name_len:u32 name body_len:u32 body
//!            op 1 = put (body = the action as JSON), op 2 = remove (body empty)
//! ```
//!
//! All integers are little-endian. A frame counts whole or not at all: one that is short or
//! whose checksum or records do not add up ends the log there (a write torn by a crash).

use std::collections::HashMap;

/// The first bytes of every store log.
pub(super) const MAGIC: &[u8] = b"reflex actor store 1\n";

const PUT: u8 = 1;
const REMOVE: u8 = 2;

/// One change to the graphs in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record<'a> {
    /// `name` is now the action `body` (JSON).
    Put { name: &'a str, body: &'a [u8] },
    /// `name` is gone.
    Remove { name: &'a str },
}

/// One whole frame as read back.
pub(super) struct Frame<'a> {
    /// The last sequences as of this frame (JSON).
    pub seqs: &'a [u8],
    pub records: Vec<Record<'a>>,
}

/// Append one frame holding `records` and `seqs` to `out`.
pub(super) fn encode<'a>(
    out: &mut Vec<u8>,
    seqs: &[u8],
    records: impl IntoIterator<Item = Record<'a>>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    put_bytes(out, seqs);
    for r in records {
        match r {
            Record::Put { name, body } => {
                out.push(PUT);
                put_bytes(out, name.as_bytes());
                put_bytes(out, body);
            }
            Record::Remove { name } => {
                out.push(REMOVE);
                put_bytes(out, name.as_bytes());
                put_bytes(out, &[]);
            }
        }
    }
    let payload = &out[start + 8..];
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let crc = crc32(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

/// Read the frames of `log` (after [`MAGIC`]) in order, handing each whole one to `each`;
/// returns the length of the good prefix (MAGIC included). Anything after it is torn.
pub(super) fn scan<'a>(log: &'a [u8], mut each: impl FnMut(Frame<'a>)) -> usize {
    let mut at = MAGIC.len();
    while let Some((frame, next)) = frame_at(log, at) {
        each(frame);
        at = next;
    }
    at
}

fn frame_at(log: &[u8], at: usize) -> Option<(Frame<'_>, usize)> {
    let len = u32_at(log, at)? as usize;
    let crc = u32_at(log, at + 4)?;
    let payload = log.get(at + 8..(at + 8).checked_add(len)?)?;
    if crc32(payload) != crc {
        return None;
    }
    let mut r = Reader(payload);
    let seqs = r.bytes()?;
    let mut records = Vec::new();
    while !r.0.is_empty() {
        let op = r.byte()?;
        let name = std::str::from_utf8(r.bytes()?).ok()?;
        let body = r.bytes()?;
        records.push(match op {
            PUT => Record::Put { name, body },
            REMOVE => Record::Remove { name },
            _ => return None,
        });
    }
    Some((Frame { seqs, records }, at + 8 + len))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32_at(self.0, 0)? as usize;
        let b = self.0.get(4..4usize.checked_add(len)?)?;
        self.0 = &self.0[4 + len..];
        Some(b)
    }
}

/// What a log says in the end: each name's latest action (JSON) and the last sequences.
#[derive(Default)]
pub(super) struct Live<'a> {
    pub graphs: HashMap<&'a str, &'a [u8]>,
    pub seqs: &'a [u8],
}

impl<'a> Live<'a> {
    /// Replay `log`; also returns the length of its good prefix.
    pub(super) fn of(log: &'a [u8]) -> (Live<'a>, usize) {
        let mut live = Live::default();
        let good = scan(log, |f| {
            live.seqs = f.seqs;
            for r in f.records {
                match r {
                    Record::Put { name, body } => {
                        live.graphs.insert(name, body);
                    }
                    Record::Remove { name } => {
                        live.graphs.remove(name);
                    }
                }
            }
        });
        (live, good)
    }

    /// The whole log that says only this: MAGIC, then frames of about `chunk` bytes.
    pub(super) fn snapshot(&self, chunk: usize) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut names: Vec<&&str> = self.graphs.keys().collect();
        names.sort();
        let mut records = Vec::new();
        let mut size = 0;
        for name in names {
            let body = self.graphs[*name];
            size += name.len() + body.len() + 9;
            records.push(Record::Put { name, body });
            if size >= chunk {
                encode(&mut out, self.seqs, records.drain(..));
                size = 0;
            }
        }
        if !records.is_empty() || out.len() == MAGIC.len() {
            encode(&mut out, self.seqs, records);
        }
        out
    }
}

/// CRC-32 (IEEE), to tell a frame torn by a crash from a whole one.
pub(super) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_one_ends_the_log() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let mut log = MAGIC.to_vec();
        encode(
            &mut log,
            b"{\"k\":1}",
            [
                Record::Put {
                    name: "a",
                    body: b"A1",
                },
                Record::Put {
                    name: "b",
                    body: b"B1",
                },
            ],
        );
        let whole = log.len();
        encode(
            &mut log,
            b"{\"k\":2}",
            [
                Record::Remove { name: "a" },
                Record::Put {
                    name: "b",
                    body: b"B2",
                },
            ],
        );
        let (live, good) = Live::of(&log);
        assert_eq!(good, log.len());
        assert_eq!(live.seqs, b"{\"k\":2}");
        assert_eq!(live.graphs, HashMap::from([("b", &b"B2"[..])]));

        // Every cut inside the second frame (or a flipped bit in it) leaves the first only.
        for cut in whole..log.len() {
            let (live, good) = Live::of(&log[..cut]);
            assert_eq!(good, whole, "cut at {cut}");
            assert_eq!(live.seqs, b"{\"k\":1}");
        }
        let mut flipped = log.clone();
        flipped[whole + 12] ^= 1;
        assert_eq!(Live::of(&flipped).1, whole);

        let snap = Live::of(&log).0.snapshot(1);
        let (again, good) = Live::of(&snap);
        assert_eq!(good, snap.len());
        assert_eq!(again.graphs, live.graphs);
        assert_eq!(again.seqs, live.seqs);
    }
}
