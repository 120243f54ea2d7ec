//! Segment files and their records: `[len: u32 LE][kind: u8][at: u64 LE][body]`, where `len`
//! counts the kind, the time and the body, and the body is a wire frame (`bus::encode`). A
//! segment is named after its first record's time, so names sort in time order.

use std::io;
use std::path::{Path, PathBuf};

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event the manager took (its frame as it arrived, or as the manager made it).
    Event = 1,
    /// A rule ran for an event: a `bus::monitor::Hit`.
    Hit = 2,
    /// A rule failed for an event: a `bus::monitor::RuleError`.
    Error = 3,
    /// A rule appended an action: a `bus::Action`.
    Action = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Event,
            2 => Kind::Hit,
            3 => Kind::Error,
            4 => Kind::Action,
            _ => return None,
        })
    }
}

/// No history record is larger: a length beyond it is a torn or damaged segment, not a record.
pub const MAX_RECORD: usize = 64 << 20;
const SUFFIX: &str = ".seg";

/// Append one record to `buf`.
pub(crate) fn push(buf: &mut Vec<u8>, kind: Kind, at: u64, body: &[u8]) {
    let len = (1 + 8 + body.len()) as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(&at.to_le_bytes());
    buf.extend_from_slice(body);
}

/// One record as read: its kind, when the manager wrote it (Unix ms) and its body (a wire
/// frame).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// What it holds.
    pub kind: Kind,
    /// When the manager wrote it, Unix ms.
    pub at: u64,
    /// Its wire frame.
    pub body: &'a [u8],
}

/// The records of one segment's bytes, in order. A record of an unknown kind is skipped; a
/// length that runs past the end (a torn tail) or past [`MAX_RECORD`] ends the segment.
pub(crate) struct Records<'a> {
    data: &'a [u8],
    pos: usize,
    /// Bytes left over at the end that do not frame a record.
    pub torn: usize,
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> Records<'a> {
        Records {
            data,
            pos: 0,
            torn: 0,
        }
    }

    /// Bytes of whole records read so far (a torn tail not counted).
    pub fn consumed(&self) -> usize {
        self.pos - self.torn
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        loop {
            let rest = self.data.get(self.pos..)?;
            if rest.is_empty() {
                return None;
            }
            let len = rest
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let record = match len {
                Some(len) if (9..=MAX_RECORD).contains(&len) => rest.get(4..4 + len),
                _ => None,
            };
            let Some(record) = record else {
                self.torn = rest.len();
                self.pos = self.data.len();
                return None;
            };
            self.pos += 4 + record.len();
            let mut at = [0u8; 8];
            at.copy_from_slice(&record[1..9]);
            if let Some(kind) = Kind::from_byte(record[0]) {
                return Some(Record {
                    kind,
                    at: u64::from_le_bytes(at),
                    body: &record[9..],
                });
            }
        }
    }
}

/// The file name of a segment whose first record is at `at`.
pub(crate) fn name(at: u64) -> String {
    format!("{at:016}{SUFFIX}")
}

/// The segments in `dir`, oldest first, with their first times. Other files are left alone.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name();
        let Some(stem) = file.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if stem.len() != 16 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(at) = stem.parse::<u64>() {
            out.push((at, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_segment() {
        let mut buf = Vec::new();
        push(&mut buf, Kind::Event, 7, b"one");
        push(&mut buf, Kind::Hit, 8, b"");
        // A record of a kind this build does not know is skipped, not fatal.
        let mut unknown = Vec::new();
        push(&mut unknown, Kind::Action, 9, b"x");
        unknown[4] = 99;
        buf.extend_from_slice(&unknown);
        push(&mut buf, Kind::Action, 10, b"two");
        let whole = buf.len();
        push(&mut buf, Kind::Error, 11, b"cut short");
        buf.truncate(whole + 6);
        let mut r = Records::new(&buf);
        let got: Vec<(Kind, u64, Vec<u8>)> = r
            .by_ref()
            .map(|x| (x.kind, x.at, x.body.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::Event, 7, b"one".to_vec()),
                (Kind::Hit, 8, vec![]),
                (Kind::Action, 10, b"two".to_vec())
            ]
        );
        assert_eq!(r.torn, 6);
    }

    #[test]
    fn a_hostile_length_is_not_followed() {
        for len in [0u32, 3, u32::MAX] {
            let mut buf = len.to_le_bytes().to_vec();
            buf.extend_from_slice(&[1; 32]);
            let mut r = Records::new(&buf);
            assert!(r.next().is_none());
            assert_eq!(r.torn, buf.len());
        }
    }

    #[test]
    fn segments_list_in_time_order_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for at in [30u64, 4, 1_000] {
            std::fs::write(dir.path().join(name(at)), b"").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::fs::write(dir.path().join("12.seg"), b"").unwrap();
        let got: Vec<u64> = list(dir.path()).unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(got, vec![4, 30, 1_000]);
        assert!(list(&dir.path().join("none")).unwrap().is_empty());
    }
}
