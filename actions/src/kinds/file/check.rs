//! Checking (and fixing) a file, a directory, or a mirrored tree against its spec. Runs on
//! a blocking thread: everything here is plain std::fs.

use std::ffi::OsString;
use std::fs::{self, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use graph::kinds::{FileSpec, FileState};

use crate::error::ResourceError;
use crate::os::{self, atomic_write};
use crate::resource::{Outcome, OwnWrites};

/// Accumulates what a check found: differences, and whether they were fixed.
struct Diff {
    apply: bool,
    differs: bool,
}

impl Diff {
    fn outcome(&self) -> Outcome {
        match (self.differs, self.apply) {
            (false, _) => Outcome::Converged,
            (true, true) => Outcome::Changed,
            (true, false) => Outcome::WouldChange,
        }
    }
}

/// Check `spec`, and fix it when `apply`. A file's own write is announced to `own` (the
/// node's watch), so its rename does not poke the node that made it.
pub(super) fn check_apply(
    spec: &FileSpec,
    apply: bool,
    own: Option<&OwnWrites>,
) -> Result<Outcome, ResourceError> {
    let mut diff = Diff {
        apply,
        differs: false,
    };
    match (spec.state, spec.dir) {
        (FileState::Absent, _) => check_absent(spec, &mut diff)?,
        (FileState::Exists, false) => check_file(spec, &mut diff, own)?,
        (FileState::Exists, true) => check_dir(spec, &mut diff)?,
    }
    Ok(diff.outcome())
}

fn check_absent(spec: &FileSpec, diff: &mut Diff) -> Result<(), ResourceError> {
    let path = &spec.path;
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ResourceError::io(format!("stat {shown}"), e)),
    };
    if meta.is_dir() && !spec.dir {
        return Err(ResourceError::Failed(format!(
            "{shown} is a directory; refusing to remove it (name it with a trailing `/`)"
        )));
    }
    diff.differs = true;
    if !diff.apply {
        return Ok(());
    }
    let removed = if meta.is_dir() {
        // Only a directory the graph says may go, recursively only when told.
        if spec.recurse {
            fs::remove_dir_all(path)
        } else {
            fs::remove_dir(path)
        }
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        // Someone else removed it between our stat and our remove: converged anyway.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            diff.differs = false;
            Ok(())
        }
        Err(e) => Err(ResourceError::io(format!("remove {shown}"), e)),
    }
}

fn check_file(
    spec: &FileSpec,
    diff: &mut Diff,
    own: Option<&OwnWrites>,
) -> Result<(), ResourceError> {
    let path = &spec.path;
    let shown = path.display();
    // A file that is there has its parent: the parent is looked at only when it is not (one
    // stat fewer on every check of a file that exists, the common case).
    let meta = match fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            check_parent(path)?;
            None
        }
        Err(e) => return Err(ResourceError::io(format!("stat {shown}"), e)),
    };
    if let Some(meta) = &meta {
        // Reading a FIFO would block forever; directories cannot be files.
        if !meta.is_file() {
            return Err(ResourceError::Failed(format!(
                "{shown} exists but is not a regular file"
            )));
        }
    }
    let sourced = match &spec.source {
        Some(src) => Some(
            fs::read(src)
                .map_err(|e| ResourceError::io(format!("read source {}", src.display()), e))?,
        ),
        None => None,
    };
    let want = sourced.as_deref().or(spec.content.as_deref());
    let current_mode = meta.as_ref().map(|m| m.permissions().mode() & 0o7777);
    let content_ok = match (&meta, want) {
        (None, _) => false,
        (Some(_), None) => true,
        // Length first, so a big mismatching file is not read at all.
        (Some(meta), Some(want)) => {
            meta.len() == want.len() as u64
                && same_content(path, want)
                    .map_err(|e| ResourceError::io(format!("read {shown}"), e))?
        }
    };
    let mode_ok = spec.mode.is_none() || spec.mode == current_mode;
    if !(content_ok && mode_ok) {
        diff.differs = true;
        if !diff.apply {
            return Ok(());
        }
        if !content_ok {
            // Keep the mode the file had unless one is managed.
            let mode = spec.mode.or(current_mode);
            os::atomic_write_own(path, want.unwrap_or_default(), mode, own)
                .map_err(|e| ResourceError::io(format!("write {shown}"), e))?;
        } else if let Some(mode) = spec.mode {
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(|e| ResourceError::io(format!("chmod {shown}"), e))?;
        }
    }
    check_owner(spec, path, diff)
}

