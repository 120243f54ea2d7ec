//! Files only this user may read: the key directory (0700), secret keys and the enrollment
//! store (0600). Writes are atomic (a temp file in the same directory, fsynced, then moved into
//! place, then the directory fsynced), so a crash leaves the old file or the new one, never half
//! of one. Reads refuse a file or directory that group or others can get at, because a secret
//! another user could read is no longer a secret, and a store another user could write decides
//! who may speak.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The permission bits of group and others: none may be set on what this module guards.
const OTHERS: u32 = 0o077;

/// A private file or directory cannot be used.
#[derive(Debug, Error)]
pub enum PrivateError {
    /// The system refused an operation on `path`.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Group or others have access to `path`.
    #[error(
        "{} is open to group or others (mode {mode:04o}); refusing to use it: run `chmod {want:o} {}`",
        .path.display(),
        .path.display()
    )]
    Exposed {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode it should have (600 or 700).
        want: u32,
    },
    /// `path` is not what it should be: a symlink, a directory where a file belongs, ...
    #[error("{}: {what}", .path.display())]
    Kind {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The file at `path` is not one reflex wrote: it does not parse, or says something it
    /// may not.
    #[error("{}: {why}", .path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The file at `path` is larger than anything this module writes.
    #[error("{}: larger than {limit} bytes; not a file reflex wrote", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit it broke.
        limit: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateError + '_ {
    move |source| PrivateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Make `dir` (and its missing parents) with mode 0700 when it is missing; refuse one that is
/// not a directory or that group or others can enter.
pub fn ensure_dir(dir: &Path) -> Result<(), PrivateError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(PrivateError::Kind {
            path: dir.to_path_buf(),
            what: "not a directory",
        });
    }
    guarded(dir, meta.permissions().mode(), 0o700)
}

fn guarded(path: &Path, mode: u32, want: u32) -> Result<(), PrivateError> {
    if mode & OTHERS != 0 {
        return Err(PrivateError::Exposed {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
            want,
        });
    }
    Ok(())
}

/// The contents of the private file at `path`, at most `limit` bytes; `None` when there is no
/// such file. A symlink, or a file group or others can read, is refused.
pub fn read(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, PrivateError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    if !meta.is_file() {
        return Err(PrivateError::Kind {
            path: path.to_path_buf(),
            what: "not a regular file",
        });
    }
    guarded(path, meta.permissions().mode(), 0o600)?;
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(PrivateError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(Some(bytes))
}

/// Whether [`write`] may replace a file that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (an update).
    Replace,
    /// Keep it and report `false` (the first writer wins: two processes making the same key
    /// at once end up using one).
    Keep,
}

/// Write `content` to `path` with mode 0600, atomically. Returns whether it was written:
/// `false` only with [`Existing::Keep`] when `path` already existed.
pub fn write(path: &Path, content: &[u8], existing: Existing) -> Result<bool, PrivateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile makes the file 0600 with O_EXCL under a dot-name the store's listing skips.
    let mut tmp = tempfile::Builder::new()
        .prefix(".reflex-tmp-")
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(content)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io(path))?;
    let written = match existing {
        Existing::Replace => tmp.persist(path).map(|_| true),
        Existing::Keep => match tmp.persist_noclobber(path) {
            Ok(_) => Ok(true),
            Err(e) if e.error.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
    }
    .map_err(|e| io(path)(e.error))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(written)
}

/// Remove the file at `path`; `false` when there was none.
pub fn remove(path: &Path) -> Result<bool, PrivateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn dirs_and_files_are_private_and_writes_replace_or_keep() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/keys");
        ensure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("x");
        assert_eq!(read(&f, 10).unwrap(), None);
        assert!(write(&f, b"one", Existing::Keep).unwrap());
        assert_eq!(mode(&f), 0o600);
        assert!(!write(&f, b"two", Existing::Keep).unwrap());
        assert_eq!(read(&f, 10).unwrap().unwrap(), b"one");
        assert!(write(&f, b"three", Existing::Replace).unwrap());
        assert_eq!(read(&f, 10).unwrap().unwrap(), b"three");
        assert!(matches!(
            read(&f, 2),
            Err(PrivateError::TooLarge { limit: 2, .. })
        ));
        // Nothing but the file itself is left: no temp files.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert!(remove(&f).unwrap());
        assert!(!remove(&f).unwrap());
    }

    #[test]
    fn exposed_files_dirs_and_symlinks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        ensure_dir(&dir).unwrap();
        let f = dir.join("secret");
        write(&f, b"s", Existing::Replace).unwrap();
        fs::set_permissions(&f, Permissions::from_mode(0o640)).unwrap();
        let e = read(&f, 10).unwrap_err();
        assert!(
            matches!(e, PrivateError::Exposed { mode: 0o640, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");

        let link = dir.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(matches!(read(&link, 10), Err(PrivateError::Kind { .. })));

        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let e = ensure_dir(&dir).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();

        let file_as_dir = tmp.path().join("plain");
        fs::write(&file_as_dir, b"").unwrap();
        assert!(ensure_dir(&file_as_dir).is_err());
    }
}
