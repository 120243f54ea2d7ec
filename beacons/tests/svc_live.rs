//! The `svc` beacon against a live systemd over D-Bus: units started, stopped and failed are
//! the events `{unit, state, previous, sub_state}` its doc promises. Where systemd is PID 1 the
//! test runs here; where it is not (a container, this CI) it re-runs itself inside a throwaway
//! systemd machine, `scripts/systemd-box` (systemd-nspawn over a copy-on-write view of this
//! machine's root: systemd as PID 1 and its system D-Bus); only where no box can be made either
//! (not root, no systemd-nspawn) does it say why and skip.

#[path = "../../tests/support/systemd_box.rs"]
mod systemd_box;

use std::process::Command;
use std::time::{Duration, Instant};
use systemd_box::{in_box, live_where, Live};

use beacons::kinds::svc::Svc;
use beacons::{Beacon, Out, Waker};
use serde_json::{Map, Value};

/// The live test, by name: what the box runs.
const LIVE: &str = "units_started_stopped_and_failed_are_events_from_a_live_systemd";
/// What the live test prints when it passed against a systemd: the proof it ran.
const PASSED: &str = "svc beacon live test passed against systemd";

#[test]
fn units_started_stopped_and_failed_are_events_from_a_live_systemd() {
    match live_where(env!("CARGO_MANIFEST_DIR"), "start units") {
        Live::Here => live(),
        Live::InBox(script) => in_box(&script, LIVE, PASSED),
        Live::Skip(why) => eprintln!("SKIPPED svc beacon live test: {why}"),
    }
}

/// A beacon and the events it has sent so far.
struct Watching {
    svc: Svc,
    seen: Vec<Map<String, Value>>,
}

impl Watching {
    fn start(units: Vec<String>) -> Watching {
        let mut svc = Svc::new(units);
        svc.start(Waker::default())
            .expect("subscribed to systemd over D-Bus");
        Watching {
            svc,
            seen: Vec::new(),
        }
    }

    fn sample(&mut self) {
        let mut out = Out::default();
        self.svc.sample(&mut out).expect("sample");
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        self.seen.extend(out.readings.into_iter().map(|r| r.data));
    }

    /// `unit`'s events so far, in order.
    fn of(&self, unit: &str) -> Vec<&Map<String, Value>> {
        self.seen.iter().filter(|e| e["unit"] == unit).collect()
    }

    /// Sample until `unit` has had an event with `state`; that event.
    fn wait(&mut self, unit: &str, state: &str) -> Map<String, Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.sample();
            if let Some(e) = self.of(unit).into_iter().find(|e| e["state"] == state) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no event of {unit} entering {state} within 20s; saw {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each of `unit`'s events is one change of state that follows from the one before, from
/// `first_previous`; every one has the four fields, `sub_state` included.
fn chained(events: &[&Map<String, Value>], first_previous: &str) {
    let mut previous = first_previous.to_string();
    for e in events {
        let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["previous", "state", "sub_state", "unit"], "{e:?}");
        assert_eq!(e["previous"], previous.as_str(), "{events:?}");
        assert_ne!(e["state"], e["previous"], "{events:?}");
        previous = e["state"].as_str().expect("state is text").to_string();
    }
}

/// Against the systemd of this machine (root): one beacon watching two units by name sees one
/// started then stopped, and the other fail then be reset; one beacon watching every unit sees
/// the failure and its reset, and nothing of the unit that merely started and stopped.
fn live() {
    let id = std::process::id();
    let ok = format!("reflex-beacon-ok-{id}.service");
    let bad = format!("reflex-beacon-bad-{id}.service");
    let mut named = Watching::start(vec![ok.clone(), bad.clone()]);
    let mut failures = Watching::start(Vec::new());

    run("systemd-run", &["--quiet", "--unit", &ok, "sleep", "300"]);
    let e = named.wait(&ok, "active");
    assert_eq!(e["sub_state"], "running", "{e:?}");
    run("systemctl", &["stop", &ok]);
    let e = named.wait(&ok, "inactive");
    assert_eq!(e["sub_state"], "dead", "{e:?}");
    chained(&named.of(&ok), "inactive");

    // A service whose process exits 3: active (running), then failed.
    run(
        "systemd-run",
        &["--quiet", "--unit", &bad, "sh", "-c", "sleep 0.3; exit 3"],
    );
    let e = named.wait(&bad, "failed");
    assert_eq!(e["sub_state"], "failed", "{e:?}");
    let e = failures.wait(&bad, "failed");
    assert_eq!(e["sub_state"], "failed", "{e:?}");
    // Leaving failed is sent too.
    run("systemctl", &["reset-failed", &bad]);
    let e = named.wait(&bad, "inactive");
    assert_eq!(
        (&e["previous"], &e["sub_state"]),
        (&Value::from("failed"), &Value::from("dead")),
        "{e:?}"
    );
    let e = failures.wait(&bad, "inactive");
    assert_eq!(e["previous"], "failed", "{e:?}");
    chained(&named.of(&bad), "inactive");

    // Watching every unit: only entering and leaving failed, of the failed unit only.
    failures.sample();
    let entering: Vec<_> = failures
        .of(&bad)
        .iter()
        .map(|e| (e["previous"].clone(), e["state"].clone()))
        .collect();
    assert_eq!(
        entering,
        [
            (Value::from("active"), Value::from("failed")),
            (Value::from("failed"), Value::from("inactive")),
        ],
        "{:?}",
        failures.seen
    );
    assert!(failures.of(&ok).is_empty(), "{:?}", failures.seen);
    eprintln!("events of {ok} and {bad}: {:?}", named.seen);
    eprintln!("events of every unit: {:?}", failures.seen);
    eprintln!(
        "{PASSED} ({})",
        std::env::var("SYSTEMD_BOX").map_or("PID 1 of this machine".into(), |b| format!("box {b}"))
    );
}
