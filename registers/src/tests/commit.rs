//! Staging and the group commit: what is read before a commit, what a drop or a SIGKILL keeps,
//! side writes, and the move from the old four-tree layout.

use crate::*;
use serde_json::json;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn side(space: u8, key: &[u8], value: Option<&[u8]>) -> SideWrite {
    SideWrite {
        space,
        key: key.to_vec(),
        value: value.map(<[u8]>::to_vec),
    }
}

#[test]
fn staged_writes_are_read_back_and_lost_without_commit() {
    let dir = tempfile::tempdir().unwrap();
    let t = 1_000_000;
    {
        let r = Registers::open(dir.path()).unwrap();
        r.set("kept", &json!("old")).unwrap();
        r.set("gone", &json!(1)).unwrap();
        r.commit(Vec::new()).unwrap();
        assert!(!r.is_dirty());

        r.set("kept", &json!("new")).unwrap();
        assert!(r.del("gone").unwrap());
        assert!(r.is_dirty());
        assert_eq!(r.incr("n", 2).unwrap(), 2);
        r.window_at("w", 4.0, 10.0, t).unwrap();
        r.mark_at("m", t).unwrap();
        assert!(r.once_within_at("o", 10.0, t).unwrap());
        // Everything staged reads back, a staged delete as absent, before any commit.
        assert_eq!(r.get("kept").unwrap(), Some(json!("new")));
        assert_eq!(r.get("gone").unwrap(), None);
        assert_eq!(r.keys("").unwrap(), vec!["kept", "n"]);
        assert_eq!(r.window_at("w", 6.0, 10.0, t + 1).unwrap().count, 2);
        assert!(r.seen_at("m", 1.0, t).unwrap());
        assert!(!r.once_within_at("o", 10.0, t + 1).unwrap());
        // A clone shares the staging area.
        assert_eq!(r.clone().incr("n", 1).unwrap(), 3);
    }
    let r = Registers::open(dir.path()).unwrap();
    assert!(!r.is_dirty());
    assert_eq!(
        r.get("kept").unwrap(),
        Some(json!("old")),
        "never committed"
    );
    assert_eq!(
        r.get("gone").unwrap(),
        Some(json!(1)),
        "the delete was not committed"
    );
    assert_eq!(r.get("n").unwrap(), None);
    assert_eq!(r.window_at("w", 1.0, 10.0, t + 2).unwrap().count, 1);
    assert!(!r.seen_at("m", 1.0, t).unwrap());
    assert!(r.once_within_at("o", 10.0, t + 2).unwrap());
}

#[test]
fn commit_makes_registers_and_side_writes_durable_together() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = Registers::open(dir.path()).unwrap();
        r.incr("n", 7).unwrap();
        r.commit(vec![
            side(0x80, b"done/s1", Some(b"7")),
            side(0x80, b"done/s0", Some(b"3")),
            side(0x81, b"outbox/1", Some(b"action")),
        ])
        .unwrap();
        // A side write in a register space is refused, and nothing of that commit is written.
        r.incr("n", 1).unwrap();
        let err = r
            .commit(vec![side(0x80, b"x", Some(b"1")), side(0x03, b"y", None)])
            .unwrap_err();
        assert!(
            matches!(err, RegisterError::SideSpace { space: 0x03 }),
            "{err}"
        );
        assert!(err.to_string().contains("0x03"), "{err}");
        assert!(r.is_dirty(), "the staged incr waits for the next commit");
        assert!(r.side_entries(0x7f).is_err());
        // Side entries are not registers.
        assert_eq!(r.keys("").unwrap(), vec!["n"]);
    }
    let r = Registers::open(dir.path()).unwrap();
    assert_eq!(r.get("n").unwrap(), Some(json!(7)));
    assert_eq!(
        r.side_entries(0x80).unwrap(),
        vec![
            (b"done/s0".to_vec(), b"3".to_vec()),
            (b"done/s1".to_vec(), b"7".to_vec())
        ]
    );
    assert_eq!(
        r.side_entries(0x81).unwrap(),
        vec![(b"outbox/1".to_vec(), b"action".to_vec())]
    );
    // A side delete commits too, with the registers of its group.
    r.incr("n", 1).unwrap();
    r.commit(vec![side(0x81, b"outbox/1", None)]).unwrap();
    drop(r);
    let r = Registers::open(dir.path()).unwrap();
    assert_eq!(r.get("n").unwrap(), Some(json!(8)));
    assert!(r.side_entries(0x81).unwrap().is_empty());
    assert_eq!(r.side_entries(0x80).unwrap().len(), 2);
}

#[test]
fn flush_if_dirty_commits_only_what_is_staged() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registers::open(dir.path()).unwrap();
    r.flush_if_dirty().unwrap();
    // Reads, a refusing throttle and an expiry on an absent key stage nothing.
    r.get("a").unwrap();
    r.expire("a", 5.0).unwrap();
    assert!(!r.is_dirty());
    r.set("a", &json!(1)).unwrap();
    assert!(r.is_dirty());
    r.flush_if_dirty().unwrap();
    assert!(!r.is_dirty());
    drop(r);
    let r = Registers::open(dir.path()).unwrap();
    assert_eq!(r.get("a").unwrap(), Some(json!(1)));
}

