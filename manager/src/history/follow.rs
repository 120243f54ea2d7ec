//! Following the history as it is written (the live page's view): each poll reads the records
//! appended since the last one. A record being written is a torn tail for now: it is read
//! again next time. Once a later segment exists the current one is finished (its torn tail, if
//! any, is a crash's and stays torn); a segment pruned under the follower is skipped.

use super::segment::{self, Record, Records};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Reads a history's new records, poll by poll.
pub struct Follower {
    dir: PathBuf,
    /// The segment being followed (its first time and path) and the bytes of it read.
    at: Option<(u64, PathBuf, u64)>,
    /// No segment older than this is read.
    from: u64,
}

/// At most this many bytes are read in one poll, so a long history is caught up on in steps
/// (more than the largest record, so one always fits).
const POLL_BYTES: u64 = segment::MAX_RECORD as u64 + (1 << 20);

impl Follower {
    /// Follow the history in `dir` from its oldest record.
    pub fn new(dir: &Path) -> Follower {
        Follower {
            dir: dir.to_path_buf(),
            at: None,
            from: 0,
        }
    }

    /// Follow the history in `dir` from the start of its newest segments that hold at most
    /// `bytes` together (the newest one at least): a long history is not read whole first.
    pub fn recent(dir: &Path, bytes: u64) -> io::Result<Follower> {
        let segments = segment::list(dir)?;
        let mut total = 0u64;
        let mut start = None;
        for (first, path) in segments.iter().rev() {
            total += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if total > bytes && start.is_some() {
                break;
            }
            start = Some(*first);
        }
        Ok(Follower {
            dir: dir.to_path_buf(),
            at: None,
            from: start.unwrap_or(0),
        })
    }

    /// Call `f` with each record written since the last poll, in order. True when there may
    /// be more right away (a poll stopped at its byte budget).
    pub fn poll(&mut self, mut f: impl FnMut(Record<'_>)) -> io::Result<bool> {
        let segments = segment::list(&self.dir)?;
        let mut budget = POLL_BYTES;
        loop {
            let (first, path, offset) = match &self.at {
                Some((first, path, offset)) if segments.iter().any(|s| s.0 == *first) => {
                    (*first, path.clone(), *offset)
                }
                // Not started, or the segment was pruned: the oldest one after it.
                at => {
                    let after = at.as_ref().map(|a| a.0);
                    let from = self.from;
                    match segments
                        .iter()
                        .find(|s| s.0 >= from && after.is_none_or(|a| s.0 > a))
                    {
                        Some((first, path)) => (*first, path.clone(), 0),
                        None => return Ok(false),
                    }
                }
            };
            let mut data = Vec::new();
            let limit = budget;
            match std::fs::File::open(&path) {
                Ok(mut file) => {
                    file.seek(SeekFrom::Start(offset))?;
                    file.take(limit).read_to_end(&mut data)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let mut records = Records::new(&data);
            for rec in records.by_ref() {
                f(rec);
            }
            let read = records.consumed() as u64;
            budget = budget.saturating_sub(read);
            self.at = Some((first, path, offset + read));
            if data.len() as u64 == limit {
                // Stopped at the budget, maybe inside a record: more next poll.
                return Ok(true);
            }
            // A later segment means this one is finished: go on to it.
            match segments.iter().find(|s| s.0 > first) {
                Some((next, path)) => self.at = Some((*next, path.clone(), 0)),
                None => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, Retention, Writer};
    use super::*;

    #[test]
    fn a_follower_sees_each_record_once_across_segments_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Retention {
            max_bytes: 1 << 20,
            max_age: std::time::Duration::from_secs(3600),
        };
        let mut w = Writer::open(dir.path(), keep).unwrap();
        let mut fol = Follower::new(dir.path());
        let mut seen: Vec<u64> = Vec::new();
        let body = |i: u64| {
            let mut b = i.to_le_bytes().to_vec();
            b.resize(1_000, 0);
            b
        };
        let take = |seen: &mut Vec<u64>, r: Record<'_>| {
            seen.push(u64::from_le_bytes(r.body[..8].try_into().unwrap()))
        };
        assert!(!fol.poll(|r| take(&mut seen, r)).unwrap());
        for i in 0..300u64 {
            w.record(Kind::Event, &body(i));
            if i % 7 == 0 {
                w.flush();
            }
            if i % 50 == 0 {
                fol.poll(|r| take(&mut seen, r)).unwrap();
            }
        }
        w.flush();
        // A record half written is not seen until it is whole.
        let seg = segment::list(dir.path()).unwrap().last().unwrap().1.clone();
        let mut half = Vec::new();
        segment::push(&mut half, Kind::Event, 1, &body(300));
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&half[..10]).unwrap();
        fol.poll(|r| take(&mut seen, r)).unwrap();
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
        f.write_all(&half[10..]).unwrap();
        fol.poll(|r| take(&mut seen, r)).unwrap();
        assert_eq!(seen.last(), Some(&300));

        // Far behind, with the oldest segments pruned meanwhile: it goes on from what is left.
        let mut late = Follower::new(dir.path());
        let mut first = Vec::new();
        late.poll(|r| take(&mut first, r)).unwrap();
        for i in 1_000..3_000u64 {
            w.record(Kind::Event, &body(i));
            w.flush();
        }
        let mut more = Vec::new();
        while late.poll(|r| take(&mut more, r)).unwrap() {}
        assert!(w.pruned > 0);
        assert_eq!(more.last(), Some(&2_999));
        assert!(more.windows(2).all(|p| p[0] < p[1]), "in order, none twice");
    }

    #[test]
    fn a_recent_follower_starts_at_the_newest_segments() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Retention {
            max_bytes: 16 << 20,
            max_age: std::time::Duration::from_secs(3600),
        };
        let mut w = Writer::open(dir.path(), keep).unwrap();
        // 1 MiB segments: 3,000 records of 1 KB make three.
        for i in 0..3_000u64 {
            let mut b = i.to_le_bytes().to_vec();
            b.resize(1_000, 0);
            w.record(Kind::Event, &b);
            w.flush();
        }
        let segments = segment::list(dir.path()).unwrap();
        assert!(segments.len() >= 3, "{segments:?}");
        let mut seen = Vec::new();
        let mut fol = Follower::recent(dir.path(), 1 << 20).unwrap();
        while fol
            .poll(|r| seen.push(u64::from_le_bytes(r.body[..8].try_into().unwrap())))
            .unwrap()
        {}
        // Only the newest segment (the one that fits), from its first record to the last.
        assert_eq!(seen.last(), Some(&2_999));
        assert!(
            seen[0] > 0 && seen.len() < 3_000,
            "{} from {}",
            seen.len(),
            seen[0]
        );
        assert!(seen.windows(2).all(|p| p[1] == p[0] + 1));
        // Nothing in the dir yet: it follows from the start.
        let empty = tempfile::tempdir().unwrap();
        assert!(!Follower::recent(empty.path(), 1)
            .unwrap()
            .poll(|_| {})
            .unwrap());
    }
}
