//! Error types of the engine: one for starting it, one for a resource at run time.

use thiserror::Error;

/// The engine could not start.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The shared inotify watcher could not be created (e.g. the per-user instance limit,
    /// `fs.inotify.max_user_instances`, is reached).
    #[error("cannot start the file watcher: {0}")]
    Watcher(#[from] notify::Error),
}

/// A resource failed to watch or to check/apply its state.
#[derive(Debug, Error)]
pub enum ResourceError {
    /// An I/O operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `read /etc/motd`.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Any other failure, already phrased for a human.
    #[error("{0}")]
    Failed(String),
}

impl ResourceError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ResourceError::Io {
            context: context.into(),
            source,
        }
    }
}
