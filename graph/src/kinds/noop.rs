//! `noop`: always converged. A marker, or a join point for edges.

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::Spec;

/// The kind name.
pub const KIND: &str = "noop";

/// A resource with no real state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoopSpec {
    /// `noop:name`.
    pub id: String,
}

pub(crate) fn parse(id: String, _name: &str, _fields: &mut Fields) -> Result<Spec, GraphError> {
    Ok(Spec::Noop(NoopSpec { id }))
}
