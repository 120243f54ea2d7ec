//! Pending refreshes kept on disk. mgmt's design gives refreshes hysteresis: a refresh sent
//! along a `notify` edge and not yet consumed by a successful apply must survive a crash or
//! a restart, or the change it stands for (a config written, a restart owed) is lost. Each
//! pending refresh is one empty file, `<state_dir>/refresh/<hex of the id>`.

use std::path::{Path, PathBuf};

use super::Shared;
use crate::os::hex;

impl Shared {
    fn refresh_file(&self, id: &str) -> Option<PathBuf> {
        // Made when needed rather than kept: every graph in force holds a `Shared`.
        (self.state_dir.as_ref()).map(|d| d.join("refresh").join(hex(id)))
    }

    /// A refresh for `id` was left pending by an earlier run.
    pub(super) fn refresh_pending_on_disk(&self, id: &str) -> bool {
        self.refresh_file(id).is_some_and(|f| f.exists())
    }

    /// Mirror a node's pending refresh on disk (nothing without a state dir).
    pub(super) fn persist_refresh(&self, id: &str, pending: bool) {
        let Some(file) = self.refresh_file(id) else {
            return;
        };
        let result = if pending {
            file.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| write_synced(&file))
        } else {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        if let Err(e) = result {
            tracing::warn!(%id, file = %file.display(), error = %e, "cannot persist pending refresh");
        }
    }
}

fn write_synced(file: &Path) -> std::io::Result<()> {
    let f = std::fs::File::create(file)?;
    f.sync_all()
}
