//! `beacon/log`: follow a log file like `tail -F` and send the lines that match a regex, with
//! its captures.
//!
//! `path = "/var/log/auth.log"`, `match = "Failed password for (?P<user>\\S+) from (?P<ip>\\S+)"`
//! (named groups by name, others by number). Starts at the end of the file (`from_start = true`
//! to read what is there); survives rotation (the file renamed or deleted and made anew: the
//! rest of the old one is read, then the new one from its start) and truncation. Checked every
//! interval (1 s by default). At most `max_lines` matches (100) are sent per check; the rest
//! are counted in one `skipped` event rather than flooding the manager.

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::{obj, Beacon, Out};
use regex::Regex;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// What `log` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults::happenings(Duration::from_secs(1));

/// Longest line kept; the rest of a longer one is cut.
const MAX_LINE: usize = 16 * 1024;

/// The `log` beacon: the matching lines of a log file.
pub struct Log {
    path: PathBuf,
    re: Regex,
    from_start: bool,
    max_lines: usize,
    /// The open file, its (device, inode), and how far it has been read.
    open: Option<(File, (u64, u64), u64)>,
    partial: Vec<u8>,
    opened_once: bool,
}

impl Log {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<Log, ConfigError> {
        let path = f
            .string("path")?
            .ok_or_else(|| f.missing("path", "the log file to follow"))?;
        let re = f
            .regex("match")?
            .ok_or_else(|| f.missing("match", "a regex for the lines to send"))?;
        let from_start = f.bool("from_start")?.unwrap_or(false);
        let max_lines = f.u64("max_lines")?.unwrap_or(100).max(1) as usize;
        Ok(Log::new(PathBuf::from(path), re, from_start, max_lines))
    }

    /// Follow `path` (from its start when `from_start`), sending the lines matching `re`, at
    /// most `max_lines` per check.
    pub fn new(path: PathBuf, re: Regex, from_start: bool, max_lines: usize) -> Log {
        Log {
            path,
            re,
            from_start,
            max_lines,
            open: None,
            partial: Vec::new(),
            opened_once: false,
        }
    }

    /// Read what was appended to the open file; complete lines go to `lines`.
    fn read_open(&mut self, lines: &mut Vec<String>) -> Result<(), String> {
        let Some((file, _, pos)) = self.open.as_mut() else {
            return Ok(());
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(*pos);
        if len < *pos {
            // Truncated in place (copytruncate): start over.
            *pos = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(*pos))
            .map_err(|e| format!("cannot seek {}: {e}", self.path.display()))?;
        let mut buf = Vec::new();
        let n = file
            .take(64 << 20)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        *pos += n as u64;
        for chunk in buf.split_inclusive(|&b| b == b'\n') {
            if chunk.last() == Some(&b'\n') {
                self.partial.extend_from_slice(&chunk[..chunk.len() - 1]);
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                lines.push(line);
                self.partial.clear();
            } else if self.partial.len() < MAX_LINE {
                let room = MAX_LINE - self.partial.len();
                self.partial
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        Ok(())
    }

    fn captures(&self, line: &str) -> Option<Map<String, Value>> {
        let caps = self.re.captures(line)?;
        let mut m = Map::new();
        for (i, name) in self.re.capture_names().enumerate().skip(1) {
            let key = name.map(str::to_string).unwrap_or_else(|| i.to_string());
            m.insert(
                key,
                caps.get(i)
                    .map(|c| Value::from(c.as_str()))
                    .unwrap_or(Value::Null),
            );
        }
        Some(m)
    }
}

impl Beacon for Log {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let mut lines = Vec::new();
        // First whatever is left in the file we have open (even if it was rotated away).
        self.read_open(&mut lines)?;
        let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        let rotated = match (&self.open, &current) {
            (None, Ok(_)) => true,
            (Some((_, id, _)), Ok(now)) => id != now,
            _ => false,
        };
        if rotated {
            let mut file = File::open(&self.path)
                .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
            let meta = file
                .metadata()
                .map_err(|e| format!("cannot stat {}: {e}", self.path.display()))?;
            // Only the very first open may start at the end; a file that replaced a rotated
            // one is new, so all of it is read.
            let pos = if !self.opened_once && !self.from_start {
                file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?
            } else {
                0
            };
            self.opened_once = true;
            self.partial.clear();
            self.open = Some((file, (meta.dev(), meta.ino()), pos));
            self.read_open(&mut lines)?;
        }
        let path = self.path.display().to_string();
        let mut skipped = 0u64;
        let mut sent = 0;
        for line in lines {
            let Some(caps) = self.captures(&line) else {
                continue;
            };
            if sent == self.max_lines {
                skipped += 1;
                continue;
            }
            sent += 1;
            out.event(obj! {"path" => path, "line" => line, "captures" => caps});
        }
        if skipped > 0 {
            out.event(obj! {"path" => path, "skipped" => skipped});
        }
        if let Err(e) = current {
            if self.open.is_none() || e.kind() != std::io::ErrorKind::NotFound {
                return Err(format!("cannot open {path}: {e}"));
            }
            // Rotated away and not made anew yet: keep reading the old one, quietly.
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn lines(l: &mut Log) -> Vec<Map<String, Value>> {
        let mut out = Out::default();
        l.sample(&mut out).unwrap();
        out.readings.into_iter().map(|r| r.data).collect()
    }

    #[test]
    fn follows_matches_and_survives_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "old: error before we started\n");
        let re = Regex::new(r"error (?P<code>\d+) (\w+)").unwrap();
        let mut l = Log::new(path.clone(), re, false, 100);
        assert!(lines(&mut l).is_empty(), "starts at the end");

        append(
            &path,
            "info fine\nerror 42 disk\nerror 7 net\npartial error 9 x",
        );
        let got = lines(&mut l);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["line"], "error 42 disk");
        assert_eq!(got[0]["captures"]["code"], "42");
        assert_eq!(got[0]["captures"]["2"], "disk");
        assert_eq!(got[0]["path"], path.display().to_string());
        append(&path, "yz\n");
        assert_eq!(
            lines(&mut l)[0]["line"],
            "partial error 9 xyz",
            "a line is sent once complete"
        );

        // Rotation: the old file is renamed and written to once more, a new one is made.
        let rotated = dir.path().join("app.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        append(&rotated, "error 1 last-in-old\n");
        append(&path, "error 2 first-in-new\n");
        let got: Vec<String> = lines(&mut l)
            .iter()
            .map(|d| d["line"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, ["error 1 last-in-old", "error 2 first-in-new"]);

        // Deleted and not yet made anew: no failure; then it comes back.
        std::fs::remove_file(&rotated).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(lines(&mut l).is_empty());
        append(&path, "error 3 recreated\n");
        assert_eq!(lines(&mut l)[0]["line"], "error 3 recreated");

        // Truncated in place.
        std::fs::write(&path, "").unwrap();
        assert!(lines(&mut l).is_empty());
        append(&path, "error 4 after-truncate\n");
        assert_eq!(lines(&mut l)[0]["line"], "error 4 after-truncate");
    }

    #[test]
    fn a_flood_is_capped_and_counted_and_a_missing_file_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut l = Log::new(path.clone(), Regex::new("hit").unwrap(), true, 3);
        let mut out = Out::default();
        let err = l.sample(&mut out).unwrap_err();
        assert!(
            err.contains("cannot open") && err.contains("x.log"),
            "{err}"
        );
        append(&path, &"hit\n".repeat(10));
        let got = lines(&mut l);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3]["skipped"], 7);
    }
}
