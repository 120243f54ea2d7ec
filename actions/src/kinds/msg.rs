//! `msg`: log a message and hand it to whoever runs the engine (the actor emits it as an
//! `actor/msg` event, `reflex apply` prints it). Sent once per graph run, and again on each
//! refresh — so a `notify` edge into a `msg` is an alert on change.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::error::{GraphError, ResourceError};
use crate::fields::Fields;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, ValueType, WatchCtx, WatchGuard};

/// The kind name.
pub const KIND: &str = "msg";

/// A message.
#[derive(Debug)]
pub struct Msg {
    id: String,
    body: String,
    sent: AtomicBool,
    /// What the last change said (the received body, if any).
    last: Mutex<Option<String>>,
}

pub(crate) fn build(
    id: String,
    _name: &str,
    fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    let body = fields.req_str("body")?;
    Ok(Arc::new(Msg {
        id,
        body,
        sent: AtomicBool::new(false),
        last: Mutex::new(None),
    }))
}

#[async_trait]
impl Resource for Msg {
    fn id(&self) -> &str {
        &self.id
    }

    fn watch(&self, _ctx: &WatchCtx, _poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        Ok(None)
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        if self.sent.load(Ordering::SeqCst) && !ctx.refresh {
            return Ok(Outcome::Converged);
        }
        self.sent.store(true, Ordering::SeqCst);
        if !ctx.apply {
            return Ok(Outcome::WouldChange);
        }
        let body = match ctx.recv.get("body").and_then(|v| v.as_str()) {
            Some(received) => received,
            None => &self.body,
        };
        tracing::info!(id = %self.id, body, "msg");
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(body.to_string());
        Ok(Outcome::Changed)
    }

    fn compare(&self, other: &dyn Resource) -> bool {
        other
            .as_any()
            .downcast_ref::<Msg>()
            .is_some_and(|o| o.id == self.id && o.body == self.body)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn receives(&self) -> &'static [(&'static str, ValueType)] {
        &[("body", ValueType::Str)]
    }

    fn message(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
