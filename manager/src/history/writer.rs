//! Appending to the history, on the manager's thread: records gather in a buffer and go to the
//! current segment in one `write(2)` per group ([`Writer::flush`]). A write error never stops
//! the manager: the group's records are dropped (counted, logged at most once a minute) and
//! the next group starts a new segment, so a torn record is only ever at a segment's end.

use super::segment::{self, Kind};
use super::Retention;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A buffer this large is written without waiting for the group's end.
const FLUSH_AT: usize = 4 << 20;
/// Segment size bounds: a sixteenth of the size bound, within these.
const MIN_SEGMENT: u64 = 64 << 10;
const MAX_SEGMENT: u64 = 64 << 20;
/// Write errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

struct Segment {
    first: u64,
    path: PathBuf,
    len: u64,
}

/// The appending side of the history.
pub struct Writer {
    dir: PathBuf,
    keep: Retention,
    segment_max: u64,
    segment_span_ms: u64,
    /// The segment being appended to, and its file.
    current: Option<(Segment, File)>,
    /// Closed segments, oldest first.
    closed: VecDeque<Segment>,
    closed_bytes: u64,
    buf: Vec<u8>,
    records_in_buf: u64,
    /// Records lost to write errors since start.
    pub dropped: u64,
    /// Segments pruned since start.
    pub pruned: u64,
    last_error_log: Option<Instant>,
}

impl Writer {
    /// Open (making it, owner-only) the history folder `dir`; what is there is kept, within
    /// `keep`, and never appended to.
    pub fn open(dir: &Path, keep: Retention) -> io::Result<Writer> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut closed = VecDeque::new();
        let mut closed_bytes = 0;
        for (first, path) in segment::list(dir)? {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            closed_bytes += len;
            closed.push_back(Segment { first, path, len });
        }
        let segment_max = (keep.max_bytes / 16).clamp(MIN_SEGMENT, MAX_SEGMENT);
        let segment_span_ms = (keep.max_age.as_millis() as u64 / 16).max(1_000);
        let mut w = Writer {
            dir: dir.to_path_buf(),
            keep,
            segment_max,
            segment_span_ms,
            current: None,
            closed,
            closed_bytes,
            buf: Vec::with_capacity(64 << 10),
            records_in_buf: 0,
            dropped: 0,
            pruned: 0,
            last_error_log: None,
        };
        w.prune(bus::now_ms());
        Ok(w)
    }

    /// Queue one record whose body is a wire frame (`bus::encode`, or an event's frame as it
    /// arrived).
    pub fn record(&mut self, kind: Kind, body: &[u8]) {
        segment::push(&mut self.buf, kind, bus::now_ms(), body);
        self.records_in_buf += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Write what is queued to the current segment, starting a new one when it is full or
    /// old. Errors are counted and logged, never returned.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let now = bus::now_ms();
        let full = self.current.as_ref().is_some_and(|(s, _)| {
            s.len >= self.segment_max || now.saturating_sub(s.first) >= self.segment_span_ms
        });
        if full {
            self.close_current();
            self.prune(now);
        }
        let result = match &mut self.current {
            Some((seg, file)) => file.write_all(&self.buf).map(|()| seg.len),
            None => self.start_segment(),
        };
        match result {
            Ok(_) => {
                if let Some((seg, _)) = &mut self.current {
                    seg.len += self.buf.len() as u64;
                }
            }
            Err(e) => {
                self.dropped += self.records_in_buf;
                let now = Instant::now();
                if self
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY)
                {
                    tracing::warn!(dir = %self.dir.display(), dropped = self.dropped, "history not written: {e}; the manager goes on without these records");
                    self.last_error_log = Some(now);
                }
                // The file may end in part of a record now: never append to it again.
                self.close_current();
            }
        }
        self.buf.clear();
        self.records_in_buf = 0;
    }

    /// Make a segment for the buffered records and write them to it; the buffer's first
    /// record's time names it.
    fn start_segment(&mut self) -> io::Result<u64> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut first = self
            .buf
            .get(5..13)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or_else(bus::now_ms);
        // Names are times: never reuse one (a restart within the same millisecond).
        if let Some(last) = self.closed.back() {
            first = first.max(last.first + 1);
        }
        let mut path = self.dir.join(segment::name(first));
        while path.exists() {
            first += 1;
            path = self.dir.join(segment::name(first));
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let seg = Segment {
            first,
            path,
            len: 0,
        };
        let written = file.write_all(&self.buf);
        self.current = Some((seg, file));
        written.map(|()| 0)
    }

    fn close_current(&mut self) {
        if let Some((seg, _)) = self.current.take() {
            self.closed_bytes += seg.len;
            self.closed.push_back(seg);
        }
    }

    /// Delete the oldest closed segments while the history is over its size, or while the
    /// segment after the oldest is itself older than the age bound (so every record of the
    /// oldest is).
    pub fn prune(&mut self, now: u64) {
        let oldest_kept = now.saturating_sub(self.keep.max_age.as_millis() as u64);
        loop {
            let current = self.current.as_ref().map(|(s, _)| s);
            let over_size = self.closed_bytes + current.map_or(0, |s| s.len) > self.keep.max_bytes;
            let next_first = self
                .closed
                .get(1)
                .map(|s| s.first)
                .or(current.map(|s| s.first));
            let too_old = next_first.is_some_and(|t| t < oldest_kept);
            if !(over_size || too_old) {
                return;
            }
            let Some(seg) = self.closed.pop_front() else {
                return;
            };
            self.closed_bytes -= seg.len;
            self.pruned += 1;
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %seg.path.display(), "history segment not pruned: {e}")
                }
            }
        }
    }

    /// Bytes the history holds on disk (what is written).
    pub fn bytes(&self) -> u64 {
        self.closed_bytes + self.current.as_ref().map_or(0, |(s, _)| s.len)
    }

    /// Segments on disk.
    pub fn segments(&self) -> usize {
        self.closed.len() + usize::from(self.current.is_some())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.flush();
    }
}
