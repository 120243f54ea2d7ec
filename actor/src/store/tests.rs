use super::*;
use serde_json::json;
use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fresh dir under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "reflex-actor-store-{what}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn action(name: &str, seq: u64) -> Action {
    Action {
        id: format!("a{seq}"),
        name: name.into(),
        seq,
        target: bus::Target::All,
        graph: json!([{"kind": "noop", "name": "n"}]),
        origin: bus::Origin::default(),
        expires: None,
        life: bus::Life::Keep,
        prev: 0,
    }
}

fn by_name(actions: Vec<Action>) -> HashMap<String, Action> {
    actions.into_iter().map(|a| (a.name.clone(), a)).collect()
}

#[test]
fn kept_graphs_round_trip_and_names_are_file_safe() {
    let dir = TempDir::new("round-trip");
    let store = Store::new(&dir.0, "web/1");
    assert!(store.engine.starts_with(dir.0.join("actor-web_1")));
    assert!(store
        .engine_dir("deploy/app")
        .ends_with("6465706c6f792f617070"));
    let a = action("deploy/app", 7);
    store.save(&a);
    store.save(&action("other", 8));
    let last = LastSeqs::from([("k".to_string(), 9)]);
    store.save_last_seqs(&last);
    drop(store);

    let store = Store::new(&dir.0, "web/1");
    assert_eq!(store.last_seqs(), last);
    let loaded = store.load();
    assert_eq!(loaded, vec![a.clone(), action("other", 8)], "oldest first");
    assert!(store.load().is_empty(), "taken once");
    store.remove("other");
    drop(store);
    let store = Store::new(&dir.0, "web/1");
    assert_eq!(store.load(), vec![a]);
    assert_eq!(store.last_seqs(), last);
}

#[test]
fn a_torn_last_commit_is_cut_off_and_later_commits_still_count() {
    let dir = TempDir::new("torn");
    let store = Store::new(&dir.0, "h");
    store.save(&action("a", 1));
    store.save_last_seqs(&LastSeqs::from([("k".to_string(), 1)]));
    drop(store);
    let log = dir.0.join("actor-h").join("graphs.log");
    // A crash in the middle of the next commit: half a frame.
    let mut f = OpenOptions::new().append(true).open(&log).expect("log");
    f.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("torn");
    drop(f);

    let store = Store::new(&dir.0, "h");
    assert_eq!(store.load(), vec![action("a", 1)]);
    store.save(&action("b", 2));
    store.save_last_seqs(&LastSeqs::from([("k".to_string(), 2)]));
    drop(store);
    let store = Store::new(&dir.0, "h");
    assert_eq!(store.load(), vec![action("a", 1), action("b", 2)]);
    assert_eq!(store.last_seqs()["k"], 2);
}

#[test]
fn compaction_keeps_exactly_what_is_in_force() {
    let dir = TempDir::new("compact");
    let store = Store::open(&dir.0, "h", 16 << 10);
    for seq in 1..=2_000 {
        store.save(&action(&format!("g{}", seq % 50), seq));
        if seq.is_multiple_of(7) {
            store.remove(&format!("g{}", (seq + 1) % 50));
        }
        store.save_last_seqs(&LastSeqs::from([("k".to_string(), seq)]));
        if seq.is_multiple_of(100) {
            store.flush();
        }
    }
    drop(store);
    // What a store that never compacts says, by replaying the same changes in memory.
    let mut want: HashMap<String, u64> = HashMap::new();
    for seq in 1..=2_000u64 {
        want.insert(format!("g{}", seq % 50), seq);
        if seq.is_multiple_of(7) {
            want.remove(&format!("g{}", (seq + 1) % 50));
        }
    }
    let log = dir.0.join("actor-h").join("graphs.log");
    let size = std::fs::metadata(&log).expect("log").len();
    assert!(size < 64 << 10, "compacted: {size} bytes");
    let store = Store::new(&dir.0, "h");
    let got: HashMap<String, u64> = store.load().into_iter().map(|a| (a.name, a.seq)).collect();
    assert_eq!(got, want);
    assert_eq!(store.last_seqs()["k"], 2_000);
}

