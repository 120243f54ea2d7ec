//! `file`: a file or a directory that exists (with content or a `source`, mode, owner and
//! group) or is absent.
//!
//! A name ending in `/` is a directory; with a `source` directory its files are mirrored into
//! it (`recurse: true` for subdirectories too, `purge: true` to remove what the source does
//! not have); without one, `recurse: true` applies owner and group to everything below.
//! Fixes are atomic: new content is written to a temp file in the same directory and renamed
//! over the target, so readers never see a half-written file. Missing parent directories are
//! an error, never created. The watch is a subscription on the engine's shared inotify hub
//! (the path, its source, and a directory's entries).

use std::any::Any;
use std::ffi::OsString;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;

use crate::error::{GraphError, ResourceError};
use serde_json::Value;

use crate::fields::{type_name, Fields};
use crate::hub::FileHub;
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

#[derive(Debug, Clone)]
struct Spec {
    path: PathBuf,
    /// The name ended in `/`.
    dir: bool,
    /// None: content is not managed.
    content: Option<Vec<u8>>,
    /// A local file (or, for a directory, a directory) whose content is wanted.
    source: Option<PathBuf>,
    /// Permission bits (0o7777 at most); None: mode is not managed.
    mode: Option<u32>,
    /// User name or numeric uid; None: not managed.
    owner: Option<String>,
    /// Group name or numeric gid; None: not managed.
    group: Option<String>,
    state: State,
    recurse: bool,
    purge: bool,
}

// By hand: paths compare as bytes (Path's own == walks components, which dominates a
// 10k-resource graph swap), then everything else.
impl PartialEq for Spec {
    fn eq(&self, o: &Spec) -> bool {
        self.path.as_os_str() == o.path.as_os_str()
            && self.dir == o.dir
            && self.content == o.content
            && self.source.as_ref().map(|p| p.as_os_str())
                == o.source.as_ref().map(|p| p.as_os_str())
            && self.mode == o.mode
            && self.owner == o.owner
            && self.group == o.group
            && self.state == o.state
            && self.recurse == o.recurse
            && self.purge == o.purge
    }
}

impl Eq for Spec {}

/// A managed file.
pub struct File {
    id: String,
    // Shared with the blocking thread each check runs on.
    spec: Arc<Spec>,
    /// For a directory that does not exist yet when the watch starts: what the first check
    /// that creates it needs to add the watch on its entries. Tied to the watch's guard.
    late: Mutex<Option<Late>>,
}

struct Late {
    hub: Arc<FileHub>,
    poke: Poke,
    slot: Weak<Mutex<Option<WatchGuard>>>,
}

