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

mod check;

use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use graph::kinds::{FileSpec, FileState};
use graph::type_name;
use serde_json::Value;

use crate::error::ResourceError;
use crate::hub::FileHub;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// The largest content a check reads on the engine's own thread (see `check_apply`).
const INLINE_MAX: usize = 16 << 10;

/// A managed file.
pub struct File {
    // Shared with the blocking thread each check runs on.
    spec: Arc<FileSpec>,
    /// For a directory that does not exist yet when the watch starts: what the first check
    /// that creates it needs to add the watch on its entries. Tied to the watch's guard.
    late: Mutex<Option<Late>>,
}

struct Late {
    hub: Arc<FileHub>,
    poke: Poke,
    slot: Weak<Mutex<Option<WatchGuard>>>,
}

#[async_trait]
impl Resource for File {
    fn watch(&self, ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        let spec = &self.spec;
        let hub = ctx.files();
        if spec.source.is_none() && !spec.dir {
            // A plain file, the common case: its one subscription is the whole watch.
            return Ok(Some(hub.subscribe(&spec.path, poke)?));
        }
        let mut guards = vec![hub.subscribe(&spec.path, poke.clone())?];
        if let Some(source) = &spec.source {
            guards.push(hub.subscribe(source, poke.clone())?);
            if spec.dir {
                guards.push(hub.subscribe_dir(source, poke.clone())?);
            }
        }
        let slot: Arc<Mutex<Option<WatchGuard>>> = Arc::default();
        if spec.dir && spec.state == FileState::Exists {
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
            Some(Value::String(content)) => Arc::new(FileSpec {
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
        // A small file with its content given is looked at here first, read-only: most checks
        // find it right (the poke our own write's rename causes, a repair's second look), and
        // then a blocking thread's round trip (two wake-ups) would cost more than the stat and
        // the read of a few KiB from the page cache. Anything to fix, or to read at length, goes
        // to a blocking thread.
        if spec.source.is_none()
            && !spec.dir
            && spec.content.as_ref().is_some_and(|c| c.len() <= INLINE_MAX)
            && matches!(
                check::check_apply(&spec, false, None),
                Ok(Outcome::Converged)
            )
        {
            return Ok(Outcome::Converged);
        }
        let own = ctx.own.clone();
        let outcome =
            tokio::task::spawn_blocking(move || check::check_apply(&spec, apply, own.as_ref()))
                .await
                .map_err(|e| ResourceError::Failed(format!("file check panicked: {e}")))??;
        self.watch_entries_late();
        Ok(outcome)
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl File {
    /// The file `spec` describes.
    pub fn new(spec: Arc<FileSpec>) -> File {
        File {
            spec,
            late: Mutex::new(None),
        }
    }

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
            Err(e) => {
                tracing::warn!(id = %self.spec.id, error = %e, "cannot watch directory entries")
            }
        }
    }
}
