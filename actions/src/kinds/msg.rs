//! `msg`: log a message and hand it to whoever runs the engine (the actor emits it as an
//! `actor/msg` event, `reflex apply` prints it). Sent once per graph run, and again on each
//! refresh — so a `notify` edge into a `msg` is an alert on change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use graph::kinds::MsgSpec;

use crate::error::ResourceError;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// A message.
#[derive(Debug)]
pub struct Msg {
    spec: MsgSpec,
    sent: AtomicBool,
    /// What the last change said (the received body, if any).
    last: Mutex<Option<String>>,
}

impl Msg {
    /// The message `spec` describes, not sent yet.
    pub fn new(spec: MsgSpec) -> Msg {
        Msg {
            spec,
            sent: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Resource for Msg {
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
            None => &self.spec.body,
        };
        tracing::info!(id = %self.spec.id, body, "msg");
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(body.to_string());
        Ok(Outcome::Changed)
    }

    fn message(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