/// Set in the child process of the kill -9 test: the store dir it writes to.
const CHILD_DIR: &str = "REGISTERS_KILL_CHILD_DIR";

/// The child: count `n` and mark `done = n` in one group per loop, and say so once committed.
/// It stops by itself after a while, should its parent fail to kill it.
fn kill_child(dir: &std::path::Path) {
    let r = Registers::open(dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let n = r.incr("n", 1).unwrap();
        // More of the group, so a torn batch would have something to tear.
        r.set(&format!("k{}", n % 16), &json!(n)).unwrap();
        r.window("w", n as f64, 1.0).unwrap();
        r.commit(vec![side(0x80, b"done", Some(&n.to_be_bytes()))])
            .unwrap();
        println!("committed {n}");
    }
}

/// A small pseudo-random number from the clock (no rand crate for one test).
fn random_below(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % bound
}

#[test]
fn kill_nine_keeps_registers_and_side_writes_together() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        kill_child(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = module_path!()
        .split_once("::")
        .map(|(_, rest)| format!("{rest}::kill_nine_keeps_registers_and_side_writes_together"))
        .unwrap();
    let mut before = 0;
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let last = Arc::new(AtomicI64::new(-1));
        let stdout = child.stdout.take().unwrap();
        let reader = {
            let last = last.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("committed ") {
                        if let Ok(n) = n.trim().parse::<i64>() {
                            last.store(n, Ordering::SeqCst);
                        }
                    }
                }
            })
        };
        // Wait for its first commit of this round, then kill it at a random moment.
        let wait = Instant::now() + Duration::from_secs(30);
        while last.load(Ordering::SeqCst) <= before && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20 + random_below(400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let printed = last.load(Ordering::SeqCst);
        assert!(
            printed > before,
            "round {round}: the child committed nothing"
        );

        let r = Registers::open(dir.path()).unwrap();
        let n = r.get("n").unwrap().and_then(|v| v.as_i64()).unwrap();
        let done = r.side_entries(0x80).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, b"done");
        let done = i64::from_be_bytes(done[0].1.as_slice().try_into().unwrap());
        assert_eq!(
            n, done,
            "round {round}: the register and the side write disagree"
        );
        assert!(
            n >= printed,
            "round {round}: {printed} was reported committed, the store has {n}"
        );
        assert_eq!(r.get(&format!("k{}", n % 16)).unwrap(), Some(json!(n)));
        eprintln!("round {round}: killed after {printed} reported, store has {n}");
        before = n;
    }
}

#[test]
fn old_layout_store_opens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let t = 5_000_000u64;
    // An expiry an hour ahead, so `keys` (which reads the clock) still lists it.
    let exp = now_ms() + 3_600_000;
    {
        // The layout before: four trees, written with plain sled inserts.
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let values = db.open_tree("values").unwrap();
        let stored =
            |v: serde_json::Value, expires: Option<u64>| Stored { expires, value: v }.encode();
        values.insert("a", stored(json!({"x": 1}), None)).unwrap();
        values.insert("n", stored(json!(41), None)).unwrap();
        values
            .insert("e", stored(json!("soon"), Some(exp)))
            .unwrap();
        db.open_tree("windows")
            .unwrap()
            .insert("w", pack(&vec![(t, 2.0f64), (t + 1, 4.0)]))
            .unwrap();
        db.open_tree("marks")
            .unwrap()
            .insert("m", &t.to_be_bytes())
            .unwrap();
        db.open_tree("throttles")
            .unwrap()
            .insert("once/flap", &t.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    for _ in 0..2 {
        let r = Registers::open(dir.path()).unwrap();
        let names = r.store.tree_names();
        for old in ["values", "windows", "marks", "throttles"] {
            assert!(!names.iter().any(|n| n == old), "{old} left in {names:?}");
        }
        assert_eq!(r.get("a").unwrap(), Some(json!({"x": 1})));
        assert_eq!(r.keys("").unwrap(), vec!["a", "e", "n"]);
        assert_eq!(r.get_at("e", exp - 1).unwrap(), Some(json!("soon")));
        assert_eq!(r.get_at("e", exp).unwrap(), None, "the expiry moved too");
        assert!(r.seen_at("m", 1.0, t).unwrap());
        assert!(!r.once_within_at("flap", 10.0, t + 1).unwrap());
        let s = r.window_at("w", 6.0, 10.0, t + 2).unwrap();
        assert_eq!((s.count, s.sum), (3, 12.0));
        assert_eq!(r.incr("n", 1).unwrap(), 42);
        // Not committed: the second open sees the moved data as it was moved.
    }
}
