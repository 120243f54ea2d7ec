//! The fleet on real network stacks: a control node and three hosts, each in its own Linux
//! network namespace (`scripts/fleet`), each host running `reflex actor` and `reflex beacon`
//! from its own config file and state dir and enrolling with its own key as real hosts do
//! (pending, then `reflex keys accept` with groups). Proves over the network: targeting by
//! host, group and `all`; a host cannot receive another host's actions nor send as another
//! host; a host cut off is reported down, and once its link is back every action published
//! meanwhile is applied there exactly once and its beacon's events arrive; `reflex hosts`
//! shows all of it. Prints the fleet's figures (send → applied p50/p99 across namespaces, cut
//! → down, link back → last missed action applied).
//! Needs root and `ip`; skips with a message where either is missing.

mod common;

use bus::keys::{key_dir, load_or_create, Role};
use bus::secure::Security;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    repo().join("scripts/fleet")
}

/// Removes the fleet (and kills what runs in it) when dropped, failed test or not.
struct Fleet(String);

impl Fleet {
    fn up(prefix: &str, nodes: &[&str]) -> Option<Fleet> {
        // What an earlier run killed before its Drop (Ctrl-C, SIGKILL) left behind.
        let _ = Command::new(script()).arg("sweep").status();
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

    /// `reflex ARGS` inside `node`'s namespace, to its end, `input` on its stdin.
    fn run_with(&self, node: &str, args: &[&str], input: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node), REFLEX])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("stdin");
        drop(stdin);
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run(&self, node: &str, args: &[&str]) -> (i32, String, String) {
        self.run_with(node, args, "")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.0]).status();
    }
}

/// Run `f` on a thread of its own inside the network namespace `ns`: the ZeroMQ context it
/// makes there starts its I/O threads there, so its connections leave from that host's stack.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace's file");
        // SAFETY: setns with a valid fd changes this thread's network namespace only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The events tagged `tag` in the control node's history (read from its files).
