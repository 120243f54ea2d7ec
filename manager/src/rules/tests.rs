//! The rule engine against real rule files: matching, failures, limits, reloads, registers.

use super::*;
use serde_json::json;

fn rules_with(sources: &[(&str, &str)]) -> (Rules, Vec<LoadError>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, src) in sources {
        std::fs::write(dir.path().join(name), src).unwrap();
    }
    let mut r = Rules::new(Registers::temporary().unwrap(), &Limits::default());
    let errs = r
        .load_dir(dir.path())
        .unwrap()
        .into_iter()
        .filter_map(|c| match c {
            Change::Failed(e) => Some(e),
            _ => None,
        })
        .collect();
    (r, errs)
}

#[test]
fn matching_rule_acts_and_counts() {
    let (mut r, errs) = rules_with(&[
        (
            "10-a.rhai",
            r#"const MATCH = "demo/*"; fn react(e) { let n = registers::incr("n/" + e.host, 1); act("host/" + e.host, [#{kind: "noop", name: `n${n}`}]); }"#,
        ),
        (
            "20-b.rhai",
            r#"const MATCH = ["other/x"]; fn react(e) { act("all", []); }"#,
        ),
    ]);
    assert!(errs.is_empty(), "{errs:?}");
    let mut out = Produced::default();
    r.run(&Event::new("demo/hello", "web1", json!({})), &mut out);
    r.run(&Event::new("demo/hello", "web1", json!({})), &mut out);
    assert_eq!(out.actions.len(), 2);
    assert_eq!(out.actions[1].target, "host/web1");
    assert_eq!(out.actions[1].name, "10-a");
    assert_eq!(
        out.actions[1].graph,
        json!([{"kind": "noop", "name": "n2"}])
    );
    assert_eq!(out.hits.len(), 2);
    assert!(out.errors.is_empty());
}

#[test]
fn bad_rules_are_reported_with_position_and_others_load() {
    let (r, errs) = rules_with(&[
        ("a.rhai", "fn react(e) { let x = ; }"),
        ("b.rhai", "fn nope() {}"),
        ("c.rhai", "fn react(e) {}"),
    ]);
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].line, Some(1));
    assert!(errs[1].message.contains("react"));
    assert_eq!(r.rules().len(), 1);
}

#[test]
fn runaway_and_throwing_rules_are_cut_off_and_others_run() {
    let (mut r, _) = rules_with(&[
        ("10-loop.rhai", "fn react(e) { act(\"all\", []); loop {} }"),
        ("20-throw.rhai", "fn react(e) { throw \"boom\"; }"),
        (
            "30-badgraph.rhai",
            "fn react(e) { act(\"all\", [#{kind: \"nope\", name: \"x\"}]); }",
        ),
        ("40-badtarget.rhai", "fn react(e) { act(\"hosts/x\", []); }"),
        (
            "50-ok.rhai",
            "fn react(e) { act(\"group/db\", [], #{name: \"fine\"}); }",
        ),
    ]);
    let mut out = Produced::default();
    r.run(&Event::new("x", "h", json!(null)), &mut out);
    assert_eq!(out.errors.len(), 4, "{:?}", out.errors);
    assert!(
        out.errors[0]
            .message
            .to_lowercase()
            .contains("too many operations"),
        "{:?}",
        out.errors[0]
    );
    assert!(out.errors[1].message.contains("boom"));
    assert!(out.errors[2].message.contains("nope"));
    assert!(out.errors[3].message.contains("bad target"));
    assert_eq!(
        out.actions.len(),
        1,
        "the looping rule's action is discarded"
    );
    assert_eq!(out.actions[0].name, "fine");
}

