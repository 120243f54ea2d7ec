//! Rules and registers through the real binary: live reload while events flow, loop
//! protection, runaway and disabled rules, time windows, the `rules check|test` tools, the
//! `registers` CLI online and offline, and a test case for every shipped rule.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn registers_cmd(stack: &Stack, args: &[&str]) -> Value {
    let mut a: Vec<String> = vec!["registers".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    a.extend(stack_args(&stack.state, stack.base));
    let (code, out, err) = run(&args_ref(&a));
    assert_eq!(code, 0, "registers {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("registers {args:?} printed {out:?}: {e}"))
}

/// Send many events from a thread, as fast as the socket takes them, with a short pause
/// every 100 so reloads land in the middle of the flow.
fn flow(state: &std::path::Path, base: u16, n: u32) -> std::thread::JoinHandle<()> {
    let push = admin_push(state, base);
    std::thread::spawn(move || {
        for i in 0..n {
            push.send(
                bus::encode(&bus::Event::new("flow/x", "h", json!({"i": i}))),
                0,
            )
            .unwrap();
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(30));
            }
        }
    })
}

/// Wait until the integer register `key` is above `n`.
fn wait_count_above(stack: &Stack, key: &str, n: i64) {
    wait_for(&format!("{key} above {n}"), T, || {
        (registers_cmd(stack, &["get", key]).as_i64().unwrap_or(0) > n).then_some(())
    });
}

/// The first `tag` event about `file` made at or after `after` (Unix ms).
fn wait_rule_event(mon: &mut Monitor, tag: &str, file: &str, after: u64) -> bus::Event {
    mon.wait(&format!("{tag} for {file}"), T, |e| {
        e.tag == tag
            && e.data["file"].as_str().is_some_and(|f| f.ends_with(file))
            && e.time >= after
    })
}

#[test]
fn live_reload_while_events_flow_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(
        tmp.path(),
        &[(
            "00-count.rhai",
            r#"const MATCH = "flow/*"; fn react(e) { registers::incr("count", 1); }"#,
        )],
    );
    let mut mon = Monitor::connect(&stack.state, stack.base);
    let n = 3_000;
    let sender = flow(&stack.state, stack.base, n);
    let extra = stack.rules.join("10-extra.rhai");
    let now = bus::now_ms;

    // add
    let t = now();
    std::fs::write(
        &extra,
        r#"const MATCH = "flow/*"; fn react(e) { registers::incr("extra/v1", 1); }"#,
    )
    .unwrap();
    let loaded = wait_rule_event(&mut mon, "manager/rules/loaded", "10-extra.rhai", t);
    assert!(
        loaded.data["rules"]
            .as_array()
            .unwrap()
            .contains(&json!("10-extra")),
        "{}",
        loaded.data
    );
    wait_count_above(&stack, "extra/v1", 0);
    // change
    let t = now();
    std::fs::write(
        &extra,
        r#"const MATCH = "flow/*"; fn react(e) { registers::incr("extra/v2", 1); }"#,
    )
    .unwrap();
    wait_rule_event(&mut mon, "manager/rules/loaded", "10-extra.rhai", t);
    wait_count_above(&stack, "extra/v2", 0);
    // break: the error names the line, and v2 keeps running
    let t = now();
    std::fs::write(
        &extra,
        "const MATCH = \"flow/*\";\nfn react(e) {\n    registers::incr(\"extra/v3\" 1);\n}\n",
    )
    .unwrap();
    let err = wait_rule_event(&mut mon, "manager/rules/error", "10-extra.rhai", t);
    assert_eq!(err.data["line"], json!(3), "{}", err.data);
    assert!(err.data["message"].as_str().is_some_and(|m| !m.is_empty()));
    let v2 = registers_cmd(&stack, &["get", "extra/v2"])
        .as_i64()
        .unwrap();
    wait_count_above(&stack, "extra/v2", v2); // the old version keeps running
                                              // fix
    let t = now();
    std::fs::write(
        &extra,
        r#"const MATCH = "flow/*"; fn react(e) { registers::incr("extra/v3", 1); }"#,
    )
    .unwrap();
    wait_rule_event(&mut mon, "manager/rules/loaded", "10-extra.rhai", t);
    // delete
    let t = now();
    std::fs::remove_file(&extra).unwrap();
    let removed = wait_rule_event(&mut mon, "manager/rules/removed", "10-extra.rhai", t);

    // Quiet once nothing changes: reading rules must not look like a change. (UUIDv7 ids
    // sort by time, so "after the removal" is a plain comparison.)
    let noise = mon.all_within(Duration::from_millis(600), |e| {
        e.tag.starts_with("manager/rules/") && e.id > removed.id
    });
    assert!(noise.is_empty(), "reload events with no change: {noise:?}");

    sender.join().unwrap();
    wait_for("every event counted", T, || {
        (registers_cmd(&stack, &["get", "count"]) == json!(n)).then_some(())
    });
    let status: Value = serde_json::from_str(
        &run(&args_ref(
            &[
                vec!["status".to_string()],
                stack_args(&stack.state, stack.base),
            ]
            .concat(),
        ))
        .1,
    )
    .unwrap();
    assert_eq!(status["rules"], json!(["00-count"]));
}

