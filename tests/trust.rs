//! Hostile clients against one real stack (publisher, manager, real CURVE): a plain client,
//! an unknown key, a host sending as another host, a host key on the control socket and on
//! the monitor, and a key revoked while its connection is up. Each asserts that nothing ran
//! and nothing changed: the one rule writes a register for every event it sees. And the way
//! back: a host rejected, then accepted again, is served again without a restart.

mod common;

use bus::enroll::{AskReply, State};
use bus::secure::Security;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Writes `seen/<mark>` = the event's host for every `t/mark` event that reaches a rule.
const RULE: &str =
    r#"const MATCH = "t/mark"; fn react(e) { registers::set(`seen/${e.data.mark}`, e.host); }"#;

fn reflex_ok(stack: &Stack, args: &[&str]) -> String {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(stack_args(&stack.state, stack.base));
    let (code, out, err) = run(&args_ref(&a));
    assert_eq!(code, 0, "reflex {args:?}: {err}");
    out
}

fn seen(stack: &Stack, mark: &str) -> Value {
    let out = reflex_ok(stack, &["registers", "get", &format!("seen/{mark}")]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("registers get printed {out:?}: {e}"))
}

fn status(stack: &Stack) -> Value {
    serde_json::from_str(&reflex_ok(stack, &["status"])).unwrap()
}

fn mark(push: &zmq::Socket, mark: &str, host: &str) {
    let ev = bus::Event::new("t/mark", host, json!({ "mark": mark }));
    push.send(bus::encode(&ev), 0).unwrap();
}

/// Send `mark` with the admin key and wait until its rule ran: everything an earlier
/// connection sent and the manager took in is processed by then.
fn sync(stack: &Stack, admin: &zmq::Socket, name: &str) {
    mark(admin, name, "admin-sync");
    wait_for(&format!("the admin's {name} to run"), T, || {
        (seen(stack, name) == json!("admin-sync")).then_some(())
    });
}

#[test]
fn hostile_clients_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(tmp.path(), &[("10-mark.rhai", RULE)]);
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let admin = admin_push(&stack.state, stack.base);
    let ep = bus::Endpoints::local(stack.base, &stack.state);
    let server = match admin_security(&stack.state) {
        Security::Curve { server, .. } => server,
        Security::Insecure => unreachable!("the admin security is CURVE"),
    };
    let stranger = Security::Curve {
        pair: bus::KeyPair::generate().unwrap(),
        server,
    };
    let connect = |sec: &Security| bus::secure::connect(zmq::PUSH, &ep.ingest, sec).unwrap();

    // A plain client and an unknown CURVE key: nothing they send gets in.
    let plain = bus::sockets::connect(zmq::PUSH, &ep.ingest).unwrap();
    plain.set_linger(0).unwrap();
    mark(&plain, "plain", "web9");
    let unknown = connect(&stranger);
    unknown.set_linger(0).unwrap();
    mark(&unknown, "unknown", "web9");
    std::thread::sleep(Duration::from_millis(500));
    sync(&stack, &admin, "sync1");
    assert_eq!(seen(&stack, "plain"), Value::Null);
    assert_eq!(seen(&stack, "unknown"), Value::Null);

    // The unknown key asks the enroll door: pending, listed, announced.
    let reply = bus::enroll::ask(&ep.enroll, &stranger, "web9", T).unwrap();
    assert!(
        matches!(reply, AskReply::Known { state: State::Pending, ref name, .. } if name == "web9"),
        "{reply:?}"
    );
    let pending = mon.wait("manager/keys/pending", T, |e| {
        e.tag == "manager/keys/pending"
    });
    assert_eq!(pending.data["name"], "web9");
    let listing = reflex_ok(&stack, &["keys", "list"]);
    let line = listing.lines().find(|l| l.starts_with("web9")).unwrap();
    assert!(line.contains("pending"), "{listing}");

    // Accepted with a group: its events run, as itself.
    reflex_ok(&stack, &["keys", "accept", "web9", "--group", "web"]);
    let web9 = connect(&stranger);
    mark(&web9, "accepted", "web9");
    wait_for("web9's event to run", T, || {
        (seen(&stack, "accepted") == json!("web9")).then_some(())
    });

    // web9 claiming to be web1: refused and counted; its next own event still runs, so the
    // forged one (sent before it on the same connection) was seen and dropped.
    mark(&web9, "forged", "web1");
    mark(&web9, "after-forged", "web9");
    wait_for("web9's event after the forged one", T, || {
        (seen(&stack, "after-forged") == json!("web9")).then_some(())
    });
    assert_eq!(seen(&stack, "forged"), Value::Null);
    assert_eq!(status(&stack)["forged"], 1);

    // A host key on the control socket: no answer, the register unchanged.
    let host_sec = stranger.clone();
    let ctl = bus::secure::connect(zmq::REQ, &ep.control, &host_sec).unwrap();
    ctl.set_linger(0).unwrap();
    ctl.set_rcvtimeo(1000).unwrap();
    let set = json!({"cmd": "registers", "op": "set", "key": "seen/accepted", "value": "owned"});
    ctl.send(set.to_string().as_bytes(), 0).unwrap();
    assert!(
        ctl.recv_bytes(0).is_err(),
        "the control socket answered a host key"
    );
    assert_eq!(seen(&stack, "accepted"), json!("web9"));

    // A host key on the monitor: nothing, while the admin's events flow.
    let (sub, _watch) = bus::secure::connect_watched(zmq::SUB, &ep.monitor, &host_sec).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.set_rcvtimeo(200).unwrap();
    for i in 0..5 {
        mark(&admin, &format!("flow{i}"), "admin-sync");
        assert!(sub.recv_bytes(0).is_err(), "the monitor served a host key");
    }

    // Revoked while its connection is up: what it sends a second later is dropped.
    reflex_ok(&stack, &["keys", "revoke", "web9"]);
    std::thread::sleep(Duration::from_millis(1200));
    mark(&web9, "revoked", "web9");
    std::thread::sleep(Duration::from_millis(300));
    sync(&stack, &admin, "sync2");
    assert_eq!(seen(&stack, "revoked"), Value::Null);
    let st = status(&stack);
    assert_eq!(st["revoked"], 1, "{st}");
    assert_eq!(st["forged"], 1, "{st}");
}

#[test]
fn a_host_rejected_then_accepted_again_comes_back_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(
        tmp.path(),
        &[(
            "10-back.rhai",
            r#"const MATCH = "test/back"; fn react(e) { act("host/back", [#{kind: "noop", name: e.data.label}], #{name: e.data.label}); }"#,
        )],
    );
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let actor = stack.actor_logged("back", &[]);
    mon.wait("the actor up", T, |e| {
        e.tag == "actor/up" && e.host == "back"
    });
    stack.send("test/back", &["label=before"]);
    mon.wait("the result before", T, |e| {
        is_result(e) && e.host == "back" && e.data["name"] == "before"
    });

    // Rejected: the publisher drops its subscription and refuses it from then on. libzmq
    // gives up on a connection the peer refused, so only the actor dialing again can bring
    // it back once the key is accepted again.
    reflex_ok(&stack, &["keys", "reject", "back"]);
    actor.wait_line("refused our key", T);
    mon.seen.clear();
    reflex_ok(&stack, &["keys", "accept", "back"]);
    mon.wait("the actor up again", T, |e| {
        e.tag == "actor/up" && e.host == "back"
    });
    stack.send("test/back", &["label=after"]);
    mon.wait("the result after", T, |e| {
        is_result(e) && e.host == "back" && e.data["name"] == "after"
    });
}
