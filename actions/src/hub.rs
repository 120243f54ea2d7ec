//! The engine-wide file watcher: one inotify instance shared by every file resource.
//!
//! inotify instances are scarce (`fs.inotify.max_user_instances`, 128 by default) while a
//! graph can hold thousands of files, so the hub keeps ONE `notify` watcher, adds one
//! non-recursive watch per parent directory (ref-counted across subscribers), and dispatches
//! each event by exact path to the pokes subscribed to it. Watching the parent rather than
//! the file itself is what lets us see a file being created, deleted or replaced by rename.
//!
//! A check that fixes a file renames its temp file over it, and that rename is an event like
//! any other: the node that wrote would be poked to look again at what it just wrote (a
//! wake-up, a stat and a read per fix). So a write tells the hub its temp file first
//! ([`FileHub::own_rename`]), and the rename's events (inotify pairs `MOVED_FROM` of the temp
//! and `MOVED_TO` of the target by a cookie) poke every subscriber but the writer. Nothing
//! else is held back: any later change to the file is an event of its own.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::error::{EngineError, ResourceError};
use crate::resource::{Poke, WatchGuard};

/// Subscribers by parent directory, then by file name.
type Subscribers = HashMap<PathBuf, HashMap<OsString, Vec<(u64, Poke)>>>;

/// What the inotify thread routes by: the subscribers, and the renames our own checks make.
#[derive(Default)]
struct Routes {
    subs: Subscribers,
    /// Temp files about to be renamed over a watched file, with the poke of the node that
    /// wrote them (see [`Poke::key`]).
    own: HashMap<PathBuf, usize>,
    /// The rename of one of those in flight: its cookie and the writer's poke.
    moving: Option<(usize, usize)>,
}

/// The most own renames announced and not seen yet: past it they are forgotten (a watch
/// ended before its rename's event came), which costs only a needless re-check.
const OWN_MAX: usize = 4096;

/// The shared watcher. Obtain it from [`crate::WatchCtx::files`].
pub struct FileHub {
    // Two locks on purpose: the inotify thread takes only `subs` to dispatch, while
    // (un)subscribing holds `watches` across a blocking round trip to that same thread.
    // Holding both at once could deadlock, so no code path does.
    routes: Arc<Mutex<Routes>>,
    watches: Mutex<Watches>,
    next_id: AtomicU64,
}

struct Watches {
    watcher: RecommendedWatcher,
    /// Directory -> number of subscriptions in it.
    dirs: HashMap<PathBuf, usize>,
}

impl FileHub {
    pub(crate) fn new() -> Result<FileHub, EngineError> {
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let for_thread = Arc::clone(&routes);
        let watcher = notify::recommended_watcher(move |res| dispatch(&for_thread, res))?;
        Ok(FileHub {
            routes,
            watches: Mutex::new(Watches {
                watcher,
                dirs: HashMap::new(),
            }),
            next_id: AtomicU64::new(0),
        })
    }

