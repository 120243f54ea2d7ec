//! Fuzzing every decoder that takes bytes from a socket, with proptest under `cargo test`
//! (stable toolchain): each target gets inputs made by mutating real frames (bit flips, byte
//! sets, inserts, cuts, splices, huge length prefixes) and plain random bytes, and must neither
//! panic nor take long. A decoder that returns an error is fine: that is its job.
//!
//! The CI runs a short smoke (`REFLEX_FUZZ_CASES`, default 2,000 per target). The long run:
//!
//! ```text
//! REFLEX_FUZZ_CASES=1000000 cargo test --test fuzz -- --nocapture --test-threads 1
//! ```
//!
//! prints, per target, the cases run and the slowest case, so a hang shows as a slow case.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One edit of a seed frame; positions are taken modulo the frame's length.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// Copy a slice of the frame over another place (duplicates structure).
    Splice(usize, usize, usize),
    /// A msgpack length prefix claiming 4 GiB (array32, map32, str32, bin32).
    HugeLength(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(a, b)| Edit::Flip(a, b)),
        (at, any::<u8>()).prop_map(|(a, b)| Edit::Set(a, b)),
        (at, proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, v)| Edit::Insert(a, v)),
        (at, 1usize..32).prop_map(|(a, n)| Edit::Remove(a, n)),
        at.prop_map(Edit::Truncate),
        (at, at, 1usize..64).prop_map(|(f, t, n)| Edit::Splice(f, t, n)),
        (at, prop::sample::select(vec![0xdd_u8, 0xdf, 0xdb, 0xc6]))
            .prop_map(|(a, m)| Edit::HugeLength(a, m)),
    ]
}

fn apply(mut f: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = f.len().max(1);
        match e {
            Edit::Flip(a, b) => {
                if let Some(x) = f.get_mut(a % n) {
                    *x ^= 1 << b;
                }
            }
            Edit::Set(a, b) => {
                if let Some(x) = f.get_mut(a % n) {
                    *x = *b;
                }
            }
            Edit::Insert(a, v) => {
                let at = a % (f.len() + 1);
                f.splice(at..at, v.iter().copied());
            }
            Edit::Remove(a, len) => {
                let at = a % n;
                let end = (at + len).min(f.len());
                if at < end {
                    f.drain(at..end);
                }
            }
            Edit::Truncate(a) => f.truncate(a % (f.len() + 1)),
            Edit::Splice(from, to, len) => {
                let from = from % n;
                let end = (from + len).min(f.len());
                let piece: Vec<u8> = f.get(from..end).unwrap_or_default().to_vec();
                let to = to % (f.len() + 1);
                f.splice(to..to, piece);
            }
            Edit::HugeLength(a, marker) => {
                let at = a % (f.len() + 1);
                f.splice(at..at, [*marker, 0xff, 0xff, 0xff, 0xff]);
            }
        }
    }
    f
}

