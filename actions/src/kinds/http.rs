//! `http`: one request to a URL — a webhook, an alert, a deploy hook — with method, headers,
//! body and the expected status. Sent once per graph run and again on each refresh, so a
//! `notify` edge into an `http` is "call this when that changed". Sends the response's
//! `status` and `body`; can receive its `body`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use graph::kinds::HttpSpec;

use crate::error::ResourceError;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// Bytes of a response body kept (and sent).
const KEEP: u64 = 64 * 1024;
/// Per-request bound unless `meta.timeout` cuts it shorter.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to make.
#[derive(Debug)]
pub struct Http {
    spec: Arc<HttpSpec>,
    done: AtomicBool,
    last: Mutex<Option<(u16, String)>>,
}

impl Http {
    /// The request `spec` describes, not made yet.
    pub fn new(spec: HttpSpec) -> Http {
        Http {
            spec: Arc::new(spec),
            done: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Resource for Http {
    fn watch(&self, _ctx: &WatchCtx, _poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        Ok(None)
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        if self.done.load(Ordering::SeqCst) && !ctx.refresh {
            return Ok(Outcome::Converged);
        }
        if !ctx.apply {
            self.done.store(true, Ordering::SeqCst);
            return Ok(Outcome::WouldChange);
        }
        let spec = Arc::clone(&self.spec);
        let body = match ctx.recv.get("body") {
            Some(Value::String(b)) => Some(b.clone()),
            _ => spec.body.clone(),
        };
        let (status, text) = tokio::task::spawn_blocking(move || request(&spec, body))
            .await
            .map_err(|e| ResourceError::Failed(format!("http request panicked: {e}")))??;
        let ok = match self.spec.status {
            Some(want) => status == want,
            None => (200..300).contains(&status),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((status, text.clone()));
        if !ok {
            let want = self
                .spec
                .status
                .map_or("a 2xx".to_string(), |s| s.to_string());
            let quoted: String = text.chars().take(200).collect();
            return Err(ResourceError::Failed(format!(
                "{} {} answered {status}, expected {want}: {quoted}",
                self.spec.method, self.spec.url
            )));
        }
        self.done.store(true, Ordering::SeqCst);
        Ok(Outcome::Changed)
    }

    fn sent(&self) -> Option<Map<String, Value>> {
        let (status, body) = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let mut sent = Map::new();
        sent.insert("status".into(), Value::from(status));
        sent.insert("body".into(), Value::String(body));
        Some(sent)
    }
}

/// Make the request; (status, body text up to KEEP bytes).
fn request(spec: &HttpSpec, body: Option<String>) -> Result<(u16, String), ResourceError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // A 4xx/5xx is an answer to compare with `status`, not a transport error.
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method(spec.method.as_str())
        .uri(spec.url.as_str());
    for (k, v) in &spec.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let failed = |e: &dyn std::fmt::Display| {
        ResourceError::Failed(format!("{} {}: {e}", spec.method, spec.url))
    };
    let result = match body {
        Some(body) => agent.run(builder.body(body).map_err(|e| failed(&e))?),
        None => agent.run(builder.body(()).map_err(|e| failed(&e))?),
    };
    let mut response = result.map_err(|e| failed(&e))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(KEEP)
        .read_to_string()
        .unwrap_or_default();
    Ok((status, text))
}
