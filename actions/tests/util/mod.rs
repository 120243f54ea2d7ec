//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use engine::{EngineEvent, Running};
use graph::Graph;
use serde_json::Value;

/// Only for waiting; never a bound on how long something took.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn graph(v: Value) -> Graph {
    Graph::from_value(&v).expect("valid graph")
}

pub fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_string()
}

pub fn file_id(path: &Path) -> String {
    format!("file:{}", p(path))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Poll `ok` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Collect `Changed` events until every id in `want` was seen.
pub async fn expect_changed(running: &mut Running, want: &[String]) {
    let mut seen = HashSet::new();
    let start = Instant::now();
    while !want.iter().all(|id| seen.contains(id)) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, running.next_event()).await {
            Ok(Some(EngineEvent::Changed { id })) => {
                seen.insert(id);
            }
            Ok(Some(EngineEvent::Failed { id, error })) => panic!("{id} failed: {error}"),
            Ok(Some(EngineEvent::Message { .. })) => {}
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no Changed event for all of {want:?}; saw {seen:?}"),
        }
    }
}

/// `[start, end]` seconds pairs from files `<dir>/<name>.start` / `.end` written by `date`.
pub fn span(dir: &Path, name: &str) -> (f64, f64) {
    let t = |end: &str| -> f64 {
        let text = read(&dir.join(format!("{name}.{end}")));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("bad timestamp {text:?} for {name}.{end}: {e}"))
    };
    (t("start"), t("end"))
}

/// The largest number of spans overlapping at any instant.
pub fn max_overlap(spans: &[(f64, f64)]) -> usize {
    let mut points: Vec<(f64, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends before starts at the same instant: touching spans do not overlap.
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in points {
        now += d;
        max = max.max(now);
    }
    max as usize
}