fn check_dir(spec: &FileSpec, diff: &mut Diff) -> Result<(), ResourceError> {
    let path = &spec.path;
    let shown = path.display();
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            if spec
                .mode
                .is_some_and(|m| m != meta.permissions().mode() & 0o7777)
            {
                diff.differs = true;
                if diff.apply {
                    if let Some(mode) = spec.mode {
                        fs::set_permissions(path, Permissions::from_mode(mode))
                            .map_err(|e| ResourceError::io(format!("chmod {shown}"), e))?;
                    }
                }
            }
        }
        Ok(_) => {
            return Err(ResourceError::Failed(format!(
                "{shown} exists but is not a directory"
            )))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            check_parent(path)?;
            diff.differs = true;
            if !diff.apply {
                // Nothing below a missing directory can be checked.
                return Ok(());
            }
            fs::create_dir(path).map_err(|e| ResourceError::io(format!("mkdir {shown}"), e))?;
            if let Some(mode) = spec.mode {
                fs::set_permissions(path, Permissions::from_mode(mode))
                    .map_err(|e| ResourceError::io(format!("chmod {shown}"), e))?;
            }
        }
        Err(e) => return Err(ResourceError::io(format!("stat {shown}"), e)),
    }
    check_owner(spec, path, diff)?;
    if let Some(source) = &spec.source {
        mirror(source, path, spec, diff)?;
    } else if spec.recurse && (spec.owner.is_some() || spec.group.is_some()) {
        for entry in walk(path)? {
            check_owner(spec, &entry, diff)?;
        }
    }
    Ok(())
}

/// Make `dst`'s entries match `src`'s (files by content and mode); subdirectories when
/// `recurse`; remove extras when `purge`.
fn mirror(src: &Path, dst: &Path, spec: &FileSpec, diff: &mut Diff) -> Result<(), ResourceError> {
    let list = |dir: &Path| -> Result<Vec<OsString>, ResourceError> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(|e| ResourceError::io(format!("list {}", dir.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| !n.to_string_lossy().contains(crate::os::TEMP_MARK))
            .collect();
        names.sort();
        Ok(names)
    };
    let wanted = list(src)?;
    for name in &wanted {
        let (s, d) = (src.join(name), dst.join(name));
        let meta =
            fs::metadata(&s).map_err(|e| ResourceError::io(format!("stat {}", s.display()), e))?;
        if meta.is_dir() {
            if !spec.recurse {
                continue;
            }
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                found => {
                    diff.differs = true;
                    if !diff.apply {
                        continue;
                    }
                    if found.is_ok() {
                        fs::remove_file(&d)
                            .map_err(|e| ResourceError::io(format!("remove {}", d.display()), e))?;
                    }
                    fs::create_dir(&d)
                        .map_err(|e| ResourceError::io(format!("mkdir {}", d.display()), e))?;
                }
            }
            mirror(&s, &d, spec, diff)?;
        } else if meta.is_file() {
            let want =
                fs::read(&s).map_err(|e| ResourceError::io(format!("read {}", s.display()), e))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ok = match fs::symlink_metadata(&d) {
                Ok(m) if m.is_file() => {
                    m.permissions().mode() & 0o7777 == mode
                        && m.len() == want.len() as u64
                        && fs::read(&d)
                            .map_err(|e| ResourceError::io(format!("read {}", d.display()), e))?
                            == want
                }
                _ => false,
            };
            if !ok {
                diff.differs = true;
                if diff.apply {
                    if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                        fs::remove_dir_all(&d)
                            .map_err(|e| ResourceError::io(format!("remove {}", d.display()), e))?;
                    }
                    atomic_write(&d, &want, Some(mode))
                        .map_err(|e| ResourceError::io(format!("write {}", d.display()), e))?;
                }
            }
            check_owner(spec, &d, diff)?;
        }
    }
    if spec.purge && fs::symlink_metadata(dst).is_ok() {
        for name in list(dst)? {
            if wanted.contains(&name) {
                continue;
            }
            let d = dst.join(&name);
            diff.differs = true;
            if diff.apply {
                let removed = match fs::symlink_metadata(&d) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&d),
                    _ => fs::remove_file(&d),
                };
                match removed {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        return Err(ResourceError::io(format!("purge {}", d.display()), e))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Every entry below `dir` (not following symlinks).
fn walk(dir: &Path) -> Result<Vec<PathBuf>, ResourceError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in
            fs::read_dir(&d).map_err(|e| ResourceError::io(format!("list {}", d.display()), e))?
        {
            let entry = entry.map_err(|e| ResourceError::io(format!("list {}", d.display()), e))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

/// Owner and group of `path` per the spec (names resolved now: a user may be created by an
/// earlier resource).
fn check_owner(spec: &FileSpec, path: &Path, diff: &mut Diff) -> Result<(), ResourceError> {
    if spec.owner.is_none() && spec.group.is_none() {
        return Ok(());
    }
    let shown = path.display();
    let uid = spec.owner.as_deref().map(resolve_user).transpose()?;
    let gid = spec.group.as_deref().map(resolve_group).transpose()?;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        // Not there in noop mode: already counted as a difference.
        Err(e) if e.kind() == ErrorKind::NotFound && !diff.apply => return Ok(()),
        Err(e) => return Err(ResourceError::io(format!("stat {shown}"), e)),
    };
    if uid.is_some_and(|u| u != meta.uid()) || gid.is_some_and(|g| g != meta.gid()) {
        diff.differs = true;
        if diff.apply {
            std::os::unix::fs::lchown(path, uid, gid)
                .map_err(|e| ResourceError::io(format!("chown {shown}"), e))?;
        }
    }
    Ok(())
}

/// A user name or a numeric uid.
fn resolve_user(name: &str) -> Result<u32, ResourceError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    os::user(name)
        .map(|(uid, _)| uid)
        .ok_or_else(|| ResourceError::Failed(format!("no such user `{name}`")))
}

/// A group name or a numeric gid.
fn resolve_group(name: &str) -> Result<u32, ResourceError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    os::group(name).ok_or_else(|| ResourceError::Failed(format!("no such group `{name}`")))
}