#[test]
fn loops_runaways_and_failing_rules_cannot_hurt_the_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(
        tmp.path(),
        &[
            (
                "10-echo.rhai",
                r#"const MATCH = "loop/ping"; fn react(e) { emit("loop/ping", #{n: e.depth}); }"#,
            ),
            (
                "20-spin.rhai",
                r#"const MATCH = "slow/x"; fn react(e) { loop { } }"#,
            ),
            (
                "30-after-spin.rhai",
                r#"const MATCH = "slow/x"; fn react(e) { registers::incr("after-spin", 1); }"#,
            ),
            (
                "40-bad.rhai",
                r#"const MATCH = "bad/x"; fn react(e) { if e.data.fixed != true { throw "broken"; } }"#,
            ),
        ],
    );
    let mut mon = Monitor::connect(&stack.state, stack.base);

    // A rule emitting its own tag: the chain is cut at depth 8 and named.
    stack.send("loop/ping", &[]);
    let lp = mon.wait("manager/loop", T, |e| e.tag == "manager/loop");
    assert_eq!(lp.data["chain"], json!(vec!["10-echo"; 9]), "{}", lp.data);
    let pings = mon.all_within(Duration::from_millis(300), |e| e.tag == "loop/ping");
    assert_eq!(pings.len(), 9, "the outside event and 8 emitted ones");
    assert!(pings.iter().skip(1).all(|e| e.cause.is_some()));

    // loop {} is cut off; the next rule still sees the event; the manager stays responsive.
    for _ in 0..3 {
        stack.send("slow/x", &[]);
    }
    wait_for("the rule after the runaway to run 3 times", T, || {
        (registers_cmd(&stack, &["get", "after-spin"]) == json!(3)).then_some(())
    });

    // 100 failures in a row disable a rule until its file changes.
    let push = admin_push(&stack.state, stack.base);
    for _ in 0..100 {
        push.send(bus::encode(&bus::Event::new("bad/x", "h", json!({}))), 0)
            .unwrap();
    }
    let dis = mon.wait("manager/rules/disabled", T, |e| {
        e.tag == "manager/rules/disabled"
    });
    assert_eq!(dis.data["rule"], "40-bad");
    let t = bus::now_ms();
    std::fs::write(
        stack.rules.join("40-bad.rhai"),
        r#"const MATCH = "bad/x"; fn react(e) { registers::incr("bad-fixed", 1); }"#,
    )
    .unwrap();
    mon.wait("the fixed rule loaded", T, |e| {
        e.tag == "manager/rules/loaded" && e.time >= t
    });
    stack.send("bad/x", &[]);
    wait_for("the re-enabled rule to run", T, || {
        (registers_cmd(&stack, &["get", "bad-fixed"]) == json!(1)).then_some(())
    });
}

#[test]
fn windows_throttles_and_expiry_over_real_time() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::start(
        tmp.path(),
        &[(
            "10-time.rhai",
            r#"const MATCH = "time/*";
               fn react(e) {
                   if e.tag == "time/mark" { registers::mark("m"); registers::set("ttl", 1); registers::expire("ttl", 1); return; }
                   let n = registers::incr("n", 1);
                   registers::set(`r/${n}`, #{ once: once_within("k", 2), seen: registers::seen("m", 2), acc: accumulate("a", 2, 2) });
               }"#,
        )],
    );
    let probe = |n: i64| -> Value {
        stack.send("time/probe", &[]);
        wait_for("the probe to be recorded", T, || {
            let v = registers_cmd(&stack, &["get", &format!("r/{n}")]);
            (!v.is_null()).then_some(v)
        })
    };
    stack.send("time/mark", &[]);
    wait_for("the ttl register", T, || {
        (registers_cmd(&stack, &["get", "ttl"]) == json!(1)).then_some(())
    });
    assert_eq!(probe(1), json!({"once": true, "seen": true, "acc": false}));
    assert_eq!(probe(2), json!({"once": false, "seen": true, "acc": true}));
    std::thread::sleep(Duration::from_millis(2_300));
    assert_eq!(probe(3), json!({"once": true, "seen": false, "acc": false}));
    assert_eq!(
        registers_cmd(&stack, &["get", "ttl"]),
        Value::Null,
        "expired after 1 s"
    );
}

