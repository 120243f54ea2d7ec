//! `reflex up --cluster 2` as an operator would run it: a local etcd, two manager+publisher
//! pairs, this host's actor and beacon; events sent through both managers counted in one shared
//! register, each one's action applied by the actor (which follows both publishers), then
//! SIGTERM: `up` exits 0 and none of its children is left running. Counts only. Skipped
//! (printed) where etcd is missing.

mod common;
#[path = "support/etcd.rs"]
mod etcd;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn alive(pid: i32) -> bool {
    // A zombie has exited: only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn send(state: &Path, base: u16, from: usize, n: usize) {
    let lines: String = (from..from + n)
        .map(|i| {
            format!(
                "{{\"tag\": \"try/n\", \"host\": \"h{}\", \"i\": {i}}}\n",
                i % 5
            )
        })
        .collect();
    send_stdin(state, base, &lines);
}

#[test]
fn up_cluster_2_counts_through_both_managers_and_leaves_nothing_running() {
    if !etcd::installed() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: etcd is not installed (apt-get install etcd-server; .ci/run does it)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let rules = tmp.path().join("rules");
    write_rule(
        &rules,
        "10-count.rhai",
        "const MATCH = \"try/*\";\nfn react(event) { registers::incr(\"count/all\", 1); }\n",
    );
    // Each event's action: a file of its own on this host (under /tmp/, as up's policy allows).
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    write_rule(
        &rules,
        "20-act.rhai",
        &format!(
            "const MATCH = \"try/*\";\nfn react(event) {{ let i = event.data.i; act(\"host/t\", [#{{ kind: \"file\", name: `{}/f${{i}}`, content: `${{i}}` }}], #{{ name: `f${{i}}` }}); }}\n",
            files.display()
        ),
    );
    // Two pairs: port bases base and base + 10, all free.
    let base = loop {
        let b = free_port_base();
        if (10..20).all(|i| std::net::TcpListener::bind(("127.0.0.1", b + i)).is_ok()) {
            break b;
        }
    };
    let mut up = Proc::start(
        "up",
        &[
            "up",
            "--cluster",
            "2",
            "--state",
            &state.display().to_string(),
            "--port-base",
            &base.to_string(),
            "--rules",
            &rules.display().to_string(),
            "--name",
            "t",
        ],
    );
    let lines = up.wait_line("node2: ingest", Duration::from_secs(60));
    let text = lines.join("\n");
    assert!(text.contains("reflex cluster is up: 2 managers"), "{text}");
    assert!(
        text.contains(&format!("node1: ingest tcp://127.0.0.1:{base}")),
        "{text}"
    );
    let kids = children(up.pid());
    assert_eq!(
        kids.len(),
        7,
        "etcd, two pairs, the actor and the beacon: {kids:?}"
    );

    let nodes = [
        (state.join("node1"), base),
        (state.join("node2"), base + 10),
    ];
    // Four streams (each owned by one manager, whichever the rendezvous says).
    send(&nodes[0].0, nodes[0].1, 0, 30);
    send(&nodes[1].0, nodes[1].1, 30, 20);
    send(&nodes[0].0, nodes[0].1, 50, 30);
    send(&nodes[1].0, nodes[1].1, 80, 20);
    for (dir, b) in &nodes {
        let mut a = vec!["registers".to_string(), "get".into(), "count/all".into()];
        a.extend(stack_args(dir, *b));
        let (code, out, err) = run(&args_ref(&a));
        assert_eq!(code, 0, "registers get: {err}");
        assert_eq!(out.trim(), "100", "count via {b}");
    }
    // Every action reached the actor, from whichever publisher its manager has.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let missing: Vec<usize> = (0..100)
            .filter(|i| read(&files.join(format!("f{i}"))).as_deref() != Some(&i.to_string()))
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(missing.is_empty(), "files not written: {missing:?}");

    assert_eq!(up.terminate(Duration::from_secs(30)), Some(0), "up exits 0");
    let left: Vec<i32> = kids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after up stopped: {left:?}");
}

#[test]
fn up_cluster_without_etcd_names_the_package_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    // No etcd on this PATH (nor anything else: reflex is started by its full path).
    let out = Command::new(REFLEX)
        .args(["up", "--cluster", "2", "--state"])
        .arg(tmp.path().join("state"))
        .env("PATH", tmp.path())
        .output()
        .expect("reflex up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("etcd-server"), "{err}");
    assert!(
        !tmp.path().join("state").join("etcd").exists(),
        "nothing started"
    );
}
