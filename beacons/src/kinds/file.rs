//! `beacon/file`: files created, modified, deleted or moved, the moment it happens (inotify).
//!
//! `paths = ["/etc/nginx", "/etc/hosts"]`: a directory is watched for what happens in it
//! (`recursive = true` for its whole tree), a file for what happens to it (through its
//! directory, so a file that is deleted and made again stays watched). Each happening is one
//! event: `{path, op}` with op `created`, `modified` (written and closed), `deleted` or `moved`
//! (`from` the old path; `direction = "out"` / `"in"` when only one side is watched).
//! `ops = ["deleted"]` keeps only some. A watched path that does not exist is reported as a
//! failure, and watched as soon as it appears (checked every interval, 10 s by default).

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::{obj, Beacon, Out, Waker};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `file` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults::happenings(Duration::from_secs(10));

const OPS: &[&str] = &["created", "modified", "deleted", "moved"];

/// The `file` beacon: files created, modified, deleted or moved.
pub struct File {
    paths: Vec<PathBuf>,
    recursive: bool,
    ops: Option<HashSet<String>>,
    watcher: Option<notify::RecommendedWatcher>,
    queue: Arc<Mutex<Vec<notify::Event>>>,
    /// What is being watched: configured path -> the path the watch is on.
    watched: BTreeMap<PathBuf, PathBuf>,
}

impl File {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<File, ConfigError> {
        let paths = f
            .strings("paths")?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| f.missing("paths", "the files or directories to watch"))?;
        if let Some(p) = paths.iter().find(|p| !Path::new(p).is_absolute()) {
            return Err(f.error("paths", format!("{p:?} is not an absolute path")));
        }
        let recursive = f.bool("recursive")?.unwrap_or(false);
        let ops = match f.strings("ops")? {
            None => None,
            Some(list) => {
                if let Some(bad) = list.iter().find(|o| !OPS.contains(&o.as_str())) {
                    return Err(f.error("ops", format!("{bad:?} is not one of {}", OPS.join(", "))));
                }
                Some(list.into_iter().collect())
            }
        };
        Ok(File::new(
            paths.into_iter().map(PathBuf::from).collect(),
            recursive,
            ops,
        ))
    }

    /// Watch `paths` (their trees when `recursive`), reporting the operations in `ops` (all
    /// when None).
    pub fn new(paths: Vec<PathBuf>, recursive: bool, ops: Option<HashSet<String>>) -> File {
        File {
            paths,
            recursive,
            ops,
            watcher: None,
            queue: Arc::default(),
            watched: BTreeMap::new(),
        }
    }

    /// Watch every configured path not watched yet; report those that cannot be.
    fn watch_missing(&mut self, out: &mut Out) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        // A watched directory that vanished loses its watch: forget it, to re-add it later. A
        // path watched through its parent while missing that is now a directory is watched
        // as one.
        self.watched
            .retain(|cfg, on| on.exists() && ((cfg == on) == cfg.is_dir()));
        for p in &self.paths {
            if self.watched.contains_key(p) {
                continue;
            }
            let (on, mode) = if p.is_dir() {
                let mode = if self.recursive {
                    RecursiveMode::Recursive
                } else {
                    RecursiveMode::NonRecursive
                };
                (p.clone(), mode)
            } else {
                // A file (or one yet to come) is watched through its directory.
                match p.parent() {
                    Some(dir) if dir.is_dir() => (dir.to_path_buf(), RecursiveMode::NonRecursive),
                    _ => {
                        out.problem(
                            p.display().to_string(),
                            format!("{} does not exist", p.display()),
                        );
                        continue;
                    }
                }
            };
            match w.watch(&on, mode) {
                Ok(()) => {
                    self.watched.insert(p.clone(), on);
                }
                Err(e) => out.problem(
                    p.display().to_string(),
                    format!("cannot watch {}: {e}", p.display()),
                ),
            }
            if !p.exists() {
                // Watched for its creation, but say that it is not there.
                out.problem(
                    p.display().to_string(),
                    format!("{} does not exist", p.display()),
                );
            }
        }
        for p in &self.paths {
            if self.watched.contains_key(p) && !p.exists() {
                let subject = p.display().to_string();
                if !out.problems.iter().any(|(s, _)| *s == subject) {
                    out.problem(subject, format!("{} does not exist", p.display()));
                }
            }
        }
    }

    /// Whether a happening at `path` is one the config asked for.
    fn wanted(&self, path: &Path) -> bool {
        self.paths.iter().any(|p| {
            if p == path {
                return true;
            }
            match self.watched.get(p) {
                // A file watched through its directory: only that file.
                Some(on) if on != p => false,
                _ if self.recursive => path.starts_with(p),
                _ => path.parent() == Some(p.as_path()),
            }
        })
    }

    /// Turn raw notify events into happenings, merging the noise of one change.
    fn happenings(&self, raw: Vec<notify::Event>) -> Vec<Map<String, Value>> {
        let mut out: Vec<(String, String, Map<String, Value>)> = Vec::new();
        let pairs: HashSet<(PathBuf, PathBuf)> = raw
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                ) && e.paths.len() == 2
            })
            .map(|e| (e.paths[0].clone(), e.paths[1].clone()))
            .collect();
        for e in raw {
            let Some(path) = e.paths.last().cloned() else {
                continue;
            };
            let (op, mut data) = match e.kind {
                EventKind::Create(_) => ("created", Map::new()),
                EventKind::Remove(_) => ("deleted", Map::new()),
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => ("modified", Map::new()),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    let from = e.paths.first().cloned().unwrap_or_default();
                    if !self.wanted(&path) && !self.wanted(&from) {
                        continue;
                    }
                    ("moved", obj! {"from" => from.display().to_string()})
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    if pairs.iter().any(|(f, _)| *f == path) {
                        continue;
                    }
                    ("moved", obj! {"direction" => "out"})
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    if pairs.iter().any(|(_, t)| *t == path) {
                        continue;
                    }
                    ("moved", obj! {"direction" => "in"})
                }
                _ => continue,
            };
            if op != "moved" && !self.wanted(&path) {
                continue;
            }
            if self.ops.as_ref().is_some_and(|o| !o.contains(op)) {
                continue;
            }
            let p = path.display().to_string();
            // One change makes several inotify events: a file just created and written is
            // "created"; repeated writes before we look are one "modified".
            if op == "modified"
                && out
                    .iter()
                    .any(|(q, o, _)| *q == p && (o == "created" || o == "modified"))
            {
                continue;
            }
            data.insert("path".into(), p.clone().into());
            data.insert("op".into(), op.into());
            out.push((p, op.to_string(), data));
        }
        out.into_iter().map(|(_, _, d)| d).collect()
    }
}

