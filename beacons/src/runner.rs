//! Running beacons: one thread each, sampling at its interval (or when woken), every reading
//! through its mode gate, identity added, failures turned into events.
//!
//! Failures: `beacon/<kind>/error` is sent when a failure starts or its message changes (not on
//! every tick of the same failure, which would flood the manager exactly when something is
//! wrong), with `subject` when one part failed (a mount, a path); `beacon/<kind>/recovered`
//! when it is over, with how many samples failed.

use crate::config::Config;
use crate::gate::{Gate, GateConfig};
use crate::{Beacon, Emitter, Out};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wakes a beacon's thread: early for a sample, or for good to stop it.
#[derive(Clone, Default)]
pub struct Waker(Arc<(Mutex<WakeState>, Condvar)>);

#[derive(Default)]
struct WakeState {
    woken: bool,
    stop: bool,
}

enum Woke {
    Tick,
    Early,
    Stop,
}

impl Waker {
    /// Ask for a sample now.
    pub fn wake(&self) {
        let (m, cv) = &*self.0;
        if let Ok(mut s) = m.lock() {
            s.woken = true;
            cv.notify_all();
        }
    }

    fn stop(&self) {
        let (m, cv) = &*self.0;
        if let Ok(mut s) = m.lock() {
            s.stop = true;
            cv.notify_all();
        }
    }

    /// Whether the beacon is being stopped (for kinds with threads of their own).
    pub fn stopping(&self) -> bool {
        self.0 .0.lock().map(|s| s.stop).unwrap_or(true)
    }

    fn wait_until(&self, deadline: Instant) -> Woke {
        let (m, cv) = &*self.0;
        let Ok(mut s) = m.lock() else {
            return Woke::Stop;
        };
        loop {
            if s.stop {
                return Woke::Stop;
            }
            if s.woken {
                s.woken = false;
                return Woke::Early;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Woke::Tick;
            }
            s = match cv.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(_) => return Woke::Stop,
            };
        }
    }
}

/// Beacons running on their threads.
pub struct Running {
    threads: Vec<(Waker, JoinHandle<()>)>,
}

