//! The contract every resource kind must keep, as a reusable check (mgmt's resource tests).
//!
//! [`check`] takes one resource map (the graph schema) and verifies, on the real system:
//! 1. its first check runs although its watch sent nothing (the engine guarantees it) and
//!    succeeds;
//! 2. a second check after converging reports `Converged`;
//! 3. compare is reflexive: the resource equals itself and a second build of the same map.

use std::time::Duration;

use serde_json::Value;

use crate::engine::{Engine, RunOptions};
use crate::graph::Graph;
use crate::resource::{ApplyCtx, Outcome};

/// Run the contract on `resource` (one resource map). `Err` says which part failed.
pub async fn check(resource: Value) -> Result<(), String> {
    let one = serde_json::json!([resource]);
    let build = || Graph::from_value(&one).map_err(|e| format!("invalid: {e}"));
    let (a, b) = (build()?, build()?);
    let (ra, rb) = (a.nodes[0].clone(), b.nodes[0].clone());
    if !ra.compare(&*ra) {
        return Err(format!("{}: compare is not reflexive", ra.id()));
    }
    if !ra.compare(&*rb) || !rb.compare(&*ra) {
        return Err(format!(
            "{}: two builds of one map compare unequal",
            ra.id()
        ));
    }
    let engine = Engine::new().map_err(|e| e.to_string())?;
    let mut running = engine.run(a, RunOptions::default());
    let report = tokio::time::timeout(Duration::from_secs(30), running.first_report())
        .await
        .map_err(|_| format!("{}: the first check never ran", ra.id()))?;
    if !report.ok {
        return Err(format!("first check failed: {:?}", report.errors));
    }
    running.stop().await;
    match ra.check_apply(&ApplyCtx::new(true)).await {
        Ok(Outcome::Converged) => Ok(()),
        other => Err(format!(
            "{}: second check after converging gave {other:?}, not Converged",
            ra.id()
        )),
    }
}
