use super::*;
use bus::Action;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn action(name: &str, target: &str) -> Action {
    Action {
        id: bus::new_id(),
        name: name.into(),
        seq: 0,
        target: bus::Target::parse(target).unwrap(),
        graph: json!([]),
        origin: Default::default(),
        expires: None,
        life: bus::Life::Keep,
        prev: 0,
    }
}

fn free_base() -> u16 {
    bus::endpoints::free_local_base().expect("free ports")
}

/// A manager's outbox, as the link sees it: each action numbered from 1.
struct Outbox {
    id: String,
    next: u64,
}

impl Outbox {
    fn new(id: &str) -> Outbox {
        Outbox {
            id: id.into(),
            next: 1,
        }
    }

    /// The link frame of the next action.
    fn frame(&mut self, action: Action) -> Vec<u8> {
        self.next += 1;
        linked(&self.id, self.next - 1, action)
    }
}

fn linked(outbox: &str, seq: u64, action: Action) -> Vec<u8> {
    bus::encode(&bus::delivery::Linked {
        outbox: outbox.into(),
        seq,
        action,
        after: 0,
    })
}

/// What the replay socket answers, each frame verified against the state dir's key.
fn replay(ep: &str, key: &bus::envelope::ManagerKey, req: Value) -> (Value, Vec<Action>) {
    let s = bus::sockets::connect(zmq::REQ, ep).unwrap();
    // Generous: a group of thousands of frames is sealed before the next request is served,
    // and the machine may be busy.
    s.set_rcvtimeo(30_000).unwrap();
    s.send(req.to_string().as_bytes(), 0).unwrap();
    let parts = s.recv_multipart(0).unwrap();
    let header = serde_json::from_slice(&parts[0]).unwrap();
    (
        header,
        parts[1..]
            .iter()
            .map(|p| bus::envelope::open(p, key, bus::MAX_FRAME).unwrap().action)
            .collect(),
    )
}

#[test]
fn numbers_logs_prunes_and_replays_by_topic() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let cfg = Config {
        endpoints: bus::Endpoints::local(base, dir.path()),
        state_dir: dir.path().to_path_buf(),
        max_frame: bus::MAX_FRAME,
        keep: 1_000,
        send_limits: None,
        http: None,
        security: bus::secure::Security::Insecure,
    };
    // The key the publisher will find and sign with.
    let key = bus::envelope::SignKey::load_or_create(dir.path())
        .unwrap()
        .public();
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || run(cfg, &stop))
    };
    let link = bus::sockets::connect(zmq::PUSH, &cfg.endpoints.link).unwrap();
    let mut outbox = Outbox::new("m1");
    // "pinned" goes out first and is never replaced: pruning must keep it.
    link.send(outbox.frame(action("pinned", "host/a")), 0)
        .unwrap();
    for i in 0..3_000 {
        let target = if i % 2 == 0 { "host/a" } else { "host/ab" };
        link.send(outbox.frame(action(&format!("n{}", i % 10), target)), 0)
            .unwrap();
    }
    link.send(b"garbage".as_slice(), 0).unwrap();
    // A bare action is what the link took before outboxes: no longer a link frame.
    link.send(bus::encode(&action("bare", "all")), 0).unwrap();
    link.send(outbox.frame(action("last", "all")), 0).unwrap();
    let ep = cfg.endpoints.replay.clone();
    let mut tries = 0;
    let (header, all) = loop {
        let (h, a) = replay(
            &ep,
            &key,
            json!({"since": 0, "topics": ["all/", "host/a/"]}),
        );
        if h["last_seq"] == json!(3_002) || tries > 100 {
            break (h, a);
        }
        tries += 1;
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(header["last_seq"], json!(3_002), "garbage was not numbered");
    assert_eq!(header["gap"], json!(true), "older actions were pruned");
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "oldest first, strictly increasing"
    );
    assert!(
        all.iter()
            .all(|a| a.target == "host/a" || a.target == "all"),
        "host/ab is not host/a"
    );
    assert_eq!(
        all[0].name, "pinned",
        "the newest action of a name survives pruning"
    );
    assert_eq!(all.last().unwrap().name, "last");
    // Each action names the one before it on its topic (host/a and host/ab alternate).
    for a in all.iter().filter(|a| a.target == "host/a" && a.seq > 2) {
        assert_eq!(a.prev, a.seq - 2, "{a:?}");
    }
    assert_eq!(all.last().unwrap().prev, 0, "the first on all/");
    // A page holds the oldest; `more` says there are others.
    let (h, page) = replay(
        &ep,
        &key,
        json!({"since": 2_990, "topics": ["host/a/"], "limit": 2}),
    );
    let seqs: Vec<u64> = page.iter().map(|a| a.seq).collect();
    assert_eq!((seqs, h["more"].clone()), (vec![2_992, 2_994], json!(true)));
    let (h, _) = replay(
        &ep,
        &key,
        json!({"since": 2_998, "topics": ["host/a/"], "limit": 2}),
    );
    assert_eq!(h["more"], json!(false));

    let (_, latest) = replay(
        &ep,
        &key,
        json!({"since": 0, "topics": ["all/", "host/a/"], "latest_only": true}),
    );
    let names: Vec<&str> = latest.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["pinned", "n0", "n2", "n4", "n6", "n8", "last"]);
    let (h, recent) = replay(&ep, &key, json!({"since": 3_000, "topics": ["host/ab/"]}));
    assert_eq!((h["gap"].clone(), recent.len()), (json!(false), 1));
    let s = bus::sockets::connect(zmq::REQ, &ep).unwrap();
    s.set_rcvtimeo(5_000).unwrap();
    s.send("not json", 0).unwrap();
    assert!(String::from_utf8(s.recv_bytes(0).unwrap())
        .unwrap()
        .contains("bad replay request"));

    stop.store(true, Ordering::Relaxed);
    run.join().unwrap().unwrap();
    // Numbering continues across a restart.
    let p = Publisher::new(&cfg).unwrap();
    assert_eq!(p.next_seq, 3_003);
    assert_eq!(
        p.acked("m1"),
        3_002,
        "the outbox's number is kept with the log"
    );
}

