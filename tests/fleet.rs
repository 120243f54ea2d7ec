//! The fleet on real network stacks: a control node and three hosts, each in its own Linux
//! network namespace (`scripts/fleet`), the hosts enrolling with their own keys as real hosts
//! do (pending, then `reflex keys accept` with groups). Proves targeting by host, group and
//! `all` over the network, and a host cut off while an action for it is published: the control
//! node reports it down, and once its link is back it applies the action exactly once.
//! Needs root and `ip`; skips with a message where either is missing.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    repo().join("scripts/fleet")
}

/// Removes the fleet (and kills what runs in it) when dropped, failed test or not.
struct Fleet(String);

impl Fleet {
    fn up(prefix: &str, nodes: &[&str]) -> Option<Fleet> {
        let out = Command::new(script())
            .arg("up")
            .arg(prefix)
            .args(nodes)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED the fleet test: cannot make network namespaces: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Fleet(prefix.to_string()))
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.0)
    }

    fn addr(&self, node: &str) -> String {
        let out = Command::new(script())
            .args(["addr", &self.0, node])
            .output()
            .expect("fleet addr");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn link(&self, how: &str, node: &str) {
        let ok = Command::new(script())
            .args([how, &self.0, node])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "fleet {how} {node}");
    }

    /// `reflex ARGS` inside `node`'s namespace, to its end.
    fn run(&self, node: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(node), REFLEX])
            .args(args)
            .output()
            .expect("ip netns exec");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.0]).status();
    }
}

/// The events tagged `tag` in the control node's history (read from its files).
fn history(state: &Path, tag: &str) -> Vec<serde_json::Value> {
    let state = state.display().to_string();
    let (_, out, _) = run(&[
        "events", "--state", &state, "--tag", tag, "--json", "--limit", "10000",
    ]);
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Action name -> the hosts that reported a result for it, with how many times.
fn results(state: &Path) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut by = BTreeMap::<String, BTreeMap<String, usize>>::new();
    for e in history(state, "actor/result") {
        let (Some(name), Some(host)) = (e["data"]["name"].as_str(), e["host"].as_str()) else {
            continue;
        };
        *by.entry(name.into())
            .or_default()
            .entry(host.into())
            .or_default() += 1;
    }
    by
}

