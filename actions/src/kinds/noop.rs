//! `noop`: always converged. A marker, or a join point for edges.

use async_trait::async_trait;

use crate::error::ResourceError;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// A resource with no real state.
#[derive(Debug)]
pub struct Noop;

#[async_trait]
impl Resource for Noop {
    fn watch(&self, _ctx: &WatchCtx, _poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        Ok(None)
    }

    async fn check_apply(&self, _ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        Ok(Outcome::Converged)
    }
}
