//! Autoedges and graphviz output.

mod util;

use engine::{Engine, RunOptions};
use serde_json::json;
use util::*;

#[test]
fn exec_creates_orders_its_users_and_autoedge_false_opts_out() {
    let g = graph(json!([
        {"kind": "file", "name": "/srv/app/conf", "content": "x"},
        {"kind": "exec", "name": "mk", "cmd": "mkdir -p /srv/app", "creates": "/srv/app"},
        {"kind": "exec", "name": "use", "cmd": "true", "cwd": "/srv/app"},
        {"kind": "file", "name": "/srv/app/other", "content": "y", "meta": {"autoedge": false}},
    ]));
    let dot = g.to_dot("g");
    // exec:mk (n1) -> file conf (n0), and -> exec:use (n2); not -> n3.
    assert!(dot.contains("n1 -> n0 [style=dashed"), "{dot}");
    assert!(dot.contains("n1 -> n2 [style=dashed"), "{dot}");
    assert!(!dot.contains("n1 -> n3"), "{dot}");
}

#[test]
fn an_autoedge_never_creates_a_cycle() {
    // An explicit edge against the implied direction: the autoedge is left out.
    let g = graph(json!({
        "resources": [
            {"kind": "exec", "name": "mk", "cmd": "true", "creates": "/srv/x"},
            {"kind": "file", "name": "/srv/x/f", "content": "x"},
        ],
        "edges": [{"from": "file:/srv/x/f", "to": "exec:mk"}],
    }));
    assert_eq!(g.to_dot("g").matches(" -> ").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_shows_states_notify_and_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f");
    let g = graph(json!({
        "resources": [
            {"kind": "file", "name": p(&f), "content": "x"},
            {"kind": "exec", "name": "bad", "cmd": "exit 1", "refresh_only": false},
            {"kind": "noop", "name": "after"},
        ],
        "edges": [
            {"from": file_id(&f), "to": "exec:bad", "notify": true},
            {"from": "exec:bad", "to": "noop:after"},
        ],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    running.first_report().await;
    let dot = running.to_dot("demo");
    assert!(dot.starts_with("digraph \"demo\" {"), "{dot}");
    assert!(dot.contains("converged\", fillcolor=palegreen"), "{dot}");
    assert!(
        dot.contains("exec:bad\\nfailed\", fillcolor=lightpink"),
        "{dot}"
    );
    assert!(dot.contains("label=\"notify\""), "{dot}");
    running.stop().await;
    // Rendered by graphviz where it is installed; the syntax check is the point.
    if let Ok(out) = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(dot.as_bytes())?;
            c.wait()
        })
    {
        assert!(out.success(), "dot rejected:\n{dot}");
    } else {
        eprintln!("graphviz `dot` not installed; DOT syntax not rendered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdout_is_received_as_file_content_with_an_implied_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("out");
    // No explicit edge: recv implies exec -> file, so the file waits for the output.
    let g = graph(json!([
        {"kind": "file", "name": p(&f), "recv": {"content": "exec:gen.stdout"}},
        {"kind": "exec", "name": "gen", "cmd": "sleep 0.2; echo generated"},
    ]));
    assert!(g.to_dot("g").contains("n1 -> n0;"), "{}", g.to_dot("g"));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(read(&f), "generated\n");
    // Drift is repaired to the received value.
    std::fs::write(&f, "x").expect("drift");
    eventually("received content restored", || read(&f) == "generated\n").await;
    running.stop().await;
}

#[test]
fn send_recv_ends_and_types_are_checked_before_running() {
    let err = |v: serde_json::Value| {
        graph::Graph::from_value(&v)
            .expect_err("must fail")
            .to_string()
    };
    let e =
        err(json!([{"kind": "file", "name": "/tmp/x", "recv": {"content": "exec:nope.stdout"}}]));
    assert_eq!(
        e,
        "file:/tmp/x: field `recv.content`: `exec:nope` is not in the graph"
    );
    let e = err(json!([
        {"kind": "file", "name": "/tmp/x", "recv": {"content": "exec:e.stderr"}},
        {"kind": "exec", "name": "e", "cmd": "true"},
    ]));
    assert!(
        e.contains("`exec:e` does not send `stderr` (it sends: stdout)"),
        "{e}"
    );
    let e = err(json!([
        {"kind": "file", "name": "/tmp/x", "recv": {"mode": "exec:e.stdout"}},
        {"kind": "exec", "name": "e", "cmd": "true"},
    ]));
    assert!(
        e.contains("field `recv.mode`: cannot be received (receivable: content)"),
        "{e}"
    );
    let e = err(json!([{"kind": "file", "name": "/tmp/x", "recv": {"content": "nodot"}}]));
    assert!(e.contains("expected \"kind:name.key\""), "{e}");
}
