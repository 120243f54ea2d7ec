//! Delivery that survives kill -9: a burst of events from `reflex send --stdin`, each making a
//! rule count it in a register and act with a distinct file action on a real actor, while the
//! publisher, the manager and the actor are each killed with SIGKILL and started again. Nothing may be
//! lost and nothing applied twice: the register, the files on disk and the publisher's log
//! must all say exactly N. Counts only, never timings (the pace only places the kills).

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const N: usize = 1_000;

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Which of `<dir>/<prefix>-0 .. n-1` are still not written after up to 60 s.
fn never_written(dir: &Path, prefix: &str, n: usize) -> Vec<usize> {
    let missing = || -> Vec<usize> {
        (0..n)
            .filter(|i| !dir.join(format!("{prefix}-{i}")).exists())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !missing().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    missing()
}

fn restart_publisher(stack: &mut Stack, extra: &[&str]) {
    stack.publisher.kill9();
    let mut a = vec!["publisher".to_string()];
    a.extend(stack_args(&stack.state, stack.base));
    a.extend(extra.iter().map(|s| s.to_string()));
    stack.publisher = Proc::start("publisher", &args_ref(&a));
}

/// `reflex send --stdin` with one JSON line per event; exits 0 once each was acknowledged.
fn send_lines(stack: &Stack, lines: &str, rate: Option<u32>) -> std::process::Child {
    let mut a = vec!["--timeout".to_string(), "120".into()];
    if let Some(r) = rate {
        a.extend(["--rate".into(), r.to_string()]);
    }
    a.extend(stack_args(&stack.state, stack.base));
    spawn_send_stdin(&a, lines.to_string())
}

/// Wait for `send_lines` to end; its stderr, after asserting it succeeded.
fn sent(mut send: std::process::Child) -> String {
    let status = send.wait().expect("send ends");
    let mut err = String::new();
    if let Some(mut e) = send.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "reflex send --stdin: {err}");
    err
}