fn history(state: &Path, tag: &str) -> Vec<Value> {
    let state = state.display().to_string();
    let (_, out, _) = run(&[
        "events", "--state", &state, "--tag", tag, "--json", "--limit", "100000",
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

/// `reflex hosts --json`'s rows by name.
fn host_rows((code, out, err): (i32, String, String)) -> BTreeMap<String, Value> {
    assert_eq!(code, 0, "reflex hosts: {err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("reflex hosts --json");
    rows.into_iter()
        .filter_map(|r| Some((r["name"].as_str()?.to_string(), r)))
        .collect()
}

/// `reflex hosts --json` on the control node's state dir alone (no manager answers here).
fn hosts_view(state: &Path) -> BTreeMap<String, Value> {
    let state = state.display().to_string();
    host_rows(run(&["hosts", "--state", &state, "--json"]))
}

fn hosts(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What web2's key gets when it asks the publisher for web1's topics and for everything, with
/// its own topic beside them: the topics each socket received until `stop`. `ready` is told
/// once its own topic delivered something.
fn spy(
    sec: Security,
    publish: String,
    ready: std::sync::mpsc::Sender<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> BTreeMap<&'static str, Vec<String>> {
    let ctx = zmq::Context::new();
    let subs: Vec<(&'static str, zmq::Socket)> = ["host/web1/", "", "host/web2/"]
        .into_iter()
        .map(|topic| {
            let s = ctx.socket(zmq::SUB).expect("sub");
            sec.dial(&s).expect("curve");
            s.set_linger(0).expect("linger");
            s.set_subscribe(topic.as_bytes()).expect("subscribe");
            s.connect(&publish).expect("connect");
            (topic, s)
        })
        .collect();
    let mut got: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut told = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut items: Vec<zmq::PollItem> = subs
            .iter()
            .map(|(_, s)| s.as_poll_item(zmq::POLLIN))
            .collect();
        if zmq::poll(&mut items, 100).unwrap_or(0) == 0 {
            continue;
        }
        let ready_now: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        for ((topic, s), readable) in subs.iter().zip(ready_now) {
            if !readable {
                continue;
            }
            while let Ok(parts) = s.recv_multipart(zmq::DONTWAIT) {
                let first = parts
                    .first()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                got.entry(topic)
                    .or_default()
                    .push(first.unwrap_or_default());
                if *topic == "host/web2/" && !told {
                    told = true;
                    let _ = ready.send(());
                }
            }
        }
    }
    got
}

#[test]
fn a_fleet_of_hosts_enrolls_is_targeted_refuses_impostors_and_catches_up_once() {
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
        "const MATCH = \"fleet/act\";\nfn react(event) {\n    let opts = #{ name: event.data.name };\n    if \"expires\" in event.data { opts.expires = event.data.expires; }\n    act(event.data.target, [#{ kind: \"file\", name: event.data.path, content: event.data.name }], opts);\n}\n",
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
    let publisher = Proc::start_in(
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
    let manager_key = manager_key.trim().to_string();
    let sign_key = wait_for("the signing key", T, || {
        std::fs::read_to_string(ctl_state.join("keys/sign.pub")).ok()
    });
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, actor::UP_POLICY).unwrap();

    // Each host: its own state dir, an actor config file and a beacon config file, as an
    // operator lays them out under /etc/reflex.
    let fleet_hosts = [("web1", "web"), ("web2", "web"), ("db1", "db")];
    let mut actors = Vec::new();
    let mut beacons = Vec::new();
    for (host, group) in fleet_hosts {
        let dir = tmp.path().join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        let actor_toml = dir.join("actor.toml");
        std::fs::write(
            &actor_toml,
            format!(
                "name = \"{host}\"\ngroup = [\"{group}\"]\nstate = \"{}\"\naddr = \"{c}\"\n\
                 manager-key = \"{manager_key}\"\nsign-key = \"{}\"\npolicy = \"{}\"\n",
                state.display(),
                sign_key.trim(),
                policy.display()
            ),
        )
        .unwrap();
        let beacon_toml = dir.join("beacon.toml");
        std::fs::write(
            &beacon_toml,
            format!(
                "host = \"{host}\"\nstate = \"{}\"\naddr = \"{c}\"\nmanager-key = \"{manager_key}\"\n\n\
                 [[beacon]]\nkind = \"heartbeat\"\ninterval = \"250ms\"\n",
                state.display()
            ),
        )
        .unwrap();
        let actor_s = actor_toml.display().to_string();
        actors.push(Proc::start_in(
            &fleet.ns(host),
            host,
            &["actor", "--config", &actor_s],
        ));
        let beacon_s = beacon_toml.display().to_string();
        beacons.push(Proc::start_in(
            &fleet.ns(host),
            &format!("{host}-beacon"),
            &["beacon", "--config", &beacon_s],
        ));
    }
    // Each host's key is pending until the control node's admin accepts it, with its groups.
    for (host, group) in fleet_hosts {
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
    wait_for("every host's beacon heard from", T, || {
        let from: BTreeSet<String> = history(&ctl_state, "beacon/heartbeat")
            .iter()
            .filter_map(|e| e["host"].as_str().map(String::from))
            .collect();
        (from == hosts(&["web1", "web2", "db1"])).then_some(())
    });

    // web2 tries to read web1's actions (and everyone's) over its own link, with its own
    // enrolled key; its own topic beside them proves the spy was listening.
    let web2_sec = Security::Curve {
        pair: load_or_create(&key_dir(&tmp.path().join("web2/state")), Role::Host).unwrap(),
        server: bus::PublicKey::from_arg(&manager_key).unwrap(),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spy_thread = {
        let (sec, stop, publish) = (
            web2_sec.clone(),
            stop.clone(),
            format!("tcp://{c}:{}", bus::endpoints::DEFAULT_PORT_BASE + 1),
        );
        in_netns(&fleet.ns("web2"), move || spy(sec, publish, ready_tx, stop))
    };
    publisher.wait_line("subscription refused: not this peer's topic", T);

    let send = |target: &str, name: &str| {
        let path = tmp.path().join(name).display().to_string();
        let data = json!({"target": target, "name": name, "path": path}).to_string();
        let (code, _, err) = fleet.run(
            "ctl",
            &args_ref(&on_ctl(&["send", "fleet/act", "--data", &data])),
        );
        assert_eq!(code, 0, "send {name}: {err}");
    };
    let expect = [
        ("host/web2", "to-web2", hosts(&["web2"])),
        ("host/web1", "to-web1", hosts(&["web1"])),
        ("group/web", "to-web", hosts(&["web1", "web2"])),
        ("group/db", "to-db", hosts(&["db1"])),
        ("all", "to-all", hosts(&["web1", "web2", "db1"])),
    ];
    for (i, (target, name, _)) in expect.iter().enumerate() {
        send(target, name);
        if i == 0 {
            ready_rx
                .recv_timeout(T)
                .expect("web2's own topic delivered to its spy");
        }
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let spied = spy_thread.join().expect("spy thread");
    assert!(
        spied
            .get("host/web2/")
            .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t == "host/web2/")),
        "web2's own subscription: {spied:?}"
    );
    assert_eq!(spied.get("host/web1/"), None, "web2 received web1's topic");
    assert_eq!(spied.get(""), None, "web2 received topics not its own");

    // web2 sends as web1 over its link, then as itself: the forged event is refused and
    // counted, its own gets in.
    let ingest = format!("tcp://{c}:{}", bus::endpoints::DEFAULT_PORT_BASE);
    in_netns(&fleet.ns("web2"), move || {
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::PUSH).expect("push");
        web2_sec.dial(&s).expect("curve");
        s.set_linger(5_000).expect("linger");
        s.connect(&ingest).expect("connect");
        for (tag, host) in [("fleet/forged", "web1"), ("fleet/own", "web2")] {
            let ev = bus::Event::new(tag, host, json!({}));
            s.send(bus::encode(&ev), 0).expect("send");
        }
    })
    .join()
    .expect("forger thread");
    wait_for("web2's own event", T, || {
        (!history(&ctl_state, "fleet/own").is_empty()).then_some(())
    });
    assert!(
        history(&ctl_state, "fleet/forged").is_empty(),
        "an event web2 sent as web1 got in"
    );
    let (code, out, err) = fleet.run("ctl", &args_ref(&on_ctl(&["status"])));
    assert_eq!(code, 0, "status: {err}");
    let status: Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(status["forged"], 1, "{status}");

    // Send -> applied on web1 across namespaces, one event at a time (paced), from the
    // control node's history: each fleet/act event's time to its actor/result's.
    let n = 100;
    let lines: String = (0..n)
        .map(|i| {
            let name = format!("lat-{i}");
            let path = tmp.path().join(&name).display().to_string();
            format!(
                "{}\n",
                json!({"tag": "fleet/act", "target": "host/web1", "name": name, "path": path})
            )
        })
        .collect();
    let (code, _, err) = fleet.run_with(
        "ctl",
        &args_ref(&on_ctl(&["send", "--stdin", "--rate", "25"])),
        &lines,
    );
    assert_eq!(code, 0, "send --stdin: {err}");
    let done = wait_for("every paced action's result", T, || {
        let got: BTreeMap<String, u64> = history(&ctl_state, "actor/result")
            .iter()
            .filter_map(|e| {
                let name = e["data"]["name"].as_str()?;
                name.starts_with("lat-")
                    .then(|| Some((name.to_string(), e["time"].as_u64()?)))?
            })
            .collect();
        (got.len() == n).then_some(got)
    });
    let sent: BTreeMap<String, u64> = history(&ctl_state, "fleet/act")
        .iter()
        .filter_map(|e| Some((e["data"]["name"].as_str()?.to_string(), e["time"].as_u64()?)))
        .collect();
    let mut lat: Vec<u64> = done
        .iter()
        .map(|(name, at)| at.saturating_sub(sent[name]))
        .collect();
    lat.sort_unstable();

    // The fleet at a glance: every host enrolled with its groups, up, its graphs converged.
    let view = wait_for("every host converged in reflex hosts", T, || {
        let view = hosts_view(&ctl_state);
        fleet_hosts
            .iter()
            .all(|(h, _)| view.get(*h).is_some_and(|r| r["converged"] == true))
            .then_some(view)
    });
    for (host, group) in fleet_hosts {
        let row = &view[host];
        assert_eq!(row["key"], "accepted", "{row}");
        assert_eq!(row["groups"], json!([group]), "{row}");
        assert_eq!(row["up"], true, "{row}");
    }
    assert!(view["web1"]["graphs"]
        .as_array()
        .is_some_and(|g| g.contains(&json!("to-web1"))));

    // db1 cut off: the control node notices, what is published meanwhile reaches db1 once its
    // link is back, exactly once, and its beacon's events of the outage arrive.
    fleet.link("cut", "db1");
    let cut = std::time::Instant::now();
    let cut_ms = now_ms();
    wait_for("host/db1/down on the control node", T, || {
        (!history(&ctl_state, "host/db1/down").is_empty()).then_some(())
    });
    let down_after = cut.elapsed();
    // From the history alone, and through the running manager's presence.
    let online = || host_rows(fleet.run("ctl", &args_ref(&on_ctl(&["hosts", "--json"]))));
    for view in [hosts_view(&ctl_state), online()] {
        assert_eq!(view["db1"]["up"], false, "{}", view["db1"]);
        assert_eq!(view["web1"]["up"], true, "{}", view["web1"]);
    }
    let (_, _, said) = fleet.run("ctl", &args_ref(&on_ctl(&["hosts"])));
    assert!(
        said.contains("up or down from the running manager"),
        "{said}"
    );
    let missed: Vec<String> = (0..20).map(|i| format!("while-cut-{i}")).collect();
    let lines: String = missed
        .iter()
        .map(|name| {
            let path = tmp.path().join(name).display().to_string();
            format!(
                "{}\n",
                json!({"tag": "fleet/act", "target": "all", "name": name, "path": path})
            )
        })
        .collect();
    // And one that lives 3 s: over by the time db1 is back, so never applied there.
    let expiring = "expiring".to_string();
    let lines = format!(
        "{lines}{}\n",
        json!({"tag": "fleet/act", "target": "all", "name": expiring, "expires": 3,
               "path": tmp.path().join(&expiring).display().to_string()})
    );
    let sent_at = std::time::Instant::now();
    let (code, _, err) = fleet.run_with("ctl", &args_ref(&on_ctl(&["send", "--stdin"])), &lines);
    assert_eq!(code, 0, "send --stdin while cut: {err}");
    wait_for("the web hosts' results while db1 is away", T, || {
        let r = results(&ctl_state);
        missed
            .iter()
            .chain([&expiring])
            .all(|m| r.get(m).is_some_and(|g| g.len() == 2))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(4).saturating_sub(sent_at.elapsed()));
    let heal_ms = now_ms();
    fleet.link("heal", "db1");
    let healed = std::time::Instant::now();
    wait_for("db1's results once back", T, || {
        let r = results(&ctl_state);
        missed
            .iter()
            .all(|m| r.get(m).is_some_and(|g| g.contains_key("db1")))
            .then_some(())
    });
    let caught_up = healed.elapsed();
    let outage_beats = wait_for("db1's beacon events of the outage", T, || {
        let n = history(&ctl_state, "beacon/heartbeat")
            .iter()
            .filter(|e| {
                e["host"] == "db1"
                    && e["time"]
                        .as_u64()
                        .is_some_and(|t| t > cut_ms + 500 && t < heal_ms)
            })
            .count();
        (n > 0).then_some(n)
    });
    std::thread::sleep(Duration::from_secs(1));
    let r = results(&ctl_state);
    for m in &missed {
        let got = r.get(m).cloned().unwrap_or_default();
        assert_eq!(
            got.keys().cloned().collect::<BTreeSet<_>>(),
            hosts(&["web1", "web2", "db1"]),
            "{m}"
        );
        assert!(
            got.values().all(|n| *n == 1),
            "{m} applied more than once: {got:?}"
        );
    }
    assert_eq!(
        r.get(&expiring)
            .map(|g| g.keys().cloned().collect::<BTreeSet<_>>()),
        Some(hosts(&["web1", "web2"])),
        "an action over before db1 was back was applied there"
    );
    wait_for("db1 up again in reflex hosts", T, || {
        (online()["db1"]["up"] == true).then_some(())
    });
    eprintln!(
        "fleet figures: send -> applied on web1 across namespaces p50 {} ms, p99 {} ms ({n} \
         paced events); host/db1/down {down_after:?} after the cut; the last of {} missed \
         unexpired actions applied {caught_up:?} after the link came back; {outage_beats} \
         beacon events of the outage delivered after it",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        missed.len()
    );
    drop(beacons);
    drop(actors);
    drop(manager);
    drop(publisher);
    drop(fleet);
}
