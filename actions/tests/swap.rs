//! Graph swap (mgmt's GraphSync): equal resources keep running untouched, removed ones
//! stop, new ones start — proven with the engine's watch and check counters.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use engine::{Engine, RunOptions, SwapStats};
use serde_json::{json, Value};
use util::*;

fn files(dir: &Path, n: usize, changed: Option<usize>) -> (Vec<PathBuf>, Value) {
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("f{i}"))).collect();
    let resources: Vec<Value> = paths
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let content = if Some(i) == changed {
                format!("new {i}\n")
            } else {
                format!("file {i}\n")
            };
            json!({"kind": "file", "name": p(f), "content": content})
        })
        .collect();
    (paths, json!({"resources": resources}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_in_a_thousand_restarts_no_other_watch() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, before) = files(dir.path(), N, None);
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(graph(before), RunOptions::default());
    let report = running.first_report().await;
    assert!(
        report.ok && report.changed.len() == N,
        "{:?}",
        report.errors.first()
    );
    assert_eq!(running.watch_starts(), N as u64);
    // Our own writes echo back once as events; let them settle before counting.
    running
        .converged(std::time::Duration::from_millis(300))
        .await;
    let checks_before = running.check_counts();

    let (_, after) = files(dir.path(), N, Some(500));
    let stats = running.swap(graph(after)).await;
    assert_eq!(
        stats,
        SwapStats {
            kept: N - 1,
            added: 1,
            removed: 1
        }
    );
    let report = running.first_report().await;
    assert_eq!(report.changed, [file_id(&paths[500])], "{report:?}");
    assert_eq!(read(&paths[500]), "new 500\n");
    // The proof: exactly one new watch across the whole graph, and not one more check of
    // any kept resource.
    assert_eq!(
        running.watch_starts(),
        N as u64 + 1,
        "kept watches were restarted"
    );
    running
        .converged(std::time::Duration::from_millis(300))
        .await;
    let checks_after = running.check_counts();
    for (i, (before, after)) in checks_before.iter().zip(&checks_after).enumerate() {
        assert_eq!(before.0, after.0);
        if i != 500 {
            assert_eq!(before.1, after.1, "{} was re-checked by the swap", after.0);
        }
    }

    // The kept watches still work: drift on an untouched file is repaired.
    fs::write(&paths[7], "tampered\n").expect("drift");
    eventually("kept file repaired", || read(&paths[7]) == "file 7\n").await;
    expect_changed(&mut running, &[file_id(&paths[7])]).await;
    fs::write(&paths[500], "tampered\n").expect("drift");
    eventually("new file repaired", || read(&paths[500]) == "new 500\n").await;
    running.stop().await;
    assert_eq!(engine.watched_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_stop_new_start_kept_exec_does_not_rerun_and_empty_removes_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = p(dir.path());
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let exec = json!({"kind": "exec", "name": "count", "cmd": format!("echo x >> '{d}/count'")});
    let g1 = json!([
        {"kind": "file", "name": p(&a), "content": "a"},
        {"kind": "file", "name": p(&b), "content": "b"},
        exec.clone(),
    ]);
    let g2 = json!({
        "resources": [
            exec,
            {"kind": "file", "name": p(&b), "content": "b"},
            {"kind": "file", "name": p(&c), "content": "c"},
        ],
        "edges": [{"from": file_id(&b), "to": file_id(&c)}],
    });
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(graph(g1), RunOptions::default());
    assert!(running.first_report().await.ok);
    let stats = running.swap(graph(g2)).await;
    assert_eq!(
        stats,
        SwapStats {
            kept: 2,
            added: 1,
            removed: 1
        }
    );
    let report = running.first_report().await;
    assert_eq!(report.changed, [file_id(&c)]);
    assert_eq!(
        read(&dir.path().join("count")),
        "x\n",
        "the kept exec ran again"
    );

    // `a` is no longer managed; `c` now is.
    fs::write(&a, "mine now").expect("write a");
    fs::remove_file(&c).expect("rm c");
    eventually("c repaired", || read(&c) == "c").await;
    expect_changed(&mut running, &[file_id(&c)]).await;
    assert_eq!(read(&a), "mine now");
    assert_eq!(running.to_dot("g").matches(" -> ").count(), 1);

    let stats = running.swap(graph(json!([]))).await;
    assert_eq!(
        stats,
        SwapStats {
            kept: 0,
            added: 0,
            removed: 3
        }
    );
    assert!(running.first_report().await.ok);
    assert!(running.is_empty());
    assert_eq!(
        engine.watched_dirs(),
        0,
        "removed resources kept their watches"
    );
    // An empty graph is converged at once.
    tokio::time::timeout(DEADLINE, running.converged(std::time::Duration::ZERO))
        .await
        .expect("empty graph converged");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_metaparams_replace_the_resource() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f");
    let g =
        |meta: Value| graph(json!([{"kind": "file", "name": p(&f), "content": "x", "meta": meta}]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g(json!({})), RunOptions::default());
    assert!(running.first_report().await.ok);
    assert_eq!(
        running.swap(g(json!({}))).await,
        SwapStats {
            kept: 1,
            added: 0,
            removed: 0
        }
    );
    assert_eq!(
        running.swap(g(json!({"retry": 3}))).await,
        SwapStats {
            kept: 0,
            added: 1,
            removed: 1
        }
    );
    assert!(running.first_report().await.ok);
    running.stop().await;
}