/// Every action the publisher logged for `topic`, read from its replay door as the admin.
fn logged_names(stack: &Stack, topic: &str) -> Vec<String> {
    let sec = admin_security(&stack.state);
    let replay = bus::secure::connect(
        zmq::REQ,
        &format!("tcp://127.0.0.1:{}", stack.base + 2),
        &sec,
    )
    .expect("replay");
    replay.set_rcvtimeo(10_000).expect("timeout");
    let req = serde_json::json!({"since": 0, "topics": [topic]});
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
    let lines: String = (0..N)
        .map(|i| format!("{{\"tag\": \"burst/event\", \"host\": \"d1\", \"i\": {i}}}\n"))
        .collect();
    let send = send_lines(&stack, &lines, Some(250));
    // While the stream flows, each part dies at whatever instruction it is at.
    let at = |n: usize, what: &str| {
        wait_for(what, Duration::from_secs(60), || {
            (files(&out) > n).then_some(())
        });
    };
    at(N / 5, "a fifth of the files");
    restart_publisher(&mut stack, &[]);
    at(2 * N / 5, "two fifths of the files");
    stack.manager.as_mut().expect("manager").kill9();
    stack.start_manager();
    at(3 * N / 5, "three fifths of the files");
    actor.kill9();
    actor = stack.actor("d1", &[]);

    let err = sent(send);
    assert!(
        err.contains(&format!("{N} events sent, every one acknowledged")),
        "{err}"
    );

    let missing = never_written(&out, "f", N);
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
    let names = logged_names(&stack, "host/d1/");
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

#[test]
fn an_actor_the_publisher_dropped_actions_for_fetches_them_without_reconnecting() {
    const M: usize = 300;
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    // 4 KB per action: a stalled actor's socket buffers fill after a few dozen.
    let rule = format!(
        "const MATCH = \"gap/event\";\n\
         fn react(event) {{\n\
           let i = event.data.i;\n\
           let pad = \"\"; pad.pad(4096, 'x');\n\
           act(`host/${{event.host}}`, [#{{ kind: \"file\", name: `{}/g-${{i}}`, content: `${{i}} ${{pad}}` }}], #{{ name: `gap-${{i}}` }});\n\
         }}\n",
        out.display()
    );
    let mut stack = Stack::start(tmp.path(), &[("20-gap.rhai", &rule)]);
    // A PUB socket that holds 10 messages and 4 KB of kernel buffer per subscriber.
    restart_publisher(&mut stack, &["--send-limits", "10,4096"]);
    let actor = stack.actor_logged("g1", &[]);
    stack.send("gap/event", &["i=warmup", "--host", "g1"]);
    wait_for("the warm-up file", Duration::from_secs(30), || {
        (files(&out) == 1).then_some(())
    });

    // Stalled (not gone: its connection stays up), while the burst is published.
    actor.signal(libc::SIGSTOP);
    let lines: String = (0..M)
        .map(|i| format!("{{\"tag\": \"gap/event\", \"host\": \"g1\", \"i\": {i}}}\n"))
        .collect();
    sent(send_lines(&stack, &lines, None));
    wait_for("the burst logged", Duration::from_secs(60), || {
        (logged_names(&stack, "host/g1/").len() == M + 1).then_some(())
    });
    actor.signal(libc::SIGCONT);

    let missing = never_written(&out, "g", M);
    assert!(missing.is_empty(), "never applied: {missing:?}");
    let seen = actor.wait_line("missed actions", Duration::from_secs(5));
    assert!(
        !seen.iter().any(|l| l.contains("publisher connection lost")),
        "caught up through the gap, not a reconnection: {seen:#?}"
    );
    let last = read(&out.join(format!("g-{}", M - 1))).expect("the last file");
    assert!(last.starts_with(&format!("{} x", M - 1)), "{}", &last[..20]);
}

#[test]
fn actions_live_as_long_as_they_say_and_an_actor_away_past_expiry_applies_only_the_live_ones() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let rule = format!(
        "const MATCH = \"life/event\";\n\
         fn react(event) {{\n\
           let d = event.data;\n\
           let o = #{{ name: d.name }};\n\
           if d.life != () {{ o.life = d.life; }}\n\
           if d.expires != () {{ o.expires = d.expires; }}\n\
           act(`host/${{event.host}}`, [#{{ kind: \"file\", name: `{}/${{d.name}}`, content: d.name }}], o);\n\
         }}\n",
        out.display()
    );
    let stack = Stack::start(tmp.path(), &[("20-life.rhai", &rule)]);
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let mut actor = stack.actor("l1", &[]);
    let t = Duration::from_secs(30);
    let file = |n: &str| out.join(n);
    let send = |fields: &[&str]| {
        let mut f = fields.to_vec();
        f.extend(["--host", "l1"]);
        stack.send("life/event", &f);
    };
    let result = |mon: &mut Monitor, name: &str| {
        mon.wait(&format!("the result of {name}"), t, |e| {
            is_result(e) && e.data["name"] == name && e.data["status"] == "ok"
        });
    };

    // Kept: repaired. Once: applied, then nothing watches it. For 2 s: kept, then released.
    send(&["name=k1"]);
    send(&["name=o1", "life=once"]);
    send(&["name=f1", "life=2"]);
    for n in ["k1", "o1", "f1"] {
        result(&mut mon, n);
    }
    mon.wait("f1 released", t, |e| {
        e.tag == "actor/released" && e.data["name"] == "f1"
    });
    // Removed in this order: had o1 or f1 been watched, they would be back before k1.
    for n in ["o1", "f1", "k1"] {
        std::fs::remove_file(file(n)).expect("remove");
    }
    mon.wait("k1 repaired", t, |e| {
        e.tag == "actor/repaired" && e.data["name"] == "k1"
    });
    wait_for("k1 back", t, || file("k1").exists().then_some(()));
    assert!(!file("o1").exists(), "a one-shot action is not kept");
    assert!(!file("f1").exists(), "a released action is not kept");

    // Away while actions are published: some still live when it is back, some not.
    actor.kill9();
    let t0 = std::time::Instant::now();
    send(&["name=a-keep"]);
    send(&["name=a-once", "life=once"]);
    send(&["name=a-for", "life=2"]);
    send(&["name=a-expires", "expires=2"]);
    send(&["name=a-once-expires", "life=once", "expires=2"]);
    send(&["name=a-for-long", "life=600"]);
    wait_for("their time to pass", Duration::from_secs(10), || {
        (t0.elapsed() > Duration::from_millis(2_500)).then_some(())
    });
    let ups = mon.seen.iter().filter(|e| e.tag == "actor/up").count();
    let _back = stack.actor("l1", &[]);
    wait_for("the actor caught up", t, || {
        mon.all_within(Duration::from_millis(100), |_| false);
        (mon.seen.iter().filter(|e| e.tag == "actor/up").count() > ups).then_some(())
    });
    for n in ["a-keep", "a-once", "a-for-long"] {
        result(&mut mon, n);
        assert_eq!(read(&file(n)).as_deref(), Some(n));
    }
    let results = mon.all_within(Duration::from_millis(500), is_result);
    for n in ["a-keep", "a-once", "a-for-long"] {
        let count = results.iter().filter(|e| e.data["name"] == n).count();
        assert_eq!(count, 1, "{n} applied once");
    }
    for n in ["a-for", "a-expires", "a-once-expires", "o1", "f1"] {
        assert!(
            !file(n).exists(),
            "{n}: expired or released, never applied again"
        );
        assert!(
            !results
                .iter()
                .any(|e| e.data["name"] == n && e.time > t0_ms(&t0)),
            "{n} has no result after the restart"
        );
    }
}

/// `t0` (an `Instant`) as Unix ms.
fn t0_ms(t0: &std::time::Instant) -> u64 {
    bus::now_ms().saturating_sub(t0.elapsed().as_millis() as u64)
}
