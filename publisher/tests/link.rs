//! The link protocol on real sockets and a real sled log: numbered frames from a manager's
//! outbox are logged once each, resends are acknowledged and not published again, a frame after
//! a gap is not logged, acknowledgements arrive on the acks PUB under the outbox's topic, and a
//! restart keeps where every outbox stands.

use bus::delivery::{LinkAck, Linked};
use bus::{Action, Target};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_base() -> u16 {
    bus::endpoints::free_local_base().expect("free ports")
}

fn config(state: &std::path::Path) -> publisher::Config {
    publisher::Config {
        endpoints: bus::Endpoints::local(free_base(), state),
        state_dir: state.to_path_buf(),
        max_frame: bus::MAX_FRAME,
        keep: 1_000,
        send_limits: None,
        http: None,
        security: bus::secure::Security::Insecure,
    }
}

fn linked(outbox: &str, seq: u64, name: &str, target: &str) -> Vec<u8> {
    linked_after(outbox, seq, 0, name, target)
}

fn linked_after(outbox: &str, seq: u64, after: u64, name: &str, target: &str) -> Vec<u8> {
    bus::encode(&Linked {
        outbox: outbox.into(),
        seq,
        action: Action {
            id: bus::new_id(),
            name: name.into(),
            seq: 0,
            target: Target::parse(target).unwrap(),
            graph: json!([{"kind": "noop", "name": name}]),
            origin: Default::default(),
            expires: None,
            life: bus::Life::Keep,
            prev: 0,
        },
        after,
    })
}

/// Every two-frame message `sub` receives within `wait`.
fn messages(sub: &zmq::Socket, wait: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let mut items = [sub.as_poll_item(zmq::POLLIN)];
        bus::sockets::poll(&mut items, 20).unwrap();
        while let Ok(mut parts) = sub.recv_multipart(zmq::DONTWAIT) {
            if parts.len() == 3 && parts[1] == bus::delivery::TICK {
                continue;
            }
            assert_eq!(parts.len(), 2, "topic and body");
            let body = parts.pop().unwrap();
            got.push((parts.pop().unwrap(), body));
        }
    }
    got
}

/// The acks among `msgs`, each checked to sit under its outbox's topic.
fn acks(msgs: &[(Vec<u8>, Vec<u8>)]) -> Vec<LinkAck> {
    msgs.iter()
        .map(|(topic, body)| {
            let ack: LinkAck = bus::decode(body).unwrap();
            assert_eq!(topic, ack.outbox.as_bytes(), "the topic is the outbox id");
            ack
        })
        .collect()
}

/// Names of the actions among `msgs` (sealed frames; the header names them).
fn names(msgs: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(_, f)| bus::envelope::peek(f, bus::MAX_FRAME).unwrap().name)
        .collect()
}

/// Seqs and names the replay socket holds for `topics`.
fn replayed(ep: &str, topics: &[&str]) -> (Value, Vec<(u64, String)>) {
    let s = bus::sockets::connect(zmq::REQ, ep).unwrap();
    s.set_rcvtimeo(5_000).unwrap();
    s.set_linger(0).unwrap();
    s.send(
        json!({"since": 0, "topics": topics}).to_string().as_bytes(),
        0,
    )
    .unwrap();
    let parts = s.recv_multipart(0).unwrap();
    let items = parts[1..]
        .iter()
        .map(|f| bus::envelope::peek(f, bus::MAX_FRAME).unwrap())
        .map(|h| (h.seq, h.name))
        .collect();
    (serde_json::from_slice(&parts[0]).unwrap(), items)
}

