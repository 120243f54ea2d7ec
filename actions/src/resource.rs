//! The one interface every resource kind implements, and the small types it is handed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::error::ResourceError;
use crate::hub::FileHub;

/// What one check-apply found (and did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Real state already matched desired state; nothing was done.
    Converged,
    /// Real state differed and was fixed.
    Changed,
    /// Real state differs; noop mode, so nothing was done.
    WouldChange,
}

/// One resource kind's implementation of desired state (mgmt's Res interface, trimmed).
/// What it should be, and so whether two resources are the same, is its spec's business
/// (`graph::Spec`); this is only how it gets there.
#[async_trait]
pub trait Resource: Send + Sync + 'static {
    /// Start watching real state; call `poke.poke()` whenever it may have drifted. Returns a
    /// guard whose Drop stops the watch. Kinds with nothing to watch return `Ok(None)`.
    fn watch(&self, ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError>;

    /// Check the real state and, when `ctx.apply`, fix it. `ctx.refresh` is set when an
    /// upstream resource changed something along a `notify: true` edge.
    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError>;

    /// The values it sends now; read by the engine after this resource succeeded.
    fn sent(&self) -> Option<Map<String, Value>> {
        None
    }

    /// After a change: a message for whoever runs the engine (`msg` uses it).
    fn message(&self) -> Option<String> {
        None
    }
}

/// What the engine hands one check-apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyCtx {
    /// False in noop mode (`--noop` or `meta.noop`): check only, change nothing.
    pub apply: bool,
    /// An upstream resource changed something along a `notify: true` edge and that refresh
    /// was not consumed yet. The engine clears it once a check-apply with `apply` succeeds.
    pub refresh: bool,
    /// Received values by field (send/recv); they take the place of the field's own value.
    pub recv: Map<String, Value>,
    /// Where the graph keeps state across restarts (`RunOptions::state_dir`), if anywhere.
    pub state_dir: Option<PathBuf>,
    /// The node's own watch on the shared file hub, which its own writes are announced to
    /// (see [`FileHub::own_rename`]); `None` outside an engine.
    pub own: Option<OwnWrites>,
}

/// What a check tells of its own writes: the hub, and the poke that must not wake for them.
#[derive(Clone)]
pub struct OwnWrites {
    pub(crate) hub: Arc<FileHub>,
    pub(crate) poke: Poke,
}

impl std::fmt::Debug for OwnWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnWrites")
            .field("poke", &self.poke.key())
            .finish_non_exhaustive()
    }
}

/// The same hub and the same node's poke.
impl PartialEq for OwnWrites {
    fn eq(&self, other: &OwnWrites) -> bool {
        Arc::ptr_eq(&self.hub, &other.hub) && self.poke.key() == other.poke.key()
    }
}

impl Eq for OwnWrites {}

impl OwnWrites {
    /// `tmp` is about to be renamed over `target`.
    pub fn before_rename(&self, tmp: &Path, target: &Path) {
        self.hub.own_rename(tmp, target, &self.poke);
    }

    /// The rename told of with [`OwnWrites::before_rename`] failed.
    pub fn rename_failed(&self, tmp: &Path) {
        self.hub.own_rename_failed(tmp);
    }
}

impl ApplyCtx {
    /// A plain check (no refresh pending, nothing received).
    pub fn new(apply: bool) -> ApplyCtx {
        ApplyCtx {
            apply,
            refresh: false,
            recv: Map::new(),
            state_dir: None,
            own: None,
        }
    }
}

/// A wake-up for one resource task: "real state may have drifted, check again".
///
/// Pokes coalesce: any number of them while a check is pending make a single re-check, and
/// `poke` never blocks (it is called from the inotify thread). One small allocation a
/// resource: there may be tens of thousands of them.
#[derive(Debug, Clone)]
pub struct Poke(Arc<Notify>);

/// The receiving end of a [`Poke`], which its task waits on.
#[derive(Debug)]
pub struct Poked(Arc<Notify>);

impl Poke {
    /// A poke and the receiving end its task waits on.
    pub fn channel() -> (Poke, Poked) {
        let n = Arc::new(Notify::new());
        (Poke(Arc::clone(&n)), Poked(n))
    }

    /// Ask for a re-check. Never blocks; a re-check already pending absorbs it.
    pub fn poke(&self) {
        self.0.notify_one();
    }

    /// The same for every clone of one poke, and different between pokes.
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl Poked {
    /// Resolves once poked since the last `recv` (or `clear`). Cancel-safe.
    pub async fn recv(&mut self) {
        self.0.notified().await;
    }

    /// Whether it was poked since the last `recv`, taking that poke.
    pub fn try_recv(&mut self) -> bool {
        std::pin::pin!(self.0.notified()).enable()
    }

    /// Forget a pending poke.
    pub fn clear(&mut self) {
        self.try_recv();
    }
}

/// Keeps a watch alive; dropping it stops the watch.
pub struct WatchGuard {
    _inner: Box<dyn Send>,
}

impl WatchGuard {
    /// Wrap anything whose Drop ends a watch.
    pub fn new<T: Send + 'static>(inner: T) -> WatchGuard {
        WatchGuard {
            _inner: Box::new(inner),
        }
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchGuard")
    }
}

/// A spawned task that ends when its handle is dropped: a watch's background task tied to
/// its [`WatchGuard`], or a check-apply cut off by a stop.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the engine lends a resource to set up its watch: the shared watchers.
#[derive(Clone)]
pub struct WatchCtx {
    files: Arc<FileHub>,
}

impl WatchCtx {
    pub(crate) fn new(files: Arc<FileHub>) -> WatchCtx {
        WatchCtx { files }
    }

    /// The engine-wide inotify hub; subscribe to exact file paths on it.
    pub fn files(&self) -> &Arc<FileHub> {
        &self.files
    }
}
