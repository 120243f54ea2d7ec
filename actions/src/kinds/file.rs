//! `file`: a file that exists (with optional content and mode) or is absent.
//!
//! Fixes are atomic: new content is written to a temp file in the same directory and renamed
//! over the target, so readers never see a half-written file. Missing parent directories are
//! an error, never created. The watch is a subscription on the engine's shared inotify hub.

use std::any::Any;
use std::ffi::OsString;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{GraphError, ResourceError};
use serde_json::Value;

use crate::fields::{type_name, Fields};
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, ValueType, WatchCtx, WatchGuard};

/// The kind name.
pub const KIND: &str = "file";

/// Whether the file should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The file exists (the default).
    Exists,
    /// The file does not exist.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    path: PathBuf,
    /// None: content is not managed.
    content: Option<Vec<u8>>,
    /// Permission bits (0o7777 at most); None: mode is not managed.
    mode: Option<u32>,
    state: State,
}

/// A managed file.
#[derive(Debug)]
pub struct File {
    id: String,
    // Shared with the blocking thread each check runs on.
    spec: Arc<Spec>,
}

pub(crate) fn build(
    id: String,
    name: &str,
    fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    let path = PathBuf::from(name);
    if !path.is_absolute() {
        return Err(fields.invalid("name", format!("`{name}` is not an absolute path")));
    }
    if name.ends_with('/')
        || path.file_name().is_none()
        || path.components().any(|c| c == Component::ParentDir)
    {
        return Err(fields.invalid(
            "name",
            format!("`{name}` must name a file (no trailing `/`, no `..`)"),
        ));
    }
    let content = fields.opt_str("content")?.map(String::into_bytes);
    let mode = match fields.opt_value("mode") {
        None => None,
        Some(Value::String(text)) => Some(parse_mode(&text).ok_or_else(|| {
            fields.invalid(
                "mode",
                format!("`{text}` is not an octal mode like \"0644\""),
            )
        })?),
        // `mode: 644` in YAML is the decimal number 644, never what was meant.
        Some(other) => {
            return Err(fields.invalid(
                "mode",
                format!(
                    "expected an octal string like \"0644\", got {}",
                    type_name(&other)
                ),
            ))
        }
    };
    let state = match fields.opt_str("state")?.as_deref() {
        None | Some("exists") => State::Exists,
        Some("absent") => State::Absent,
        Some(other) => {
            return Err(fields.invalid(
                "state",
                format!("expected `exists` or `absent`, got `{other}`"),
            ))
        }
    };
    if state == State::Absent {
        for (field, set) in [("content", content.is_some()), ("mode", mode.is_some())] {
            if set {
                return Err(fields.invalid(field, "cannot be set when state is `absent`"));
            }
        }
    }
    Ok(Arc::new(File {
        id,
        spec: Arc::new(Spec {
            path,
            content,
            mode,
            state,
        }),
    }))
}

/// "0644", "644", "1777", "0o644" -> bits. Three or four octal digits after the prefix.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let digits = match digits.len() {
        5 => digits.strip_prefix('0')?,
        3 | 4 => digits,
        _ => return None,
    };
    if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

#[async_trait]
impl Resource for File {
    fn id(&self) -> &str {
        &self.id
    }

    fn watch(&self, ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        ctx.files().subscribe(&self.spec.path, poke).map(Some)
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        let apply = ctx.apply;
        // A received content takes the place of the written one.
        let spec = match ctx.recv.get("content") {
            Some(Value::String(content)) => Arc::new(Spec {
                content: Some(content.clone().into_bytes()),
                ..(*self.spec).clone()
            }),
            Some(other) => {
                return Err(ResourceError::Failed(format!(
                    "received content is {}, not a string",
                    type_name(other)
                )))
            }
            None => Arc::clone(&self.spec),
        };
        tokio::task::spawn_blocking(move || check_apply(&spec, apply))
            .await
            .map_err(|e| ResourceError::Failed(format!("file check panicked: {e}")))?
    }

    fn compare(&self, other: &dyn Resource) -> bool {
        other
            .as_any()
            .downcast_ref::<File>()
            .is_some_and(|o| o.id == self.id && o.spec == self.spec)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn manages(&self) -> Vec<PathBuf> {
        vec![self.spec.path.clone()]
    }

    fn receives(&self) -> &'static [(&'static str, ValueType)] {
        &[("content", ValueType::Str)]
    }

    fn needs(&self) -> Vec<PathBuf> {
        self.spec
            .path
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect()
    }
}

