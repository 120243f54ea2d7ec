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
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::ops::Range;

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
    Some((parse(payload, crc)?, at + 8 + len))
}

/// The frame whose payload is `payload`, if its checksum is `crc` and its records add up.
fn parse(payload: &[u8], crc: u32) -> Option<Frame<'_>> {
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
    Some(Frame { seqs, records })
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
    pub(super) fn snapshot(&self, chunk: usize) -> io::Result<Vec<u8>> {
        let mut names: Vec<(&str, &[u8])> = self.graphs.iter().map(|(n, b)| (*n, *b)).collect();
        names.sort_unstable();
        let mut w = Snapshot::new(Vec::new(), self.seqs, chunk);
        for (name, body) in names {
            w.put(name, body.len(), |b| {
                b.copy_from_slice(body);
                Ok(())
            });
        }
        w.finish().0
    }
}

/// Where each graph in force sits in a log file: the offset and length of its latest body.
/// Compaction builds it reading the log a frame at a time and copies the bodies from the old
/// file into the new one, so it holds the names and one frame, never the whole log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Index {
    pub bodies: HashMap<String, (u64, u32)>,
    /// The last sequences as of the last frame (JSON).
    pub seqs: Vec<u8>,
}

impl Index {
    /// Read the first `len` bytes of the log `file`: MAGIC, then only whole frames (what the
    /// store thread has committed). Anything else there is an error: the log is left as it is.
    pub(super) fn of(file: &File, len: u64) -> io::Result<Index> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let mut r = BufReader::with_capacity(READ_BUF, file);
        let mut magic = [0; MAGIC.len()];
        r.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(bad("not a store log"));
        }
        let mut index = Index::default();
        let mut at = MAGIC.len() as u64;
        let mut payload = Vec::new();
        while at < len {
            let mut head = [0; 8];
            r.read_exact(&mut head)?;
            let [a, b, c, d, e, f, g, h] = head;
            let size = u32::from_le_bytes([a, b, c, d]);
            let crc = u32::from_le_bytes([e, f, g, h]);
            let body_at = at + 8;
            if body_at + u64::from(size) > len {
                return Err(bad("a frame runs past the committed length"));
            }
            payload.resize(size as usize, 0);
            r.read_exact(&mut payload)?;
            let frame = parse(&payload, crc).ok_or_else(|| bad("a committed frame is torn"))?;
            index.seqs.clear();
            index.seqs.extend_from_slice(frame.seqs);
            for rec in frame.records {
                match rec {
                    Record::Put { name, body } => {
                        // Where the body lies in the payload, hence in the file.
                        let off =
                            body_at + (body.as_ptr() as usize - payload.as_ptr() as usize) as u64;
                        let place = (off, body.len() as u32);
                        match index.bodies.get_mut(name) {
                            Some(p) => *p = place,
                            None => {
                                index.bodies.insert(name.to_string(), place);
                            }
                        }
                    }
                    Record::Remove { name } => {
                        index.bodies.remove(name);
                    }
                }
            }
            at = body_at + u64::from(size);
        }
        Ok(index)
    }

    /// Write the log that says only what this index does to `out`: MAGIC, then frames of
    /// about `chunk` bytes, the bodies read from `src` in the order they lie there. Returns the
    /// bytes written.
    pub(super) fn snapshot(
        &self,
        src: &File,
        out: &mut impl Write,
        chunk: usize,
    ) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut places: Vec<(&str, u64, u32)> = self
            .bodies
            .iter()
            .map(|(name, &(off, len))| (name.as_str(), off, len))
            .collect();
        places.sort_unstable_by_key(|p| p.1);
        let mut w = Snapshot::new(out, &self.seqs, chunk);
        for (name, off, len) in places {
            w.put(name, len as usize, |b| src.read_exact_at(b, off));
        }
        let (out, written) = w.finish();
        out?;
        Ok(written)
    }
}

/// Writes a log that says only what is put in it: MAGIC, then frames of about `chunk` bytes
/// of bodies, each frame with the last sequences. It holds one frame's bodies at a time. The
/// first write error ends the writing and is kept for [`Snapshot::finish`].
struct Snapshot<'a, W> {
    out: io::Result<W>,
    seqs: &'a [u8],
    chunk: usize,
    names: Vec<(&'a str, Range<usize>)>,
    bodies: Vec<u8>,
    frame: Vec<u8>,
    written: u64,
}

