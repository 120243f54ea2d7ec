//! Why a graph was rejected.

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