/// Inputs for a target: a mutated seed three times in four, random bytes otherwise.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        prop::sample::select(seeds),
        proptest::collection::vec(edit(), 0..6),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits));
    prop_oneof![
        3 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Cases per target: `REFLEX_FUZZ_CASES`, default 2,000 (the CI smoke).
fn cases() -> u32 {
    std::env::var("REFLEX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Run `target` over `cases()` inputs grown from `seeds`; fail on a panic (proptest shrinks it
/// to a small input) or on a case slower than a second (a hang in the making). Prints the count
/// and the slowest case.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl FnMut(&[u8])) {
    // proptest wants a Fn; the targets that keep state (a manager) need FnMut.
    let target = std::cell::RefCell::new(target);
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        // Mutated inputs are cheap to make: rejections are not used.
        max_global_rejects: 0,
        ..Config::default()
    });
    let slowest = AtomicU64::new(0);
    let ran = AtomicU64::new(0);
    let started = Instant::now();
    let result = runner.run(&inputs(seeds), |bytes| {
        let t = Instant::now();
        (target.borrow_mut())(&bytes);
        let us = t.elapsed().as_micros() as u64;
        slowest.fetch_max(us, Ordering::Relaxed);
        ran.fetch_add(1, Ordering::Relaxed);
        prop_assert!(
            Duration::from_micros(us) < Duration::from_secs(1),
            "one case took {us} µs"
        );
        Ok(())
    });
    let ran = ran.load(Ordering::Relaxed);
    println!(
        "fuzz {name}: {ran} cases in {:.1} s, slowest {} µs, {}",
        started.elapsed().as_secs_f64(),
        slowest.load(Ordering::Relaxed),
        if result.is_ok() {
            "0 crashes, 0 hangs"
        } else {
            "FAILED"
        }
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

fn event_seeds() -> Vec<Vec<u8>> {
    let mut ev = bus::Event::new(
        "beacon/proc",
        "web1",
        serde_json::json!({"present": false, "name": "x'; id; echo '", "n": [1, 2.5, null, {"a": "b"}]}),
    );
    let plain = bus::encode(&ev);
    ev.cause = Some(bus::new_id());
    ev.chain = vec!["60-restart-down".into()];
    ev.depth = 3;
    vec![plain, bus::encode(&ev), vec![bus::VERSION]]
}

fn action_seeds() -> Vec<Vec<u8>> {
    let mut a = bus::Action {
        id: bus::new_id(),
        name: "motd".into(),
        seq: 42,
        target: bus::Target::parse("group/web").expect("a target"),
        graph: serde_json::json!([{"kind": "file", "name": "/etc/motd", "content": "hi"},
                                  {"kind": "exec", "name": "r", "argv": ["systemctl", "restart", "--", "x"]}]),
        origin: bus::Origin::default(),
        expires: Some(1),
        life: bus::Life::Keep,
        prev: 0,
    };
    let one = bus::encode(&a);
    a.target = bus::Target::All;
    a.graph = serde_json::json!([]);
    vec![one, bus::encode(&a)]
}

/// The seed actions as the manager's outbox puts them on the link: numbered 1, 2, ...
fn linked_seeds() -> Vec<Vec<u8>> {
    action_seeds()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let action: bus::Action = bus::decode(f).expect("a seed action");
            bus::encode(&bus::delivery::Linked {
                outbox: "fuzz-outbox".into(),
                seq: i as u64 + 1,
                action,
                after: 0,
            })
        })
        .collect()
}

#[test]
fn fuzz_event_frames() {
    // What the manager's ingest decodes from every frame.
    fuzz("event", event_seeds(), |b| {
        let _ = bus::decode_with_limit::<bus::Event>(b, bus::MAX_FRAME);
    });
}

#[test]
fn fuzz_action_frames() {
    // An action and its graph, as the publisher and the actor (inside an envelope) decode them.
    fuzz("action", action_seeds(), |b| {
        if let Ok(a) = bus::decode_with_limit::<bus::Action>(b, bus::MAX_FRAME) {
            // A decoded action's graph goes on to the graph parser: fuzz that too.
            let _ = graph::Graph::from_value(&a.graph);
        }
    });
}

#[test]
fn fuzz_zap_requests() {
    // The ZAP handler's decision over the frames of a request. The input is split into frames
    // at every 0xff byte, so mutations also change the frame count.
    let keys = bus::zap::KeySet::new();
    keys.insert(
        bus::PublicKey([1; 32]),
        bus::zap::Peer {
            name: "web1".into(),
            role: bus::Role::Host,
            groups: vec!["web".into()],
        },
    );
    let seed = |mech: &[u8], creds: &[&[u8]]| {
        let mut out = Vec::new();
        for (i, f) in [&b"1.0"[..], b"7", b"ingest", b"127.0.0.1", b"", mech]
            .iter()
            .chain(creds)
            .enumerate()
        {
            if i > 0 {
                out.push(0xff);
            }
            out.extend_from_slice(f);
        }
        out
    };
    let seeds = vec![
        seed(b"CURVE", &[&[1; 32]]),
        seed(b"CURVE", &[&[2; 32]]),
        seed(b"NULL", &[]),
        seed(b"PLAIN", &[b"u", b"p"]),
    ];
    for mode in [bus::zap::Mode::Secure, bus::zap::Mode::Insecure] {
        fuzz("zap", seeds.clone(), |b| {
            let frames: Vec<Vec<u8>> = b.split(|&x| x == 0xff).map(<[u8]>::to_vec).collect();
            let d = bus::zap::decide(&keys, mode, &frames);
            // Whatever came in, the reply is a well-formed six-frame answer.
            assert_eq!(d.reply.len(), 6);
        });
    }
}