impl<'a, W: Write> Snapshot<'a, W> {
    fn new(mut out: W, seqs: &'a [u8], chunk: usize) -> Snapshot<'a, W> {
        let out = out.write_all(MAGIC).map(|()| out);
        Snapshot {
            out,
            seqs,
            chunk,
            names: Vec::new(),
            bodies: Vec::new(),
            frame: Vec::new(),
            written: MAGIC.len() as u64,
        }
    }

    /// Put `name`, whose body of `len` bytes `fill` writes.
    fn put(&mut self, name: &'a str, len: usize, fill: impl FnOnce(&mut [u8]) -> io::Result<()>) {
        if self.out.is_err() {
            return;
        }
        let start = self.bodies.len();
        self.bodies.resize(start + len, 0);
        if let Err(e) = fill(&mut self.bodies[start..]) {
            self.out = Err(e);
            return;
        }
        self.names.push((name, start..self.bodies.len()));
        if self.bodies.len() >= self.chunk {
            self.flush();
        }
    }

    /// Write the puts held as one frame.
    fn flush(&mut self) {
        let Ok(out) = &mut self.out else { return };
        self.frame.clear();
        let bodies = &self.bodies;
        encode(
            &mut self.frame,
            self.seqs,
            self.names.iter().map(|(name, r)| Record::Put {
                name,
                body: &bodies[r.clone()],
            }),
        );
        self.names.clear();
        self.bodies.clear();
        match out.write_all(&self.frame) {
            Ok(()) => self.written += self.frame.len() as u64,
            Err(e) => self.out = Err(e),
        }
    }

    /// Write what is still held (the last sequences even when no graph is); the writer, or
    /// the first error, and the bytes written.
    fn finish(mut self) -> (io::Result<W>, u64) {
        if !self.names.is_empty() || self.written == MAGIC.len() as u64 {
            self.flush();
        }
        (self.out, self.written)
    }
}

/// The read buffer of a compaction's scan.
const READ_BUF: usize = 64 << 10;

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

        let snap = Live::of(&log).0.snapshot(1).expect("snapshot");
        let (again, good) = Live::of(&snap);
        assert_eq!(good, snap.len());
        assert_eq!(again.graphs, live.graphs);
        assert_eq!(again.seqs, live.seqs);
    }

    fn temp_file(bytes: &[u8]) -> File {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("reflex-store-log-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).expect("write");
        let f = File::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn a_streamed_snapshot_says_what_the_log_says() {
        // Many frames, puts over puts, removes, an empty body, a name put again after removal.
        let mut log = MAGIC.to_vec();
        for n in 0..300u32 {
            let name = format!("g{}", n % 37);
            let body = format!("body {n} {}", "x".repeat((n % 50) as usize));
            let seqs = format!("{{\"k\":{n}}}");
            let mut records = vec![Record::Put {
                name: &name,
                body: body.as_bytes(),
            }];
            let gone = format!("g{}", (n * 7) % 37);
            if n % 5 == 0 {
                records.push(Record::Remove { name: &gone });
            }
            if n == 299 {
                records.push(Record::Put {
                    name: "empty",
                    body: b"",
                });
            }
            encode(&mut log, seqs.as_bytes(), records);
        }
        let (live, _) = Live::of(&log);
        let file = temp_file(&log);
        let index = Index::of(&file, log.len() as u64).expect("index");
        assert_eq!(index.seqs, live.seqs);
        assert_eq!(index.bodies.len(), live.graphs.len());
        for chunk in [1, 100, 1 << 20] {
            let mut snap = Vec::new();
            let n = index.snapshot(&file, &mut snap, chunk).expect("snapshot");
            assert_eq!(n, snap.len() as u64);
            let (again, good) = Live::of(&snap);
            assert_eq!(good, snap.len(), "chunk {chunk}");
            assert_eq!(again.graphs, live.graphs, "chunk {chunk}");
            assert_eq!(again.seqs, live.seqs);
        }

        // No graphs at all: the last sequences are still written.
        let mut bare = MAGIC.to_vec();
        encode(&mut bare, b"{\"k\":9}", []);
        let file = temp_file(&bare);
        let index = Index::of(&file, bare.len() as u64).expect("index");
        let mut snap = Vec::new();
        index.snapshot(&file, &mut snap, 64).expect("snapshot");
        assert_eq!(Live::of(&snap).0.seqs, b"{\"k\":9}");

        // A committed length that cuts a frame, or a flipped bit, is refused: nothing is
        // rewritten from a log that does not add up.
        let file = temp_file(&log);
        assert!(Index::of(&file, log.len() as u64 - 1).is_err());
        let mut flipped = log.clone();
        flipped[log.len() - 3] ^= 1;
        let file = temp_file(&flipped);
        assert!(Index::of(&file, flipped.len() as u64).is_err());
        let file = temp_file(b"not a log at all, not at all");
        assert!(Index::of(&file, 28).is_err());
    }
}
