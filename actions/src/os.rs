//! Small operating-system helpers shared by the engine, its kinds and the actor: file names
//! from arbitrary ids, crash-safe writes, and user and group lookups.

use std::ffi::{CString, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::resource::OwnWrites;

/// `text` hex-encoded: a collision-free file name for any id or name.
pub fn hex(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Write `content` to a temp file next to `path`, set its mode, fsync, rename over `path`:
/// readers see the old file or the new one, never half of it, even across a crash.
/// `mode: None` gives what a plain create would (the umask applies).
pub fn atomic_write(path: &Path, content: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_and_rename(path, content, mode, true, None)
}

/// [`atomic_write`] by a check whose node watches `path`: the rename is announced to the
/// watch first, so it does not poke the node that made it (see `FileHub::own_rename`).
pub fn atomic_write_own(
    path: &Path,
    content: &[u8],
    mode: Option<u32>,
    own: Option<&OwnWrites>,
) -> std::io::Result<()> {
    write_and_rename(path, content, mode, true, own)
}

/// [`atomic_write`] without the fsync: readers still see the old file or the new one, and a
/// killed process loses nothing (the page cache keeps it); only a power cut can lose the last
/// write. For small bookkeeping written on every action next to a file that is fsynced right
/// after (on ext4's default data=ordered, that fsync commits this rename too).
pub fn atomic_write_unsynced(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_and_rename(path, content, None, false, None)
}

/// What every temp file of an atomic write has in its name (`.<name>.reflex-tmp-<pid>-<n>`,
/// next to the file it replaces): listings and benchmarks leave such files out.
pub const TEMP_MARK: &str = ".reflex-tmp-";

fn write_and_rename(
    path: &Path,
    content: &[u8],
    mode: Option<u32>,
    sync: bool,
    own: Option<&OwnWrites>,
) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The pid once: glibc does not cache getpid, and this runs for every file written.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let suffix = format!("{TEMP_MARK}{}-{n}", PID.get_or_init(std::process::id));
    let mut name = OsString::from(".");
    match path.file_name() {
        // Stay under NAME_MAX (255) even for long names.
        Some(file) if file.len() <= 200 => name.push(file),
        _ => {}
    }
    name.push(suffix);
    let tmp = dir.join(name);

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.unwrap_or(0o666))
        .open(&tmp)?;
    let written = (|| {
        file.write_all(content)?;
        if let Some(mode) = mode {
            // Explicitly, because the open mode was filtered by the umask.
            file.set_permissions(Permissions::from_mode(mode))?;
        }
        if sync {
            file.sync_all()?;
        }
        drop(file);
        if let Some(own) = own {
            own.before_rename(&tmp, path);
        }
        fs::rename(&tmp, path).inspect_err(|_| {
            if let Some(own) = own {
                own.rename_failed(&tmp);
            }
        })
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// uid and primary gid of user `name`, from the system's user database.
pub fn user(name: &str) -> Option<(u32, u32)> {
    // SAFETY: see `lookup`; getpwnam_r has exactly the shape it calls.
    lookup(
        name,
        |n, s, b, l, r| unsafe { libc::getpwnam_r(n, s, b, l, r) },
        |p: &libc::passwd| (p.pw_uid, p.pw_gid),
    )
}

/// gid of group `name`, from the system's group database.
pub fn group(name: &str) -> Option<u32> {
    // SAFETY: see `lookup`; getgrnam_r has exactly the shape it calls.
    lookup(
        name,
        |n, s, b, l, r| unsafe { libc::getgrnam_r(n, s, b, l, r) },
        |g: &libc::group| g.gr_gid,
    )
}

/// The reentrant lookup functions (`getpwnam_r`, `getgrnam_r`) share one shape: name, the
/// struct to fill, a buffer for its strings, and where to say whether it was found. `take`
/// reads what is needed before the buffer the struct points into goes away.
fn lookup<T, R>(
    name: &str,
    call: impl FnOnce(
        *const libc::c_char,
        *mut T,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut T,
    ) -> libc::c_int,
    take: impl FnOnce(&T) -> R,
) -> Option<R> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `T` is a plain C struct (passwd or group) for which all-zero is valid.
    let mut entry: T = unsafe { std::mem::zeroed() };
    let mut result: *mut T = std::ptr::null_mut();
    // The *_r functions write only into `entry` and `buf` (whose length they are told)
    // and set `result` to null or to `&mut entry`.
    let rc = call(
        cname.as_ptr(),
        &mut entry,
        buf.as_mut_ptr(),
        buf.len(),
        &mut result,
    );
    (rc == 0 && !result.is_null()).then(|| take(&entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_lookups() {
        assert_eq!(hex("deploy/app"), "6465706c6f792f617070");
        assert_eq!(user("root"), Some((0, 0)));
        assert_eq!(group("root"), Some(0));
        assert_eq!(user("no-such-user-reflex"), None);
    }
}
