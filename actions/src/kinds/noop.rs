//! `noop`: always converged. A marker, or a join point for edges.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{GraphError, ResourceError};
use crate::fields::Fields;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// The kind name.
pub const KIND: &str = "noop";

/// A resource with no real state.
#[derive(Debug)]
pub struct Noop {
    id: String,
}

pub(crate) fn build(
    id: String,
    _name: &str,
    _fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    Ok(Arc::new(Noop { id }))
}

#[async_trait]
impl Resource for Noop {
    fn id(&self) -> &str {
        &self.id
    }

    fn watch(&self, _ctx: &WatchCtx, _poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        Ok(None)
    }

    async fn check_apply(&self, _ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        Ok(Outcome::Converged)
    }

    fn compare(&self, other: &dyn Resource) -> bool {
        other
            .as_any()
            .downcast_ref::<Noop>()
            .is_some_and(|o| o.id == self.id)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
