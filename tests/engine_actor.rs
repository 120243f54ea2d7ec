//! The actor's engine features on a real `reflex actor` process, fed by a publisher and
//! read by a manager that this test plays itself (real ZeroMQ sockets): graph swap by diff,
//! invalid graphs rejected with the old one kept, empty graphs removing a name,
//! `actor/converged`/`actor/diverged`, graphviz output, and graphs plus a pending refresh
//! surviving a kill -9; signed actions: forged, re-signed, replayed and expired ones refused.

mod common;

use bus::envelope::SignKey;
use bus::{Action, Event, Origin, Target};
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Only for waiting; never a bound on how long something took.
const T: Duration = Duration::from_secs(20);

/// The publisher and manager ends the actor talks to.
struct Fake {
    publish: zmq::Socket,
    ingest: std::cell::RefCell<bus::sink::Sink>,
    /// Events taken in and not looked at yet (a frame can hold several).
    unread: std::cell::RefCell<std::collections::VecDeque<Event>>,
    base: u16,
    seq: u64,
    /// What actions are sealed with: the key pinned in the actor's state dir.
    sign: SignKey,
}

impl Fake {
    fn new() -> Fake {
        let base = free_port_base();
        // Plays the manager: takes the actor's results and acknowledges them.
        let ingest = std::cell::RefCell::new(
            bus::sink::Sink::bind(&format!("tcp://127.0.0.1:{base}")).expect("sink"),
        );
        let publish =
            bus::sockets::bind(zmq::PUB, &format!("tcp://127.0.0.1:{}", base + 1)).expect("pub");
        Fake {
            publish,
            ingest,
            unread: Default::default(),
            base,
            seq: 0,
            sign: sign::stranger(),
        }
    }

    /// Start an actor on `state` under `policy` (TOML text, written next to its state dir),
    /// pinning the signing key the fake publisher seals with.
    fn start_actor(&mut self, state: &Path, graphviz: &Path, policy: &str) -> Proc {
        self.start_actor_with(state, graphviz, policy, &[])
    }

    /// [`Fake::start_actor`] with more arguments.
    fn start_actor_with(
        &mut self,
        state: &Path,
        graphviz: &Path,
        policy: &str,
        more: &[&str],
    ) -> Proc {
        self.sign = sign::pin(state);
        let p = |x: &Path| x.display().to_string();
        let policy_file = state.with_file_name("policy.toml");
        std::fs::write(&policy_file, policy).expect("policy file");
        let (publisher, manager) = (
            format!("tcp://127.0.0.1:{}", self.base + 1),
            format!("tcp://127.0.0.1:{}", self.base),
        );
        let (state, graphviz, policy_file) = (p(state), p(graphviz), p(&policy_file));
        let mut args = vec![
            "actor",
            "--name",
            "t",
            "--state",
            &state,
            "--publisher",
            &publisher,
            "--manager",
            &manager,
            "--converged-timeout",
            "0.3",
            "--graphviz",
            &graphviz,
            // This test plays a plain publisher and manager itself.
            "--insecure",
            "--policy",
            &policy_file,
        ];
        args.extend(more);
        let actor = Proc::start("actor", &args);
        self.wait("actor/up", |e| e.tag == "actor/up");
        actor
    }

    /// The next action for this actor, numbered.
    fn action(&mut self, name: &str, graph: Value) -> Action {
        self.seq += 1;
        Action {
            id: bus::new_id(),
            name: name.to_string(),
            seq: self.seq,
            target: Target::parse("host/t").expect("target"),
            graph,
            origin: Origin::default(),
            expires: None,
            life: bus::Life::Keep,
            prev: 0,
        }
    }

    /// Publish a frame under this actor's topic.
    fn send(&self, frame: &[u8]) {
        self.publish
            .send_multipart([b"host/t/".as_slice(), frame], 0)
            .expect("publish");
    }

    fn act(&mut self, name: &str, graph: Value) -> String {
        let action = self.action(name, graph);
        self.send(&sign::sealed(&self.sign, &action));
        action.id
    }

    /// The next event matching `pred`; others are skipped.
    fn wait(&self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            let next = self.unread.borrow_mut().pop_front();
            let Some(ev) = next else {
                let got = self
                    .ingest
                    .borrow_mut()
                    .recv(left.min(Duration::from_millis(500)));
                self.unread.borrow_mut().extend(got);
                continue;
            };
            if pred(&ev) {
                return ev;
            }
        }
    }

    fn result(&self, action: &str) -> Value {
        self.wait(&format!("actor/result for {action}"), |e| {
            e.tag == "actor/result" && e.data["action"] == action
        })
        .data
    }
}

