//! Watching the rules folder for changes, with inotify directly (reflex is Linux-only, and
//! inotify is all the `notify` crate would do for us here).
//!
//! Only changes count: a reload reads the rule it reloads, so the watch asks for no read-only
//! event (`IN_ACCESS`, `IN_OPEN`, `IN_CLOSE_NOWRITE`) and no attribute change (`IN_ATTRIB`, a
//! touch or a chmod), else every reload would trigger another. What is left is a file written,
//! created, deleted, or renamed into or out of the folder. The watch is not recursive. The
//! manager's loop polls its descriptor beside the sockets ([`Watch::fd`]) and reads it only
//! when readable, so a busy ingest pays no syscall for it; the loop debounces what it reports.

use inotify::{EventMask, Inotify, WatchMask};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The events that change a rule file in the folder.
const CHANGES: WatchMask = WatchMask::CREATE
    .union(WatchMask::MODIFY)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO);

/// An inotify watch on one folder.
pub struct Watch {
    inotify: Inotify,
    dir: PathBuf,
    buf: Vec<u8>,
}

/// What happened in the folder since the last look.
#[derive(Debug, Default, PartialEq)]
pub struct Changed {
    /// The paths of the entries that changed, in the order reported (repeats included).
    pub paths: Vec<PathBuf>,
    /// The kernel's queue overflowed and events were lost: look at everything again.
    pub overflow: bool,
}

impl Watch {
    /// Start watching `dir` (which must exist).
    pub fn new(dir: &Path) -> std::io::Result<Watch> {
        let inotify = Inotify::init()?;
        inotify.watches().add(dir, CHANGES)?;
        Ok(Watch {
            inotify,
            dir: dir.to_path_buf(),
            // Room for many events of the longest name (16 bytes + NAME_MAX + 1 each).
            buf: vec![0; 16 * 1024],
        })
    }

    /// The inotify descriptor, to poll for readability (then call [`Watch::changed`]).
    pub fn fd(&self) -> RawFd {
        self.inotify.as_raw_fd()
    }

    /// Take what happened since the last call, without waiting.
    pub fn changed(&mut self) -> Changed {
        let mut out = Changed::default();
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    break
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), "rules watcher: {e}");
                    break;
                }
            };
            for ev in events {
                out.overflow |= ev.mask.contains(EventMask::Q_OVERFLOW);
                // Events about the folder itself (deleted, moved, unwatched) name no entry.
                if let Some(name) = ev.name {
                    out.paths.push(self.dir.join(name));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Everything the watch reports within a short while.
    fn settle(w: &mut Watch) -> Changed {
        let mut all = Changed::default();
        let end = Instant::now() + Duration::from_millis(200);
        while Instant::now() < end {
            let c = w.changed();
            all.paths.extend(c.paths);
            all.overflow |= c.overflow;
            std::thread::sleep(Duration::from_millis(10));
        }
        all
    }

    #[test]
    fn reports_changes_and_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("10-a.rhai");
        std::fs::write(&kept, "fn react(e) {}").unwrap();
        let mut w = Watch::new(dir.path()).unwrap();
        assert_eq!(settle(&mut w), Changed::default());

        // Reading, touching and chmod-ing change nothing.
        std::fs::read_to_string(&kept).unwrap();
        // A touch sets both times (IN_ATTRIB); setting the mtime alone is IN_MODIFY.
        let now = std::time::SystemTime::now();
        let touch = std::fs::FileTimes::new()
            .set_accessed(now)
            .set_modified(now);
        std::fs::File::open(&kept)
            .unwrap()
            .set_times(touch)
            .unwrap();
        let mut perms = std::fs::metadata(&kept).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&kept, perms.clone()).unwrap();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&kept, perms).unwrap();
        assert_eq!(settle(&mut w), Changed::default(), "reads are not changes");

        // Write, create, rename in and out, delete: each names its file.
        std::fs::write(&kept, "fn react(e) { }").unwrap();
        let new = dir.path().join("20-b.rhai");
        std::fs::write(&new, "x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        let moved_in = outside.path().join("30-c.rhai");
        std::fs::write(&moved_in, "y").unwrap();
        std::fs::rename(&moved_in, dir.path().join("30-c.rhai")).unwrap();
        std::fs::rename(&new, outside.path().join("20-b.rhai")).unwrap();
        std::fs::remove_file(&kept).unwrap();
        let mut seen = settle(&mut w).paths;
        seen.dedup();
        assert_eq!(
            seen,
            [
                kept.clone(),
                new.clone(),
                dir.path().join("30-c.rhai"),
                new,
                kept
            ]
        );
    }
}