/// Whether the file at `path` holds exactly `want`: read into a buffer of `want`'s length
/// and one byte more (a file that grew since its stat is not equal), without `fs::read`'s
/// extra stat for the size.
fn same_content(path: &Path, want: &[u8]) -> std::io::Result<bool> {
    use std::io::Read;
    let mut buf = vec![0u8; want.len() + 1];
    let mut got = 0;
    let mut file = fs::File::open(path)?;
    loop {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.get(..got) == Some(want))
}

fn check_parent(path: &Path) -> Result<(), ResourceError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    match fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ResourceError::Failed(format!(
            "parent {} is not a directory",
            parent.display()
        ))),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(ResourceError::Failed(format!(
            "parent directory {} does not exist",
            parent.display()
        ))),
        Err(e) => Err(ResourceError::io(format!("stat {}", parent.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &Path, content: Option<&str>, mode: Option<u32>, state: FileState) -> FileSpec {
        FileSpec {
            content: content.map(|c| c.as_bytes().to_vec()),
            mode,
            state,
            ..FileSpec::at(path)
        }
    }

    #[test]
    fn creates_fixes_and_converges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        let s = spec(&f, Some("hello\n"), Some(0o600), FileState::Exists);
        assert_eq!(
            check_apply(&s, false, None).expect("noop"),
            Outcome::WouldChange
        );
        assert!(!f.exists());
        assert_eq!(
            check_apply(&s, true, None).expect("create"),
            Outcome::Changed
        );
        assert_eq!(fs::read_to_string(&f).expect("read"), "hello\n");
        let mode = fs::metadata(&f).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            check_apply(&s, true, None).expect("again"),
            Outcome::Converged
        );
        fs::set_permissions(&f, Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            check_apply(&s, true, None).expect("chmod back"),
            Outcome::Changed
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn preserves_mode_when_unmanaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        fs::write(&f, "old").expect("write");
        fs::set_permissions(&f, Permissions::from_mode(0o640)).expect("chmod");
        let s = spec(&f, Some("new"), None, FileState::Exists);
        assert_eq!(check_apply(&s, true, None).expect("fix"), Outcome::Changed);
        let mode = fs::metadata(&f).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn absent_and_missing_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("gone");
        fs::write(&f, "x").expect("write");
        let s = spec(&f, None, None, FileState::Absent);
        assert_eq!(
            check_apply(&s, true, None).expect("remove"),
            Outcome::Changed
        );
        assert!(!f.exists());
        assert_eq!(
            check_apply(&s, true, None).expect("again"),
            Outcome::Converged
        );

        let orphan = dir.path().join("no/such/dir/f");
        let s = spec(&orphan, Some("x"), None, FileState::Exists);
        let err = check_apply(&s, true, None)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("parent directory") && err.contains("does not exist"),
            "{err}"
        );
        assert!(
            !dir.path().join("no").exists(),
            "parents must not be created"
        );
        let under_file = f.with_file_name("plain").join("f");
        fs::write(under_file.parent().expect("parent"), "x").expect("write");
        let s = spec(&under_file, Some("x"), None, FileState::Exists);
        let err = check_apply(&s, true, None)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn content_of_the_same_length_is_compared_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        fs::write(&f, "abc").expect("write");
        let s = spec(&f, Some("abd"), None, FileState::Exists);
        assert_eq!(
            check_apply(&s, false, None).expect("check"),
            Outcome::WouldChange
        );
        assert!(same_content(&f, b"abc").expect("read"));
        assert!(
            !same_content(&f, b"ab").expect("read"),
            "a longer file is not equal"
        );
        assert_eq!(check_apply(&s, true, None).expect("fix"), Outcome::Changed);
        assert_eq!(fs::read(&f).expect("read"), b"abd");
    }
}