impl Beacon for File {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn start(&mut self, waker: Waker) -> Result<(), String> {
        let queue = self.queue.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if let Ok(mut q) = queue.lock() {
                    q.push(ev);
                }
                waker.wake();
            }
        })
        .map_err(|e| format!("cannot start inotify: {e}"))?;
        self.watcher = Some(watcher);
        Ok(())
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let take = |q: &Arc<Mutex<Vec<notify::Event>>>| {
            q.lock()
                .map(|mut q| std::mem::take(&mut *q))
                .unwrap_or_default()
        };
        let mut raw = take(&self.queue);
        // The two halves of a rename can arrive a moment apart: wait that moment once, so a
        // move is one event rather than an "out" and an "in".
        if raw.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::Modify(ModifyKind::Name(RenameMode::From))
            )
        }) {
            std::thread::sleep(Duration::from_millis(20));
            raw.extend(take(&self.queue));
        }
        // A watched directory that was deleted takes its watch with it: forget it, so it is
        // watched again when it is made anew (even between two looks).
        for e in &raw {
            if matches!(e.kind, EventKind::Remove(_)) {
                for p in &e.paths {
                    let gone: Vec<PathBuf> = self
                        .watched
                        .iter()
                        .filter(|(cfg, on)| *cfg == p && *on == p)
                        .map(|(cfg, _)| cfg.clone())
                        .collect();
                    for cfg in gone {
                        self.watched.remove(&cfg);
                        if let Some(w) = self.watcher.as_mut() {
                            let _ = w.unwatch(&cfg);
                        }
                    }
                }
            }
        }
        for h in self.happenings(raw) {
            out.event(h);
        }
        self.watch_missing(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::wait_for;

    /// A started file beacon and a way to collect what it reports.
    struct Probe {
        f: File,
        got: Vec<Map<String, Value>>,
    }

    impl Probe {
        fn new(mut f: File) -> Probe {
            f.start(Waker::default()).unwrap();
            let mut p = Probe { f, got: Vec::new() };
            let mut out = Out::default();
            p.f.sample(&mut out).unwrap();
            p
        }

        fn problems(&mut self) -> Vec<(String, String)> {
            let mut out = Out::default();
            self.f.sample(&mut out).unwrap();
            self.got.extend(out.readings.into_iter().map(|r| r.data));
            out.problems
        }

        fn wait(&mut self, what: &str, path: &Path, op: &str) -> Map<String, Value> {
            let p = path.display().to_string();
            wait_for(what, || {
                self.problems();
                self.got
                    .iter()
                    .find(|d| d["path"] == p.as_str() && d["op"] == op)
                    .cloned()
            })
        }
    }

    #[test]
    fn created_modified_moved_deleted_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Probe::new(File::new(vec![dir.path().to_path_buf()], false, None));
        let a = dir.path().join("a.conf");
        std::fs::write(&a, "one").unwrap();
        p.wait("created", &a, "created");
        p.got.clear();
        std::fs::write(&a, "two").unwrap();
        p.wait("modified", &a, "modified");
        let b = dir.path().join("b.conf");
        std::fs::rename(&a, &b).unwrap();
        let moved = p.wait("moved", &b, "moved");
        assert_eq!(moved["from"], a.display().to_string());
        std::fs::remove_file(&b).unwrap();
        p.wait("deleted", &b, "deleted");
        // Not recursive: a file in a subdirectory is not reported.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), "x").unwrap();
        std::fs::write(dir.path().join("marker"), "m").unwrap();
        p.wait("the marker", &dir.path().join("marker"), "created");
        assert!(
            !p.got
                .iter()
                .any(|d| d["path"].as_str().unwrap_or("").contains("sub/x")),
            "{:?}",
            p.got
        );
    }

    #[test]
    fn a_single_file_survives_delete_and_recreate_and_a_missing_path_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("hosts");
        let missing = dir.path().join("nope/deeper");
        std::fs::write(&target, "x").unwrap();
        let mut p = Probe::new(File::new(
            vec![target.clone(), missing.clone()],
            false,
            None,
        ));
        let probs = p.problems();
        assert!(
            probs
                .iter()
                .any(|(s, m)| *s == missing.display().to_string() && m.contains("does not exist")),
            "{probs:?}"
        );
        // Another file in the same directory is not reported.
        std::fs::write(dir.path().join("other"), "o").unwrap();
        std::fs::remove_file(&target).unwrap();
        p.wait("deleted", &target, "deleted");
        std::fs::write(&target, "back").unwrap();
        p.wait("created again", &target, "created");
        assert!(!p
            .got
            .iter()
            .any(|d| d["path"].as_str().unwrap_or("").ends_with("/other")));
        // The missing directory appears: it is watched from then on and no longer a problem.
        std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
        let probs = p.problems();
        assert!(
            !probs
                .iter()
                .any(|(s, m)| *s == missing.display().to_string() && m.contains("cannot")),
            "{probs:?}"
        );
        std::fs::write(&missing, "now").unwrap();
        p.wait("the once-missing file", &missing, "created");
        assert!(p.problems().is_empty());
    }

    #[test]
    fn a_watched_directory_deleted_and_made_anew_is_watched_again() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let mut p = Probe::new(File::new(vec![dir.clone()], false, None));
        std::fs::remove_dir(&dir).unwrap();
        wait_for("the vanished directory to be a problem", || {
            p.problems()
                .iter()
                .any(|(_, m)| m.contains("does not exist"))
                .then_some(())
        });
        std::fs::create_dir(&dir).unwrap();
        assert!(p.problems().is_empty());
        let f = dir.join("again");
        std::fs::write(&f, "x").unwrap();
        p.wait("a file in the new directory", &f, "created");
    }

    #[test]
    fn recursive_and_op_filter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let ops = Some(["deleted".to_string()].into_iter().collect());
        let mut p = Probe::new(File::new(vec![dir.path().to_path_buf()], true, ops));
        let x = dir.path().join("sub/x");
        std::fs::write(&x, "x").unwrap();
        std::fs::remove_file(&x).unwrap();
        p.wait("deleted in the subdirectory", &x, "deleted");
        assert!(p.got.iter().all(|d| d["op"] == "deleted"), "{:?}", p.got);
    }
}