fn insecure(dir: &std::path::Path) -> Config {
    let base = free_base();
    Config {
        endpoints: bus::Endpoints::local(base, dir),
        state_dir: dir.to_path_buf(),
        max_frame: bus::MAX_FRAME,
        keep: 1_000,
        send_limits: None,
        http: None,
        security: bus::secure::Security::Insecure,
    }
}

/// Every sealed frame `sub` receives within `wait`, opened with `key`.
fn receive(sub: &zmq::Socket, key: &bus::envelope::ManagerKey, wait: Duration) -> Vec<Action> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        let mut items = [sub.as_poll_item(zmq::POLLIN)];
        bus::sockets::poll(&mut items, 20).unwrap();
        while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
            if parts.len() == 3 && parts[1] == bus::delivery::TICK {
                continue;
            }
            got.push(
                bus::envelope::open(&parts[1], key, bus::MAX_FRAME)
                    .unwrap()
                    .action,
            );
        }
    }
    got
}

#[test]
fn a_group_of_hundreds_is_published_in_order_after_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = insecure(dir.path());
    let key = bus::envelope::SignKey::load_or_create(dir.path())
        .unwrap()
        .public();
    let mut p = Publisher::new(&cfg).unwrap();
    let sub = bus::sockets::connect(zmq::SUB, &cfg.endpoints.publish).unwrap();
    sub.set_subscribe(b"all/").unwrap();
    // Serve the subscription as the run loop does, probing until it has taken effect.
    let mut probe = Outbox::new("probe");
    let ready = (0..200).any(|_| {
        p.doors.serve_subscriptions(&p.publish).unwrap();
        p.take_frame(&probe.frame(action("probe", "all"))).unwrap();
        !receive(&sub, &key, Duration::from_millis(20)).is_empty()
    });
    assert!(ready, "the subscription never took effect");
    receive(&sub, &key, Duration::from_millis(200));

    let (commits, first) = (p.commits, p.next_seq);
    let mut m1 = Outbox::new("m1");
    let mut group = p.group();
    for i in 0..500 {
        let frame = m1.frame(action(&format!("g{i}"), "all"));
        assert!(p.admit(&frame, &mut group));
        if i % 100 == 0 {
            // A resend inside the group is recognised against the group itself.
            assert!(!p.admit(&frame, &mut group));
        }
    }
    assert!(
        receive(&sub, &key, Duration::from_millis(100)).is_empty(),
        "nothing goes out before the commit"
    );
    assert_eq!(
        p.acked("m1"),
        0,
        "nothing is acknowledged before the commit"
    );
    p.commit(group).unwrap();
    assert_eq!(p.commits, commits + 1, "one flush for the group");
    assert_eq!(p.acked("m1"), 500);
    let got = receive(&sub, &key, Duration::from_millis(1_000));
    let names: Vec<String> = got.iter().map(|a| a.name.clone()).collect();
    let want: Vec<String> = (0..500).map(|i| format!("g{i}")).collect();
    assert_eq!(names, want, "published in order, once each");
    assert!(
        got.iter().zip(first..).all(|(a, seq)| a.seq == seq),
        "numbered consecutively"
    );
    assert!(
        got.windows(2).all(|w| w[1].prev == w[0].seq),
        "each names the one before it on all/"
    );
    assert_eq!(got[0].prev, first - 1, "the last probe, before the group");
    // The tail of a burst: the topic is ticked with its last seq, for a subscriber that the
    // PUB socket dropped the last actions for.
    std::thread::sleep(Duration::from_millis(1_100));
    p.topics.tick(&p.publish).unwrap();
    let mut items = [sub.as_poll_item(zmq::POLLIN)];
    bus::sockets::poll(&mut items, 2_000).unwrap();
    let tick = sub.recv_multipart(0).unwrap();
    assert_eq!(
        tick,
        [
            b"all/".to_vec(),
            bus::delivery::TICK.to_vec(),
            (first + 499).to_be_bytes().to_vec()
        ]
    );
}