#[test]
fn rules_check_reports_positions_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_rule(&good, "10-a.rhai", "fn react(e) {}");
    let (code, _, err) = run(&["rules", "check", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let bad = tmp.path().join("bad");
    write_rule(&bad, "10-a.rhai", "fn react(e) {}");
    write_rule(&bad, "20-b.rhai", "fn react(e) {\n  let x = ;\n}\n");
    let (code, out, _) = run(&["rules", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let want = format!("{}:2:", bad.join("20-b.rhai").display());
    assert!(out.starts_with(&want), "{out}");
    // The shipped rules all compile, and none builds a shell line from event values.
    let (code, out, err) = run(&["rules", "check", repo().join("rules").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("warning"), "{out}");
    assert!(err.contains(", 0 warnings"), "{err}");

    // A rule that splices an event value into `cmd`: a warning with file:line, still exit 0.
    let spliced = tmp.path().join("spliced");
    write_rule(
        &spliced,
        "10-s.rhai",
        "fn react(event) {
    let n = event.data.name;
    act(\"all\", [#{kind: \"exec\", name: \"r\",
        cmd: `systemctl restart ${n}`}]);
    act(\"all\", [#{kind: \"exec\", name: \"q\", cmd: \"echo \" + shell_quote(n)}]);
}
",
    );
    let (code, out, err) = run(&["rules", "check", spliced.to_str().unwrap()]);
    assert_eq!(code, 0, "a warning does not fail the check: {out}{err}");
    let want = format!(
        "{}:4: warning: exec `cmd` is built from n without shell_quote()",
        spliced.join("10-s.rhai").display()
    );
    assert!(out.starts_with(&want), "{out}");
    assert_eq!(out.lines().count(), 1, "only the unquoted one: {out}");
}

#[test]
fn registers_cli_online_and_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(
        tmp.path(),
        &[(
            "10-n.rhai",
            r#"fn react(e) { registers::incr("seen", 1); }"#,
        )],
    );
    Monitor::connect(&stack.state, stack.base); // the manager is up once its monitor answers
    assert_eq!(
        registers_cmd(&stack, &["set", "cfg/a", r#"{"x": [1, 2]}"#]),
        json!(true)
    );
    assert_eq!(
        registers_cmd(&stack, &["set", "cfg/b", "plain text"]),
        json!(true)
    );
    assert_eq!(
        registers_cmd(&stack, &["get", "cfg/a"]),
        json!({"x": [1, 2]})
    );
    assert_eq!(
        registers_cmd(&stack, &["list", "cfg/"]),
        json!({"cfg/a": {"x": [1, 2]}, "cfg/b": "plain text"})
    );
    assert_eq!(registers_cmd(&stack, &["del", "cfg/b"]), json!(true));
    assert_eq!(
        stack
            .manager
            .as_mut()
            .unwrap()
            .terminate(Duration::from_secs(10)),
        Some(0)
    );
    // Offline: straight from the state dir.
    assert_eq!(
        registers_cmd(&stack, &["get", "cfg/a"]),
        json!({"x": [1, 2]})
    );
    assert_eq!(registers_cmd(&stack, &["set", "cfg/c", "3"]), json!(true));
    assert_eq!(
        registers_cmd(&stack, &["list", "cfg/"]),
        json!({"cfg/a": {"x": [1, 2]}, "cfg/c": 3})
    );
    stack.start_manager();
    Monitor::connect(&stack.state, stack.base);
    assert_eq!(
        registers_cmd(&stack, &["get", "cfg/c"]),
        json!(3),
        "the manager sees offline writes"
    );
}

/// `reflex rules test` on a shipped rule: the parsed JSON report.
fn rule_test(rule: &str, event: Value, seed: Option<Value>) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let path = repo().join("rules").join(rule);
    let mut args = vec![
        "rules".to_string(),
        "test".into(),
        path.display().to_string(),
        "--event".into(),
        event.to_string(),
    ];
    if let Some(seed) = seed {
        let f = tmp.path().join("seed.json");
        std::fs::write(&f, seed.to_string()).unwrap();
        args.extend(["--registers".into(), f.display().to_string()]);
    }
    let (code, out, err) = run(&args_ref(&args));
    let report: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{rule}: {e}: {out} {err}"));
    assert_eq!(code, 0, "{rule}: {report:#}");
    report
}

fn first_action(report: &Value) -> &Value {
    &report["actions"][0]
}

#[test]
fn every_shipped_rule_has_a_test_case() {
    // 10-hello: the file on the sending host.
    let r = rule_test(
        "10-hello.rhai",
        json!({"tag": "demo/hello", "host": "web1", "data": {"path": "/tmp/x", "text": "hi"}}),
        None,
    );
    assert_eq!(first_action(&r)["target"], "host/web1");
    assert_eq!(
        first_action(&r)["graph"],
        json!([{"kind": "file", "name": "/tmp/x", "content": "hi"}])
    );

    // 20-load: the third high sample in a row acts and resets.
    let high = json!({"tag": "beacon/load", "host": "web1", "data": {"load1": 9.0, "cpus": 2}});
    let r = rule_test(
        "20-load.rhai",
        high.clone(),
        Some(json!({"load/high/web1": 2})),
    );
    assert_eq!(
        first_action(&r)["graph"][0]["name"],
        "/tmp/reflex-high-load"
    );
    assert_eq!(r["registers"]["set"]["load/high/web1"], json!(0));
    let r = rule_test("20-load.rhai", high, None);
    assert_eq!(r["actions"], json!([]));
    assert_eq!(r["registers"]["set"]["load/high/web1"], json!(1));
    let low = json!({"tag": "beacon/load", "host": "web1", "data": {"load1": 0.1, "cpus": 2}});
    let r = rule_test("20-load.rhai", low, Some(json!({"load/high/web1": 2})));
    assert_eq!(r["registers"]["deleted"], json!(["load/high/web1"]));

    // 40-sustained-load: one sample is not sustained.
    let r = rule_test(
        "40-sustained-load.rhai",
        json!({"tag": "beacon/load", "host": "h", "data": {"load1": 9.0, "cpus": 1}}),
        None,
    );
    assert_eq!(r["actions"], json!([]));

    // 50-disk-full: the "above" alert cleans the configured cache dir.
    let ev = json!({"tag": "beacon/disk", "host": "db1", "data": {"mount": "/var", "used_pct": 95.0, "alert": "above"}});
    let r = rule_test(
        "50-disk-full.rhai",
        ev,
        Some(json!({"config/disk/cache_dir": "/var/cache/app"})),
    );
    assert_eq!(first_action(&r)["name"], "disk-clean:/var");
    // The folder is an argument of its own: no shell line holds it.
    let clean = &first_action(&r)["graph"][0];
    assert_eq!(clean["cmd"], Value::Null);
    assert_eq!(clean["argv"][0], "sh");
    assert_eq!(clean["argv"][3], "disk-clean");
    assert_eq!(clean["argv"][4], "/var/cache/app");
    assert!(!clean["argv"][2]
        .as_str()
        .unwrap()
        .contains("/var/cache/app"));
    let clear = json!({"tag": "beacon/disk", "host": "db1", "data": {"mount": "/var", "used_pct": 80.0, "alert": "clear"}});
    assert_eq!(
        rule_test("50-disk-full.rhai", clear, None)["actions"],
        json!([])
    );

    // 60-restart-down: an absent process is restarted with its configured command.
    let ev = json!({"tag": "beacon/proc", "host": "web1", "data": {"name": "nginx", "present": false, "count": 0}});
    let r = rule_test(
        "60-restart-down.rhai",
        ev,
        Some(json!({"config/restart/nginx": "service nginx start"})),
    );
    assert_eq!(first_action(&r)["graph"][0]["cmd"], "service nginx start");
    let ev = json!({"tag": "beacon/svc", "host": "web1", "data": {"unit": "cron.service", "state": "failed"}});
    let r = rule_test("60-restart-down.rhai", ev, None);
    let restart = &first_action(&r)["graph"][0];
    assert_eq!(
        restart["argv"],
        json!(["systemctl", "restart", "--", "cron.service"])
    );
    assert_eq!(restart["cmd"], Value::Null);

    // 70-cert-renew: 5 days left renews and alerts; 60 days does nothing.
    let ev = json!({"tag": "beacon/cert", "host": "edge", "data": {"source": "edge.pem", "days_left": 5.5}});
    let r = rule_test("70-cert-renew.rhai", ev, None);
    assert_eq!(
        first_action(&r)["graph"][0]["argv"],
        json!(["certbot", "renew"])
    );
    assert_eq!(r["events"][0]["tag"], "alert/cert/expiring");
    let ev = json!({"tag": "beacon/cert", "host": "edge", "data": {"source": "edge.pem", "days_left": 60}});
    assert_eq!(
        rule_test("70-cert-renew.rhai", ev, None)["actions"],
        json!([])
    );

    // 80-correlate: a failed HTTP check alone does nothing; a deploy marks the host.
    let http =
        json!({"tag": "beacon/http", "host": "web1", "data": {"ok": false, "url": "http://x/"}});
    assert_eq!(
        rule_test("80-correlate.rhai", http, None)["actions"],
        json!([])
    );
    let r = rule_test(
        "80-correlate.rhai",
        json!({"tag": "deploy/finished", "host": "web1", "data": {"version": "1.2"}}),
        None,
    );
    assert_eq!(r["registers"]["set"]["deploy/version/web1"], "1.2");

    // 85-flapping: one state change is not flapping.
    let ev =
        json!({"tag": "beacon/svc", "host": "h", "data": {"unit": "x.service", "state": "active"}});
    assert_eq!(rule_test("85-flapping.rhai", ev, None)["events"], json!([]));

    // 90-result-alert: a failed action raises an alert naming it.
    let ev = json!({"tag": "actor/result", "host": "web1", "data": {"status": "error", "name": "deploy", "errors": ["exec:x: exited with code 1"], "origin": {"event": "e1", "rule": "r"}}});
    let r = rule_test("90-result-alert.rhai", ev, None);
    assert_eq!(r["events"][0]["tag"], "alert/action/failed");
    assert_eq!(r["events"][0]["data"]["name"], "deploy");
    let ok = json!({"tag": "actor/result", "host": "web1", "data": {"status": "ok"}});
    assert_eq!(
        rule_test("90-result-alert.rhai", ok, None)["events"],
        json!([])
    );
}

#[test]
fn shipped_correlation_and_flapping_rules_on_a_live_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = |f: &str| std::fs::read_to_string(repo().join("rules").join(f)).unwrap();
    let (corr, flap) = (shipped("80-correlate.rhai"), shipped("85-flapping.rhai"));
    let stack = Stack::start(
        tmp.path(),
        &[("80-correlate.rhai", &corr), ("85-flapping.rhai", &flap)],
    );
    let mut mon = Monitor::connect(&stack.state, stack.base);

    // A failing HTTP check alone: nothing. A deploy, then a failing check within 30 s: rollback.
    stack.send(
        "beacon/http",
        &["ok=false", "url=http://web1/", "--host", "web1"],
    );
    stack.send("deploy/finished", &["version=1.2.3", "--host", "web1"]);
    stack.send(
        "beacon/http",
        &["ok=false", "url=http://web1/", "--host", "web1"],
    );
    let alert = mon.wait("the correlated alert", T, |e| {
        e.tag == "alert/deploy/broke-http"
    });
    assert_eq!(alert.data["version"], "1.2.3");
    let alerts = mon.all_within(Duration::from_millis(300), |e| {
        e.tag == "alert/deploy/broke-http"
    });
    assert_eq!(
        alerts.len(),
        1,
        "only the check after the deploy correlates"
    );

    // A unit changing state 12 times in a burst: one flapping alert, not twelve.
    let push = admin_push(&stack.state, stack.base);
    for i in 0..12 {
        let state = if i % 2 == 0 { "failed" } else { "active" };
        push.send(
            bus::encode(&bus::Event::new(
                "beacon/svc",
                "web1",
                json!({"unit": "app.service", "state": state}),
            )),
            0,
        )
        .unwrap();
    }
    mon.wait("the flapping alert", T, |e| e.tag == "alert/svc/flapping");
    let flaps = mon.all_within(Duration::from_millis(500), |e| {
        e.tag == "alert/svc/flapping"
    });
    assert_eq!(flaps.len(), 1, "throttled to one alert");
}