#[test]
fn resends_are_acked_not_republished_and_a_frame_after_a_gap_is_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || publisher::run(cfg, &stop))
    };
    let ep = &cfg.endpoints;
    let link = bus::sockets::connect(zmq::PUSH, &ep.link).unwrap();
    let fanout = bus::sockets::connect(zmq::SUB, &ep.publish).unwrap();
    fanout.set_subscribe(b"all/").unwrap();
    fanout.set_subscribe(b"host/probe/").unwrap();
    let ack_sub = bus::sockets::connect(zmq::SUB, &ep.link_acks).unwrap();
    ack_sub.set_subscribe(b"m1").unwrap();

    // The fan-out subscription takes effect some time after connecting: probe on an outbox of
    // its own until one arrives.
    let mut probe = 0;
    let ready = (0..200).any(|_| {
        probe += 1;
        link.send(linked("probe", probe, "probe", "host/probe"), 0)
            .unwrap();
        !messages(&fanout, Duration::from_millis(25)).is_empty()
    });
    assert!(ready, "the fan-out subscription never took effect");
    messages(&fanout, Duration::from_millis(200));

    // The first action of m1; its ack comes again every second, so even a subscription that
    // joined late hears it.
    link.send(linked("m1", 1, "a1", "all"), 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut heard = Vec::new();
    while heard.is_empty() && Instant::now() < deadline {
        heard = acks(&messages(&ack_sub, Duration::from_millis(100)));
    }
    assert_eq!(
        heard.first(),
        Some(&LinkAck {
            outbox: "m1".into(),
            upto: 1
        })
    );
    assert_eq!(
        names(&messages(&fanout, Duration::from_millis(300))),
        ["a1"]
    );

    for (seq, name) in [
        (2, "a2"),
        (3, "a3"),
        (2, "a2-resent"),
        (1, "a1-resent"),
        (5, "a5-after-a-gap"),
        (4, "a4"),
    ] {
        link.send(linked("m1", seq, name, "all"), 0).unwrap();
    }
    let published = messages(&fanout, Duration::from_millis(800));
    assert_eq!(names(&published), ["a2", "a3", "a4"], "each once, in order");
    let heard = acks(&messages(&ack_sub, Duration::from_millis(1_500)));
    assert!(
        heard.windows(2).all(|w| w[0].upto <= w[1].upto),
        "acks never go back: {heard:?}"
    );
    assert_eq!(heard.last().map(|a| a.upto), Some(4), "{heard:?}");
    assert!(heard.iter().all(|a| a.upto <= 4), "the gap was acked");

    // The manager resends from acked + 1: now 5 is next and taken.
    link.send(linked("m1", 5, "a5", "all"), 0).unwrap();
    assert_eq!(
        names(&messages(&fanout, Duration::from_millis(500))),
        ["a5"]
    );
    // An outbox this publisher never heard from, whose sender vouches that 1 to 39 are logged
    // elsewhere (a clustered leader sending a dead member's outbox): 40 is taken, then 41; an
    // unknown outbox that starts at 7 without saying so is after a gap.
    for frame in [
        linked_after("m2", 40, 39, "b40", "all"),
        linked_after("m2", 41, 39, "b41", "all"),
        linked_after("m2", 40, 39, "b40-resent", "all"),
        linked("m3", 7, "c7-after-a-gap", "all"),
    ] {
        link.send(frame, 0).unwrap();
    }
    assert_eq!(
        names(&messages(&fanout, Duration::from_millis(500))),
        ["b40", "b41"]
    );
    let (h, items) = replayed(&ep.replay, &["all/"]);
    let logged: Vec<&str> = items.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(logged, ["a1", "a2", "a3", "a4", "a5", "b40", "b41"]);
    assert!(items.windows(2).all(|w| w[0].0 + 1 == w[1].0), "{items:?}");
    assert_eq!(h["last_seq"], json!(items[6].0));

    stop.store(true, Ordering::Relaxed);
    run.join().unwrap().unwrap();
}

#[test]
fn a_restart_keeps_where_each_outbox_stands_and_resends_are_acked_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = publisher::Publisher::new(&cfg).unwrap();
    for seq in 1..=3 {
        assert!(p
            .take_frame(&linked("m1", seq, &format!("a{seq}"), "all"))
            .unwrap());
    }
    assert!(p.take_frame(&linked("m2", 1, "b1", "all")).unwrap());
    assert!(!p.take_frame(&linked("m1", 3, "a3", "all")).unwrap());
    // Hostile or stale frames: counted or dropped, never logged.
    for bad in [
        linked("a b", 1, "x", "all"),
        linked(&"x".repeat(65), 1, "x", "all"),
        linked("m3", 0, "x", "all"),
        linked("m3", 1, "", "all"),
        bus::encode(&"not a link frame"),
        b"garbage".to_vec(),
    ] {
        assert!(!p.take_frame(&bad).unwrap());
    }
    assert_eq!((p.acked("m1"), p.acked("m2"), p.acked("m3")), (3, 1, 0));
    drop(p);

    let mut p = publisher::Publisher::new(&cfg).unwrap();
    assert_eq!(
        (p.acked("m1"), p.acked("m2")),
        (3, 1),
        "kept across the restart"
    );
    let ack_sub = bus::sockets::connect(zmq::SUB, &cfg.endpoints.link_acks).unwrap();
    ack_sub.set_subscribe(b"m1").unwrap();
    // A resend is answered with an ack at once (no run loop here, so no periodic one): repeat
    // it until the subscription has joined and one arrives.
    let mut heard = Vec::new();
    for _ in 0..200 {
        assert!(!p.take_frame(&linked("m1", 2, "a2", "all")).unwrap());
        heard = acks(&messages(&ack_sub, Duration::from_millis(25)));
        if !heard.is_empty() {
            break;
        }
    }
    assert_eq!(
        heard.first(),
        Some(&LinkAck {
            outbox: "m1".into(),
            upto: 3
        })
    );
    assert!(
        !p.take_frame(&linked("m1", 5, "a5", "all")).unwrap(),
        "a gap"
    );
    assert!(p.take_frame(&linked("m1", 4, "a4", "all")).unwrap());
    let heard = acks(&messages(&ack_sub, Duration::from_millis(200)));
    assert_eq!(heard.last().map(|a| a.upto), Some(4));
    assert!(
        heard.iter().all(|a| a.outbox == "m1"),
        "m2's acks are m2's topic"
    );

    let frames = p
        .answer_replay(br#"{"since": 0, "topics": ["all/"]}"#, None)
        .unwrap();
    let header: Value = serde_json::from_slice(&frames[0]).unwrap();
    let items: Vec<(u64, String)> = frames[1..]
        .iter()
        .map(|f| bus::envelope::peek(f, bus::MAX_FRAME).unwrap())
        .map(|h| (h.seq, h.name))
        .collect();
    // Dropped without a clean stop, as after a kill -9: the last group may have been
    // published before its flush, so numbering resumes one group (4,096) further.
    assert_eq!(
        items,
        [(1, "a1"), (2, "a2"), (3, "a3"), (4, "b1"), (4_101, "a4")]
            .map(|(s, n)| (s, n.to_string()))
    );
    assert_eq!(
        header["last_seq"],
        json!(4_101),
        "numbering resumed past any seq given before"
    );
}
