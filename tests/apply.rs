//! `reflex apply` on real files and processes: parallelism and ordering, drift repair while
//! it runs, bad graphs rejected before anything runs, noop, and a failing resource's exit code.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// Only for waiting; never a bound on how long something took.
const T: Duration = Duration::from_secs(20);

fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_string()
}

/// Write `yaml` to `DIR/g.yaml` and return its path.
fn write_graph(dir: &Path, yaml: &str) -> String {
    let g = dir.join("g.yaml");
    std::fs::write(&g, yaml).expect("write graph");
    p(&g)
}

fn read_time(path: &Path) -> f64 {
    let text = read(path).unwrap_or_else(|| panic!("no timestamp file {}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("bad timestamp {text:?} in {}: {e}", path.display()))
}

#[test]
fn parallel_chain_and_lone_exec() {
    let dir = tempfile::tempdir().unwrap();
    let d = p(dir.path());
    let exec = |n: &str| {
        format!(
            "  - kind: exec\n    name: {n}\n    cmd: \"date +%s.%N > '{d}/{n}.start'; sleep 1; date +%s.%N > '{d}/{n}.end'\"\n"
        )
    };
    let yaml = format!(
        "resources:\n{}{}{}{}edges:\n  - {{from: \"exec:a\", to: \"exec:b\"}}\n  - {{from: \"exec:b\", to: \"exec:c\"}}\n",
        exec("a"),
        exec("b"),
        exec("c"),
        exec("d"),
    );
    let g = write_graph(dir.path(), &yaml);

    let (code, _out, err) = run(&["apply", &g, "--converged-timeout", "1"]);
    assert_eq!(code, 0, "apply failed: {err}");
    for n in ["a", "b", "c", "d"] {
        assert!(
            err.contains(&format!("changed exec:{n}")),
            "no `changed exec:{n}` in: {err}"
        );
    }
    assert!(err.contains("converged:"), "no `converged:` in: {err}");

    let t = |n: &str, end: &str| read_time(&dir.path().join(format!("{n}.{end}")));
    let (a0, a1) = (t("a", "start"), t("a", "end"));
    let (b0, b1) = (t("b", "start"), t("b", "end"));
    let (c0, d0, d1) = (t("c", "start"), t("d", "start"), t("d", "end"));
    assert!(
        d0 < a1 && a0 < d1,
        "d [{d0}, {d1}] must overlap a [{a0}, {a1}]"
    );
    assert!(b0 >= a1, "b started {b0} before a ended {a1}");
    assert!(c0 >= b1, "c started {c0} before b ended {b1}");
}

#[test]
fn drift_is_repaired_while_apply_runs() {
    let dir = tempfile::tempdir().unwrap();
    let f: Vec<_> = (1..=4).map(|i| dir.path().join(format!("f{i}"))).collect();
    // f4 exists before the run: the first check must remove it.
    std::fs::write(&f[3], "stale\n").unwrap();
    let yaml = format!(
        "resources:\n\
         \x20 - {{kind: file, name: \"{}\", content: \"i am f1\\n\"}}\n\
         \x20 - {{kind: file, name: \"{}\", content: \"i am f2\\n\"}}\n\
         \x20 - {{kind: file, name: \"{}\", content: \"i am f3\\n\"}}\n\
         \x20 - {{kind: file, name: \"{}\", state: absent}}\n",
        p(&f[0]),
        p(&f[1]),
        p(&f[2]),
        p(&f[3]),
    );
    let g = write_graph(dir.path(), &yaml);

    let mut apply = Proc::start("apply", &["apply", &g]);
    let right = |i: usize| read(&f[i]).as_deref() == Some(format!("i am f{}\n", i + 1).as_str());
    wait_for("the first run to converge the files", T, || {
        ((0..3).all(right) && !f[3].exists()).then_some(())
    });

    std::fs::remove_file(&f[1]).unwrap();
    wait_for("f2 recreated", T, || right(1).then_some(()));
    std::fs::write(&f[2], "blah blah\n").unwrap();
    wait_for("f3 rewritten", T, || right(2).then_some(()));
    std::fs::write(&f[3], "i should not be here\n").unwrap();
    wait_for("f4 removed", T, || (!f[3].exists()).then_some(()));
    assert!(right(0), "f1 was disturbed");

    let code = apply.terminate(T);
    assert_eq!(code, Some(0), "apply did not exit 0 on SIGTERM");
}

#[test]
fn bad_graphs_are_rejected_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    // First in every graph, so a lazy validator would have started it.
    let marker = format!(
        "  - {{kind: exec, name: marker, cmd: \"touch '{}'\"}}\n",
        p(&ran)
    );
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown kind",
            format!("resources:\n{marker}  - {{kind: frobnicate, name: web}}\n"),
            vec!["frobnicate:web", "unknown kind"],
        ),
        (
            "exec without cmd",
            format!("resources:\n{marker}  - {{kind: exec, name: nocmd}}\n"),
            vec!["exec:nocmd", "cmd"],
        ),
        (
            "cycle",
            format!(
                "resources:\n{marker}\
                 \x20 - {{kind: exec, name: a, cmd: \"true\"}}\n\
                 \x20 - {{kind: exec, name: b, cmd: \"true\"}}\n\
                 edges:\n\
                 \x20 - {{from: \"exec:marker\", to: \"exec:a\"}}\n\
                 \x20 - {{from: \"exec:a\", to: \"exec:b\"}}\n\
                 \x20 - {{from: \"exec:b\", to: \"exec:a\"}}\n"
            ),
            vec!["cycle", "exec:a", "exec:b"],
        ),
        (
            "edge to a resource not in the graph",
            format!(
                "resources:\n{marker}edges:\n  - {{from: \"exec:marker\", to: \"exec:ghost\"}}\n"
            ),
            vec!["exec:ghost"],
        ),
        (
            "malformed YAML",
            format!("resources:\n{marker}  - {{kind: noop, name: [unclosed\n"),
            vec!["YAML"],
        ),
    ];
    for (what, yaml, culprits) in cases {
        let g = write_graph(dir.path(), &yaml);
        let (code, _out, err) = run(&["apply", &g, "--converged-timeout", "0.5"]);
        assert_eq!(code, 2, "{what}: expected exit 2; stderr: {err}");
        for c in culprits {
            assert!(err.contains(c), "{what}: stderr does not name {c:?}: {err}");
        }
        assert!(
            !err.contains("changed"),
            "{what}: something was reported as changed: {err}"
        );
        assert!(!ran.exists(), "{what}: the marker exec ran");
    }
}

