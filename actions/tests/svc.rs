//! The `svc` kind against a live systemd over D-Bus. Where systemd is PID 1 the live test runs
//! here; where it is not (a container, this CI) it re-runs itself inside a throwaway systemd
//! machine, `scripts/systemd-box` (systemd-nspawn over a copy-on-write view of this machine's
//! root: systemd as PID 1 and its system D-Bus); only where no box can be made either (not
//! root, no systemd-nspawn) does it say why and skip.

#[path = "../../tests/support/systemd_box.rs"]
mod systemd_box;
mod util;

use std::process::Command;

use engine::{Engine, RunOptions};
use serde_json::json;
use systemd_box::{in_box, live_where, Live};
use util::*;

/// The live test, by name: what the box runs.
const LIVE: &str = "a_unit_is_started_kept_running_restarted_on_refresh_and_stopped";
/// What the live test prints when it passed against a systemd: the proof it ran.
const PASSED: &str = "svc live test passed against systemd";

fn active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

fn systemctl(args: &[&str]) -> String {
    Command::new("systemctl")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main_pid(unit: &str) -> String {
    systemctl(&["show", "-p", "MainPID", "--value", unit])
}

#[test]
fn a_unit_is_started_kept_running_restarted_on_refresh_and_stopped() {
    match live_where(
        env!("CARGO_MANIFEST_DIR"),
        "install a unit file or start units",
    ) {
        Live::Here => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(live()),
        Live::InBox(script) => in_box(&script, LIVE, PASSED),
        Live::Skip(why) => eprintln!("SKIPPED svc live test: {why}"),
    }
}

/// Against the systemd of this machine (root): a unit installed by a `file` resource is
/// started and enabled, started again when stopped behind the engine's back, restarted on
/// refresh, then stopped and disabled; a unit that fails to start is an error naming it.
async fn live() {
    let unit = "reflex-test-svc.service";
    let unit_file = format!("/etc/systemd/system/{unit}");
    let bad = "reflex-test-svc-bad.service";
    let bad_file = format!("/etc/systemd/system/{bad}");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    let g = |state: &str, startup: &str| {
        graph(json!({
            "resources": [
                {"kind": "file", "name": unit_file, "content": "[Service]\nExecStart=/bin/sleep 100000\n\n[Install]\nWantedBy=multi-user.target\n"},
                {"kind": "file", "name": p(&conf), "content": "v1"},
                {"kind": "svc", "name": unit, "state": state, "startup": startup},
            ],
            "edges": [{"from": file_id(&conf), "to": format!("svc:{unit}"), "notify": true}],
        }))
    };
    let _ = Command::new("systemctl").arg("daemon-reload").status();
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g("running", "enabled"), RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert!(
        report.changed.contains(&format!("svc:{unit}")),
        "{report:?}"
    );
    assert!(active(unit));
    assert_eq!(systemctl(&["is-enabled", unit]), "enabled");
    let _ = Command::new("systemctl").args(["stop", unit]).status();
    eventually("unit started again", || active(unit)).await;
    // A refresh (the conf file repaired) restarts it: a new main process.
    let pid = main_pid(unit);
    std::fs::write(&conf, "drift").expect("drift");
    eventually("unit restarted on refresh", || {
        active(unit) && main_pid(unit) != pid
    })
    .await;
    running.swap(g("stopped", "disabled")).await;
    assert!(running.first_report().await.ok);
    assert!(!active(unit));
    assert_eq!(systemctl(&["is-enabled", unit]), "disabled");
    running.stop().await;

    // A unit whose start fails: the resource fails, and says which unit.
    let mut running = engine.run(
        graph(json!({
            "resources": [
                {"kind": "file", "name": bad_file, "content": "[Service]\nType=oneshot\nExecStart=/bin/false\n"},
                {"kind": "svc", "name": bad, "state": "running"},
            ],
        })),
        RunOptions::default(),
    );
    let report = running.first_report().await;
    assert!(!report.ok, "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.starts_with(&format!("svc:{bad}"))
                && e.contains(&format!("unit {bad} failed"))),
        "{report:?}"
    );
    running.stop().await;
    let _ = std::fs::remove_file(&unit_file);
    let _ = std::fs::remove_file(&bad_file);
    let _ = Command::new("systemctl")
        .args(["reset-failed", bad])
        .status();
    eprintln!(
        "{PASSED} {} ({})",
        systemctl(&["--version"]).lines().next().unwrap_or("?"),
        std::env::var("SYSTEMD_BOX").map_or("PID 1 of this machine".into(), |b| format!("box {b}"))
    );
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
