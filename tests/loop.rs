//! The whole loop on real processes and sockets: `reflex up`, send, tail, drift repair, bad
//! frames, targeting, registers across a kill -9.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[test]
fn up_send_tail_repair_and_clean_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let state = tmp.path().join("state");
    let rules = repo().join("rules");
    let mut sa = stack_args(&state, base);
    sa.extend([
        "--rules".into(),
        rules.display().to_string(),
        "--name".into(),
        "testhost".into(),
    ]);
    let mut up = Proc::start(
        "up",
        &args_ref(&[vec!["up".to_string()], sa.clone()].concat()),
    );
    up.wait_line("reflex is up", T);
    // The state dir holds the keys, registers, action log and ipc link: owner only.
    for dir in [
        state.clone(),
        state.join("publisher"),
        state.join("registers"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }

    let tail = Proc::start(
        "tail",
        &args_ref(&[vec!["tail".to_string()], stack_args(&state, base)].concat()),
    );
    let mut mon = Monitor::connect(&state, base);
    std::thread::sleep(Duration::from_millis(300)); // let tail's subscription land too

    let target = tmp.path().join("hello");
    let path = target.display().to_string();
    let (code, out, err) = run(&args_ref(
        &[
            vec![
                "send".into(),
                "demo/hello".into(),
                format!("path={path}"),
                "text=hi".into(),
                "--host".into(),
                "testhost".into(),
            ],
            stack_args(&state, base),
        ]
        .concat(),
    ));
    assert_eq!(code, 0, "send failed: {err}");
    let event_id = out.trim().to_string();

    wait_for("the file with the text", T, || {
        read(&target).filter(|c| c == "hi")
    });
    let result = mon.wait("actor/result for the hello action", T, |e| {
        is_result(e) && e.data["name"] == json!(format!("hello:{path}"))
    });
    assert_eq!(result.host, "testhost");
    assert_eq!(result.data["status"], "ok", "{}", result.data);
    assert_eq!(result.data["changed"], json!([format!("file:{path}")]));

    // Drift: deleted, then overwritten; each time it is put back.
    std::fs::remove_file(&target).unwrap();
    wait_for("the deleted file to come back", T, || {
        read(&target).filter(|c| c == "hi")
    });
    std::fs::write(&target, "tampered").unwrap();
    wait_for("the overwritten file to be restored", T, || {
        read(&target).filter(|c| c == "hi")
    });
    mon.wait("an actor/repaired event", T, |e| e.tag == "actor/repaired");

    // tail showed the event, the rule hit, the action and the result, one line each.
    let lines = tail.drain_lines(Duration::from_millis(500)).join("\n");
    for want in [
        event_id.as_str(),
        "hit    demo/hello",
        "action hello:",
        "actor/result",
    ] {
        assert!(lines.contains(want), "tail output lacks {want:?}:\n{lines}");
    }

    // The history answers afterwards: the event's trace, and the event among `reflex events`.
    let history = |args: &[&str]| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--state".into(), state.display().to_string()]);
        run(&args_ref(&a))
    };
    let tree = wait_for("a trace down to the repair", T, || {
        let (code, out, err) = history(&["trace", &event_id, "--json"]);
        assert_eq!(code, 0, "trace failed: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("trace --json is JSON");
        let reports = &v["tree"]["hits"][0]["actions"][0]["reports"];
        let tags: Vec<&str> = reports
            .as_array()?
            .iter()
            .filter_map(|r| r["tag"].as_str())
            .collect();
        (tags.first() == Some(&"actor/result") && tags.contains(&"actor/repaired")).then_some(v)
    });
    let hit = &tree["tree"]["hits"][0];
    assert_eq!(hit["rule"], "10-hello");
    assert_eq!(
        hit["actions"][0]["action"]["name"],
        json!(format!("hello:{path}"))
    );
    let report = &hit["actions"][0]["reports"][0];
    assert_eq!(report["host"], "testhost");
    assert_eq!(report["data"]["status"], "ok");
    let (code, text, _) = history(&["trace", &event_id]);
    assert_eq!(code, 0);
    for want in [
        "demo/hello",
        "rule 10-hello",
        "action ",
        "testhost actor/result ok",
        "actor/repaired",
    ] {
        assert!(text.contains(want), "trace lacks {want:?}:\n{text}");
    }
    let (code, _, err) = history(&["trace", "0190aaaa-0000-7000-8000-000000000000"]);
    assert_eq!(code, 1);
    assert!(err.contains("pruned") || err.contains("no such"), "{err}");
    let (code, out, err) = history(&["events", "--tag", "demo/*", "--since", "10m", "--json"]);
    assert_eq!(code, 0, "events failed: {err}");
    assert!(
        out.lines().any(|l| l.contains(&event_id)),
        "events lacks {event_id}:\n{out}"
    );

    // A part that dies is reported and restarted: kill the manager hard, a new one takes over.
    let old = child_pid(up.pid(), "manager").expect("up runs a manager child");
    unsafe {
        libc::kill(old, libc::SIGKILL);
    }
    let new = wait_for("a restarted manager", T, || {
        child_pid(up.pid(), "manager").filter(|&p| p != old)
    });
    assert_ne!(new, old);
    let second = tmp.path().join("after-restart");
    let (code, _, err) = run(&args_ref(
        &[
            vec![
                "send".into(),
                "demo/hello".into(),
                format!("path={}", second.display()),
                "text=again".into(),
                "--host".into(),
                "testhost".into(),
                "--timeout".into(),
                "15".into(),
            ],
            stack_args(&state, base),
        ]
        .concat(),
    ));
    assert_eq!(code, 0, "send after restart failed: {err}");
    wait_for("the restarted manager to act", T, || {
        read(&second).filter(|c| c == "again")
    });
    // What the killed manager wrote is still there to be asked.
    let (code, text, err) = history(&["trace", &event_id]);
    assert_eq!(code, 0, "trace after kill -9: {err}");
    assert!(text.contains("rule 10-hello"), "{text}");

    // SIGTERM stops every child and exits 0; the ports are free again afterwards.
    assert_eq!(up.terminate(Duration::from_secs(15)), Some(0));
    for port in base..base + 5 {
        wait_for(
            "the stack's ports to be released",
            Duration::from_secs(5),
            || std::net::TcpListener::bind(("127.0.0.1", port)).ok(),
        );
    }
}

