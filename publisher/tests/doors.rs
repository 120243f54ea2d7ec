//! The publisher's doors on real CURVE sockets: a host receives its own topics only, a host
//! asking to subscribe to another host's topic gets nothing, replay serves a host only its own
//! topics, an unknown key gets nothing, and a revoked host's subscription ends (the fan-out is
//! rebound) while the others continue.

use bus::delivery::Linked;
use bus::enroll::{store_dir, Enrollment};
use bus::keys::{KeyPair, Role};
use bus::secure::Security;
use bus::{Action, Target};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_base() -> u16 {
    bus::endpoints::free_local_base().expect("free ports")
}

fn action(name: &str, target: &str) -> Action {
    Action {
        id: bus::new_id(),
        name: name.into(),
        seq: 0,
        target: Target::parse(target).unwrap(),
        graph: json!([{"kind": "noop", "name": name}]),
        origin: Default::default(),
        expires: None,
        life: bus::Life::Keep,
        prev: 0,
    }
}

struct Client {
    sec: Security,
}

impl Client {
    fn subscriber(&self, ep: &str, topic: &str) -> zmq::Socket {
        let s = bus::secure::connect(zmq::SUB, ep, &self.sec).unwrap();
        s.set_subscribe(topic.as_bytes()).unwrap();
        s
    }

    /// The replay header and the names of the actions served, probes left out.
    fn replay(&self, ep: &str, topics: &[&str]) -> Option<(Value, Vec<String>)> {
        let s = bus::secure::connect(zmq::REQ, ep, &self.sec).unwrap();
        s.set_rcvtimeo(2_000).unwrap();
        s.set_linger(0).unwrap();
        s.send(
            json!({"since": 0, "topics": topics}).to_string().as_bytes(),
            0,
        )
        .unwrap();
        let parts = s.recv_multipart(0).ok()?;
        let names = parts[1..]
            .iter()
            .filter_map(|p| bus::envelope::peek(p, bus::MAX_FRAME).ok())
            .map(|h| h.name)
            .filter(|n| !n.starts_with("probe-"))
            .collect();
        Some((serde_json::from_slice(&parts[0]).unwrap(), names))
    }
}

/// Names of actions received on `sub` within `wait`.
fn received(sub: &zmq::Socket, wait: Duration) -> Vec<String> {
    let mut names = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let mut items = [sub.as_poll_item(zmq::POLLIN)];
        bus::sockets::poll(&mut items, 50).unwrap();
        while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
            // Sealed frames: the header names the action (verifying is the actor's job).
            if let Some(h) = parts
                .get(1)
                .and_then(|p| bus::envelope::peek(p, bus::MAX_FRAME).ok())
            {
                names.push(h.name);
            }
        }
    }
    names
}

