//! Error types: one for graph validation, one for the engine, one for a resource at run time.

use thiserror::Error;

/// Why a graph was rejected. Every variant names what is at fault: the resource (as
/// `kind:name`, or `resource #N`, 1-based, when it has no usable name), the field, the edge
/// or the cycle.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GraphError {
    /// The document is not a graph at all (wrong top-level shape, unknown top-level key).
    #[error("invalid graph: {0}")]
    Shape(String),
    /// The YAML text did not parse.
    #[error("invalid graph YAML: {0}")]
    Yaml(String),
    /// A resource entry is not a map.
    #[error("{resource}: not a map")]
    NotAMap {
        /// The resource at fault.
        resource: String,
    },
    /// A required field is missing (or null).
    #[error("{resource}: missing required field `{field}`")]
    MissingField {
        /// The resource at fault.
        resource: String,
        /// The field that is missing.
        field: String,
    },
    /// A field the resource kind does not know (usually a typo).
    #[error("{resource}: unknown field `{field}`")]
    UnknownField {
        /// The resource at fault.
        resource: String,
        /// The unknown field.
        field: String,
    },
    /// A field has the wrong type or an invalid value.
    #[error("{resource}: field `{field}`: {reason}")]
    InvalidField {
        /// The resource at fault.
        resource: String,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `kind` is not one the engine knows.
    #[error("{resource}: unknown kind `{kind}` (known kinds: {known})")]
    UnknownKind {
        /// The resource at fault.
        resource: String,
        /// The kind it asked for.
        kind: String,
        /// The kinds that exist, comma-separated.
        known: String,
    },
    /// Two resources share one id.
    #[error("duplicate resource id `{id}` (resources #{first} and #{second})")]
    DuplicateId {
        /// The id used twice.
        id: String,
        /// 1-based position of the first one.
        first: usize,
        /// 1-based position of the second one.
        second: usize,
    },
    /// An edge entry is malformed.
    #[error("edge #{index}: {reason}")]
    InvalidEdge {
        /// 1-based position of the edge.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An edge names a resource that is not in the graph.
    #[error("edge #{index}: `{end}` names `{id}`, which is not in the graph")]
    UnknownEdgeEnd {
        /// 1-based position of the edge.
        index: usize,
        /// `from` or `to`.
        end: &'static str,
        /// The id it names.
        id: String,
    },
    /// The edges form a cycle; `path` starts and ends with the same id.
    #[error("cycle: {}", .path.join(" -> "))]
    Cycle {
        /// The resources on the cycle, first repeated at the end.
        path: Vec<String>,
    },
}

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