#[test]
fn the_log_of_an_older_publisher_is_moved_into_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = insecure(dir.path());
    let sign = bus::envelope::SignKey::load_or_create(dir.path()).unwrap();
    {
        // The trees as the publisher before outboxes kept them.
        let db = sled::open(dir.path().join("publisher")).unwrap();
        let (log, latest) = (
            db.open_tree("actions").unwrap(),
            db.open_tree("latest").unwrap(),
        );
        for (seq, name) in [(7u64, "old"), (9, "kept")] {
            let mut a = action(name, "all");
            a.seq = seq;
            let sealed = bus::envelope::seal(&sign, &a, bus::now_ms());
            log.insert(seq.to_be_bytes(), sealed).unwrap();
            latest.insert(name.as_bytes(), &seq.to_be_bytes()).unwrap();
        }
        latest.insert(b"\0pruned", &6u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let mut p = Publisher::new(&cfg).unwrap();
    assert_eq!(p.next_seq, 10, "numbering resumes after the old log");
    let frames = p
        .answer_replay(br#"{"since": 5, "topics": ["all/"]}"#, None)
        .unwrap();
    let header: Value = serde_json::from_slice(&frames[0]).unwrap();
    assert_eq!((header["gap"].clone(), frames.len()), (json!(true), 3));
    assert_eq!(header["oldest"], json!(7));
    assert!(!p.db.tree_names().iter().any(|t| t.as_ref() == b"actions"));
}

#[test]
fn outboxes_past_the_bound_are_forgotten_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = insecure(dir.path());
    let mut p = Publisher::new(&cfg).unwrap();
    for id in ["first", "real"] {
        assert!(p.take_frame(&linked(id, 1, action(id, "all"))).unwrap());
    }
    // Made-up ids heard from only after a gap are forgotten before any real outbox.
    for i in 0..2 * link::MAX_OUTBOXES {
        let frame = linked(&format!("bogus{i}"), 9, action("x", "all"));
        assert!(!p.take_frame(&frame).unwrap());
    }
    assert_eq!((p.acked("first"), p.acked("real")), (1, 1));
    assert!(p.outboxes.map_len() <= link::MAX_OUTBOXES);
    // One group naming more outboxes than are kept: the oldest remembered ones go.
    let mut group = p.group();
    for i in 0..link::MAX_OUTBOXES - 1 {
        assert!(p.admit(&linked(&format!("o{i}"), 1, action("x", "all")), &mut group));
    }
    p.commit(group).unwrap();
    assert_eq!(p.acked("first"), 0, "the oldest was forgotten");
    assert_eq!((p.acked("real"), p.acked("o0")), (1, 1));
    drop(p);
    let p = Publisher::new(&cfg).unwrap();
    assert_eq!(
        (p.acked("first"), p.acked("real"), p.acked("o1022")),
        (0, 1, 1),
        "and stays forgotten"
    );
    assert_eq!(p.outboxes.map_len(), link::MAX_OUTBOXES);
}