pub(crate) fn build(
    id: String,
    name: &str,
    fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    let dir = name.ends_with('/');
    let path = PathBuf::from(name.trim_end_matches('/'));
    if !path.is_absolute() {
        return Err(fields.invalid("name", format!("`{name}` is not an absolute path")));
    }
    if path.file_name().is_none() || path.components().any(|c| c == Component::ParentDir) {
        return Err(fields.invalid(
            "name",
            format!("`{name}` must name a file or a directory below / (no `..`)"),
        ));
    }
    let content = fields.opt_str("content")?.map(String::into_bytes);
    let source = match fields.opt_str("source")? {
        None => None,
        Some(s) if Path::new(&s).is_absolute() => Some(PathBuf::from(s.trim_end_matches('/'))),
        Some(s) => return Err(fields.invalid("source", format!("`{s}` is not an absolute path"))),
    };
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
    let owner = fields.opt_str("owner")?;
    let group = fields.opt_str("group")?;
    for (field, v) in [("owner", &owner), ("group", &group)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.contains('\0')) {
            return Err(fields.invalid(field, "must be a name or a numeric id"));
        }
    }
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
    let flag = |fields: &mut Fields, field: &str| -> Result<bool, GraphError> {
        match fields.opt_value(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(fields.invalid(
                field,
                format!("expected true or false, got {}", type_name(&other)),
            )),
        }
    };
    let recurse = flag(fields, "recurse")?;
    let purge = flag(fields, "purge")?;
    if content.is_some() && source.is_some() {
        return Err(fields.invalid("source", "cannot be set together with `content`"));
    }
    if dir && content.is_some() {
        return Err(fields.invalid("content", "a directory (name ending in `/`) has no content"));
    }
    if !dir {
        for (field, set) in [("recurse", recurse), ("purge", purge)] {
            if set {
                return Err(fields.invalid(field, "only for a directory (name ending in `/`)"));
            }
        }
    }
    if purge && source.is_none() {
        return Err(fields.invalid("purge", "needs a `source` directory to purge against"));
    }
    if state == State::Absent {
        for (field, set) in [
            ("content", content.is_some()),
            ("source", source.is_some()),
            ("mode", mode.is_some()),
            ("owner", owner.is_some()),
            ("group", group.is_some()),
        ] {
            if set {
                return Err(fields.invalid(field, "cannot be set when state is `absent`"));
            }
        }
    }
    Ok(Arc::new(File {
        id,
        spec: Arc::new(Spec {
            path,
            dir,
            content,
            source,
            mode,
            owner,
            group,
            state,
            recurse,
            purge,
        }),
        late: Mutex::new(None),
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
        let spec = &self.spec;
        let hub = ctx.files();
        let mut guards = vec![hub.subscribe(&spec.path, poke.clone())?];
        if let Some(source) = &spec.source {
            guards.push(hub.subscribe(source, poke.clone())?);
            if spec.dir {
                guards.push(hub.subscribe_dir(source, poke.clone())?);
            }
        }
        let slot: Arc<Mutex<Option<WatchGuard>>> = Arc::default();
        if spec.dir && spec.state == State::Exists {
            if spec.path.is_dir() {
                guards.push(hub.subscribe_dir(&spec.path, poke)?);
            } else {
                *self.late.lock().unwrap_or_else(PoisonError::into_inner) = Some(Late {
                    hub: Arc::clone(hub),
                    poke,
                    slot: Arc::downgrade(&slot),
                });
            }
        }
        Ok(Some(WatchGuard::new((guards, slot))))
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        let apply = ctx.apply;
        // A received content takes the place of the written one.
        let spec = match ctx.recv.get("content") {
            Some(Value::String(content)) => Arc::new(Spec {
                content: Some(content.clone().into_bytes()),
                source: None,
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
        let outcome = tokio::task::spawn_blocking(move || check_apply(&spec, apply))
            .await
            .map_err(|e| ResourceError::Failed(format!("file check panicked: {e}")))??;
        self.watch_entries_late();
        Ok(outcome)
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

    /// Its parent directory, and its own path (so a `pkg` that owns the file, or an `exec`
    /// that `creates` it, runs first).
    fn needs(&self) -> Vec<PathBuf> {
        let parent = self.spec.path.parent().map(Path::to_path_buf);
        parent.into_iter().chain([self.spec.path.clone()]).collect()
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("id", &self.id)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl File {
    /// A directory created by a check gets the watch on its entries now.
    fn watch_entries_late(&self) {
        let mut late = self.late.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(l) = late.as_ref() else { return };
        let Some(slot) = l.slot.upgrade() else {
            // The watch ended; nothing to add to.
            *late = None;
            return;
        };
        if !self.spec.path.is_dir() {
            return;
        }
        match l.hub.subscribe_dir(&self.spec.path, l.poke.clone()) {
            Ok(guard) => {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
                *late = None;
            }
            Err(e) => tracing::warn!(id = %self.id, error = %e, "cannot watch directory entries"),
        }
    }
}

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

fn check_apply(spec: &Spec, apply: bool) -> Result<Outcome, ResourceError> {
    let mut diff = Diff {
        apply,
        differs: false,
    };
    match (spec.state, spec.dir) {
        (State::Absent, _) => check_absent(spec, &mut diff)?,
        (State::Exists, false) => check_file(spec, &mut diff)?,
        (State::Exists, true) => check_dir(spec, &mut diff)?,
    }
    Ok(diff.outcome())
}

fn check_absent(spec: &Spec, diff: &mut Diff) -> Result<(), ResourceError> {
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

fn check_file(spec: &Spec, diff: &mut Diff) -> Result<(), ResourceError> {
    let path = &spec.path;
    let shown = path.display();
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
                && fs::read(path).map_err(|e| ResourceError::io(format!("read {shown}"), e))?
                    == want
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
            atomic_write(path, want.unwrap_or_default(), spec.mode.or(current_mode))
                .map_err(|e| ResourceError::io(format!("write {shown}"), e))?;
        } else if let Some(mode) = spec.mode {
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(|e| ResourceError::io(format!("chmod {shown}"), e))?;
        }
    }
    check_owner(spec, path, diff)
}

fn check_dir(spec: &Spec, diff: &mut Diff) -> Result<(), ResourceError> {
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
fn mirror(src: &Path, dst: &Path, spec: &Spec, diff: &mut Diff) -> Result<(), ResourceError> {
    let list = |dir: &Path| -> Result<Vec<OsString>, ResourceError> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(|e| ResourceError::io(format!("list {}", dir.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| !n.to_string_lossy().starts_with(".reflex-tmp"))
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
fn check_owner(spec: &Spec, path: &Path, diff: &mut Diff) -> Result<(), ResourceError> {
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

fn resolve_user(name: &str) -> Result<u32, ResourceError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    lookup(name, false).ok_or_else(|| ResourceError::Failed(format!("no such user `{name}`")))
}

fn resolve_group(name: &str) -> Result<u32, ResourceError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    lookup(name, true).ok_or_else(|| ResourceError::Failed(format!("no such group `{name}`")))
}

/// uid of user `name` or gid of group `name`, from the system's databases.
fn lookup(name: &str, group: bool) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is valid for the call; the *_r functions write only into the
    // struct and `buf` (whose length they are told) and set `result` to null or the struct.
    unsafe {
        if group {
            let mut grp: libc::group = std::mem::zeroed();
            let mut result: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
        } else {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
        }
    }
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
            dir: false,
            content: content.map(|c| c.as_bytes().to_vec()),
            source: None,
            mode,
            owner: None,
            group: None,
            state,
            recurse: false,
            purge: false,
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
