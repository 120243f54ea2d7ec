//! The `svc` kind against a live systemd over D-Bus. systemd must be PID 1 with its system
//! bus up; where it is not (containers, this CI), the live test says so and skips.

mod util;

use std::process::Command;

use engine::{Engine, RunOptions};
use serde_json::json;
use util::*;

/// Why the live test cannot run here, if it cannot.
fn why_skip() -> Option<&'static str> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return Some("systemd is not running here (PID 1 is not systemd, no /run/systemd/system), so there is no systemd D-Bus API to drive");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: cannot install a unit file or start units");
    }
    None
}

fn active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

fn main_pid(unit: &str) -> String {
    Command::new("systemctl")
        .args(["show", "-p", "MainPID", "--value", unit])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_is_started_kept_running_restarted_on_refresh_and_stopped() {
    if let Some(why) = why_skip() {
        eprintln!("SKIPPED svc live test: {why}");
        return;
    }
    let unit = "reflex-test-svc.service";
    let unit_file = format!("/etc/systemd/system/{unit}");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    let g = |state: &str| {
        graph(json!({
            "resources": [
                {"kind": "file", "name": unit_file, "content": "[Service]\nExecStart=/bin/sleep 100000\n"},
                {"kind": "file", "name": p(&conf), "content": "v1"},
                {"kind": "svc", "name": unit, "state": state},
            ],
            "edges": [{"from": file_id(&conf), "to": format!("svc:{unit}"), "notify": true}],
        }))
    };
    let _ = Command::new("systemctl").arg("daemon-reload").status();
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g("running"), RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert!(active(unit));
    let _ = Command::new("systemctl").args(["stop", unit]).status();
    eventually("unit started again", || active(unit)).await;
    // A refresh (the conf file repaired) restarts it: a new main process.
    let pid = main_pid(unit);
    std::fs::write(&conf, "drift").expect("drift");
    eventually("unit restarted on refresh", || {
        active(unit) && main_pid(unit) != pid
    })
    .await;
    running.swap(g("stopped")).await;
    assert!(running.first_report().await.ok);
    assert!(!active(unit));
    running.stop().await;
    let _ = std::fs::remove_file(&unit_file);
}

#[test]
fn unit_names_and_states_are_validated_and_the_unit_file_is_an_autoedge() {
    let e = graph::Graph::from_value(&json!([{"kind": "svc", "name": "ssh", "state": "up"}]))
        .expect_err("bad state")
        .to_string();
    assert!(e.starts_with("svc:ssh: field `state`"), "{e}");
    let e = graph::Graph::from_value(&json!([{"kind": "svc", "name": "a b"}]))
        .expect_err("bad name")
        .to_string();
    assert!(e.starts_with("svc:a b: field `name`"), "{e}");
    let dot = graph(json!([
        {"kind": "svc", "name": "web", "startup": "enabled"},
        {"kind": "file", "name": "/etc/systemd/system/web.service", "content": "[Service]\n"},
    ]))
    .to_dot("g");
    assert!(dot.contains("n1 -> n0 [style=dashed"), "{dot}");
}
