//! Reading the history: segments in time order, each read whole (they are bounded), records
//! decoded only as far as a question needs. Readers run beside the writer (`reflex events`
//! on a live manager's state dir): a segment pruned meanwhile is skipped, a record being
//! written is a torn tail and ends that segment.

pub use super::segment::Record;
use super::segment::{self, Kind, Records};
use crate::glob::Glob;
use bus::Event;
use serde::Deserialize;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

/// The history's segments as they were when opened.
pub struct Reader {
    segments: Vec<(u64, PathBuf)>,
}

impl Reader {
    /// The history in `dir` (none there is an empty history).
    pub fn open(dir: &Path) -> io::Result<Reader> {
        Ok(Reader {
            segments: segment::list(dir)?,
        })
    }

    /// When the oldest record kept was written, Unix ms.
    pub fn oldest(&self) -> Option<u64> {
        self.segments.first().map(|s| s.0)
    }

    /// Visit every record written at or after `from` (Unix ms; whole segments, so some a
    /// little older too), in order, until `f` says false.
    pub fn scan(&self, from: u64, mut f: impl FnMut(Record<'_>) -> bool) -> io::Result<()> {
        // The last segment that starts at or before `from` may hold records after it.
        let start = self
            .segments
            .partition_point(|s| s.0 <= from)
            .saturating_sub(1);
        for (_, path) in &self.segments[start..] {
            let data = match std::fs::read(path) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for rec in Records::new(&data) {
                if !f(rec) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Which events `reflex events` shows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Tags matching this glob (`beacon/*`, `actor/**`).
    pub tag: Option<Glob>,
    /// About this host.
    pub host: Option<String>,
    /// Taken at or after, Unix ms.
    pub since: Option<u64>,
    /// Taken at or before, Unix ms.
    pub until: Option<u64>,
    /// At most this many: the newest ones.
    pub limit: usize,
}

/// What an event record is matched on, borrowed from its frame.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    tag: &'a str,
    #[serde(borrow)]
    host: &'a str,
}

/// The newest `q.limit` events matching `q`, oldest first, with when the manager took each.
/// Records that do not decode are skipped.
pub fn query(reader: &Reader, q: &Query) -> io::Result<Vec<(u64, Event)>> {
    let mut kept: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let since = q.since.unwrap_or(0);
    let until = q.until.unwrap_or(u64::MAX);
    reader.scan(since, |rec| {
        if rec.at > until {
            return false;
        }
        if rec.kind != Kind::Event || rec.at < since || q.limit == 0 {
            return true;
        }
        let Ok(head) = bus::decode_with_limit::<Head>(rec.body, segment::MAX_RECORD) else {
            return true;
        };
        let tag_ok = q.tag.as_ref().is_none_or(|g| g.matches(head.tag));
        let host_ok = q.host.as_deref().is_none_or(|h| h == head.host);
        if tag_ok && host_ok {
            if kept.len() == q.limit {
                kept.pop_front();
            }
            kept.push_back((rec.at, rec.body.to_vec()));
        }
        true
    })?;
    Ok(kept
        .into_iter()
        .filter_map(|(at, body)| {
            bus::decode_with_limit::<Event>(&body, segment::MAX_RECORD)
                .ok()
                .map(|e| (at, e))
        })
        .collect())
}
