//! Delivery that survives kill -9: a burst of events from `reflex send --stdin`, each making a
//! rule count it in a register and act with a distinct file action on a real actor, while the
//! publisher, the manager and the actor are each killed with SIGKILL and started again. Nothing may be
//! lost and nothing applied twice: the register, the files on disk and the publisher's log
//! must all say exactly N. Counts only, never timings (the pace only places the kills).

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const N: usize = 1_000;

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn restart_publisher(stack: &mut Stack) {
    stack.publisher.kill9();
    let mut a = vec!["publisher".to_string()];
    a.extend(stack_args(&stack.state, stack.base));
    stack.publisher = Proc::start("publisher", &args_ref(&a));
}

/// Every action the publisher logged for `host/d1/`, read from its replay door as the admin.
fn logged_names(stack: &Stack) -> Vec<String> {
    let sec = admin_security(&stack.state);
    let replay = bus::secure::connect(
        zmq::REQ,
        &format!("tcp://127.0.0.1:{}", stack.base + 2),
        &sec,
    )
    .expect("replay");
    replay.set_rcvtimeo(10_000).expect("timeout");
    let req = serde_json::json!({"since": 0, "topics": ["host/d1/"], "limit": 100_000});
    replay.send(req.to_string().as_bytes(), 0).expect("ask");
    let parts = replay.recv_multipart(0).expect("replay answer");
    parts[1..]
        .iter()
        .map(|f| {
            bus::envelope::peek(f, usize::MAX)
                .expect("a sealed frame")
                .name
        })
        .collect()
}

#[test]
fn kill9_of_publisher_manager_and_actor_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let rule = format!(
        "const MATCH = \"burst/event\";\n\
         fn react(event) {{\n\
           registers::incr(\"burst/count\", 1);\n\
           let i = event.data.i;\n\
           act(`host/${{event.host}}`, [#{{ kind: \"file\", name: `{}/f-${{i}}`, content: `${{i}}` }}], #{{ name: `burst-${{i}}` }});\n\
         }}\n",
        out.display()
    );
    let mut stack = Stack::start(tmp.path(), &[("20-burst.rhai", &rule)]);
    let mut actor = stack.actor("d1", &[]);
    // The actor is up once an event through the whole loop lands a file.
    stack.send("burst/event", &["i=warmup", "--host", "d1"]);
    wait_for("the warm-up file", Duration::from_secs(30), || {
        (files(&out) == 1).then_some(())
    });

    // Paced, so each kill lands in the middle of the stream whatever the machine's speed.
    let mut a = vec![
        "send".to_string(),
        "--stdin".into(),
        "--timeout".into(),
        "120".into(),
    ];
    a.extend(["--rate".into(), "250".into()]);
    a.extend(stack_args(&stack.state, stack.base));
    let mut send = Command::new(REFLEX)
        .args(&a)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reflex send --stdin");
    {
        let mut stdin = send.stdin.take().expect("stdin");
        let mut lines = String::new();
        for i in 0..N {
            lines.push_str(&format!(
                "{{\"tag\": \"burst/event\", \"host\": \"d1\", \"i\": {i}}}\n"
            ));
        }
        stdin.write_all(lines.as_bytes()).expect("lines");
    }
    // While the stream flows, each part dies at whatever instruction it is at.
    let at = |n: usize, what: &str| {
        wait_for(what, Duration::from_secs(60), || {
            (files(&out) > n).then_some(())
        });
    };
    at(N / 5, "a fifth of the files");
    restart_publisher(&mut stack);
    at(2 * N / 5, "two fifths of the files");
    stack.manager.as_mut().expect("manager").kill9();
    stack.start_manager();
    at(3 * N / 5, "three fifths of the files");
    actor.kill9();
    actor = stack.actor("d1", &[]);

    let status = send.wait().expect("send ends");
    let mut err = String::new();
    if let Some(mut e) = send.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "reflex send --stdin: {err}");
    assert!(
        err.contains(&format!("{N} events sent, every one acknowledged")),
        "{err}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while files(&out) < N + 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !out.join(format!("f-{i}")).exists())
        .collect();
    assert!(missing.is_empty(), "files never written: {missing:?}");
    let mut g = vec!["registers".to_string(), "get".into(), "burst/count".into()];
    g.extend(stack_args(&stack.state, stack.base));
    let (code, value, err) = run(&args_ref(&g));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        value.trim(),
        (N + 1).to_string(),
        "the register counted each event once"
    );
    let names = logged_names(&stack);
    let distinct: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), N + 1, "every action logged");
    assert_eq!(names.len(), N + 1, "no action logged twice");
    drop(actor);
    for i in [0, N / 2, N - 1] {
        assert_eq!(
            read(&out.join(format!("f-{i}"))).as_deref(),
            Some(i.to_string().as_str())
        );
    }
}

#[test]
fn a_host_whose_heartbeats_stop_is_down_and_up_again_when_it_is_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let shipped = std::fs::read_to_string(repo().join("rules/95-host-down.rhai")).expect("rule");
    let stack = Stack::start(tmp.path(), &[("95-host-down.rhai", &shipped)]);
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let mut actor = stack.actor("p1", &[]);
    let t = Duration::from_secs(30);
    mon.wait("host/p1/up", t, |e| e.tag == "host/p1/up" && e.host == "p1");
    actor.kill9();
    let down = mon.wait("host/p1/down", t, |e| e.tag == "host/p1/down");
    assert_eq!(down.host, "p1");
    assert_eq!(down.data["missed_heartbeats"], 3);
    // The shipped rule raised an alert and keeps the host in its register of hosts down.
    mon.wait("the alert", t, |e| {
        e.tag == "alert/host/down" && e.data["host"] == "p1"
    });
    let reg = |key: &str| {
        let mut g = vec!["registers".to_string(), "get".into(), key.into()];
        g.extend(stack_args(&stack.state, stack.base));
        let (code, out, err) = run(&args_ref(&g));
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    assert_eq!(reg("hosts/down_total"), "1");
    assert_ne!(reg("hosts/down/p1"), "null");
    let _back = stack.actor("p1", &[]);
    let ups = |m: &Monitor| m.seen.iter().filter(|e| e.tag == "host/p1/up").count();
    wait_for("host/p1/up again", t, || {
        mon.all_within(Duration::from_millis(200), |_| false);
        (ups(&mon) == 2).then_some(())
    });
    wait_for("the register cleared", t, || {
        (reg("hosts/down/p1") == "null").then_some(())
    });
    // The admin is not a host: its tools never show up as one.
    assert!(!mon.seen.iter().any(|e| e.tag.starts_with("host/admin")));
}