fn check_apply(spec: &Spec, apply: bool) -> Result<Outcome, ResourceError> {
    let path = &spec.path;
    let shown = path.display();
    if spec.state == State::Absent {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Outcome::Converged),
            Err(e) => return Err(ResourceError::io(format!("stat {shown}"), e)),
        };
        if meta.is_dir() {
            return Err(ResourceError::Failed(format!(
                "{shown} is a directory; refusing to remove it"
            )));
        }
        if !apply {
            return Ok(Outcome::WouldChange);
        }
        return match fs::remove_file(path) {
            Ok(()) => Ok(Outcome::Changed),
            // Someone else removed it between our stat and our remove: converged anyway.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Outcome::Converged),
            Err(e) => Err(ResourceError::io(format!("remove {shown}"), e)),
        };
    }

    check_parent(path)?;
    let meta = match fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
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
    let current_mode = meta.as_ref().map(|m| m.permissions().mode() & 0o7777);
    let content_ok = match (&meta, &spec.content) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(meta), Some(want)) => {
            // Length first, so a big mismatching file is not read at all.
            meta.len() == want.len() as u64
                && fs::read(path).map_err(|e| ResourceError::io(format!("read {shown}"), e))?
                    == *want
        }
    };
    let mode_ok = spec.mode.is_none() || spec.mode == current_mode;
    if content_ok && mode_ok {
        return Ok(Outcome::Converged);
    }
    if !apply {
        return Ok(Outcome::WouldChange);
    }
    if !content_ok {
        // Keep the mode the file had unless one is managed.
        let content = spec.content.as_deref().unwrap_or_default();
        atomic_write(path, content, spec.mode.or(current_mode))
            .map_err(|e| ResourceError::io(format!("write {shown}"), e))?;
    } else if let Some(mode) = spec.mode {
        fs::set_permissions(path, Permissions::from_mode(mode))
            .map_err(|e| ResourceError::io(format!("chmod {shown}"), e))?;
    }
    Ok(Outcome::Changed)
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

/// Write `content` to a temp file next to `path`, set its mode, fsync, rename over `path`.
fn atomic_write(path: &Path, content: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!(".reflex-tmp-{}-{n}", std::process::id());
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
        // Without a managed or existing mode, get what a plain create would (umask applies).
        .mode(mode.unwrap_or(0o666))
        .open(&tmp)?;
    let written = (|| {
        file.write_all(content)?;
        if let Some(mode) = mode {
            // Explicitly, because the open mode was filtered by the umask.
            file.set_permissions(Permissions::from_mode(mode))?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &Path, content: Option<&str>, mode: Option<u32>, state: State) -> Spec {
        Spec {
            path: path.to_path_buf(),
            content: content.map(|c| c.as_bytes().to_vec()),
            mode,
            state,
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("1777"), Some(0o1777));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("00644"), Some(0o644));
        for bad in ["", "64", "0999", "rw-r--r--", "+644", "77777", "0x644"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
    }

    #[test]
    fn creates_fixes_and_converges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        let s = spec(&f, Some("hello\n"), Some(0o600), State::Exists);
        assert_eq!(check_apply(&s, false).expect("noop"), Outcome::WouldChange);
        assert!(!f.exists());
        assert_eq!(check_apply(&s, true).expect("create"), Outcome::Changed);
        assert_eq!(fs::read_to_string(&f).expect("read"), "hello\n");
        let mode = fs::metadata(&f).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(check_apply(&s, true).expect("again"), Outcome::Converged);
        fs::set_permissions(&f, Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(check_apply(&s, true).expect("chmod back"), Outcome::Changed);
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn preserves_mode_when_unmanaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        fs::write(&f, "old").expect("write");
        fs::set_permissions(&f, Permissions::from_mode(0o640)).expect("chmod");
        let s = spec(&f, Some("new"), None, State::Exists);
        assert_eq!(check_apply(&s, true).expect("fix"), Outcome::Changed);
        let mode = fs::metadata(&f).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn absent_and_missing_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("gone");
        fs::write(&f, "x").expect("write");
        let s = spec(&f, None, None, State::Absent);
        assert_eq!(check_apply(&s, true).expect("remove"), Outcome::Changed);
        assert!(!f.exists());
        assert_eq!(check_apply(&s, true).expect("again"), Outcome::Converged);

        let orphan = dir.path().join("no/such/dir/f");
        let s = spec(&orphan, Some("x"), None, State::Exists);
        let err = check_apply(&s, true).expect_err("must fail").to_string();
        assert!(
            err.contains("parent directory") && err.contains("does not exist"),
            "{err}"
        );
        assert!(
            !dir.path().join("no").exists(),
            "parents must not be created"
        );
    }
}
