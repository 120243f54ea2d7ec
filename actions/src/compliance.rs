//! The contract every resource kind must keep, as a reusable check (mgmt's resource tests).
//!
//! [`check`] takes one resource map (the graph schema) and verifies, on the real system:
//! 1. its first check runs although its watch sent nothing (the engine guarantees it) and
//!    succeeds;
//! 2. a second check after converging reports `Converged`;
//! 3. equality is reflexive: the vertex equals itself and a second parse of the same map
//!    (what a graph swap relies on to keep it running).

use std::sync::Arc;
use std::time::Duration;

use graph::{Graph, Vertex};
use serde_json::Value;

use crate::engine::{Engine, RunOptions};
use crate::resource::{ApplyCtx, Outcome};

/// Run the contract on `resource` (one resource map). `Err` says which part failed.
pub async fn check(resource: Value) -> Result<(), String> {
    let one = serde_json::json!([resource]);
    let parse = || Graph::from_value(&one).map_err(|e| format!("invalid: {e}"));
    let (a, b) = (parse()?, parse()?);
    let (va, vb) = (&a.vertices()[0], &b.vertices()[0]);
    let id = va.id().to_string();
    // Through a function: the point is to exercise the (partly hand-written) PartialEq.
    let same = |x: &Vertex, y: &Vertex| x == y;
    if !same(va, va) {
        return Err(format!("{id}: equality is not reflexive"));
    }
    if !same(va, vb) || !same(vb, va) {
        return Err(format!("{id}: two parses of one map compare unequal"));
    }
    // The resource that runs is kept for the second check.
    let res = crate::kinds::build(&va.resource);
    let ran = Arc::clone(&res);
    let engine = Engine::new().map_err(|e| e.to_string())?;
    let mut running = engine.run_with(
        a,
        RunOptions::default(),
        Box::new(move |_| Arc::clone(&ran)),
    );
    let report = tokio::time::timeout(Duration::from_secs(30), running.first_report())
        .await
        .map_err(|_| format!("{id}: the first check never ran"))?;
    if !report.ok {
        return Err(format!("first check failed: {:?}", report.errors));
    }
    running.stop().await;
    match res.check_apply(&ApplyCtx::new(true)).await {
        Ok(Outcome::Converged) => Ok(()),
        other => Err(format!(
            "{id}: second check after converging gave {other:?}, not Converged"
        )),
    }
}
