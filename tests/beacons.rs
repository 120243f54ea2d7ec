//! Beacons through the real `reflex` binary: a file beacon event makes a shipped rule act on a
//! real actor; configs are checked at start; a beacon process sends kinds, identity and its
//! own failures.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// `reflex up` on the shipped rules with actor NAME, plus EXTRA arguments.
fn up_args(state: &std::path::Path, base: u16, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["up".to_string()];
    args.extend(stack_args(state, base));
    args.extend([
        "--rules".into(),
        repo().join("rules").display().to_string(),
        "--name".into(),
        name.into(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn a_file_beacon_event_makes_the_shipped_rule_act() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let state = tmp.path().join("state");
    let watched = tmp.path().join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let cfg = tmp.path().join("beacons.toml");
    write(
        &cfg,
        &format!(
            "[[beacon]]\nkind = \"file\"\npaths = [\"{}\"]\n",
            watched.display()
        ),
    );
    let args = up_args(
        &state,
        base,
        "filehost",
        &["--beacons", &cfg.display().to_string()],
    );
    let mut up = Proc::start("up", &args_ref(&args));
    up.wait_line("reflex is up", T);
    let mut mon = Monitor::connect(&state, base);

    // The beacon watches once it has started: poke until a creation is reported.
    let deadline = Instant::now() + T;
    let mut n = 0;
    loop {
        n += 1;
        let probe = watched.join(format!("probe-{n}"));
        write(&probe, "p");
        let p = probe.display().to_string();
        let seen = mon.all_within(Duration::from_millis(300), |e| {
            e.tag == "beacon/file" && e.data["path"] == p.as_str()
        });
        if let Some(e) = seen.first() {
            assert_eq!(e.host, "filehost");
            assert_eq!(e.data["kind"], "file");
            assert_eq!(e.data["op"], "created");
            break;
        }
        assert!(Instant::now() < deadline, "the file beacon never reported");
    }

    // Delete a watched file: the shipped rule 30-file leaves a tombstone through the actor.
    let conf = watched.join("app.conf");
    write(&conf, "setting=1\n");
    mon.wait("app.conf created", T, |e| {
        e.tag == "beacon/file" && e.data["path"] == conf.display().to_string().as_str()
    });
    std::fs::remove_file(&conf).unwrap();
    let ev = mon.wait("the deletion event", T, |e| {
        e.tag == "beacon/file"
            && e.data["op"] == "deleted"
            && e.data["path"] == conf.display().to_string().as_str()
    });
    let tomb = watched.join("app.conf.deleted");
    let text = wait_for("the tombstone", T, || read(&tomb));
    assert!(text.contains("app.conf was deleted"), "{text}");
    assert!(
        text.contains(&ev.id),
        "the tombstone names the event: {text}"
    );

    // The file comes back: the tombstone goes.
    write(&conf, "setting=2\n");
    wait_for("the tombstone to go", T, || (!tomb.exists()).then_some(()));
    assert_eq!(up.terminate(T), Some(0));
}

#[test]
fn bad_configs_are_rejected_at_start_naming_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    write(&bad, "[[beacon]]\nkind = \"disk\"\nintervall = \"10s\"\n");
    let (code, _, err) = run(&["beacon", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml:3: field `intervall`: unknown field"),
        "{err}"
    );

    write(&bad, "[[beacon]]\nkind = \"http\"\nurl = \"ftp://x\"\n");
    let (code, _, err) = run(&["beacon", "--config", bad.to_str().unwrap(), "--check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:3: field `url`"), "{err}");

    // `up` checks it before starting anything.
    let state = tmp.path().join("state");
    let (code, _, err) = run(&[
        "up",
        "--state",
        state.to_str().unwrap(),
        "--port-base",
        &free_port_base().to_string(),
        "--beacons",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:3"), "{err}");

    let (code, out, err) = run(&["beacon", "--defaults", "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("heartbeat") && out.contains("ok: "), "{out}");
    let (code, out, _) = run(&["beacon", "--print-defaults"]);
    assert_eq!(code, 0);
    assert!(out.contains("[[beacon]]"));
}

/// The smallest receiver of the delivery protocol standing in for a manager (it
/// acknowledges what it reads), and its endpoint.
fn pull() -> (bus::sink::Sink, String) {
    let s = bus::sink::Sink::local().unwrap();
    let ep = s.ingest.clone();
    (s, ep)
}

fn collect_until(
    s: &mut bus::sink::Sink,
    what: &str,
    done: impl Fn(&[bus::Event]) -> bool,
) -> Vec<bus::Event> {
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while !done(&got) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; got {:?}",
            got.iter().map(|e: &bus::Event| &e.tag).collect::<Vec<_>>()
        );
        got.extend(s.recv(Duration::from_millis(500)));
    }
    got
}

#[test]
fn a_beacon_process_sends_identity_kinds_and_its_own_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, ep) = pull();
    let cfg = tmp.path().join("b.toml");
    write(
        &cfg,
        &format!(
            "host = \"from-config\"\n\n[[beacon]]\nkind = \"heartbeat\"\ninterval = \"1s\"\n\n[[beacon]]\nkind = \"mem\"\nmode = \"every\"\ninterval = \"1s\"\nlabel = \"ram\"\n\n[[beacon]]\nkind = \"log\"\npath = \"{}\"\nmatch = \"x\"\n",
            tmp.path().join("missing.log").display()
        ),
    );
    let mut b = Proc::start(
        "beacon",
        // This test plays a plain manager itself.
        &[
            "beacon",
            "--config",
            cfg.to_str().unwrap(),
            "--to",
            &ep,
            "--insecure",
        ],
    );
    let got = collect_until(&mut s, "heartbeat, mem and the log failure", |g| {
        ["beacon/heartbeat", "beacon/mem", "beacon/log/error"]
            .iter()
            .all(|t| g.iter().any(|e| e.tag == *t))
    });
    let find = |t: &str| got.iter().find(|e| e.tag == t).unwrap();
    assert!(got.iter().all(|e| e.host == "from-config"));
    assert_eq!(find("beacon/heartbeat").data["kind"], "heartbeat");
    assert_eq!(
        find("beacon/heartbeat").data["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(find("beacon/mem").data["label"], "ram");
    let err = find("beacon/log/error");
    assert_eq!(err.data["kind"], "log");
    assert!(
        err.data["error"].as_str().unwrap().contains("missing.log"),
        "{}",
        err.data
    );
    // The failure is said once, not every second.
    let more = collect_until(&mut s, "two more mem samples", |g| {
        g.iter().filter(|e| e.tag == "beacon/mem").count() >= 2
    });
    assert!(!more.iter().any(|e| e.tag == "beacon/log/error"));
    assert_eq!(b.terminate(T), Some(0));

    // --host wins over the config; without a config, flags run the load beacon every sample.
    let mut b = Proc::start(
        "load beacon",
        &[
            "beacon",
            "--interval",
            "0.2",
            "--to",
            &ep,
            "--host",
            "flags",
            "--insecure",
        ],
    );
    let got = collect_until(&mut s, "three load samples", |g| {
        g.iter().filter(|e| e.tag == "beacon/load").count() >= 3
    });
    let load = got.iter().find(|e| e.tag == "beacon/load").unwrap();
    assert_eq!(load.host, "flags");
    assert!(load.data["load1"].as_f64().is_some());
    assert_eq!(b.terminate(T), Some(0));
}

#[test]
fn up_runs_the_shipped_default_beacons() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let state = tmp.path().join("state");
    // Every beacon each second, so the heartbeat comes while the test listens.
    let args = up_args(&state, base, "defaulthost", &["--beacon-interval", "1"]);
    let mut up = Proc::start("up", &args_ref(&args));
    up.wait_line("reflex is up", T);
    let mut mon = Monitor::connect(&state, base);
    let hb = mon.wait("a heartbeat from the default config", T, |e| {
        e.tag == "beacon/heartbeat" && e.host == "defaulthost"
    });
    assert_eq!(hb.data["kind"], "heartbeat");
    assert_eq!(hb.data["version"], env!("CARGO_PKG_VERSION"));
    // Quiet by default: in a few seconds of a healthy run, the beacons send their heartbeats
    // and at most one event for each limit crossed or failure met, not a sample per tick.
    let window = mon.all_within(Duration::from_secs(3), |e| {
        e.host == "defaulthost" && e.tag.starts_with("beacon/")
    });
    let heartbeats = window
        .iter()
        .filter(|e| e.tag == "beacon/heartbeat")
        .count();
    assert!(heartbeats >= 2, "{window:?}");
    let others = window.len() - heartbeats;
    assert!(
        others <= 12,
        "too chatty for a default config: {:#?}",
        window
            .iter()
            .map(|e| format!("{} {}", e.tag, e.data))
            .collect::<Vec<_>>()
    );
    assert_eq!(up.terminate(T), Some(0));
}
