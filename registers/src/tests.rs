//! The register store's unit tests: every operation against a real sled store in a temp dir.

use super::*;
use serde_json::json;

#[test]
fn typed_values_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = Registers::open(dir.path()).unwrap();
        r.set("a", &json!({"x": [1, 2.5, "s", true]})).unwrap();
        r.set("f", &json!(1.5)).unwrap();
        r.set("b", &json!(false)).unwrap();
        assert_eq!(r.incr("n", 5).unwrap(), 5);
        assert_eq!(r.incr("n", -2).unwrap(), 3);
        r.flush().unwrap();
    }
    let r = Registers::open(dir.path()).unwrap();
    assert_eq!(r.get("a").unwrap(), Some(json!({"x": [1, 2.5, "s", true]})));
    assert_eq!(r.get("f").unwrap(), Some(json!(1.5)));
    assert_eq!(r.get("b").unwrap(), Some(json!(false)));
    assert_eq!(r.get("n").unwrap(), Some(json!(3)));
    assert_eq!(r.get("missing").unwrap(), None);
    assert_eq!(r.keys("").unwrap(), vec!["a", "b", "f", "n"]);
    assert!(r.del("a").unwrap());
    assert!(!r.del("a").unwrap());
}

#[test]
fn incr_rejects_non_integers_and_keeps_value() {
    let r = Registers::temporary().unwrap();
    r.set("s", &json!("text")).unwrap();
    let err = r.incr("s", 1).unwrap_err();
    assert!(err.to_string().contains("a string"), "{err}");
    assert_eq!(r.get("s").unwrap(), Some(json!("text")));
    r.set("big", &json!(i64::MAX)).unwrap();
    assert!(matches!(
        r.incr("big", 1),
        Err(RegisterError::Overflow { .. })
    ));
}

#[test]
fn incr_is_atomic_under_concurrency() {
    let r = Registers::temporary().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut fired = 0;
                for _ in 0..2_000 {
                    r.incr("c", 1).unwrap();
                    fired += r.accumulate("acc", 50, 600.0).unwrap() as u32;
                }
                fired
            })
        })
        .collect();
    let fired: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(r.get("c").unwrap(), Some(json!(8_000)));
    assert_eq!(
        fired,
        8_000 / 50,
        "every 50th occurrence fires, none lost or doubled"
    );
}

#[test]
fn expiry_hides_then_purges_and_set_clears_it() {
    let r = Registers::temporary().unwrap();
    let t0 = 1_000_000;
    r.set("k", &json!("v")).unwrap();
    assert!(r.expire_at("k", 2.0, t0).unwrap());
    assert!(!r.expire_at("absent", 2.0, t0).unwrap());
    assert_eq!(r.get_at("k", t0 + 1_999).unwrap(), Some(json!("v")));
    // incr keeps the expiry
    r.set("n", &json!(1)).unwrap();
    r.expire_at("n", 1.0, t0).unwrap();
    assert_eq!(r.incr_at("n", 1, t0 + 500).unwrap(), 2);
    assert_eq!(r.get_at("n", t0 + 1_001).unwrap(), None);
    // set clears it
    r.set("s", &json!(1)).unwrap();
    r.expire_at("s", 1.0, t0).unwrap();
    r.set("s", &json!(2)).unwrap();
    assert_eq!(r.get_at("s", t0 + 10_000).unwrap(), Some(json!(2)));
    // purge removes what is due, only that
    assert_eq!(r.purge_expired_at(t0 + 2_001).unwrap(), 1);
    assert_eq!(r.values.len(), 1);
    assert_eq!(r.get_at("k", t0).unwrap(), None, "purged for good");
    assert!(r.expire_at("k", -1.0, t0).is_err());
}

#[test]
fn window_keeps_only_recent_samples() {
    let r = Registers::temporary().unwrap();
    let t = 5_000_000;
    r.window_at("w", 1.0, 10.0, t).unwrap();
    r.window_at("w", 5.0, 10.0, t + 4_000).unwrap();
    let s = r.window_at("w", 3.0, 10.0, t + 8_000).unwrap();
    assert_eq!(
        s,
        WindowStats {
            count: 3,
            sum: 9.0,
            avg: 3.0,
            min: 1.0,
            max: 5.0
        }
    );
    // 11 s after the first sample, it falls out of a 10 s window.
    let s = r.window_at("w", 7.0, 10.0, t + 11_000).unwrap();
    assert_eq!((s.count, s.min, s.max), (3, 3.0, 7.0));
    assert_eq!(s.avg, 5.0);
}

#[test]
fn marks_and_throttles_follow_their_windows() {
    let r = Registers::temporary().unwrap();
    let t = 9_000_000;
    assert!(!r.seen_at("m", 30.0, t).unwrap());
    r.mark_at("m", t).unwrap();
    assert!(r.seen_at("m", 30.0, t + 30_000).unwrap());
    assert!(!r.seen_at("m", 30.0, t + 30_001).unwrap());

    assert!(r.once_within_at("flap", 10.0, t).unwrap());
    assert!(!r.once_within_at("flap", 10.0, t + 9_999).unwrap());
    assert!(r.once_within_at("flap", 10.0, t + 10_000).unwrap());
    assert!(
        r.once_within_at("other", 10.0, t + 1).unwrap(),
        "keys are independent"
    );

    // 3 within 5 s fires, then counting restarts.
    assert!(!r.accumulate_at("a", 3, 5.0, t).unwrap());
    assert!(!r.accumulate_at("a", 3, 5.0, t + 1_000).unwrap());
    assert!(r.accumulate_at("a", 3, 5.0, t + 2_000).unwrap());
    assert!(!r.accumulate_at("a", 3, 5.0, t + 2_100).unwrap());
    assert!(!r.accumulate_at("a", 3, 5.0, t + 2_200).unwrap());
    // the first of those two has left the window by now: still only 2 inside
    assert!(!r.accumulate_at("a", 3, 5.0, t + 7_150).unwrap());
    assert!(r.accumulate_at("a", 3, 5.0, t + 7_190).unwrap());
    // internal trees never show up as user keys
    assert!(r.keys("").unwrap().is_empty());
}

mod commit;
mod shared;
