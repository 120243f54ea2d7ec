//! Metaparams, handled by the engine for every kind: retry/delay, timeout, poll,
//! limit/burst, sema, noop — on real processes and files.

mod util;

use std::fs;
use std::time::Duration;

use engine::{Engine, RunOptions};
use serde_json::json;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_delay_until_success_and_gives_up_after_the_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = p(dir.path());
    // Fails until it has been tried three times; logs each attempt's time.
    let flaky = |name: &str, retry: i64| {
        json!({"kind": "exec", "name": name, "meta": {"retry": retry, "delay": 200},
               "cmd": format!("date +%s.%N >> '{d}/{name}.log'; \
                               test $(wc -l < '{d}/{name}.log') -ge 3")})
    };
    let g = graph(json!([
        flaky("twice", 2),
        flaky("once", 1),
        flaky("forever", -1)
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert_eq!(report.changed, ["exec:twice", "exec:forever"], "{report:?}");
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].starts_with("exec:once: exited with code 1"));
    let times = |name: &str| -> Vec<f64> {
        read(&dir.path().join(format!("{name}.log")))
            .lines()
            .map(|l| l.parse().expect("time"))
            .collect()
    };
    assert_eq!(times("twice").len(), 3);
    assert_eq!(times("once").len(), 2, "retry 1 = two attempts");
    assert_eq!(times("forever").len(), 3);
    for w in times("twice").windows(2) {
        assert!(
            w[1] - w[0] >= 0.19,
            "delay not kept between attempts: {w:?}"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cuts_a_check_apply_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("finished");
    let g = graph(json!([
        {"kind": "exec", "name": "slow", "meta": {"timeout": 200},
         "cmd": format!("sleep 3; touch '{}'", p(&marker))},
        {"kind": "noop", "name": "fine", "meta": {"timeout": 200}},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert_eq!(
        report.errors,
        ["exec:slow: check-apply timed out after 200 ms"]
    );
    running.stop().await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!marker.exists(), "the timed-out command was not killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_replaces_the_watch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("polled");
    let g = graph(json!([
        {"kind": "file", "name": p(&f), "content": "x\n", "meta": {"poll": 0.2}},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    assert!(running.first_report().await.ok);
    assert_eq!(
        running.watch_starts(),
        0,
        "a polled resource must not watch"
    );
    assert_eq!(engine.watched_dirs(), 0);
    fs::write(&f, "drift\n").expect("drift");
    eventually("repaired by polling", || read(&f) == "x\n").await;
    expect_changed(&mut running, &[file_id(&f)]).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_and_burst_rate_limit_check_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fast, slow) = (dir.path().join("fast"), dir.path().join("slow"));
    // Both are polled every 10 ms; only `slow` is limited to 5 checks/s after a burst of 2.
    let engine = Engine::new().expect("engine");
    let mut only_slow = engine.run(graph(json!([g_slow(&slow)])), RunOptions::default());
    assert!(only_slow.first_report().await.ok);
    let mut only_fast = engine.run(graph(json!([g_fast(&fast)])), RunOptions::default());
    assert!(only_fast.first_report().await.ok);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s, f) = (only_slow.checks(), only_fast.checks());
    // Slow: at most burst + 5/s over the window (+1 for the edge); fast is bounded by its
    // poll only. Compared as a ratio so a slow machine cannot fail it.
    assert!(s <= 2 + 5 + 2, "limit not applied: {s} checks in ~1 s");
    assert!(
        f >= 2 * s,
        "the unlimited one should check far more: fast {f}, slow {s}"
    );
    only_slow.stop().await;
    only_fast.stop().await;
}

fn g_slow(path: &std::path::Path) -> serde_json::Value {
    json!({"kind": "file", "name": p(path), "content": "s",
           "meta": {"poll": 0.01, "limit": 5, "burst": 2}})
}

fn g_fast(path: &std::path::Path) -> serde_json::Value {
    json!({"kind": "file", "name": p(path), "content": "f", "meta": {"poll": 0.01}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sema_limits_parallel_applies_across_the_graph() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = p(dir.path());
    let exec = |n: String, sema: &str| {
        json!({"kind": "exec", "name": n, "meta": {"sema": sema},
               "cmd": format!("date +%s.%N > '{d}/{n}.start'; sleep 0.3; date +%s.%N > '{d}/{n}.end'")})
    };
    let mut resources: Vec<_> = (0..4).map(|i| exec(format!("one{i}"), "lock:1")).collect();
    resources.extend((0..4).map(|i| exec(format!("two{i}"), "pair:2")));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(graph(json!(resources)), RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    let spans = |prefix: &str| -> Vec<(f64, f64)> {
        (0..4)
            .map(|i| span(dir.path(), &format!("{prefix}{i}")))
            .collect()
    };
    assert_eq!(max_overlap(&spans("one")), 1, "lock:1 let two run at once");
    assert!(
        max_overlap(&spans("two")) <= 2,
        "pair:2 let three run at once"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_noop_checks_only_that_resource() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let g = graph(json!([
        {"kind": "file", "name": p(&a), "content": "a", "meta": {"noop": true}},
        {"kind": "file", "name": p(&b), "content": "b"},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert_eq!(report.changed, [file_id(&a), file_id(&b)]);
    assert!(!a.exists(), "noop resource was changed");
    assert_eq!(read(&b), "b");
    running.stop().await;
}