#[test]
fn fuzz_topic_targets() {
    // Targets arrive inside actions and rule output; the parser must hold on any string.
    fuzz(
        "target",
        vec![
            b"host/web1".to_vec(),
            b"group/web".to_vec(),
            b"all".to_vec(),
        ],
        |b| {
            if let Ok(t) = bus::Target::parse(&String::from_utf8_lossy(b)) {
                assert!(t.topic().ends_with('/'));
            }
        },
    );
}

/// A real manager (shipped rules, a temp state dir, free ports, no CURVE so no key is needed),
/// driven frame by frame without its run loop.
fn manager() -> (tempfile::TempDir, manager::Manager) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let base = common::free_port_base();
    let cfg = manager::Config {
        endpoints: bus::Endpoints::local(base, tmp.path()),
        state_dir: tmp.path().to_path_buf(),
        rules_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        max_frame: bus::MAX_FRAME,
        limits: manager::rules::Limits::default(),
        host: "control".into(),
        watch_rules: false,
        security: bus::secure::Security::Insecure,
        missed_heartbeats: manager::presence::DEFAULT_MISSED,
        history: None,
        http: None,
        cluster: None,
    };
    let m = manager::Manager::new(cfg).expect("a manager");
    (tmp, m)
}

#[test]
fn fuzz_manager_ingest() {
    // The whole ingest path: head decode, identity, full decode, every shipped rule run on
    // hostile data. Actions wait in the outbox (no publisher here).
    let (_tmp, mut m) = manager();
    let ev = |tag: &str, data: serde_json::Value| bus::encode(&bus::Event::new(tag, "web1", data));
    let seeds = vec![
        ev(
            "demo/hello",
            serde_json::json!({"path": "/tmp/x", "text": "hi"}),
        ),
        ev(
            "beacon/proc",
            serde_json::json!({"present": false, "name": "x'; id; echo '"}),
        ),
        ev(
            "beacon/svc",
            serde_json::json!({"unit": "nginx.service", "state": "failed"}),
        ),
        ev(
            "beacon/disk",
            serde_json::json!({"mount": "/", "used_pct": 99.5}),
        ),
        ev("beacon/load", serde_json::json!({"load1": 9.0, "cpus": 2})),
        ev(
            "actor/result",
            serde_json::json!({"status": "error", "name": "x"}),
        ),
    ];
    // The same events as a sender's stream sends them: batches, one resending another.
    let mut seeds = seeds;
    let batch = bus::delivery::Batch::encode("fuzz-stream", 0, &seeds[..3]);
    let resend = bus::delivery::Batch::encode("fuzz-stream", 1, &seeds[1..]);
    seeds.extend([batch, resend]);
    let mut taken = 0u64;
    fuzz("manager ingest", seeds, |b| {
        // An error is a socket failure, not a verdict on the frame: there must be none.
        m.take_frame(b, None).expect("ingest");
        taken += 1;
        // Groups commit as the run loop commits them.
        if taken.is_multiple_of(256) {
            let r = m.answer_control(br#"{"cmd":"flush"}"#, true);
            assert_eq!(r["ok"], serde_json::json!(true), "{r}");
        }
    });
    // The mutations keep enough structure for rules to run on them, not only the decoder.
    let stats = m.answer_control(br#"{"cmd":"stats"}"#, true);
    assert!(
        stats["hits"].as_u64() > Some(0),
        "no rule ever ran: {stats}"
    );
    assert!(
        stats["malformed"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "nothing was malformed: {stats}"
    );
}

#[test]
fn fuzz_control_requests() {
    let (_tmp, mut m) = manager();
    let seeds = [
        r#"{"cmd":"stats"}"#,
        r#"{"cmd":"registers","op":"set","key":"config/restart/x","value":"id"}"#,
        r#"{"cmd":"registers","op":"get","key":"a"}"#,
        r#"{"cmd":"registers","op":"list","prefix":""}"#,
        r#"{"cmd":"registers","op":"del","key":"a"}"#,
        r#"{"cmd":"keys","op":"list"}"#,
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    fuzz("control", seeds, |b| {
        // Not the admin: whatever it asks, only the refusal comes back.
        let refused = m.answer_control(b, false);
        assert!(refused.get("error").is_some());
        let answer = m.answer_control(b, true);
        assert!(answer.is_object());
    });
}

#[test]
fn fuzz_enroll_requests() {
    // The enroll door, which unknown keys may reach: the request and the User-Id ZAP gave.
    let tmp = tempfile::tempdir().expect("temp dir");
    let pair = bus::KeyPair::generate().expect("keys");
    let sec = bus::secure::Security::Curve {
        server: *pair.public(),
        pair,
    };
    let mut trust = manager::trust::Trust::open(tmp.path(), &sec).expect("trust");
    let stranger = bus::zap::pending_user_id(&bus::PublicKey([9; 32]));
    let seeds = vec![
        br#"{"name":"web1"}"#.to_vec(),
        br#"{"name":"../../etc/passwd"}"#.to_vec(),
        br#"{"name":"admin"}"#.to_vec(),
    ];
    fuzz("enroll", seeds, |b| {
        let _ = trust.enroll_request(b, Some(&stranger), "127.0.0.1");
        let _ = trust.enroll_request(b, Some(&String::from_utf8_lossy(b)), "127.0.0.1");
    });
}

#[test]
fn fuzz_signed_envelopes() {
    // What an actor takes from PUB and replay: opened against the pinned key before anything
    // else, so no mutation may ever verify.
    let tmp = tempfile::tempdir().expect("temp dir");
    let key = bus::envelope::SignKey::load_or_create(tmp.path()).expect("signing key");
    let pinned = bus::envelope::ManagerKey::from_state(tmp.path())
        .expect("its public half")
        .expect("written");
    let seeds: Vec<Vec<u8>> = action_seeds()
        .iter()
        .filter_map(|f| bus::decode::<bus::Action>(f).ok())
        .map(|a| bus::envelope::seal(&key, &a, bus::now_ms()))
        .collect();
    let originals: Vec<bus::envelope::Opened> = seeds
        .iter()
        .map(|f| bus::envelope::open(f, &pinned, bus::MAX_FRAME).expect("a good frame opens"))
        .collect();
    fuzz("envelope", seeds, |b| {
        let _ = bus::envelope::peek(b, bus::MAX_FRAME);
        // Whatever verifies is exactly what was signed: no mutation changes what it says.
        if let Ok(o) = bus::envelope::open(b, &pinned, bus::MAX_FRAME) {
            assert!(
                originals
                    .iter()
                    .any(|s| s.header == o.header && s.action == o.action),
                "a changed frame verified: {:?}",
                o.header
            );
        }
    });
}

/// A real publisher on free ports (no CURVE), with a few actions in its log.
fn publisher() -> (tempfile::TempDir, publisher::Publisher) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let base = common::free_port_base();
    let cfg = publisher::Config {
        endpoints: bus::Endpoints::local(base, tmp.path()),
        state_dir: tmp.path().to_path_buf(),
        max_frame: bus::MAX_FRAME,
        keep: 64,
        send_limits: None,
        http: None,
        security: bus::secure::Security::Insecure,
    };
    let mut p = publisher::Publisher::new(&cfg).expect("a publisher");
    for f in linked_seeds() {
        assert!(
            p.take_frame(&f).expect("log"),
            "a seed action was not logged"
        );
    }
    (tmp, p)
}

#[test]
fn fuzz_publisher_link_frames() {
    // What the manager hands the publisher over the link: numbered, sealed, logged, published.
    let (_tmp, mut p) = publisher();
    fuzz("publisher link", linked_seeds(), |b| {
        p.take_frame(b)
            .expect("the log takes it or counts it as bad");
    });
}

#[test]
fn fuzz_replay_requests() {
    let (_tmp, mut p) = publisher();
    let seeds = [
        r#"{"since":0,"topics":["all/","host/web1/"],"latest_only":true}"#,
        r#"{"since":1,"topics":["group/web/"],"limit":1}"#,
        r#"{"topics":[]}"#,
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    fuzz("replay", seeds, |b| {
        let frames = p.answer_replay(b, None).expect("an answer");
        // Always at least the header frame, which is JSON.
        assert!(serde_json::from_slice::<serde_json::Value>(&frames[0]).is_ok());
    });
}