#[test]
fn hosts_get_their_own_topics_only_and_a_revoked_one_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let manager = KeyPair::generate().unwrap();
    let [web1, web2, stranger] = [(); 3].map(|()| KeyPair::generate().unwrap());
    let mut store = Enrollment::open(&store_dir(state)).unwrap();
    for (name, pair, groups) in [
        ("web1", &web1, vec!["web".to_string()]),
        ("web2", &web2, vec![]),
    ] {
        store
            .enroll(name, pair.public(), Role::Host, &groups)
            .unwrap();
        store.accept(name, &groups).unwrap();
    }
    let base = free_base();
    let cfg = publisher::Config {
        endpoints: bus::Endpoints::local(base, state),
        state_dir: state.to_path_buf(),
        max_frame: bus::MAX_FRAME,
        keep: 1_000,
        send_limits: None,
        http: None,
        security: Security::Curve {
            pair: manager.clone(),
            server: *manager.public(),
        },
    };
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || publisher::run(cfg, &stop))
    };
    let client = |pair: &KeyPair| Client {
        sec: Security::Curve {
            pair: pair.clone(),
            server: *manager.public(),
        },
    };
    let (c1, c2, cx) = (client(&web1), client(&web2), client(&stranger));
    let ep = &cfg.endpoints;
    let (own, own_watch) = bus::secure::connect_watched(zmq::SUB, &ep.publish, &c1.sec).unwrap();
    own.set_subscribe(b"host/web1/").unwrap();
    let group = c1.subscriber(&ep.publish, "group/web/");
    let spy = c2.subscriber(&ep.publish, "host/web1/");
    let spy_all = c2.subscriber(&ep.publish, "");
    let web2_own = c2.subscriber(&ep.publish, "host/web2/");
    let unknown = cx.subscriber(&ep.publish, "all/");

    // Subscriptions travel after the CURVE handshakes, later on a loaded machine: probe each
    // allowed one until it receives, then take what the refused ones got (must be nothing).
    let link = bus::sockets::connect(zmq::PUSH, &ep.link).unwrap();
    // The link takes numbered frames of a manager's outbox.
    let mut next = 0;
    let mut outbox = |action: Action| {
        next += 1;
        bus::encode(&Linked {
            outbox: "m1".into(),
            seq: next,
            action,
            after: 0,
        })
    };
    let mut ready = [false; 3];
    for i in 0..200 {
        for (target, got) in ["host/web1", "group/web", "host/web2"]
            .iter()
            .zip(&mut ready)
        {
            if !*got {
                link.send(outbox(action(&format!("probe-{i}"), target)), 0)
                    .unwrap();
            }
        }
        for (sub, got) in [&own, &group, &web2_own].into_iter().zip(&mut ready) {
            *got |= !received(sub, Duration::from_millis(20)).is_empty();
        }
        if ready.iter().all(|r| *r) {
            break;
        }
    }
    assert_eq!(
        ready, [true; 3],
        "the allowed subscriptions never took effect"
    );
    for sub in [&own, &group, &web2_own] {
        received(sub, Duration::from_millis(200));
    }
    for (sub, who) in [
        (&spy, "web2 on web1's topic"),
        (&spy_all, "web2 on everything"),
        (&unknown, "an unknown key"),
    ] {
        assert!(
            received(sub, Duration::from_millis(50)).is_empty(),
            "{who} received probes"
        );
    }

    for (name, target) in [
        ("a1", "host/web1"),
        ("g1", "group/web"),
        ("b1", "host/web2"),
        ("all1", "all"),
    ] {
        link.send(outbox(action(name, target)), 0).unwrap();
    }
    let wait = Duration::from_millis(800);
    assert_eq!(received(&own, wait), ["a1"]);
    assert_eq!(received(&group, wait), ["g1"]);
    assert_eq!(received(&web2_own, wait), ["b1"]);
    assert!(received(&spy, wait).is_empty(), "web2 read web1's actions");
    assert!(received(&spy_all, wait).is_empty(), "web2 read everything");
    assert!(
        received(&unknown, wait).is_empty(),
        "an unknown key read actions"
    );

    // Replay: web2 asking for web1's topic gets its own only, and is told what was refused.
    let (h, n) = c2
        .replay(&ep.replay, &["host/web1/", "host/web2/"])
        .unwrap();
    assert_eq!(
        (h["refused"].clone(), n),
        (json!(["host/web1/"]), vec!["b1".to_string()])
    );
    let (h, n) = c1
        .replay(&ep.replay, &["host/web1/", "group/web/", "all/"])
        .unwrap();
    assert_eq!(
        (h["refused"].clone(), n),
        (json!([]), ["a1", "g1", "all1"].map(String::from).to_vec())
    );
    assert!(
        cx.replay(&ep.replay, &["all/"]).is_none(),
        "an unknown key was answered"
    );

    // Revoke web2 while its subscription is up: within a second or so it receives nothing more;
    // web1, reconnected and subscribed again by libzmq, keeps receiving.
    own_watch.drain();
    store.revoke("web2").unwrap();
    assert!(
        own_watch.wait(Duration::from_secs(5)),
        "web1 did not reconnect to a rebound fan-out"
    );
    // Live delivery resumes once the subscription has travelled again (what was published in
    // between, an actor gets through replay): publish until web1 sees one, web2 never does.
    let mut web1_got = Vec::new();
    let mut web2_got = Vec::new();
    for i in 0..20 {
        link.send(outbox(action(&format!("b2-{i}"), "host/web2")), 0)
            .unwrap();
        link.send(outbox(action(&format!("a2-{i}"), "host/web1")), 0)
            .unwrap();
        web2_got.extend(received(&web2_own, Duration::from_millis(200)));
        web1_got.extend(received(&own, Duration::from_millis(100)));
        if !web1_got.is_empty() {
            break;
        }
    }
    assert!(
        web2_got.is_empty(),
        "a revoked host still receives: {web2_got:?}"
    );
    assert!(
        web1_got.iter().all(|n| n.starts_with("a2-")) && !web1_got.is_empty(),
        "web1 after the rebind: {web1_got:?}"
    );

    stop.store(true, Ordering::Relaxed);
    run.join().unwrap().unwrap();
    // The log holds every action, file contents included: only its owner may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("publisher"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}