#[test]
fn bad_frames_are_counted_and_a_good_event_still_acts() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let state = tmp.path().join("state");
    let mut sa = stack_args(&state, base);
    sa.extend([
        "--rules".into(),
        repo().join("rules").display().to_string(),
        "--name".into(),
        "badhost".into(),
    ]);
    let up = Proc::start("up", &args_ref(&[vec!["up".to_string()], sa].concat()));
    up.wait_line("reflex is up", T);

    let push = admin_push(&state, base);
    let good = bus::encode(&bus::Event::new("demo/x", "h", json!({"k": "v"})));
    let mut random: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    random[0] = 1; // right version byte, garbage after it
    let frames: Vec<Vec<u8>> = vec![
        random,
        vec![],                                  // empty
        good[..good.len() / 2].to_vec(),         // truncated msgpack
        vec![bus::VERSION; bus::MAX_FRAME + 10], // oversize
        vec![9, 0x80],                           // unknown version
    ];
    for f in &frames {
        push.send(&f[..], 0).unwrap();
    }
    let target = tmp.path().join("after-garbage");
    let ev = bus::Event::new(
        "demo/hello",
        "badhost",
        json!({"path": target.display().to_string(), "text": "still alive"}),
    );
    push.send(bus::encode(&ev), 0).unwrap();
    wait_for("the good event after the garbage to act", T, || {
        read(&target).filter(|c| c == "still alive")
    });

    let (code, out, err) = run(&args_ref(
        &[vec!["status".to_string()], stack_args(&state, base)].concat(),
    ));
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        stats["malformed"],
        json!({"empty": 1, "malformed": 2, "oversize": 1, "version": 1}),
        "{stats}"
    );
}

