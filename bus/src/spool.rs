//! A sender's spool: what it holds, on disk, so a sender started again on the same spool (a
//! beacon restarted while its manager is down) resumes the same stream where it was.
//!
//! The spool is a sled store (a directory) with one key per held event (`e/` and its number,
//! big-endian, so keys sort in stream order), the stream id (`m/stream`) and the number of the
//! oldest event not acknowledged (`m/base`). Only the sender's own thread writes it: the events
//! it takes from the application are inserted, then synced in one group (one fsync for all it
//! took in that turn of its loop) *before* any of them is sent, so a number the manager has
//! seen is always on disk and never handed to another event after a restart. What an
//! acknowledgement covers is removed (lazily synced: lost on a crash, those events are sent
//! again and the manager, which de-duplicates per stream, skips them).
//!
//! A crash (kill -9, power loss) loses at most the events taken but not yet synced (the last
//! group, never sent) and what was still queued in memory between the application and the
//! sender's thread. A spool that cannot be read (corrupt, or not a sled store) is moved aside
//! to `<path>.corrupt-<unix secs>` with an error in the log, and a new one is started; a spool
//! locked by a running sender is an error, never moved.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a spool could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another running sender holds the spool (sled's lock).
    #[error("spool {path} is in use by another sender (give this one its own spool): {source}")]
    Locked {
        /// The spool.
        path: PathBuf,
        /// The lock error.
        source: sled::Error,
    },
    /// The spool could not be opened, created or moved aside.
    #[error("spool {path}: {why}")]
    Unusable {
        /// The spool.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// What a spool held when it was opened.
pub struct Loaded {
    /// The stream id (the one given or made when the spool is new).
    pub stream: String,
    /// The number of the first held event.
    pub base: u64,
    /// The held events, `base..`, oldest first.
    pub held: VecDeque<Vec<u8>>,
}

/// An open spool.
pub struct Spool {
    db: sled::Db,
    path: PathBuf,
    /// Inserted and not synced yet.
    dirty: bool,
}

const STREAM: &[u8] = b"m/stream";
const BASE: &[u8] = b"m/base";
const EVENT: &[u8] = b"e/";

fn key(n: u64) -> [u8; 10] {
    let mut k = [0; 10];
    k[..2].copy_from_slice(EVENT);
    k[2..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Why the store's content is not a spool (then it is moved aside).
fn read(db: &sled::Db, stream: Option<&str>) -> Result<Loaded, String> {
    let err = |e: sled::Error| e.to_string();
    let stream = match db.get(STREAM).map_err(err)? {
        Some(s) => {
            let s = std::str::from_utf8(&s)
                .ok()
                .filter(|s| crate::delivery::valid_stream(s))
                .ok_or("its stream id is not one")?
                .to_string();
            if let Some(asked) = stream.filter(|a| *a != s) {
                tracing::warn!(spool = %s, asked, "the spool keeps its own stream id, not the one configured");
            }
            s
        }
        None => stream
            .map(str::to_string)
            .unwrap_or_else(crate::delivery::new_stream),
    };
    let base = match db.get(BASE).map_err(err)? {
        Some(b) => u64::from_be_bytes(
            b.as_ref()
                .try_into()
                .map_err(|_| "its base is not a number")?,
        ),
        None => 0,
    };
    let mut held = VecDeque::new();
    let mut stale = Vec::new();
    for kv in db.scan_prefix(EVENT) {
        let (k, v) = kv.map_err(err)?;
        let n = k
            .get(2..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or("an event key is not a number")?;
        if n < base {
            // Acknowledged; its removal was not synced before a crash.
            stale.push(k);
            continue;
        }
        if n != base + held.len() as u64 {
            return Err(format!(
                "event {n} follows {} (a gap)",
                base + held.len() as u64
            ));
        }
        held.push_back(v.to_vec());
    }
    for k in stale {
        db.remove(k).map_err(err)?;
    }
    db.insert(STREAM, stream.as_bytes()).map_err(err)?;
    db.flush().map_err(err)?;
    Ok(Loaded { stream, base, held })
}

impl Spool {
    /// Open the spool at `path` (made when missing) and read what it holds; `stream` names a
    /// new spool's stream (`None`: a fresh id). An unreadable spool is moved aside and a new one
    /// started, said in the log.
    pub fn open(path: &Path, stream: Option<&str>) -> Result<(Spool, Loaded), SpoolError> {
        match Spool::try_open(path, stream)? {
            Ok(done) => Ok(done),
            Err(why) => {
                let secs = crate::now_ms() / 1000;
                let aside = PathBuf::from(format!("{}.corrupt-{secs}", path.display()));
                tracing::error!(spool = %path.display(), aside = %aside.display(), "the spool cannot be read ({why}): moved aside, starting a new one; what it held is not sent");
                std::fs::rename(path, &aside).map_err(|e| SpoolError::Unusable {
                    path: path.to_path_buf(),
                    why: format!("cannot be read ({why}) nor moved aside: {e}"),
                })?;
                match Spool::try_open(path, stream)? {
                    Ok(done) => Ok(done),
                    Err(why) => Err(SpoolError::Unusable {
                        path: path.to_path_buf(),
                        why,
                    }),
                }
            }
        }
    }

    /// `Ok(Err(why))` when the spool is there but not readable (to be moved aside).
    #[allow(clippy::type_complexity)]
    fn try_open(
        path: &Path,
        stream: Option<&str>,
    ) -> Result<Result<(Spool, Loaded), String>, SpoolError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| SpoolError::Unusable {
                path: path.to_path_buf(),
                why: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        if path.exists() && !path.is_dir() {
            return Ok(Err("it is a file, not a spool directory".into()));
        }
        // A previous sender on this spool in this process lets go of the lock within sled's
        // flush interval; wait for it a little before calling it in use.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let db = loop {
            let opened = std::panic::catch_unwind(|| {
                sled::Config::new()
                    .path(path)
                    // A beacon stays small: sled's page cache would grow to 1 GiB by default.
                    .cache_capacity(16 << 20)
                    .flush_every_ms(Some(500))
                    .open()
            });
            match opened {
                Ok(Ok(db)) => break db,
                Ok(Err(sled::Error::Io(e)))
                    if e.kind() == std::io::ErrorKind::Other && e.to_string().contains("lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(SpoolError::Locked {
                            path: path.to_path_buf(),
                            source: sled::Error::Io(e),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(Err(sled::Error::Io(e))) if e.kind() != std::io::ErrorKind::InvalidData => {
                    return Err(SpoolError::Unusable {
                        path: path.to_path_buf(),
                        why: e.to_string(),
                    })
                }
                Ok(Err(e)) => return Ok(Err(e.to_string())),
                Err(_) => return Ok(Err("the store panicked reading it".into())),
            }
        };
        // Events carry what hosts saw (commands, paths): owner only, like the state dir.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(
                |e| SpoolError::Unusable {
                    path: path.to_path_buf(),
                    why: format!("cannot make it owner-only: {e}"),
                },
            )?;
        }
        Ok(read(&db, stream).map(|loaded| {
            (
                Spool {
                    db,
                    path: path.to_path_buf(),
                    dirty: false,
                },
                loaded,
            )
        }))
    }

    /// Keep event `n` (not synced until [`Spool::sync`]).
    pub fn insert(&mut self, n: u64, frame: &[u8]) -> Result<(), SpoolError> {
        self.db.insert(key(n), frame).map_err(|e| self.fail(e))?;
        self.dirty = true;
        Ok(())
    }

    /// Sync what was inserted since the last sync (one fsync); nothing to do when nothing was.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty {
            self.db.flush().map_err(|e| self.fail(e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Forget events `from..next`: acknowledged.
    pub fn acked(&mut self, from: u64, next: u64) -> Result<(), SpoolError> {
        let mut b = sled::Batch::default();
        for n in from..next {
            b.remove(&key(n)[..]);
        }
        b.insert(BASE, &next.to_be_bytes()[..]);
        self.db.apply_batch(b).map_err(|e| self.fail(e))
    }

    fn fail(&self, e: sled::Error) -> SpoolError {
        SpoolError::Unusable {
            path: self.path.clone(),
            why: e.to_string(),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // What the acknowledgements removed, so a clean restart does not send it again.
        let _ = self.db.flush();
    }
}