    /// Poke `poke` whenever `path` (an absolute file path) may have changed: created,
    /// written, chmodded, deleted or renamed over. The parent directory must exist.
    pub fn subscribe(
        self: &Arc<Self>,
        path: &Path,
        poke: Poke,
    ) -> Result<WatchGuard, ResourceError> {
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) if path.is_absolute() => (dir.to_path_buf(), name.to_owned()),
            _ => {
                return Err(ResourceError::Failed(format!(
                    "cannot watch {}: not an absolute file path",
                    path.display()
                )))
            }
        };
        self.add(dir, name, poke)
    }

    /// Poke `poke` whenever anything directly inside directory `dir` (which must exist) is
    /// created, written, chmodded, deleted or renamed.
    pub fn subscribe_dir(
        self: &Arc<Self>,
        dir: &Path,
        poke: Poke,
    ) -> Result<WatchGuard, ResourceError> {
        if !dir.is_absolute() {
            return Err(ResourceError::Failed(format!(
                "cannot watch {}: not an absolute path",
                dir.display()
            )));
        }
        // The empty name is the wildcard: every event in `dir`.
        self.add(dir.to_path_buf(), OsString::new(), poke)
    }

    fn add(
        self: &Arc<Self>,
        dir: PathBuf,
        name: OsString,
        poke: Poke,
    ) -> Result<WatchGuard, ResourceError> {
        {
            let mut guard = lock(&self.watches);
            let watches = &mut *guard;
            let count = watches.dirs.get(&dir).copied().unwrap_or(0);
            if count == 0 {
                watches
                    .watcher
                    .watch(&dir, RecursiveMode::NonRecursive)
                    .map_err(|e| watch_error(&dir, e))?;
            }
            watches.dirs.insert(dir.clone(), count + 1);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.routes)
            .subs
            .entry(dir.clone())
            .or_default()
            .entry(name.clone())
            // Most files have one subscriber: not the four slots a first push makes room for.
            .or_insert_with(|| Vec::with_capacity(1))
            .push((id, poke));
        Ok(WatchGuard::new(Subscription {
            hub: Arc::clone(self),
            dir,
            name,
            id,
        }))
    }

    /// A check is about to rename `tmp` over `target`, which `poke`'s node watches: that
    /// rename must not poke it (it is the node's own fix), though it pokes anyone else.
    /// Without such a watch nothing is noted, since no event would come to consume it.
    pub fn own_rename(&self, tmp: &Path, target: &Path, poke: &Poke) {
        let mut routes = lock(&self.routes);
        let watched = (target.parent().zip(target.file_name()))
            .and_then(|(dir, name)| routes.subs.get(dir)?.get(name))
            .is_some_and(|list| list.iter().any(|(_, p)| p.key() == poke.key()));
        if !watched {
            return;
        }
        if routes.own.len() >= OWN_MAX {
            routes.own.clear();
        }
        routes.own.insert(tmp.to_path_buf(), poke.key());
    }

    /// The rename announced with [`FileHub::own_rename`] did not happen.
    pub fn own_rename_failed(&self, tmp: &Path) {
        lock(&self.routes).own.remove(tmp);
    }

    /// Number of directories currently watched (one inotify watch each).
    pub fn watched_dirs(&self) -> usize {
        lock(&self.watches).dirs.len()
    }
}

/// One subscription; dropping it unsubscribes and, for the last one in a directory, removes
/// the inotify watch.
struct Subscription {
    hub: Arc<FileHub>,
    dir: PathBuf,
    name: OsString,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut routes = lock(&self.hub.routes);
            let subs = &mut routes.subs;
            if let Some(files) = subs.get_mut(&self.dir) {
                if let Some(list) = files.get_mut(&self.name) {
                    list.retain(|(id, _)| *id != self.id);
                    if list.is_empty() {
                        files.remove(&self.name);
                    }
                }
                if files.is_empty() {
                    subs.remove(&self.dir);
                }
            }
        }
        let mut guard = lock(&self.hub.watches);
        let watches = &mut *guard;
        match watches.dirs.get_mut(&self.dir) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                watches.dirs.remove(&self.dir);
                // Fails only if inotify already dropped the watch (directory deleted).
                if let Err(e) = watches.watcher.unwatch(&self.dir) {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "unwatch");
                }
            }
            None => {}
        }
    }
}

/// Runs on the notify thread: route one event to the pokes subscribed to its paths.
fn dispatch(routes: &Mutex<Routes>, res: notify::Result<Event>) {
    let event = match res {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, "file watcher error");
            return;
        }
    };
    let mut routes = lock(routes);
    if event.need_rescan() {
        // The kernel queue overflowed: events were lost, so everyone re-checks.
        routes.own.clear();
        routes.moving = None;
        routes
            .subs
            .values()
            .flat_map(|files| files.values())
            .flatten()
            .for_each(|(_, poke)| poke.poke());
        return;
    }
    if !relevant(&event.kind) {
        return;
    }
    let skip = own_rename(&mut routes, &event);
    let dir_gone = matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    );
    let subs = &routes.subs;
    let poke = |(_, poke): &(u64, Poke)| {
        if Some(poke.key()) != skip {
            poke.poke();
        }
    };
    for path in &event.paths {
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            if let Some(files) = subs.get(dir) {
                for key in [name, OsStr::new("")] {
                    if let Some(list) = files.get(key) {
                        list.iter().for_each(poke);
                    }
                }
            }
        }
        // A watched directory itself was deleted or moved: all files in it are affected.
        if dir_gone {
            if let Some(files) = subs.get(path.as_path()) {
                files.values().flatten().for_each(poke);
            }
        }
    }
}