#[test]
fn send_without_a_manager_fails_clearly() {
    let base = free_port_base();
    let tmp = tempfile::tempdir().unwrap();
    // A tool on a host of its own: its keys in its state dir, the manager's key given.
    let (code, _, err) = run(&[
        "send",
        "demo/x",
        "--port-base",
        &base.to_string(),
        "--timeout",
        "0.5",
        "--state",
        tmp.path().to_str().unwrap(),
        "--manager-key",
        &bus::PublicKey([7; 32]).to_hex(),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no manager answered"), "{err}");
    let (code, _, err) = run(&[
        "send",
        "demo/x",
        "novalue",
        "--port-base",
        &base.to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KEY=VALUE"), "{err}");
}

#[test]
fn targeting_reaches_the_named_host_not_a_longer_name() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(
        tmp.path(),
        &[(
            "10-target.rhai",
            r#"const MATCH = "test/target"; fn react(e) { act(e.data.target, [#{kind: "noop", name: e.data.label}], #{name: e.data.label}); }"#,
        )],
    );
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let _a = stack.actor("a", &[]);
    let _ab = stack.actor("ab", &["g1"]);
    for who in ["a", "ab"] {
        mon.wait(&format!("actor {who} up"), T, |e| {
            e.tag == "actor/up" && e.host == who
        });
    }

    stack.send("test/target", &["target=host/a", "label=only-a"]);
    mon.wait("a's result", T, |e| {
        is_result(e) && e.host == "a" && e.data["name"] == "only-a"
    });
    stack.send("test/target", &["target=group/g1", "label=group"]);
    mon.wait("ab's group result", T, |e| {
        is_result(e) && e.host == "ab" && e.data["name"] == "group"
    });
    stack.send("test/target", &["target=all", "label=everyone"]);
    mon.wait("a's broadcast result", T, |e| {
        is_result(e) && e.host == "a" && e.data["name"] == "everyone"
    });
    mon.wait("ab's broadcast result", T, |e| {
        is_result(e) && e.host == "ab" && e.data["name"] == "everyone"
    });

    // ab was alive and subscribed throughout, yet never ran the action for host/a; a never ran
    // the group action.
    let wrong = mon.all_within(Duration::from_millis(300), |e| {
        is_result(e)
            && ((e.host == "ab" && e.data["name"] == "only-a")
                || (e.host == "a" && e.data["name"] == "group"))
    });
    assert!(wrong.is_empty(), "misdelivered: {wrong:?}");
}

#[test]
fn registers_survive_a_manager_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("count");
    let mut stack = Stack::start(
        tmp.path(),
        &[(
            "10-count.rhai",
            r#"const MATCH = "test/count";
               fn react(e) {
                   let n = registers::incr("count", 1);
                   act("host/counter", [#{kind: "file", name: e.data.path, content: `${n}`}]);
               }"#,
        )],
    );
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let _actor = stack.actor("counter", &[]);
    mon.wait("the actor up", T, |e| {
        e.tag == "actor/up" && e.host == "counter"
    });
    let path = format!("path={}", out.display());
    for _ in 0..3 {
        stack.send("test/count", &[&path]);
    }
    wait_for("the count to reach 3", T, || {
        read(&out).filter(|c| c == "3")
    });

    // The manager flushes as soon as it is idle; give it that moment, then kill it hard.
    std::thread::sleep(Duration::from_millis(500));
    stack.manager.as_mut().unwrap().kill9();
    stack.start_manager();
    stack.send("test/count", &[&path]);
    wait_for("the count to continue at 4 after the restart", T, || {
        read(&out).filter(|c| c == "4")
    });
}

#[test]
fn a_late_or_restarted_actor_catches_up_from_the_publishers_log() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("late");
    let stack = Stack::start(
        tmp.path(),
        &[(
            "10-late.rhai",
            r#"const MATCH = "test/late"; fn react(e) { act("host/late", [#{kind: "file", name: e.data.path, content: e.data.text}], #{name: "late"}); }"#,
        )],
    );
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let path = format!("path={}", out.display());
    // Published while no actor named "late" exists.
    stack.send("test/late", &[&path, "text=v1"]);
    mon.wait("the action published", T, |e| e.tag == "test/late");
    std::thread::sleep(Duration::from_millis(300));
    assert!(read(&out).is_none());

    let mut actor = stack.actor("late", &[]);
    wait_for("the late actor to apply what it missed", T, || {
        read(&out).filter(|c| c == "v1")
    });

    // Down while the action changes; on its return it takes the newest version.
    assert_eq!(actor.terminate(Duration::from_secs(10)), Some(0));
    stack.send("test/late", &[&path, "text=v2"]);
    stack.send("test/late", &[&path, "text=v3"]);
    std::thread::sleep(Duration::from_millis(300));
    let _actor = stack.actor("late", &[]);
    wait_for("the restarted actor to catch up to v3", T, || {
        read(&out).filter(|c| c == "v3")
    });
}