fn hosts(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn targets_reach_exactly_their_hosts_and_a_cut_off_host_catches_up_once() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !is_root || !has_ip {
        eprintln!("SKIPPED the fleet test: it needs root and ip (iproute2)");
        return;
    }
    let prefix = format!("f{}", std::process::id() % 100_000);
    let nodes = ["ctl", "web1", "web2", "db1"];
    let Some(fleet) = Fleet::up(&prefix, &nodes) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ctl_state = tmp.path().join("ctl");
    let rules = tmp.path().join("rules");
    write_rule(
        &rules,
        "10-fleet.rhai",
        "const MATCH = \"fleet/act\";\nfn react(event) {\n    act(event.data.target, [#{ kind: \"file\", name: event.data.path, content: event.data.name }], #{ name: event.data.name });\n}\n",
    );
    let c = fleet.addr("ctl");
    let ctl_state_s = ctl_state.display().to_string();
    let on_ctl = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--state".into(),
            ctl_state_s.clone(),
            "--addr".into(),
            c.clone(),
        ]);
        v
    };
    let _publisher = Proc::start_in(
        &fleet.ns("ctl"),
        "publisher",
        &args_ref(&on_ctl(&["publisher"])),
    );
    let rules_s = rules.display().to_string();
    let manager = Proc::start_in(
        &fleet.ns("ctl"),
        "manager",
        &args_ref(&on_ctl(&["manager", "--rules", &rules_s])),
    );
    manager.wait_line("manager up", T);
    let manager_key = wait_for("the manager's key", T, || {
        std::fs::read_to_string(ctl_state.join("keys/manager.pub")).ok()
    });
    let sign_key = wait_for("the signing key", T, || {
        std::fs::read_to_string(ctl_state.join("keys/sign.pub")).ok()
    });
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, actor::UP_POLICY).unwrap();
    let policy_s = policy.display().to_string();

    let mut actors = Vec::new();
    for (host, group) in [("web1", "web"), ("web2", "web"), ("db1", "db")] {
        let state = tmp.path().join(host).display().to_string();
        actors.push(Proc::start_in(
            &fleet.ns(host),
            host,
            &[
                "actor",
                "--name",
                host,
                "--group",
                group,
                "--state",
                &state,
                "--addr",
                &c,
                "--manager-key",
                manager_key.trim(),
                "--sign-key",
                sign_key.trim(),
                "--policy",
                &policy_s,
            ],
        ));
    }
    // Each host's key is pending until the control node's admin accepts it, with its groups.
    for (host, group) in [("web1", "web"), ("web2", "web"), ("db1", "db")] {
        wait_for(&format!("{host} pending"), T, || {
            let (_, out, _) = fleet.run("ctl", &args_ref(&on_ctl(&["keys", "list"])));
            out.lines()
                .any(|l| l.starts_with(host) && l.contains("pending"))
                .then_some(())
        });
        let (code, _, err) = fleet.run(
            "ctl",
            &args_ref(&on_ctl(&["keys", "accept", host, "--group", group])),
        );
        assert_eq!(code, 0, "keys accept {host}: {err}");
    }
    for a in &actors {
        a.wait_line("actor up", T);
    }
    wait_for("every host up on the control node", T, || {
        let ups: BTreeSet<String> = history(&ctl_state, "host/*/up")
            .iter()
            .filter_map(|e| e["host"].as_str().map(String::from))
            .collect();
        (ups == hosts(&["web1", "web2", "db1"])).then_some(())
    });

    let send = |target: &str, name: &str| {
        let path = tmp.path().join(name).display().to_string();
        let data = serde_json::json!({"target": target, "name": name, "path": path}).to_string();
        let (code, _, err) = fleet.run(
            "ctl",
            &args_ref(&on_ctl(&["send", "fleet/act", "--data", &data])),
        );
        assert_eq!(code, 0, "send {name}: {err}");
    };
    let expect = [
        ("host/web1", "to-web1", hosts(&["web1"])),
        ("group/web", "to-web", hosts(&["web1", "web2"])),
        ("group/db", "to-db", hosts(&["db1"])),
        ("all", "to-all", hosts(&["web1", "web2", "db1"])),
    ];
    for (target, name, _) in &expect {
        send(target, name);
    }
    wait_for("every targeted host's result", T, || {
        let r = results(&ctl_state);
        expect
            .iter()
            .all(|(_, name, want)| r.get(*name).is_some_and(|got| got.len() >= want.len()))
            .then_some(())
    });
    // A moment for a wrong host's result to show, then exactly the targets, once each.
    std::thread::sleep(Duration::from_secs(1));
    let r = results(&ctl_state);
    for (target, name, want) in &expect {
        let got = r.get(*name).cloned().unwrap_or_default();
        assert_eq!(
            got.keys().cloned().collect::<BTreeSet<_>>(),
            *want,
            "{target}: {got:?}"
        );
        assert!(
            got.values().all(|n| *n == 1),
            "{target} applied more than once: {got:?}"
        );
    }

    // db1 cut off: the control node notices, and what is published meanwhile reaches db1 once
    // its link is back, exactly once.
    fleet.link("cut", "db1");
    let cut = std::time::Instant::now();
    wait_for("host/db1/down on the control node", T, || {
        (!history(&ctl_state, "host/db1/down").is_empty()).then_some(())
    });
    let down_after = cut.elapsed();
    send("all", "while-cut");
    wait_for("the web hosts' results while db1 is away", T, || {
        results(&ctl_state)
            .get("while-cut")
            .is_some_and(|g| g.len() == 2)
            .then_some(())
    });
    fleet.link("heal", "db1");
    let healed = std::time::Instant::now();
    wait_for("db1's result once back", T, || {
        results(&ctl_state)
            .get("while-cut")
            .is_some_and(|g| g.contains_key("db1"))
            .then_some(())
    });
    let caught_up = healed.elapsed();
    eprintln!("fleet figures: host/db1/down {down_after:?} after the cut; the missed action applied {caught_up:?} after the link came back");
    std::thread::sleep(Duration::from_secs(1));
    let got = results(&ctl_state)
        .get("while-cut")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        hosts(&["web1", "web2", "db1"])
    );
    assert!(
        got.values().all(|n| *n == 1),
        "applied more than once: {got:?}"
    );
    drop(actors);
    drop(manager);
    drop(fleet);
}
