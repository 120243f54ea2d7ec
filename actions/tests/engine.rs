//! The engine against real files, real inotify and real child processes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod util;

use engine::{Engine, RunOptions};
use serde_json::{json, Value};
use util::{eventually, expect_changed, file_id, graph, p, DEADLINE};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// A `date +%s.%N` timestamp a test command wrote.
fn read_time(path: PathBuf) -> f64 {
    let text = fs::read_to_string(&path).expect("timestamp file");
    text.trim().parse().expect("timestamp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_resources_run_in_parallel_and_edges_order_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = p(dir.path());
    let exec = |n: &str| {
        json!({
            "kind": "exec",
            "name": n,
            "cmd": format!("date +%s.%N > '{d}/{n}.start'; sleep 1; date +%s.%N > '{d}/{n}.end'"),
        })
    };
    let g = graph(json!({
        "resources": [exec("a"), exec("b"), exec("c"), exec("d")],
        "edges": [{"from": "exec:a", "to": "exec:b"}, {"from": "exec:b", "to": "exec:c"}],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.changed, ["exec:a", "exec:b", "exec:c", "exec:d"]);

    let t = |n: &str, end: &str| read_time(dir.path().join(format!("{n}.{end}")));
    let (a0, a1) = (t("a", "start"), t("a", "end"));
    let (b0, b1) = (t("b", "start"), t("b", "end"));
    let (c0, d0, d1) = (t("c", "start"), t("d", "start"), t("d", "end"));
    assert!(
        d0 < a1 && a0 < d1,
        "d [{d0}, {d1}] must overlap a [{a0}, {a1}]"
    );
    assert!(b0 >= a1, "b started {b0} before a ended {a1}");
    assert!(c0 >= b1, "c started {c0} before b ended {b1}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f: Vec<PathBuf> = (1..=4).map(|i| dir.path().join(format!("f{i}"))).collect();
    // f4 exists before the run: the first check must remove it.
    fs::write(&f[3], "stale").expect("seed f4");
    let g = graph(json!({"resources": [
        {"kind": "file", "name": p(&f[0]), "content": "i am f1\n", "mode": "0640"},
        {"kind": "file", "name": p(&f[1]), "content": "i am f2\n"},
        {"kind": "file", "name": p(&f[2]), "content": "i am f3\n"},
        {"kind": "file", "name": p(&f[3]), "state": "absent"},
    ]}));
    let ids: Vec<String> = f.iter().map(|x| file_id(x)).collect();
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.changed, ids);
    assert_eq!(mode(&f[0]), 0o640);
    assert!(!f[3].exists());
    assert_eq!(
        engine.watched_dirs(),
        1,
        "one inotify watch for the shared parent"
    );

    fs::set_permissions(&f[0], fs::Permissions::from_mode(0o777)).expect("chmod f1");
    fs::remove_file(&f[1]).expect("rm f2");
    fs::write(&f[2], "blah blah\n").expect("overwrite f3");
    fs::write(&f[3], "i should not be here\n").expect("create f4");

    let content = |path: &Path| fs::read_to_string(path).unwrap_or_default();
    eventually("f1 mode repaired", || mode(&f[0]) == 0o640).await;
    eventually("f2 recreated", || content(&f[1]) == "i am f2\n").await;
    eventually("f3 rewritten", || content(&f[2]) == "i am f3\n").await;
    eventually("f4 removed", || !f[3].exists()).await;
    expect_changed(&mut running, &ids).await;

    // Replaced by rename, the way editors and config tools write.
    let other = dir.path().join("other");
    fs::write(&other, "impostor\n").expect("write other");
    fs::rename(&other, &f[1]).expect("rename over f2");
    eventually("f2 restored after rename", || content(&f[1]) == "i am f2\n").await;
    expect_changed(&mut running, &ids[1..2]).await;

    // The engine's own writes echo back as events; they must settle, not loop.
    running.converged(Duration::from_millis(300)).await;
    let quiet = tokio::time::timeout(Duration::from_millis(500), running.next_event()).await;
    assert!(quiet.is_err(), "engine kept reporting changes: {quiet:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dependency_skips_its_dependents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    let target = dir.path().join("target");
    let g = graph(json!({
        "resources": [
            {"kind": "exec", "name": "fail", "cmd": "echo oops >&2; exit 3"},
            {"kind": "exec", "name": "after", "cmd": format!("touch '{}'", p(&marker))},
            {"kind": "file", "name": p(&target), "content": "x"},
            {"kind": "noop", "name": "alone"},
            {"kind": "file", "name": p(&dir.path().join("no/such/dir/f")), "content": "x"},
        ],
        "edges": [
            {"from": "exec:fail", "to": "exec:after"},
            {"from": "exec:after", "to": file_id(&target)},
        ],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(!report.ok);
    assert!(report.changed.is_empty(), "{report:?}");
    assert_eq!(report.errors.len(), 4, "{report:?}");
    assert_eq!(
        report.errors[0],
        "exec:fail: exited with code 3; stderr: oops"
    );
    assert_eq!(
        report.errors[1],
        "exec:after: skipped: dependency exec:fail failed"
    );
    assert_eq!(
        report.errors[2],
        format!(
            "{}: skipped: dependency exec:after failed",
            file_id(&target)
        )
    );
    assert!(
        report.errors[3].contains("does not exist"),
        "missing parent must be a clear error: {}",
        report.errors[3]
    );
    assert!(!marker.exists() && !target.exists());
    assert!(
        !dir.path().join("no").exists(),
        "parents must never be created"
    );
    // A second call returns the same report.
    assert_eq!(running.first_report().await, report);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_mode_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let ok = dir.path().join("ok");
    let marker = dir.path().join("marker");
    fs::write(&b, "wrong").expect("seed b");
    fs::write(&c, "must stay").expect("seed c");
    fs::write(&ok, "fine").expect("seed ok");
    let g = graph(json!({"resources": [
        {"kind": "file", "name": p(&a), "content": "new"},
        {"kind": "file", "name": p(&b), "content": "right"},
        {"kind": "file", "name": p(&c), "state": "absent"},
        {"kind": "file", "name": p(&ok), "content": "fine"},
        {"kind": "exec", "name": "touch", "cmd": format!("touch '{}'", p(&marker))},
        {"kind": "noop", "name": "n"},
    ]}));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(
        g,
        RunOptions {
            noop: true,
            ..Default::default()
        },
    );
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.changed,
        [
            file_id(&a),
            file_id(&b),
            file_id(&c),
            "exec:touch".to_string()
        ]
    );
    assert!(!a.exists() && !marker.exists());
    assert_eq!(fs::read_to_string(&b).expect("b"), "wrong");
    assert_eq!(fs::read_to_string(&c).expect("c"), "must stay");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_files_share_one_hub() {
    const DIRS: usize = 20;
    const PER_DIR: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut resources = Vec::new();
    for d in 0..DIRS {
        let sub = dir.path().join(format!("d{d}"));
        fs::create_dir(&sub).expect("mkdir");
        for i in 0..PER_DIR {
            resources.push(json!({
                "kind": "file",
                "name": p(&sub.join(format!("f{i}"))),
                "content": format!("file {d}/{i}\n"),
            }));
        }
    }
    let g = graph(json!({ "resources": resources }));
    assert_eq!(g.len(), DIRS * PER_DIR);
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(
        report.ok,
        "{:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    assert_eq!(report.changed.len(), DIRS * PER_DIR);
    assert_eq!(engine.watched_dirs(), DIRS);

    eprintln!("2000 files: first report in {:?}", report.elapsed);
    let victim = dir.path().join("d7/f42");
    let removed = Instant::now();
    fs::remove_file(&victim).expect("rm victim");
    eventually("victim recreated", || {
        fs::read_to_string(&victim).is_ok_and(|s| s == "file 7/42\n")
    })
    .await;
    eprintln!("2000 files: drift repaired in {:?}", removed.elapsed());
    expect_changed(&mut running, &[file_id(&victim)]).await;

    running.stop().await;
    assert_eq!(engine.watched_dirs(), 0, "stop must drop every watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converged_waits_for_quiet_and_stop_ends_repairs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f");
    let g = graph(json!([{"kind": "file", "name": p(&f), "content": "managed\n"}]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    assert!(running.first_report().await.ok);

    let idle = Duration::from_millis(500);
    let start = Instant::now();
    fs::remove_file(&f).expect("rm");
    tokio::time::timeout(DEADLINE, running.converged(idle))
        .await
        .expect("converged resolves");
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "converged too early"
    );
    assert_eq!(fs::read_to_string(&f).expect("repaired"), "managed\n");

    running.stop().await;
    assert_eq!(engine.watched_dirs(), 0);
    fs::write(&f, "changed after stop\n").expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fs::read_to_string(&f).expect("read"),
        "changed after stop\n",
        "a stopped graph must not repair"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_running_stops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f");
    let g = graph(json!([{"kind": "file", "name": p(&f), "content": "managed\n"}]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    assert!(running.first_report().await.ok);
    drop(running);
    eventually("watches dropped", || engine.watched_dirs() == 0).await;
    fs::write(&f, "mine now\n").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fs::read_to_string(&f).expect("read"), "mine now\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_running_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("finished");
    let g = graph(json!([
        {"kind": "exec", "name": "slow", "cmd": format!("sleep 2; touch '{}'", p(&marker))},
    ]));
    let engine = Engine::new().expect("engine");
    let running = engine.run(g, RunOptions::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    running.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "stop waited for the command"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "the command survived stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_repair_does_not_disturb_dependents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, down) = (dir.path().join("up"), dir.path().join("down"));
    let g = graph(json!({
        "resources": [
            {"kind": "file", "name": p(&up), "content": "u"},
            {"kind": "file", "name": p(&down), "content": "d"},
        ],
        "edges": [{"from": file_id(&up), "to": file_id(&down)}],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert_eq!(report.changed, [file_id(&up), file_id(&down)]);
    running.converged(Duration::from_millis(200)).await;
    fs::remove_file(&up).expect("rm up");
    expect_changed(&mut running, &[file_id(&up)]).await;
    assert_eq!(fs::read_to_string(&down).expect("down"), "d");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chain_converges_and_drops_without_recursing() {
    const N: usize = 20_000;
    let resources: Vec<Value> = (0..N)
        .map(|i| json!({"kind": "noop", "name": format!("n{i}")}))
        .collect();
    let edges: Vec<Value> = (1..N)
        .map(|i| json!({"from": format!("noop:n{}", i - 1), "to": format!("noop:n{i}")}))
        .collect();
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(
        graph(json!({"resources": resources, "edges": edges})),
        RunOptions::default(),
    );
    assert!(running.first_report().await.ok);
    // Test threads have small stacks: a recursive drop of the chain would overflow here.
    drop(running);
}