/// A policy admitting files below `dir` and exactly the shell lines `commands`.
fn policy(dir: &Path, commands: &[String]) -> String {
    format!(
        "kinds = [\"file\", \"exec\", \"noop\"]\n[file]\npaths = [\"{}/\"]\n[exec]\ncommands = {}\nusers = [\"*\"]\n",
        p(dir),
        json!(commands)
    )
}

fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_string()
}

fn file(path: &Path, content: &str) -> Value {
    json!({"kind": "file", "name": p(path), "content": content})
}

#[test]
fn swap_reject_remove_and_convergence_events() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let dots = tmp.path().join("dots");
    let mut fake = Fake::new();
    let _actor = fake.start_actor(&tmp.path().join("state"), &dots, &policy(tmp.path(), &[]));

    let id = fake.act("web", json!([file(&a, "a"), file(&b, "b")]));
    let r = fake.result(&id);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(
        r["changed"],
        json!([format!("file:{}", p(&a)), format!("file:{}", p(&b))])
    );
    fake.wait("actor/converged", |e| e.tag == "actor/converged");
    assert!(read(&dots.join("web.dot")).is_some_and(|d| d.contains("digraph")));

    // Swap: `b` is unchanged and keeps running, `a` goes, `c` comes.
    let id = fake.act("web", json!([file(&b, "b"), file(&c, "c")]));
    fake.wait("actor/diverged on the new action", |e| {
        e.tag == "actor/diverged"
    });
    let r = fake.result(&id);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(
        r["changed"],
        json!([format!("file:{}", p(&c))]),
        "only the new resource changes"
    );
    fake.wait("actor/converged after the swap", |e| {
        e.tag == "actor/converged"
    });

    // Drift: `b` (kept) is repaired with a diverged/converged pair; `a` is no longer managed.
    std::fs::write(&a, "mine").unwrap();
    std::fs::write(&b, "tampered").unwrap();
    let rep = fake.wait("b repaired", |e| e.tag == "actor/repaired");
    assert_eq!(rep.data["resource"], format!("file:{}", p(&b)));
    fake.wait("actor/diverged on drift", |e| e.tag == "actor/diverged");
    fake.wait("actor/converged after repair", |e| {
        e.tag == "actor/converged"
    });
    assert_eq!(read(&b).as_deref(), Some("b"));
    assert_eq!(read(&a).as_deref(), Some("mine"));

    // An invalid graph is rejected; the graph in force keeps running.
    let id = fake.act(
        "web",
        json!([{"kind": "file", "name": p(&b), "contents": "typo"}]),
    );
    let r = fake.result(&id);
    assert_eq!(r["status"], "error");
    assert!(
        r["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown field `contents`"),
        "{r}"
    );
    std::fs::remove_file(&c).unwrap();
    wait_for("c repaired by the old graph", T, || {
        read(&c).filter(|s| s == "c")
    });

    // An empty graph removes the name: nothing is repaired any more.
    let id = fake.act("web", json!([]));
    assert_eq!(fake.result(&id)["status"], "ok");
    std::fs::write(&c, "free").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read(&c).as_deref(), Some("free"));
}

