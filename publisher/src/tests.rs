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
    }
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
    })
}

/// What the replay socket answers, each frame verified against the state dir's key.
fn replay(ep: &str, key: &bus::envelope::ManagerKey, req: Value) -> (Value, Vec<Action>) {
    let s = bus::sockets::connect(zmq::REQ, ep).unwrap();
    s.set_rcvtimeo(5_000).unwrap();
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
    let base = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = Config {
        endpoints: bus::Endpoints::local(base, dir.path()),
        state_dir: dir.path().to_path_buf(),
        max_frame: bus::MAX_FRAME,
        keep: 1_000,
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