/// The poke not to wake for this event: the writer's, when the event is (one half of) the
/// rename of a temp file announced with [`FileHub::own_rename`].
fn own_rename(routes: &mut Routes, event: &Event) -> Option<usize> {
    let EventKind::Modify(ModifyKind::Name(mode)) = event.kind else {
        return None;
    };
    let cookie = event.attrs.tracker()?;
    match mode {
        RenameMode::From => {
            let key = routes.own.remove(event.paths.first()?)?;
            routes.moving = Some((cookie, key));
            Some(key)
        }
        RenameMode::To => routes.moving.filter(|m| m.0 == cookie).map(|m| m.1),
        // The pair, after its `To`: the last event of the rename.
        RenameMode::Both => routes.moving.take_if(|m| m.0 == cookie).map(|m| m.1),
        _ => None,
    }
}

/// Whether an event can mean the file's state changed. Opens and read-closes are dropped:
/// the engine's own checks read the file, and reacting to that would loop forever.
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

fn watch_error(dir: &Path, e: notify::Error) -> ResourceError {
    let reason = match e.kind {
        notify::ErrorKind::PathNotFound => "directory does not exist".to_string(),
        notify::ErrorKind::MaxFilesWatch => {
            "inotify watch limit reached (raise fs.inotify.max_user_watches)".to_string()
        }
        _ => e.to_string(),
    };
    ResourceError::Failed(format!("cannot watch {}: {reason}", dir.display()))
}

/// A poisoned lock only means another thread panicked mid-update of plain maps; the data
/// is still usable, and the hub must keep serving the other resources.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pokes_by_exact_path_and_refcounts_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Arc::new(FileHub::new().expect("hub"));
        let (poke_a, mut rx_a) = Poke::channel();
        let (poke_b, mut rx_b) = Poke::channel();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let guard_a = hub.subscribe(&a, poke_a).expect("subscribe a");
        let guard_b = hub.subscribe(&b, poke_b).expect("subscribe b");
        assert_eq!(hub.watched_dirs(), 1);

        std::fs::write(&a, "x").expect("write a");
        tokio::time::timeout(Duration::from_secs(5), rx_a.recv())
            .await
            .expect("a poked");
        // Let the rest of the burst for `a` arrive, then make sure `b` saw nothing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!rx_b.try_recv(), "b must not be poked for a");

        drop(guard_a);
        assert_eq!(hub.watched_dirs(), 1);
        drop(guard_b);
        assert_eq!(hub.watched_dirs(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_own_rename_pokes_everyone_but_its_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Arc::new(FileHub::new().expect("hub"));
        let f = dir.path().join("f");
        let (writer, mut writer_rx) = Poke::channel();
        let (other, mut other_rx) = Poke::channel();
        let _w = hub.subscribe(&f, writer.clone()).expect("subscribe writer");
        let _o = hub.subscribe(&f, other).expect("subscribe other");
        let own = crate::resource::OwnWrites {
            hub: Arc::clone(&hub),
            poke: writer,
        };
        let wait = Duration::from_secs(5);
        crate::os::atomic_write_own(&f, b"mine", None, Some(&own)).expect("write");
        tokio::time::timeout(wait, other_rx.recv())
            .await
            .expect("the other subscriber is poked");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !writer_rx.try_recv(),
            "the writer is not poked by its own rename"
        );
        assert!(
            lock(&hub.routes).own.is_empty(),
            "the announcement was consumed"
        );

        // Anything after it is someone else's change, and pokes the writer too; so does a
        // rename by the same code without the announcement.
        std::fs::write(&f, "theirs").expect("drift");
        tokio::time::timeout(wait, writer_rx.recv())
            .await
            .expect("the writer is poked by a drift after its write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer_rx.clear();
        crate::os::atomic_write(&f, b"unannounced", None).expect("write");
        tokio::time::timeout(wait, writer_rx.recv())
            .await
            .expect("an unannounced rename pokes the writer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_parent_is_a_clear_error() {
        let hub = Arc::new(FileHub::new().expect("hub"));
        let (poke, _rx) = Poke::channel();
        let err = hub
            .subscribe(Path::new("/nonexistent-reflex-dir/f"), poke)
            .expect_err("must fail");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert_eq!(hub.watched_dirs(), 0);
    }
}