#[test]
fn graphs_and_a_pending_refresh_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dots = tmp.path().join("dots");
    let (conf, gate, log) = (
        tmp.path().join("app.conf"),
        tmp.path().join("gate"),
        tmp.path().join("reloads"),
    );
    let mut fake = Fake::new();
    let reload = format!("test -f '{}' && echo reloaded >> '{}'", p(&gate), p(&log));
    let allowed = policy(tmp.path(), std::slice::from_ref(&reload));
    let mut actor = fake.start_actor(&state, &dots, &allowed);
    // A config file that notifies a reload; the reload fails until the gate exists.
    let id = fake.act(
        "app",
        json!({
            "resources": [
                file(&conf, "v1\n"),
                {"kind": "exec", "name": "reload", "refresh_only": true, "cmd": reload},
            ],
            "edges": [{"from": format!("file:{}", p(&conf)), "to": "exec:reload", "notify": true}],
        }),
    );
    let r = fake.result(&id);
    assert_eq!(r["status"], "error", "{r}");
    assert!(read(&dots.join("app.dot")).is_some_and(|d| d.contains("notify")));
    let pending = state.join("actor-t/engine");
    let refreshes = || -> usize {
        walk(&pending)
            .iter()
            .filter(|f| f.parent().is_some_and(|d| d.ends_with("refresh")))
            .count()
    };
    assert_eq!(refreshes(), 1, "the unconsumed refresh must be on disk");

    actor.kill9();
    std::fs::write(&gate, "").unwrap();
    // The file is right by now, so the restored graph sends no new refresh: only the kept one
    // can make the reload run.
    let _actor = fake.start_actor(&state, &dots, &allowed);
    wait_for("the pending reload applied after restart", T, || {
        read(&log).filter(|l| l == "reloaded\n")
    });
    assert_eq!(refreshes(), 0);
    // The restored graph is in force: drift is repaired, and refreshes the reload again.
    std::fs::write(&conf, "tampered\n").unwrap();
    wait_for("repaired and reloaded", T, || {
        read(&log).filter(|l| l.lines().count() == 2)
    });
    assert_eq!(read(&conf).as_deref(), Some("v1\n"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn an_actor_name_that_can_never_match_is_bad_usage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().to_string_lossy().into_owned();
    for args in [
        vec!["actor", "--name", "web/1", "--state", &state, "--insecure"],
        vec![
            "actor",
            "--name",
            "web1",
            "--group",
            "a/b",
            "--state",
            &state,
            "--insecure",
        ],
    ] {
        let (code, _out, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("bad actor name or group"), "{args:?}: {err}");
    }
}

#[test]
fn forged_resigned_replayed_and_expired_actions_are_rejected_and_nothing_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fake = Fake::new();
    let _actor = fake.start_actor(
        &tmp.path().join("state"),
        &tmp.path().join("dots"),
        &policy(tmp.path(), &[]),
    );
    let first = fake.act("ok", json!([file(&tmp.path().join("ok"), "ok")]));
    assert_eq!(fake.result(&first)["status"], "ok");
    let target = |name: &str| tmp.path().join(name);

    // Forged: a sealed frame whose signed header was changed (its last byte, the digest's).
    let forged_action = fake.action("forged", json!([file(&target("forged"), "x")]));
    let frame = sign::sealed(&fake.sign, &forged_action);
    assert_eq!(frame[2], 0xc4, "header as bin8");
    let mut forged = frame.clone();
    forged[3 + usize::from(frame[3])] ^= 1;
    // Re-signed: a whole valid frame, with a key the actor did not pin.
    let resigned = sign::sealed(
        &sign::stranger(),
        &fake.action("resigned", json!([file(&target("resigned"), "x")])),
    );
    // Replayed: validly signed, but at the sequence already applied and not that action.
    let mut old = fake.action("replayed", json!([file(&target("replayed"), "x")]));
    old.seq = 1;
    let replayed = sign::sealed(&fake.sign, &old);
    // Expired: validly signed, new sequence, expiry long past.
    let mut late = fake.action("expired", json!([file(&target("expired"), "x")]));
    late.expires = Some(1);
    let expired = sign::sealed(&fake.sign, &late);

    for (frame, reason) in [
        (forged, "signature"),
        (resigned, "signature"),
        (replayed, "replayed"),
        (expired, "expired"),
    ] {
        fake.send(&frame);
        let r = fake.wait(&format!("actor/rejected ({reason})"), |e| {
            e.tag == "actor/rejected"
        });
        assert_eq!(r.data["reason"], reason, "{}", r.data);
    }
    // A good action after them still runs: the refusals changed nothing in between.
    let last = fake.act("after", json!([file(&target("after"), "after")]));
    assert_eq!(fake.result(&last)["status"], "ok");
    for name in ["forged", "resigned", "replayed", "expired"] {
        assert!(!target(name).exists(), "{name} ran");
    }
}