#[test]
fn noop_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("absent-yet");
    let yaml = format!(
        "resources:\n  - {{kind: file, name: \"{}\", content: \"hello\\n\"}}\n",
        p(&target)
    );
    let g = write_graph(dir.path(), &yaml);
    let (code, _out, err) = run(&["apply", &g, "--noop", "--converged-timeout", "0.5"]);
    assert_eq!(code, 0, "noop apply failed: {err}");
    assert!(
        err.contains(&format!("would change file:{}", p(&target))),
        "no `would change` line in: {err}"
    );
    assert!(!target.exists(), "--noop created the file");
}

#[test]
fn failed_resource_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let g = write_graph(
        dir.path(),
        "resources:\n  - {kind: exec, name: fails, cmd: \"exit 3\"}\n",
    );
    let (code, _out, err) = run(&["apply", &g, "--converged-timeout", "0.5"]);
    assert_eq!(code, 1, "expected exit 1; stderr: {err}");
    assert!(
        err.contains("exec:fails"),
        "stderr does not name exec:fails: {err}"
    );
    assert!(
        err.contains("code 3"),
        "stderr does not give the exit code: {err}"
    );
}

#[test]
fn metaparams_notify_recv_and_graphviz_through_apply() {
    let dir = tempfile::tempdir().unwrap();
    let d = p(dir.path());
    let dot = dir.path().join("g.dot");
    let yaml = format!(
        r#"resources:
  - {{kind: exec, name: flaky, cmd: "echo x >> '{d}/tries'; test $(wc -l < '{d}/tries') -ge 2", meta: {{retry: 3, delay: 50}}}}
  - {{kind: exec, name: gen, cmd: "echo generated"}}
  - {{kind: file, name: "{d}/out", recv: {{content: "exec:gen.stdout"}}}}
  - {{kind: exec, name: reload, cmd: "echo reloaded >> '{d}/reloads'", refresh_only: true}}
  - {{kind: file, name: "{d}/skipped", content: "x", meta: {{noop: true}}}}
edges:
  - {{from: "file:{d}/out", to: "exec:reload", notify: true}}
"#
    );
    let g = write_graph(dir.path(), &yaml);
    let dot_arg = p(&dot);
    let (code, _out, err) = run(&[
        "apply",
        &g,
        "--converged-timeout",
        "0.3",
        "--graphviz",
        &dot_arg,
    ]);
    assert_eq!(code, 0, "apply failed: {err}");
    assert_eq!(read(&dir.path().join("tries")).as_deref(), Some("x\nx\n"));
    assert_eq!(
        read(&dir.path().join("out")).as_deref(),
        Some("generated\n")
    );
    assert_eq!(
        read(&dir.path().join("reloads")).as_deref(),
        Some("reloaded\n")
    );
    assert!(
        !dir.path().join("skipped").exists(),
        "meta.noop resource was changed"
    );
    let dot = read(&dot).expect("dot file written");
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("label=\"notify\""), "{dot}");
    assert!(dot.contains("converged"), "{dot}");
}

#[test]
fn a_bad_metaparam_names_resource_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let g = write_graph(
        dir.path(),
        "resources:\n  - {kind: noop, name: a, meta: {retry: many}}\n",
    );
    let (code, _out, err) = run(&["apply", &g]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("noop:a: field `meta.retry`: expected a number"),
        "{err}"
    );
}