#[test]
fn no_eval_no_import() {
    let (_, errs) = rules_with(&[
        ("a.rhai", "fn react(e) { eval(\"1\"); }"),
        ("b.rhai", "import \"x\" as y; fn react(e) {}"),
    ]);
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn stop_ends_the_event_and_emit_carries_data() {
    let (mut r, _) = rules_with(&[
        (
            "10-first.rhai",
            r#"fn react(e) { emit("derived/x", #{from: e.tag, n: 1}); stop(); }"#,
        ),
        ("20-never.rhai", r#"fn react(e) { act("all", []); }"#),
    ]);
    let mut out = Produced::default();
    r.run(&Event::new("a/b", "h", json!(null)), &mut out);
    assert!(out.actions.is_empty(), "the rule after stop() did not run");
    assert_eq!(out.hits.len(), 1);
    assert_eq!(out.emitted.len(), 1);
    assert_eq!(out.emitted[0].rule, "10-first");
    assert_eq!(out.emitted[0].data, json!({"from": "a/b", "n": 1}));
}

#[test]
fn a_rule_failing_100_times_in_a_row_is_disabled() {
    let (mut r, _) = rules_with(&[(
        "10-flaky.rhai",
        r#"fn react(e) { if e.data.ok != true { throw "no"; } }"#,
    )]);
    let mut out = Produced::default();
    for _ in 0..99 {
        r.run(&Event::new("t", "h", json!({})), &mut out);
    }
    // A success resets the count.
    r.run(&Event::new("t", "h", json!({"ok": true})), &mut out);
    for _ in 0..99 {
        r.run(&Event::new("t", "h", json!({})), &mut out);
    }
    assert!(out.disabled.is_empty());
    assert!(!r.rules()[0].disabled);
    r.run(&Event::new("t", "h", json!({})), &mut out);
    assert_eq!(out.disabled.len(), 1);
    assert!(r.rules()[0].disabled);
    out.clear();
    r.run(&Event::new("t", "h", json!({"ok": true})), &mut out);
    assert!(out.hits.is_empty(), "a disabled rule does not run");
}

#[test]
fn reload_keeps_the_old_version_when_the_new_one_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("10-r.rhai");
    std::fs::write(&file, r#"fn react(e) { act("all", [], #{name: "v1"}); }"#).unwrap();
    let mut r = Rules::new(Registers::temporary().unwrap(), &Limits::default());
    r.load_dir(dir.path()).unwrap();
    std::fs::write(&file, "fn react(e) { act(").unwrap();
    assert!(matches!(r.reload(&file), Some(Change::Failed(_))));
    let mut out = Produced::default();
    r.run(&Event::new("t", "h", json!(null)), &mut out);
    assert_eq!(out.actions[0].name, "v1", "old version still runs");
    std::fs::write(&file, r#"fn react(e) { act("all", [], #{name: "v2"}); }"#).unwrap();
    assert_eq!(r.reload(&file), Some(Change::Loaded { file: file.clone() }));
    let second = dir.path().join("05-early.rhai");
    std::fs::write(
        &second,
        r#"fn react(e) { act("all", [], #{name: "early"}); }"#,
    )
    .unwrap();
    r.reload(&second);
    out.clear();
    r.run(&Event::new("t", "h", json!(null)), &mut out);
    let names: Vec<&str> = out.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["early", "v2"],
        "file-name order kept across reloads"
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(r.reload(&file), Some(Change::Removed { file }));
    assert_eq!(r.rules().len(), 1);
}

#[test]
fn register_helpers_are_reachable_from_rules() {
    let (mut r, errs) = rules_with(&[(
        "10-reg.rhai",
        r#"fn react(e) {
            registers::set("s", #{a: [1, 2.5, "x", true]});
            let w = registers::window("w", e.data.v, 60);
            registers::mark("m");
            let first = once_within("t", 60);
            let again = registers::once_within("t", 60);
            let acc = accumulate("acc", 2, 60);
            registers::expire("s", 3600);
            emit("out", #{w: w, seen: registers::seen("m", 10), first: first, again: again, acc: acc, keys: registers::keys("")});
        }"#,
    )]);
    assert!(errs.is_empty(), "{errs:?}");
    let mut out = Produced::default();
    r.run(&Event::new("t", "h", json!({"v": 4})), &mut out);
    r.run(&Event::new("t", "h", json!({"v": 2.0})), &mut out);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let last = &out.emitted[1].data;
    assert_eq!(
        last["w"],
        json!({"count": 2, "sum": 6.0, "avg": 3.0, "min": 2.0, "max": 4.0})
    );
    assert_eq!(last["seen"], json!(true));
    assert_eq!(out.emitted[0].data["first"], json!(true));
    assert_eq!(out.emitted[0].data["again"], json!(false));
    assert_eq!(last["first"], json!(false));
    assert_eq!(out.emitted[0].data["acc"], json!(false));
    assert_eq!(last["acc"], json!(true));
    assert_eq!(last["keys"], json!(["s"]));
}

/// The shipped restart rule as it was before argv: a manually quoted splice.
const SPLICING: &str = r#"fn react(e) {
    let name = e.data.name;
    act("all", [#{kind: "exec", name: "restart", cmd: `systemctl restart '${name}'`}]);
}"#;

fn proc_event(name: &str) -> Event {
    Event::new(
        "beacon/proc",
        "web1",
        json!({"present": false, "name": name}),
    )
}

#[test]
fn an_event_value_spliced_into_cmd_fails_the_rule_naming_file_and_field() {
    let (mut r, errs) = rules_with(&[
        ("10-splice.rhai", SPLICING),
        (
            "20-ok.rhai",
            r#"fn react(e) { act("all", [], #{name: "other"}); }"#,
        ),
    ]);
    assert!(errs.is_empty(), "{errs:?}");
    let mut out = Produced::default();
    r.run(&proc_event("x'; id > /tmp/p; echo '"), &mut out);
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    let msg = &out.errors[0].message;
    assert_eq!(out.errors[0].rule, "10-splice");
    assert!(
        msg.contains("10-splice.rhai: act (line 3): `exec:restart.cmd`"),
        "{msg}"
    );
    assert!(msg.contains("data.name"), "{msg}");
    assert!(msg.contains("shell_quote"), "{msg}");
    // Nothing of the failed rule is appended; the next rule still runs.
    assert_eq!(out.actions.len(), 1);
    assert_eq!(out.actions[0].name, "other");

    // A value of safe characters cannot change the syntax: allowed.
    let mut out = Produced::default();
    r.run(&proc_event("nginx.service"), &mut out);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(
        out.actions[0].graph[0]["cmd"],
        "systemctl restart 'nginx.service'"
    );
}

#[test]
fn quoted_values_argv_and_other_kinds_pass_and_every_shell_field_is_checked() {
    let (mut r, errs) = rules_with(&[
        (
            "10-quoted.rhai",
            r#"fn react(e) { act("all", [#{kind: "exec", name: "q", cmd: "systemctl restart " + shell_quote(e.data.name)}], #{name: "quoted"}); }"#,
        ),
        (
            "20-argv.rhai",
            r#"fn react(e) { act("all", [#{kind: "exec", name: "a", argv: ["systemctl", "restart", e.data.name]}], #{name: "argv"}); }"#,
        ),
        (
            "30-file.rhai",
            r#"fn react(e) { act("all", [#{kind: "file", name: "/tmp/reflex-x", content: e.data.name}], #{name: "file"}); }"#,
        ),
        (
            "40-ifcmd.rhai",
            r#"fn react(e) { act("all", [#{kind: "exec", name: "i", argv: ["true"], ifcmd: "pgrep " + e.data.name}]); }"#,
        ),
        (
            "50-watchcmd.rhai",
            r#"fn react(e) { act("all", [#{kind: "exec", name: "w", argv: ["true"], watchcmd: `tail -f ${e.data.name}`}]); }"#,
        ),
        (
            "60-tag.rhai",
            r#"fn react(e) { act("all", [#{kind: "exec", name: "t", cmd: "logger " + e.tag}]); }"#,
        ),
    ]);
    assert!(errs.is_empty(), "{errs:?}");
    let mut out = Produced::default();
    let mut ev = proc_event("$(touch /tmp/reflex-pwned)");
    ev.tag = "beacon/proc;reboot".into();
    r.run(&ev, &mut out);
    let names: Vec<&str> = out.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["quoted", "argv", "file"]);
    let failed: Vec<(&str, bool)> = out
        .errors
        .iter()
        .map(|e| (e.rule.as_str(), e.message.contains("holds the event's")))
        .collect();
    assert_eq!(
        failed,
        [("40-ifcmd", true), ("50-watchcmd", true), ("60-tag", true)],
        "{:?}",
        out.errors
    );
    assert!(out.errors[0].message.contains("`exec:i.ifcmd`"));
    assert!(out.errors[1].message.contains("`exec:w.watchcmd`"));
    assert!(out.errors[2].message.contains("the event's tag"));
    assert_eq!(
        out.actions[0].graph[0]["cmd"],
        "systemctl restart '$(touch /tmp/reflex-pwned)'"
    );
}

#[test]
fn shell_quote_is_there_for_rules() {
    let (mut r, _) = rules_with(&[(
        "10-q.rhai",
        r#"fn react(e) { emit("quoted/x", #{q: shell_quote("it's")}); }"#,
    )]);
    let mut out = Produced::default();
    r.run(&Event::new("a/b", "h", json!(null)), &mut out);
    assert_eq!(out.emitted[0].data["q"], r"'it'\''s'");
}

#[test]
fn an_action_says_how_long_it_lives_and_a_bad_life_fails_the_rule() {
    let (mut r, errs) = rules_with(&[(
        "10-a.rhai",
        r#"const MATCH = "demo/*"; fn react(e) {
            let g = [#{kind: "noop", name: "n"}];
            act("all", g, #{name: "k"});
            act("all", g, #{name: "o", life: "once"});
            act("all", g, #{name: "f", life: 30, expires: 600});
            act("all", g, #{name: "e", life: 600, expires: 30});
            if e.data.bad == 1 { act("all", g, #{life: "forever"}); }
            if e.data.bad == 2 { act("all", g, #{life: 0}); }
        }"#,
    )]);
    assert!(errs.is_empty(), "{errs:?}");
    let mut out = Produced::default();
    let before = bus::now_ms();
    r.run(&Event::new("demo/x", "h", json!({"bad": 0})), &mut out);
    let lives: Vec<_> = out
        .actions
        .iter()
        .map(|a| (a.name.as_str(), a.life))
        .collect();
    assert_eq!(
        lives,
        [
            ("k", bus::Life::Keep),
            ("o", bus::Life::Once),
            ("f", bus::Life::For(30)),
            ("e", bus::Life::For(600))
        ]
    );
    assert_eq!(out.actions[0].expires, None);
    // A lifetime ends the action: it is never started after its end, whichever comes first.
    let within = |a: &Action, secs: u64| {
        let e = a.expires.expect("expires");
        e >= before + secs * 1000 && e <= bus::now_ms() + secs * 1000
    };
    assert!(within(&out.actions[2], 30));
    assert!(within(&out.actions[3], 30));
    for bad in [1, 2] {
        let mut out = Produced::default();
        r.run(&Event::new("demo/x", "h", json!({"bad": bad})), &mut out);
        assert!(out.actions.is_empty(), "a failing rule appends nothing");
        assert!(
            out.errors.iter().any(|e| e.message.contains("life must")),
            "{:?}",
            out.errors
        );
    }
}

#[test]
fn a_hit_names_the_register_keys_its_rule_wrote_each_once() {
    let (mut r, errs) = rules_with(&[
        (
            "10-w.rhai",
            r#"fn react(e) {
                registers::incr("n/" + e.host);
                registers::incr("n/" + e.host);
                registers::set("last", e.tag);
                let seen = registers::get("other");
                if once_within("gate/" + e.host, 60) { registers::del("stale"); }
            }"#,
        ),
        (
            "20-r.rhai",
            r#"fn react(e) { let x = registers::get("n/a"); }"#,
        ),
        (
            "30-fail.rhai",
            r#"fn react(e) { registers::set("half", 1); throw "no"; }"#,
        ),
    ]);
    assert!(errs.is_empty(), "{errs:?}");
    let mut out = Produced::default();
    r.run(&Event::new("demo/x", "a", json!({})), &mut out);
    assert_eq!(out.hits[0].wrote, vec!["n/a", "last", "gate/a", "stale"]);
    assert!(out.hits[1].wrote.is_empty(), "reads are not writes");
    assert_eq!(out.errors.len(), 1);
    // The next event starts afresh.
    out.clear();
    r.run(&Event::new("demo/x", "b", json!({})), &mut out);
    assert_eq!(out.hits[0].wrote, vec!["n/b", "last", "gate/b", "stale"]);
}