#[test]
fn the_policy_refuses_what_it_does_not_list_and_the_rest_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok_dir, elsewhere) = (tmp.path().join("ok"), tmp.path().join("elsewhere"));
    let (allowed, refused) = (ok_dir.join("motd"), elsewhere.join("shadow"));
    std::fs::create_dir_all(&ok_dir).unwrap();
    let mut fake = Fake::new();
    let _actor = fake.start_actor(
        &tmp.path().join("state"),
        &tmp.path().join("dots"),
        &policy(&ok_dir, &[]),
    );

    let bad = fake.act("motd", json!([file(&refused, "pwned")]));
    let r = fake
        .wait("actor/rejected", |e| e.tag == "actor/rejected")
        .data;
    assert_eq!(
        (r["action"].as_str(), r["reason"].as_str()),
        (Some(bad.as_str()), Some("policy"))
    );
    assert_eq!(r["rule"], "file.paths", "{r}");
    assert!(
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&p(&refused))),
        "{r}"
    );

    let good = fake.act("motd", json!([file(&allowed, "welcome\n")]));
    let r = fake.result(&good);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(read(&allowed).as_deref(), Some("welcome\n"));
    // A swap the policy refuses leaves the graph in force running.
    let worse = fake.act(
        "motd",
        json!([{"kind": "exec", "name": "x", "argv": ["touch", p(&refused)]}]),
    );
    let r = fake
        .wait("the second actor/rejected", |e| e.tag == "actor/rejected")
        .data;
    assert_eq!(
        (r["action"].as_str(), r["rule"].as_str()),
        (Some(worse.as_str()), Some("exec.commands")),
        "{r}"
    );
    std::fs::write(&allowed, "drift").unwrap();
    wait_for("the graph in force repairs", T, || {
        (read(&allowed).as_deref() == Some("welcome\n")).then_some(())
    });
    assert!(
        !refused.exists() && !elsewhere.exists(),
        "a refused action ran"
    );
}

#[test]
fn the_policy_file_is_checked_at_start_and_printed_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let state = p(tmp.path());
    let (code, out, err) = run(&["actor", "--print-policy", "--state", &state]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("built-in strict policy") && out.contains("kinds"),
        "{out}"
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "kinds = [\"noop\"]\n[file]\npaths = [\"/tmp/../etc/\"]\n",
    )
    .unwrap();
    let (code, _, err) = run(&["actor", "--policy", &p(&bad), "--state", &state]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:3: field `file.paths`"), "{err}");
}

#[test]
fn an_actor_follows_two_publishers_and_applies_an_action_both_deliver_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fake = Fake::new();
    // A second publisher, numbering in a sequence of its own (the cluster's case).
    let second_at = format!("tcp://127.0.0.1:{}", fake.base + 3);
    let second = bus::sockets::bind(zmq::PUB, &second_at).expect("second pub");
    let _actor = fake.start_actor_with(
        &tmp.path().join("state"),
        &tmp.path().join("dots"),
        &policy(tmp.path(), &[]),
        &["--publisher", &second_at, "--no-replay"],
    );
    fake.wait("actor/up from the second publisher", |e| {
        e.tag == "actor/up" && e.data["publisher"] == second_at.as_str()
    });
    let target = |name: &str| tmp.path().join(name);
    // The first publisher is far ahead: x is its 10th, z its 11th.
    fake.seq = 9;
    let x = fake.action("x", json!([file(&target("x"), "x")]));
    let z = fake.action("z", json!([file(&target("z"), "z")]));
    let on_second = |a: &Action| {
        second
            .send_multipart([b"host/t/".as_slice(), &sign::sealed(&fake.sign, a)], 0)
            .expect("publish on the second");
    };
    fake.send(&sign::sealed(&fake.sign, &x));
    assert_eq!(fake.result(&x.id)["status"], "ok");
    // The second sends x on under its own number (a dead manager's outbox), then y.
    let x_again = Action {
        seq: 5,
        ..x.clone()
    };
    on_second(&x_again);
    let y = Action {
        id: bus::new_id(),
        name: "y".into(),
        seq: 6,
        prev: 5,
        graph: json!([file(&target("y"), "y")]),
        ..x.clone()
    };
    on_second(&y);
    // Every event is looked at for a second report of x, whatever is waited for.
    let x_results = std::cell::Cell::new(0);
    let result_of = |id: &str| {
        fake.wait(&format!("actor/result for {id}"), |e| {
            if e.tag == "actor/result" && e.data["action"] == x.id.as_str() {
                x_results.set(x_results.get() + 1);
            }
            e.tag == "actor/result" && e.data["action"] == id
        })
        .data
    };
    assert_eq!(
        result_of(&y.id)["status"],
        "ok",
        "a lower number from another publisher is not a replay"
    );
    fake.send(&sign::sealed(&fake.sign, &z));
    assert_eq!(result_of(&z.id)["status"], "ok");
    // Everything settled: x was reported once in all (a second apply would report again
    // before the actor converged with its three graphs).
    fake.wait("actor/converged with three graphs", |e| {
        if e.tag == "actor/result" && e.data["action"] == x.id.as_str() {
            x_results.set(x_results.get() + 1);
        }
        e.tag == "actor/converged" && e.data["graphs"] == 3
    });
    assert_eq!(
        x_results.get(),
        0,
        "x applied again when the second publisher sent it"
    );
    for name in ["x", "y", "z"] {
        assert_eq!(read(&target(name)).as_deref(), Some(name));
    }
}
