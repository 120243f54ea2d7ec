//! Refresh notifications along `notify: true` edges, and pending refreshes that survive a
//! restart (the hysteresis of mgmt's design: a refresh sent and not consumed must survive a
//! crash).

mod util;

use std::fs;

use engine::{Engine, RunOptions};
use serde_json::{json, Value};
use util::*;

fn chain(
    conf: &std::path::Path,
    log: &std::path::Path,
    gate: Option<&std::path::Path>,
    notify: bool,
) -> Value {
    let run = match gate {
        Some(g) => format!("test -f '{}' && echo ran >> '{}'", p(g), p(log)),
        None => format!("echo ran >> '{}'", p(log)),
    };
    json!({
        "resources": [
            {"kind": "file", "name": p(conf), "content": "v1\n"},
            {"kind": "exec", "name": "reload", "cmd": run, "refresh_only": true},
        ],
        "edges": [{"from": file_id(conf), "to": "exec:reload", "notify": notify}],
    })
}

fn runs(log: &std::path::Path) -> usize {
    read(log).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_upstream_refreshes_downstream_once_per_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (conf, log) = (dir.path().join("app.conf"), dir.path().join("log"));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(graph(chain(&conf, &log, None, true)), RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    eventually("refresh_only exec ran after the file was created", || {
        runs(&log) == 1
    })
    .await;

    fs::write(&conf, "tampered\n").expect("drift");
    eventually("ran again after the repair", || runs(&log) == 2).await;
    running
        .converged(std::time::Duration::from_millis(300))
        .await;
    assert_eq!(runs(&log), 2, "a refresh must be consumed once");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_a_refresh_only_exec_never_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (conf, log) = (dir.path().join("app.conf"), dir.path().join("log"));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(
        graph(chain(&conf, &log, None, false)),
        RunOptions::default(),
    );
    let report = running.first_report().await;
    assert_eq!(report.changed, [file_id(&conf)]);
    running
        .converged(std::time::Duration::from_millis(200))
        .await;
    assert_eq!(runs(&log), 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconsumed_refresh_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (conf, log, gate) = (
        dir.path().join("app.conf"),
        dir.path().join("log"),
        dir.path().join("gate"),
    );
    let opts = RunOptions {
        state_dir: Some(state.clone()),
        ..Default::default()
    };
    let engine = Engine::new().expect("engine");
    let g = || graph(chain(&conf, &log, Some(&gate), true));
    let mut running = engine.run(g(), opts.clone());
    let report = running.first_report().await;
    // The file changed, so a refresh was sent; the exec failed, so it is still pending.
    assert_eq!(report.changed, [file_id(&conf)]);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(
        fs::read_dir(state.join("refresh"))
            .expect("refresh dir")
            .count(),
        1
    );
    running.stop().await;

    // Next run: the file is already right (no new refresh), but the pending one is applied.
    fs::write(&gate, "").expect("open the gate");
    let mut running = engine.run(g(), opts.clone());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.changed, ["exec:reload"]);
    assert_eq!(runs(&log), 1);
    assert_eq!(
        fs::read_dir(state.join("refresh"))
            .expect("refresh dir")
            .count(),
        0
    );
    running.stop().await;

    // And once consumed, it is gone for good.
    let mut running = engine.run(g(), opts);
    let report = running.first_report().await;
    assert!(report.ok && report.changed.is_empty(), "{report:?}");
    assert_eq!(runs(&log), 1);
    running.stop().await;
}