impl Running {
    /// How many beacons run.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// True when no beacon runs.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Stop every beacon and wait for its thread, up to `grace`: a beacon inside a slow
    /// check (an HTTP timeout) is left to end with the process rather than holding it.
    pub fn stop(self, grace: Duration) {
        for (w, _) in &self.threads {
            w.stop();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.threads.iter().all(|(_, t)| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (_, t) in self.threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Start every beacon of `config`, sending through `emitter`.
pub fn run(config: Config, emitter: Arc<Emitter>) -> Running {
    let threads = config
        .beacons
        .into_iter()
        .map(|spec| {
            let waker = Waker::default();
            let w = waker.clone();
            let em = emitter.clone();
            let name = format!("beacon-{}", spec.beacon.kind());
            let t = std::thread::Builder::new()
                .name(name)
                // Only the pages a thread touches count; 1 MiB leaves room for a TLS
                // handshake while keeping the reservation modest.
                .stack_size(1024 * 1024)
                .spawn(move || {
                    let mut r = Runner::new(spec.beacon, spec.gate, spec.label, &em);
                    r.run(spec.interval, &w);
                });
            (waker, t)
        })
        .filter_map(|(w, t)| match t {
            Ok(t) => Some((w, t)),
            Err(e) => {
                tracing::error!("cannot start a beacon thread: {e}");
                None
            }
        })
        .collect();
    Running { threads }
}

struct Failing {
    message: String,
    since: Instant,
    samples: u64,
}

/// One beacon with its gate and failure state; testable without threads.
pub struct Runner<'e> {
    beacon: Box<dyn Beacon>,
    gate: Gate,
    label: Option<String>,
    emitter: &'e Emitter,
    tag: String,
    started: bool,
    failing: HashMap<String, Failing>,
}

impl<'e> Runner<'e> {
    /// A runner for `beacon`, sending through `emitter`.
    pub fn new(
        beacon: Box<dyn Beacon>,
        gate: GateConfig,
        label: Option<String>,
        emitter: &'e Emitter,
    ) -> Runner<'e> {
        let tag = format!("beacon/{}", beacon.kind());
        Runner {
            beacon,
            gate: Gate::new(gate),
            label,
            emitter,
            tag,
            started: false,
            failing: HashMap::new(),
        }
    }

    /// Sample every `interval` (or when woken) until stopped.
    pub fn run(&mut self, interval: Duration, waker: &Waker) {
        tracing::debug!(beacon = self.beacon.kind(), ?interval, "beacon up");
        let mut next = Instant::now();
        loop {
            match waker.wait_until(next) {
                Woke::Stop => return,
                Woke::Early => {
                    self.tick(waker);
                }
                Woke::Tick => {
                    self.tick(waker);
                    next += interval;
                    // After a long stall (suspend), skip the missed ticks rather than firing
                    // them all.
                    if next < Instant::now() {
                        next = Instant::now() + interval;
                    }
                }
            }
        }
    }

    /// Start the beacon if it is not yet, take one sample, send what passes.
    pub fn tick(&mut self, waker: &Waker) {
        let mut out = Out::default();
        let whole = if self.started {
            self.beacon.sample(&mut out)
        } else {
            match self.beacon.start(waker.clone()) {
                Ok(()) => {
                    self.started = true;
                    self.beacon.sample(&mut out)
                }
                Err(e) => Err(e),
            }
        };
        let mut problems = out.problems;
        if let Err(e) = whole {
            problems.push((String::new(), e));
        }
        for r in out.readings {
            if let Some(data) = self.gate.pass(r) {
                self.send(&self.tag.clone(), data);
            }
        }
        self.account(problems);
    }

    fn send(&self, tag: &str, mut data: Map<String, Value>) {
        data.insert("kind".into(), json!(self.beacon.kind()));
        if let Some(l) = &self.label {
            data.insert("label".into(), json!(l));
        }
        self.emitter.emit(tag, Value::Object(data));
    }

    /// Report failures that start or change, and recoveries.
    fn account(&mut self, problems: Vec<(String, String)>) {
        let kind = self.beacon.kind();
        let mut now_failing = std::collections::HashSet::new();
        for (subject, message) in problems {
            now_failing.insert(subject.clone());
            let new = match self.failing.get_mut(&subject) {
                Some(f) if f.message == message => {
                    f.samples += 1;
                    false
                }
                _ => true,
            };
            if new {
                tracing::warn!(beacon = kind, subject = %subject, "{message}");
                let mut data = crate::obj! {"error" => message};
                if !subject.is_empty() {
                    data.insert("subject".into(), json!(subject));
                }
                self.send(&format!("{}/error", self.tag), data);
                self.failing.insert(
                    subject,
                    Failing {
                        message,
                        since: Instant::now(),
                        samples: 1,
                    },
                );
            }
        }
        let over: Vec<String> = self
            .failing
            .keys()
            .filter(|s| !now_failing.contains(*s))
            .cloned()
            .collect();
        for subject in over {
            let Some(f) = self.failing.remove(&subject) else {
                continue;
            };
            tracing::info!(beacon = kind, subject = %subject, "recovered");
            let mut data = crate::obj! {
                "error" => f.message,
                "failed_samples" => f.samples,
                "failed_secs" => crate::round2(f.since.elapsed().as_secs_f64()),
            };
            if !subject.is_empty() {
                data.insert("subject".into(), json!(subject));
            }
            self.send(&format!("{}/recovered", self.tag), data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Mode;
    use bus::secure::Security;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A beacon whose answers the test scripts (the real kinds are tested in their files).
    struct Scripted {
        steps: Arc<Mutex<Vec<Result<f64, String>>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Beacon for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn sample(&mut self, out: &mut Out) -> Result<(), String> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let step = self.steps.lock().unwrap().remove(0);
            out.measure("", crate::obj! {"v" => step.clone()?});
            Ok(())
        }
    }

    fn pull() -> (bus::sink::Sink, String) {
        let s = bus::sink::Sink::local().unwrap();
        let ep = s.ingest.clone();
        (s, ep)
    }

    fn recv_all(s: &mut bus::sink::Sink, n: usize) -> Vec<bus::Event> {
        let got = s.recv_n(n, Duration::from_secs(5));
        assert_eq!(got.len(), n, "events");
        got
    }

    #[test]
    fn failures_are_events_once_and_recovery_too() {
        let (mut pull, ep) = pull();
        let em = Emitter::connect(&ep, "h1", &Security::Insecure).unwrap();
        let steps = vec![
            Ok(95.0),
            Err("gone".to_string()),
            Err("gone".to_string()),
            Err("gone".to_string()),
            Ok(96.0),
            Ok(10.0),
        ];
        let beacon = Scripted {
            steps: Arc::new(Mutex::new(steps)),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let gate = GateConfig {
            mode: Mode::Threshold,
            field: Some("v".into()),
            above: Some(90.0),
            below: None,
            hysteresis: 0.0,
            delta: 0.0,
        };
        let mut r = Runner::new(Box::new(beacon), gate, Some("lbl".into()), &em);
        let w = Waker::default();
        for _ in 0..6 {
            r.tick(&w);
        }
        let got = recv_all(&mut pull, 4);
        let tags: Vec<&str> = got.iter().map(|e| e.tag.as_str()).collect();
        assert_eq!(
            tags,
            [
                "beacon/scripted",
                "beacon/scripted/error",
                "beacon/scripted/recovered",
                "beacon/scripted"
            ]
        );
        assert_eq!(got[0].data["alert"], "above");
        assert_eq!(got[0].data["kind"], "scripted");
        assert_eq!(got[0].data["label"], "lbl");
        assert_eq!(got[0].host, "h1");
        assert_eq!(got[1].data["error"], "gone");
        assert_eq!(got[2].data["failed_samples"], 3);
        assert_eq!(got[3].data["alert"], "clear");
        // Longer than the sender's resend timeout: acknowledged events do not come again.
        assert!(
            pull.recv(Duration::from_millis(1_500)).is_empty(),
            "nothing more was sent"
        );
    }

    #[test]
    fn a_woken_beacon_samples_at_once_and_stops_when_told() {
        let (mut pull, ep) = pull();
        let em = Arc::new(Emitter::connect(&ep, "h", &Security::Insecure).unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let beacon = Scripted {
            steps: Arc::new(Mutex::new(vec![Ok(1.0); 3])),
            calls: calls.clone(),
        };
        let waker = Waker::default();
        let (w, e) = (waker.clone(), em.clone());
        let t = std::thread::spawn(move || {
            Runner::new(Box::new(beacon), GateConfig::every(), None, &e)
                .run(Duration::from_secs(3600), &w);
        });
        recv_all(&mut pull, 1); // the first tick is at once
        waker.wake();
        recv_all(&mut pull, 1); // then one per wake, not per hour
        waker.stop();
        t.join().unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
