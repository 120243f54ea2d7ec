//! No event value becomes shell syntax, on the real stack: `reflex up` with the shipped rules,
//! then the shell-injection event of issue 9 and its like through every shipped rule that
//! runs a command, sent with `reflex send`. Nothing the payloads would create may exist once
//! the actor reported on each action, while benign events still act. A rule that splices an
//! event value unquoted fails loudly (shown by `reflex tail`) and appends nothing.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const HOST: &str = "victim";

/// A rule that splices an event value into `cmd` unquoted: refused at run time.
const SPLICING_RULE: &str = r#"const MATCH = "demo/splice";
fn react(event) {
    act(`host/${event.host}`, [#{ kind: "exec", name: "splice", cmd: `echo ${event.data.v} > /dev/null` }],
        #{ name: `splice:${event.data.v}` });
}
"#;

struct Up {
    _up: Proc,
    state: PathBuf,
    base: u16,
}

impl Up {
    /// `reflex send TAG FIELDS... --host victim`.
    fn send(&self, tag: &str, fields: &[&str]) {
        let mut a = vec!["send".to_string(), tag.to_string()];
        a.extend(fields.iter().map(|s| s.to_string()));
        a.extend(["--host".into(), HOST.into()]);
        a.extend(stack_args(&self.state, self.base));
        let (code, _, err) = run(&args_ref(&a));
        assert_eq!(code, 0, "send {tag}: {err}");
    }

    fn set_register(&self, key: &str, value: &str) {
        let mut a = vec!["registers".into(), "set".into(), key.into(), value.into()];
        a.extend(stack_args(&self.state, self.base));
        let (code, _, err) = run(&args_ref(&a));
        assert_eq!(code, 0, "registers set {key}: {err}");
    }
}

/// The attack of issue 9, with its `/tmp/p` replaced by `marker`: it breaks out of the
/// single quotes the shipped rules used to put around event values.
fn single_quote_breakout(marker: &Path) -> String {
    format!("x'; touch {}; echo '", marker.display())
}

/// Every marker in `dir` (files named `pwned-*`).
fn pwned(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pwned"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hostile_events_through_every_shipped_rule_that_runs_a_command_run_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let m = |name: &str| dir.join(format!("pwned-{name}"));
    let state = dir.join("state");
    let base = free_port_base();

    // The shipped rules, and one that splices unquoted.
    let rules = dir.join("rules");
    for entry in std::fs::read_dir(repo().join("rules")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        write_rule(&rules, &entry.file_name().to_string_lossy(), &text);
    }
    write_rule(&rules, "99-splice.rhai", SPLICING_RULE);
    // One quiet beacon on an empty folder, so only our events drive the rules.
    let quiet = dir.join("quiet");
    std::fs::create_dir_all(&quiet).unwrap();
    let beacons = dir.join("beacons.toml");
    std::fs::write(
        &beacons,
        format!(
            "[[beacon]]\nkind = \"file\"\npaths = [\"{}\"]\n",
            quiet.display()
        ),
    )
    .unwrap();
    // The actor's policy (`up` keeps one it finds): the shipped one, plus the commands this
    // test configures below, each shell line written out exactly.
    let version = format!(
        "1\"; touch {}; echo \"$(touch {})",
        m("deploy").display(),
        m("deploy2").display()
    );
    let cache = dir.join("cache");
    let renewed = dir.join("renewed");
    let restarted = dir.join("restarted-benign");
    let extra = json!([
        format!("touch {}", renewed.display()),
        format!("touch {}", restarted.display()),
        "echo hello > /dev/null",
        [
            "sh",
            "-c",
            "[ -d \"$1\" ] && find \"$1\" -mindepth 1 -delete; true",
            "disk-clean",
            cache.display().to_string()
        ],
    ]);
    let policy = actor::UP_POLICY.replace(
        "commands = [",
        &format!(
            "commands = [\n{},",
            extra
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",\n")
        ),
    );
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("policy.toml"), policy).unwrap();

    let mut args = vec!["up".to_string()];
    args.extend(stack_args(&state, base));
    args.extend([
        "--rules".into(),
        rules.display().to_string(),
        "--name".into(),
        HOST.into(),
        "--beacons".into(),
        beacons.display().to_string(),
    ]);
    let up = Proc::start("up", &args_ref(&args));
    up.wait_line("reflex is up", T);
    let up = Up {
        _up: up,
        state: state.clone(),
        base,
    };
    let tail = Proc::start(
        "tail",
        &args_ref(
            &[
                vec!["tail".into(), "--filter".into(), "error/".into()],
                stack_args(&state, base),
            ]
            .concat(),
        ),
    );
    let mut mon = Monitor::connect(&state, base);
    std::thread::sleep(Duration::from_millis(300)); // let tail's subscription land too

    // Operator settings (trusted, written through the control socket): where the disk rule
    // cleans, and commands that leave a trace, so the benign paths can be seen to act.
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("junk"), "x").unwrap();
    up.set_register("config/disk/cache_dir", &format!("\"{}\"", cache.display()));
    up.set_register(
        "config/cert/renew_cmd",
        &format!("\"touch {}\"", renewed.display()),
    );
    up.set_register(
        "config/restart/benignapp",
        &format!("\"touch {}\"", restarted.display()),
    );

    let result = |mon: &mut Monitor, name: &str| {
        mon.wait(&format!("the actor's result for {name}"), T, |e| {
            is_result(e) && e.data["name"] == json!(name)
        })
    };

    // 60-restart-down, beacon/proc: the attack of issue 9, and a command substitution.
    let proc_name = single_quote_breakout(&m("proc"));
    up.send(
        "beacon/proc",
        &["present=false", &format!("name={proc_name}")],
    );
    result(&mut mon, &format!("restart:{proc_name}"));
    let subst = format!("$(touch {})", m("subst").display());
    up.send("beacon/proc", &["present=false", &format!("name={subst}")]);
    result(&mut mon, &format!("restart:{subst}"));
    // ... and beacon/svc.
    let unit = single_quote_breakout(&m("svc"));
    up.send("beacon/svc", &["state=failed", &format!("unit={unit}")]);
    result(&mut mon, &format!("restart:{unit}"));

    // 50-disk-full: a hostile mount; the configured folder is still cleaned.
    let mount = single_quote_breakout(&m("disk"));
    up.send(
        "beacon/disk",
        &["alert=above", "used_pct=97", &format!("mount={mount}")],
    );
    let r = result(&mut mon, &format!("disk-clean:{mount}"));
    assert_eq!(r.data["status"], "ok", "{}", r.data);
    assert!(!cache.join("junk").exists(), "the disk rule did not clean");

    // 70-cert-renew: a hostile certificate path; the configured renew still runs.
    let source = single_quote_breakout(&m("cert"));
    up.send("beacon/cert", &["days_left=2", &format!("source={source}")]);
    let r = result(&mut mon, &format!("cert-renew:{source}"));
    assert_eq!(r.data["status"], "ok", "{}", r.data);
    assert!(renewed.exists(), "the cert rule did not renew");

    // 80-correlate: a hostile version (the default command once put it in double quotes),
    // then a failing check: the rollback marker holds the version as plain text.
    up.send("deploy/finished", &[&format!("version={version}")]);
    up.send("beacon/http", &["ok=false", "url=http://victim/"]);
    let r = result(&mut mon, "rollback");
    assert_eq!(r.data["status"], "ok", "{}", r.data);
    assert_eq!(
        read(Path::new("/tmp/reflex-rollback")).as_deref(),
        Some(format!("rollback of {version} requested\n").as_str())
    );

    // A rule that splices unquoted: refused, shown by tail, nothing appended.
    let v = format!("hi; touch {}", m("splice").display());
    up.send("demo/splice", &[&format!("v={v}")]);
    let lines = tail.wait_line("exec:splice.cmd", T).join("\n");
    assert!(lines.contains("99-splice.rhai"), "{lines}");
    assert!(lines.contains("data.v"), "{lines}");

    // Benign events still act: a configured restart, and the splicing rule with a safe value.
    up.send("beacon/proc", &["present=false", "name=benignapp"]);
    wait_for("the benign restart", T, || restarted.exists().then_some(()));
    up.send("demo/splice", &["v=hello"]);
    let r = result(&mut mon, "splice:hello");
    assert_eq!(r.data["status"], "ok", "{}", r.data);
    let refused = mon.all_within(Duration::from_millis(300), |e| {
        is_result(e) && e.data["name"] == json!(format!("splice:{v}"))
    });
    assert!(refused.is_empty(), "the refused action reached the actor");

    assert_eq!(pwned(dir), Vec::<String>::new(), "a payload ran");
}
