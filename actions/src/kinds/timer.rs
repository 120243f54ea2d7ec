//! `timer`: a change every `interval` seconds, to drive periodic work (notify an exec, poke a
//! dependent). The first check only starts the clock; each tick after that is one change.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{GraphError, ResourceError};
use crate::fields::Fields;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// The kind name.
pub const KIND: &str = "timer";

/// A periodic change.
#[derive(Debug)]
pub struct Timer {
    id: String,
    interval: Duration,
    /// Set by the clock, consumed by the next check.
    ticked: Arc<AtomicBool>,
}

pub(crate) fn build(
    id: String,
    _name: &str,
    fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    let Some(secs) = fields.opt_number("interval")? else {
        return Err(GraphError::MissingField {
            resource: id,
            field: "interval".into(),
        });
    };
    // Below 10 ms a timer is a busy loop, not periodic work.
    if !(0.01..=31_536_000.0).contains(&secs) {
        return Err(fields.invalid(
            "interval",
            format!("{secs} is not between 0.01 and 31536000 seconds"),
        ));
    }
    Ok(Arc::new(Timer {
        id,
        interval: Duration::from_secs_f64(secs),
        ticked: Arc::new(AtomicBool::new(false)),
    }))
}

/// Ends the clock task when the watch is dropped.
struct Clock(tokio::task::JoinHandle<()>);

impl Drop for Clock {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl Resource for Timer {
    fn id(&self) -> &str {
        &self.id
    }

    fn watch(&self, _ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        let (every, ticked) = (self.interval, Arc::clone(&self.ticked));
        let task = tokio::spawn(async move {
            let mut clock = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                clock.tick().await;
                ticked.store(true, Ordering::SeqCst);
                poke.poke();
            }
        });
        Ok(Some(WatchGuard::new(Clock(task))))
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

    fn compare(&self, other: &dyn Resource) -> bool {
        other
            .as_any()
            .downcast_ref::<Timer>()
            .is_some_and(|o| o.id == self.id && o.interval == self.interval)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