#[test]
fn an_older_store_is_carried_into_the_log() {
    let dir = TempDir::new("migrate");
    let old = dir.0.join("actor-h");
    std::fs::create_dir_all(old.join("graphs")).expect("dirs");
    let a = action("deploy/app", 3);
    std::fs::write(
        old.join("graphs")
            .join(format!("{}.json", hex("deploy/app"))),
        serde_json::to_vec(&a).expect("json"),
    )
    .expect("graph");
    std::fs::write(old.join("graphs").join("junk.json"), b"not json").expect("junk");
    std::fs::write(old.join("issuers.json"), br#"{"k":3}"#).expect("seqs");

    let store = Store::new(&dir.0, "h");
    assert_eq!(store.load(), vec![a.clone()]);
    assert_eq!(store.last_seqs()["k"], 3);
    drop(store);
    assert!(!old.join("graphs").exists() && !old.join("issuers.json").exists());
    let store = Store::new(&dir.0, "h");
    assert_eq!(store.load(), vec![a]);
    assert_eq!(store.last_seqs()["k"], 3);
}

#[test]
fn a_file_that_is_not_a_store_log_is_set_aside_not_overwritten() {
    let dir = TempDir::new("foreign");
    let d = dir.0.join("actor-h");
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::write(d.join("graphs.log"), b"something else").expect("foreign");
    let store = Store::new(&dir.0, "h");
    assert!(store.load().is_empty());
    drop(store);
    let aside: Vec<_> = std::fs::read_dir(&d)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("unreadable"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read(aside[0].path()).expect("kept"),
        b"something else"
    );
}

/// Set in the child process of the kill -9 test: the state dir it writes to.
const CHILD_DIR: &str = "REFLEX_ACTOR_STORE_KILL_CHILD";

/// Action `n` puts `g-n`; every third one also removes `g-(n-2)`.
fn removed_by(n: u64) -> Option<u64> {
    (n.is_multiple_of(3) && n > 2).then(|| n - 2)
}

/// The child: as the serve loop does, each action's graph then its sequence, resuming after
/// the last durable sequence; says which sequence is durable now and then. Stops by itself
/// after a while, should its parent fail to kill it.
fn kill_child(dir: &Path) {
    let store = Store::open(dir, "h", 64 << 10);
    let mut n = store.last_seqs().get("k").copied().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        n += 1;
        store.save(&action(&format!("g-{n}"), n));
        if let Some(gone) = removed_by(n) {
            store.remove(&format!("g-{gone}"));
        }
        store.save_last_seqs(&LastSeqs::from([("k".to_string(), n)]));
        if n.is_multiple_of(64) {
            store.flush();
            println!("durable {n}");
        }
    }
}

/// A small pseudo-random number from the clock (no rand crate for one test).
fn random_below(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % bound
}

#[test]
fn kill_nine_mid_group_loses_no_graph_below_the_durable_sequence() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        kill_child(Path::new(&dir));
        return;
    }
    let dir = TempDir::new("kill9");
    let name = format!(
        "{}::kill_nine_mid_group_loses_no_graph_below_the_durable_sequence",
        module_path!().split_once("::").map_or("", |(_, rest)| rest)
    );
    let mut before = 0;
    for round in 0..4 {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir.0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("child");
        let printed = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().expect("stdout");
        let reader = {
            let printed = Arc::clone(&printed);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("durable ") {
                        if let Ok(n) = n.trim().parse::<u64>() {
                            printed.store(n, Ordering::SeqCst);
                        }
                    }
                }
            })
        };
        let wait = Instant::now() + Duration::from_secs(30);
        while printed.load(Ordering::SeqCst) <= before && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20 + random_below(300)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader");
        let printed = printed.load(Ordering::SeqCst);
        assert!(
            printed > before,
            "round {round}: the child made nothing durable"
        );

        let store = Store::open(&dir.0, "h", 64 << 10);
        let last = store.last_seqs().get("k").copied().unwrap_or(0);
        assert!(
            last >= printed,
            "round {round}: {printed} was said durable, the store says {last}"
        );
        let got = by_name(store.load());
        for m in 1..=last {
            // The removal of a group ahead of its sequence may be in too.
            if removed_by(m + 2).is_some() && m + 2 == last + 1 {
                continue;
            }
            let gone = removed_by(m + 2).is_some() && m + 2 <= last;
            assert_eq!(
                got.contains_key(&format!("g-{m}")),
                !gone,
                "round {round}: g-{m} (durable sequence {last})"
            );
        }
        // A graph may be durable a group before its sequence; never further ahead.
        assert!(got.values().all(|a| a.seq <= last + 1), "round {round}");
        eprintln!("round {round}: killed after {printed} said durable, store at {last}");
        before = last;
    }
}
