//! `exec`'s fields on real processes: argv (no shell), ifcmd, creates, env, cwd, user, watchcmd,
//! timeout, and how a swap compares an argv.

mod util;

use engine::{Engine, RunOptions, SwapStats};
use serde_json::{json, Value};
use util::*;

/// How a test gives a command: as a shell line (`cmd`) or as a program and its arguments.
#[derive(Clone, Copy)]
enum As {
    Cmd,
    Argv,
}

/// An exec resource running `argv`, given the way `how` says, with `extra` fields.
fn exec(how: As, name: &str, argv: &[&str], extra: Value) -> Value {
    let mut r = match extra {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    r.insert("kind".into(), json!("exec"));
    r.insert("name".into(), json!(name));
    match how {
        // Each argument quoted for the shell (the tests' arguments hold no `'`).
        As::Cmd => {
            let line: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
            r.insert("cmd".into(), json!(line.join(" ")))
        }
        As::Argv => r.insert("argv".into(), json!(argv)),
    };
    Value::Object(r)
}

/// ifcmd, creates, env, cwd and user shape a run the same way whichever form the command has.
async fn fields_shape_the_run(how: As) {
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
    let (if_ran, if_ok, creates_ran) = (
        format!("{d}/if-ran"),
        format!("{d}/if-ok"),
        format!("{d}/creates-ran"),
    );
    let mut resources = vec![
        exec(
            how,
            "skipped-if",
            &["touch", &if_ran],
            json!({"ifcmd": "false"}),
        ),
        exec(how, "ran-if", &["touch", &if_ok], json!({"ifcmd": "true"})),
        exec(
            how,
            "skipped-creates",
            &["touch", &creates_ran],
            json!({"creates": format!("{d}/exists")}),
        ),
        exec(
            how,
            "env-cwd",
            &["sh", "-c", "echo \"$GREETING\" > here"],
            json!({"env": {"GREETING": "hi"}, "cwd": d}),
        ),
    ];
    let uid = format!("id -u > '{d}/pub/uid'");
    if root {
        resources.push(exec(
            how,
            "as-nobody",
            &["sh", "-c", &uid],
            json!({"user": "nobody"}),
        ));
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
async fn ifcmd_creates_env_cwd_and_user_shape_the_run() {
    fields_shape_the_run(As::Cmd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ifcmd_creates_env_cwd_and_user_shape_an_argv_run_too() {
    fields_shape_the_run(As::Argv).await;
}

async fn each_watchcmd_line_runs_again(how: As) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = p(&dir.path().join("runs"));
    let g = graph(json!([exec(
        how,
        "on-event",
        &["sh", "-c", "echo run >> \"$0\"", &log],
        json!({"watchcmd": "for i in 1 2 3; do sleep 0.2; echo event; done; sleep 1000"}),
    )]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    assert!(running.first_report().await.ok);
    // The first run, then one per line (bursts may coalesce, so at least two more).
    eventually("runs driven by watchcmd lines", || {
        read(std::path::Path::new(&log)).lines().count() >= 3
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watchcmd_line_runs_the_command_again() {
    each_watchcmd_line_runs_again(As::Cmd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watchcmd_line_runs_an_argv_again() {
    each_watchcmd_line_runs_again(As::Argv).await;
}

/// Arguments a shell would split, expand or run: with argv each arrives as one argument.
const HOSTILE: &[&str] = &[
    "a b",
    "it's \"quoted\"",
    "$(touch pwned-subst)",
    "`touch pwned-tick`",
    "x; touch pwned-semi",
    "line\ntouch pwned-newline",
    "",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_arguments_arrive_as_one_argument_each_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut argv = vec!["printf", "[%s]\n"];
    argv.extend(HOSTILE);
    let g = graph(json!([
        {"kind": "exec", "name": "args", "argv": argv, "cwd": p(dir.path())},
        {"kind": "file", "name": p(&out), "recv": {"content": "exec:args.stdout"}},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    let want: String = HOSTILE.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(read(&out), want);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(left.is_empty(), "a shell ran an argument: {left:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_times_out_sends_stdout_and_names_a_missing_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env");
    let engine = Engine::new().expect("engine");
    let g = graph(json!([
        {"kind": "exec", "name": "env", "argv": ["printenv", "GREETING"], "env": {"GREETING": "hello"}},
        {"kind": "file", "name": p(&out), "recv": {"content": "exec:env.stdout"}},
    ]));
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(read(&out), "hello\n");
    running.stop().await;

    let slow =
        graph(json!([{"kind": "exec", "name": "slow", "argv": ["sleep", "5"], "timeout": 0.3}]));
    let mut running = engine.run(slow, RunOptions::default());
    let report = running.first_report().await;
    assert!(!report.ok, "{report:?}");
    assert!(
        format!("{report:?}").contains("timed out after 0.3s"),
        "{report:?}"
    );
    running.stop().await;

    let missing =
        graph(json!([{"kind": "exec", "name": "nope", "argv": ["/nonexistent/reflex-prog"]}]));
    let mut running = engine.run(missing, RunOptions::default());
    let report = running.first_report().await;
    assert!(
        format!("{report:?}").contains("spawn /nonexistent/reflex-prog"),
        "{report:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_runs_a_refresh_only_argv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reloads = dir.path().join("reloads");
    let src = dir.path().join("src");
    let g = graph(json!({
        "resources": [
            {"kind": "file", "name": p(&src), "content": "v1"},
            {"kind": "exec", "name": "reload", "argv": ["sh", "-c", "echo reload >> \"$0\"", p(&reloads)],
             "refresh_only": true},
        ],
        "edges": [{"from": file_id(&src), "to": "exec:reload", "notify": true}],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    assert!(running.first_report().await.ok);
    // The file was created (changed), so its notify edge refreshed the refresh_only argv.
    eventually("the refresh ran the argv", || read(&reloads) == "reload\n").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_keeps_the_same_argv_and_replaces_a_changed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("count");
    let exec = |arg: &str| json!([{"kind": "exec", "name": "count", "argv": ["sh", "-c", "echo \"$1\" >> \"$0\"", p(&log), arg]}]);
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(graph(exec("one")), RunOptions::default());
    assert!(running.first_report().await.ok);
    let same = running.swap(graph(exec("one"))).await;
    assert_eq!(
        same,
        SwapStats {
            kept: 1,
            added: 0,
            removed: 0
        }
    );
    assert!(running.first_report().await.ok);
    assert_eq!(read(&log), "one\n", "an unchanged argv ran again");
    // One argument differs: a different command, so it is replaced and runs.
    let changed = running.swap(graph(exec("one two"))).await;
    assert_eq!(changed.kept, 0, "{changed:?}");
    assert!(running.first_report().await.ok);
    assert_eq!(read(&log), "one\none two\n");
    running.stop().await;
}
