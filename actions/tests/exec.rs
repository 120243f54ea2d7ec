//! `exec`'s fields on real processes: ifcmd, creates, env, cwd, user, watchcmd.

mod util;

use engine::{Engine, RunOptions};
use serde_json::json;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ifcmd_creates_env_cwd_and_user_shape_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = p(dir.path());
    std::fs::write(dir.path().join("exists"), "").expect("exists");
    // Writable by `nobody` for the user case.
    std::fs::create_dir(dir.path().join("pub")).expect("pub");
    std::fs::set_permissions(
        dir.path().join("pub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut resources = vec![
        json!({"kind": "exec", "name": "skipped-if", "cmd": format!("touch '{d}/if-ran'"), "ifcmd": "false"}),
        json!({"kind": "exec", "name": "ran-if", "cmd": format!("touch '{d}/if-ok'"), "ifcmd": "true"}),
        json!({"kind": "exec", "name": "skipped-creates", "cmd": format!("touch '{d}/creates-ran'"), "creates": format!("{d}/exists")}),
        json!({"kind": "exec", "name": "env-cwd", "cmd": "echo \"$GREETING\" > here", "env": {"GREETING": "hi"}, "cwd": d}),
    ];
    if root {
        resources.push(json!({"kind": "exec", "name": "as-nobody", "cmd": format!("id -u > '{d}/pub/uid'"), "user": "nobody"}));
    }
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(graph(json!(resources)), RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert!(!dir.path().join("if-ran").exists() && dir.path().join("if-ok").exists());
    assert!(!dir.path().join("creates-ran").exists());
    assert_eq!(read(&dir.path().join("here")), "hi\n");
    if root {
        assert_eq!(read(&dir.path().join("pub/uid")), "65534\n");
    } else {
        eprintln!("not root: the `user` case is skipped");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watchcmd_line_runs_the_command_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("runs");
    let g = graph(json!([{
        "kind": "exec", "name": "on-event",
        "cmd": format!("echo run >> '{}'", p(&log)),
        "watchcmd": "for i in 1 2 3; do sleep 0.2; echo event; done; sleep 1000",
    }]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    assert!(running.first_report().await.ok);
    // The first run, then one per line (bursts may coalesce, so at least two more).
    eventually("runs driven by watchcmd lines", || {
        read(&log).lines().count() >= 3
    })
    .await;
    running.stop().await;
}
