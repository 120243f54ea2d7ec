//! Shared registers on a real 3-member etcd: the same semantics as on sled, `incr` exact under
//! two managers racing on different etcd members, each event taken exactly once when two
//! managers both try it (its mark and its effects in one transaction), and hostile values in
//! etcd refused with an error.

#[path = "../../tests/support/etcd.rs"]
mod etcd;

use cluster::{Cluster, EtcdStore};
use etcd::EtcdCluster;
use registers::{RegisterError, Registers, SideWrite};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "/reflex-test";
const STREAMS: u8 = 0x80;

fn registers(url: &str) -> (Cluster, Arc<EtcdStore>, Registers) {
    let c = Cluster::connect(url, PREFIX).expect("connect");
    let store = EtcdStore::open(&c).expect("open the shared store");
    let r = Registers::shared(store.clone());
    (c, store, r)
}

/// Wait until `r` reads `want` for `key` (its mirror follows the watch).
fn wait_value(r: &Registers, key: &str, want: serde_json::Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = r.get(key).unwrap();
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{key} reads {got:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn same_semantics_as_sled_and_seen_by_another_manager() {
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    let (_c1, _s1, a) = registers(&etcd.member_url(0));
    let (_c2, _s2, b) = registers(&etcd.member_url(1));
    let t = 1_000_000;
    a.set("name", &json!("web")).unwrap();
    assert_eq!(a.incr("n", 5).unwrap(), 5);
    assert_eq!(a.incr("n", -2).unwrap(), 3);
    assert!(a.expire_at("n", 10.0, t).unwrap());
    a.window_at("w", 4.0, 10.0, t).unwrap();
    a.mark_at("m", t).unwrap();
    assert!(a.once_within_at("o", 10.0, t).unwrap());
    // Staged, not committed: the other manager sees nothing.
    assert_eq!(b.get("name").unwrap(), None);
    a.commit(Vec::new()).unwrap();
    wait_value(&b, "name", json!("web"));
    // b's group read "name" as absent before a's commit: it cannot commit on that read, and is
    // discarded whole (the staged "x" too).
    b.set("x", &json!(1)).unwrap();
    assert!(matches!(b.commit(Vec::new()), Err(RegisterError::Conflict)));
    assert_eq!(b.get("x").unwrap(), None);
    // The stored expiry travels with the value: absent after it, there as well as here.
    assert_eq!(b.get_at("n", t + 5_000).unwrap(), Some(json!(3)));
    assert_eq!(b.get_at("n", t + 10_001).unwrap(), None);
    assert_eq!(b.window_at("w", 6.0, 10.0, t + 1).unwrap().count, 2);
    assert!(b.seen_at("m", 1.0, t).unwrap());
    assert!(
        !b.once_within_at("o", 10.0, t + 1).unwrap(),
        "throttle shared"
    );
    assert!(b.once_within_at("o", 10.0, t + 10_001).unwrap());
    // keys() reads the real clock: "n" expired in 1970 (t is 1,000 s after the epoch).
    assert_eq!(b.keys("").unwrap(), ["name"]);
    assert!(b.del("name").unwrap());
    b.commit(Vec::new()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.get("name").unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the delete never reached a"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // incr on a string is the same error as on sled.
    a.set("s", &json!("x")).unwrap();
    assert!(matches!(
        a.incr("s", 1),
        Err(RegisterError::NotInteger { .. })
    ));
}

#[test]
fn incr_is_exact_with_two_managers_racing() {
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    const EACH: usize = 150;
    let run = |url: String| {
        std::thread::spawn(move || {
            let (_c, _s, r) = registers(&url);
            let mut conflicts = 0;
            for _ in 0..EACH {
                loop {
                    r.incr("count", 1).unwrap();
                    match r.commit(Vec::new()) {
                        Ok(()) => break,
                        Err(RegisterError::Conflict) => conflicts += 1,
                        Err(e) => panic!("commit: {e}"),
                    }
                }
            }
            conflicts
        })
    };
    let x = run(etcd.member_url(0));
    let y = run(etcd.member_url(1));
    let conflicts = x.join().unwrap() + y.join().unwrap();
    let (_c, _s, r) = registers(&etcd.member_url(2));
    wait_value(&r, "count", json!(2 * EACH));
    eprintln!(
        "{} increments from two managers, {conflicts} groups run again",
        2 * EACH
    );
}

/// One manager's step for event `n` of `stream`: the mark is read through `side_get` (so it
/// is compared), the event counted, the mark advanced, all in one commit.
fn process(r: &Registers, stream: &[u8], n: u64) -> Result<bool, RegisterError> {
    let next = match r.side_get(STREAMS, stream)? {
        Some(b) => u64::from_be_bytes(b.as_slice().try_into().expect("an 8-byte mark")),
        None => 0,
    };
    if n < next {
        return Ok(false); // done already: a duplicate
    }
    assert_eq!(n, next, "events come in order");
    r.incr("events", 1)?;
    r.commit(vec![SideWrite {
        space: STREAMS,
        key: stream.to_vec(),
        value: Some((n + 1).to_be_bytes().to_vec()),
    }])?;
    Ok(true)
}

#[test]
fn an_event_taken_by_two_managers_counts_once() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    const EVENTS: u64 = 120;
    // Both managers believe they own the host and process its whole stream: a handover where
    // the old owner has not yet noticed it lost its lease.
    let run = |url: String| {
        std::thread::spawn(move || {
            let (_c, _s, r) = registers(&url);
            let (mut took, mut dup) = (0, 0);
            for n in 0..EVENTS {
                loop {
                    match process(&r, b"web1\0s1", n) {
                        Ok(true) => took += 1,
                        Ok(false) => dup += 1,
                        Err(RegisterError::Conflict) => continue,
                        Err(e) => panic!("event {n}: {e}"),
                    }
                    break;
                }
            }
            (took, dup)
        })
    };
    let x = run(etcd.url());
    let y = run(etcd.url());
    // An etcd member dies in the middle: commits carry on through the other two.
    std::thread::sleep(Duration::from_millis(300));
    etcd.kill(2);
    let (tx, dx) = x.join().unwrap();
    let (ty, dy) = y.join().unwrap();
    // Every event was met twice, once per manager. A commit whose answer was lost with the
    // killed member is sent again, fails its compare (it had applied) and reads as a conflict,
    // so the manager sees a duplicate where it had in fact taken the event: the counts of the
    // two managers may say fewer than EVENTS taken, the effects below may not.
    assert_eq!(tx + ty + dx + dy, 2 * EVENTS);
    assert!(tx + ty <= EVENTS, "an event was taken twice: {tx} + {ty}");
    let (_c, _s, r) = registers(&etcd.member_url(0));
    wait_value(&r, "events", json!(EVENTS));
    let mark = r.side_get(STREAMS, b"web1\0s1").unwrap().unwrap();
    assert_eq!(mark, EVENTS.to_be_bytes());
    eprintln!("taken {tx} + {ty}, duplicates {dx} + {dy}");
}

#[test]
fn hostile_values_in_etcd_are_errors_not_panics() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let (c, store, r) = registers(&etcd.url());
    let mut kv = c.client();
    c.block_on(async {
        kv.put(format!("{PREFIX}/r/v/bad"), vec![7u8, 1, 2], None)
            .await?;
        kv.put(format!("{PREFIX}/r/v/short"), vec![1u8, 0, 0], None)
            .await?;
        kv.put(format!("{PREFIX}/r/zz/k"), "not ours", None).await?;
        kv.put(format!("{PREFIX}/r/xq1/k"), "not ours", None)
            .await?;
        kv.put(format!("{PREFIX}/r/v/good"), vec![0u8, 0x05], None)
            .await
    })
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.mirror().read(|s| s.entries.len()) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror never saw the puts"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(r.get("bad"), Err(RegisterError::Corrupt { .. })));
    assert!(matches!(r.get("short"), Err(RegisterError::Corrupt { .. })));
    assert!(matches!(
        r.incr("bad", 1),
        Err(RegisterError::Corrupt { .. })
    ));
    assert_eq!(r.get("good").unwrap(), Some(json!(5)));
    // Keys under the root that are not ours are left out, not misread.
    assert!(store
        .store_key(format!("{PREFIX}/r/zz/k").as_bytes())
        .is_none());
    assert!(store
        .store_key(format!("{PREFIX}/r/xq1/k").as_bytes())
        .is_none());
    assert!(r.side_entries(0x80).unwrap().is_empty());
}

/// Not a check: the figures for the README (`cargo test -p cluster --test registers
/// measure_commit -- --ignored --nocapture`). One group = one event's work (an incr and a
/// stream mark), committed alone, 500 times: on etcd (3 members, loopback) and on sled (one
/// fsync) in the same run.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_commit() {
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    const N: usize = 500;
    let group = |r: &Registers, n: u64| {
        r.incr("count", 1).unwrap();
        r.commit(vec![SideWrite {
            space: STREAMS,
            key: b"web1\0s1".to_vec(),
            value: Some(n.to_be_bytes().to_vec()),
        }])
        .unwrap();
    };
    let time = |r: &Registers| {
        let mut t: Vec<Duration> = (0..N as u64)
            .map(|n| {
                let start = std::time::Instant::now();
                group(r, n);
                start.elapsed()
            })
            .collect();
        t.sort();
        (t[N / 2], t[N * 99 / 100])
    };
    let (_c, _s, shared) = registers(&etcd.url());
    let (e50, e99) = time(&shared);
    let dir = tempfile::tempdir().unwrap();
    let local = Registers::open(dir.path()).unwrap();
    let (s50, s99) = time(&local);
    eprintln!(
        "one group (incr + stream mark) per commit, {N} commits: etcd 3 members loopback \
         p50 {e50:?} p99 {e99:?} (1 round trip); sled + fsync p50 {s50:?} p99 {s99:?}"
    );
    // A busy group: 1,000 events of 1,000 hosts, each an incr of its own key and its own
    // stream's mark (2,000 writes, 1,000 compares in one transaction).
    const G: usize = 1_000;
    let big = |r: &Registers, round: u64| {
        let start = std::time::Instant::now();
        let mut side = Vec::with_capacity(G);
        for h in 0..G {
            r.incr(&format!("count/h{h}"), 1).unwrap();
            side.push(SideWrite {
                space: STREAMS,
                key: format!("h{h}\0s").into_bytes(),
                value: Some(round.to_be_bytes().to_vec()),
            });
        }
        r.commit(side).unwrap();
        start.elapsed()
    };
    for round in 0..5 {
        let e = big(&shared, round);
        let s = big(&local, round);
        eprintln!(
            "group of {G} events: etcd {e:?} ({:.0} events/s), sled {s:?} ({:.0} events/s)",
            G as f64 / e.as_secs_f64(),
            G as f64 / s.as_secs_f64()
        );
    }
}
