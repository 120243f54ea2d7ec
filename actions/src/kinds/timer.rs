//! `timer`: a change every `interval` seconds, to drive periodic work (notify an exec, poke a
//! dependent). The first check only starts the clock; each tick after that is one change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use graph::kinds::TimerSpec;

use crate::error::ResourceError;
use crate::resource::{AbortOnDrop, ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// A periodic change.
#[derive(Debug)]
pub struct Timer {
    spec: TimerSpec,
    /// Set by the clock, consumed by the next check.
    ticked: Arc<AtomicBool>,
}

impl Timer {
    /// The timer `spec` describes; its clock starts with its watch.
    pub fn new(spec: TimerSpec) -> Timer {
        Timer {
            spec,
            ticked: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[async_trait]
impl Resource for Timer {
    fn watch(&self, _ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        let (every, ticked) = (self.spec.interval, Arc::clone(&self.ticked));
        let task = tokio::spawn(async move {
            let mut clock = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                clock.tick().await;
                ticked.store(true, Ordering::SeqCst);
                poke.poke();
            }
        });
        // Dropping the guard ends the clock.
        Ok(Some(WatchGuard::new(AbortOnDrop(task))))
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        if !self.ticked.swap(false, Ordering::SeqCst) {
            return Ok(Outcome::Converged);
        }
        Ok(if ctx.apply {
            Outcome::Changed
        } else {
            Outcome::WouldChange
        })
    }
}
