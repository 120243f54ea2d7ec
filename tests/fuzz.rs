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
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
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
        target(&bytes);
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
    };
    let one = bus::encode(&a);
    a.target = bus::Target::All;
    a.graph = serde_json::json!([]);
    vec![one, bus::encode(&a)]
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
    // What the publisher decodes from the link (and the actor from PUB, before envelopes).
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
