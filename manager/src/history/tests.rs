//! The history's writer, queries and traces on real segment files.

use super::*;
use bus::monitor::{Hit, RuleError};
use bus::{Action, Event, Life, Origin, Target};
use serde_json::json;
use std::time::Duration;

fn keep(max_bytes: u64) -> Retention {
    Retention {
        max_bytes,
        max_age: Duration::from_secs(3600),
    }
}

fn event(tag: &str, host: &str, data: serde_json::Value) -> Event {
    Event::new(tag, host, data)
}

fn child(cause: &Event, rule: &str, tag: &str) -> Event {
    let mut e = Event::new(tag, cause.host.clone(), json!({}));
    e.cause = Some(cause.id.clone());
    e.depth = cause.depth + 1;
    e.chain = cause.chain.clone();
    e.chain.push(rule.to_string());
    e
}

fn hit(rule: &str, e: &Event, wrote: &[&str], actions: u32) -> Hit {
    Hit {
        rule: rule.into(),
        event: e.id.clone(),
        tag: e.tag.clone(),
        actions,
        wrote: wrote.iter().map(|s| s.to_string()).collect(),
    }
}

fn action(rule: &str, e: &Event, host: &str) -> Action {
    Action {
        id: bus::new_id(),
        name: rule.into(),
        seq: 0,
        target: Target::parse(&format!("host/{host}")).unwrap(),
        graph: json!({"resources": [{"kind": "file", "name": "/tmp/x"}]}),
        origin: Origin {
            event: e.id.clone(),
            rule: rule.into(),
        },
        expires: None,
        life: Life::Keep,
        prev: 0,
    }
}

fn ev(w: &mut Writer, e: &Event) {
    w.record(Kind::Event, &bus::encode(e));
}

/// A root event whose rule writes a register, acts on host `a` and emits an event another
/// rule fails on; the host reports a result and a repair; unrelated traffic in between.
fn story(w: &mut Writer) -> (Event, Action, Event) {
    let root = event("demo/hello", "a", json!({"n": 1}));
    ev(w, &root);
    w.record(
        Kind::Hit,
        &bus::encode(&hit("10-hello", &root, &["hello/count"], 1)),
    );
    let act = action("10-hello", &root, "a");
    w.record(Kind::Action, &bus::encode(&act));
    w.flush();
    let noise = event("beacon/load", "b", json!({"load1": 0.5}));
    ev(w, &noise);
    let emitted = child(&root, "10-hello", "demo/said");
    ev(w, &emitted);
    w.record(Kind::Hit, &bus::encode(&hit("30-said", &emitted, &[], 0)));
    let err = RuleError {
        rule: "40-broken".into(),
        event: emitted.id.clone(),
        message: "boom".into(),
    };
    w.record(Kind::Error, &bus::encode(&err));
    w.flush();
    for tag in ["actor/result", "actor/repaired"] {
        let r = event(
            tag,
            "a",
            json!({"action": act.id, "status": "ok", "changed": ["file:/tmp/x"]}),
        );
        ev(w, &r);
    }
    // A report on another action is not this tree's.
    let other = event("actor/result", "a", json!({"action": bus::new_id()}));
    ev(w, &other);
    w.flush();
    (root, act, emitted)
}

fn traced(r: &Reader, id: &str) -> EventNode {
    match trace(r, id).unwrap() {
        Traced::Yes { tree, truncated } => {
            assert!(!truncated);
            *tree
        }
        other => panic!("{id}: {other:?}"),
    }
}

#[test]
fn a_trace_shows_hits_writes_actions_reports_and_emitted_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::open(dir.path(), keep(1 << 30)).unwrap();
    let (root, act, emitted) = story(&mut w);
    let r = Reader::open(dir.path()).unwrap();
    let tree = traced(&r, &root.id);
    assert_eq!(tree.event.id, root.id);
    assert_eq!(tree.hits.len(), 1);
    let h = &tree.hits[0];
    assert_eq!(h.rule, "10-hello");
    assert_eq!(h.wrote, vec!["hello/count"]);
    assert_eq!(h.actions.len(), 1);
    assert_eq!(h.actions[0].action.id, act.id);
    let tags: Vec<&str> = h.actions[0]
        .reports
        .iter()
        .map(|r| r.tag.as_str())
        .collect();
    assert_eq!(tags, vec!["actor/result", "actor/repaired"]);
    assert_eq!(h.emitted.len(), 1);
    let e = &h.emitted[0];
    assert_eq!(e.event.id, emitted.id);
    assert_eq!(e.hits[0].rule, "30-said");
    assert_eq!(e.errors[0].message, "boom");
    // An action's id gives the tree of the event whose rule appended it.
    assert_eq!(traced(&r, &act.id).event.id, root.id);
    // The emitted event has its own tree.
    assert_eq!(traced(&r, &emitted.id).hits[0].rule, "30-said");
}

#[test]
fn unknown_and_pruned_ids_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::open(dir.path(), keep(256 << 10)).unwrap();
    let (old, _, _) = story(&mut w);
    std::thread::sleep(Duration::from_millis(1_100));
    // Far more than the bound: the first segments go.
    let filler = event("beacon/load", "b", json!({"pad": "x".repeat(1_000)}));
    for _ in 0..2_000 {
        ev(&mut w, &filler);
        w.flush();
    }
    assert!(w.bytes() <= 256 << 10, "bound kept: {}", w.bytes());
    assert!(w.pruned > 0);
    let r = Reader::open(dir.path()).unwrap();
    assert!(matches!(trace(&r, &old.id).unwrap(), Traced::Pruned { .. }));
    assert!(matches!(
        trace(&r, &bus::new_id()).unwrap(),
        Traced::Unknown
    ));
    assert!(matches!(trace(&r, "not-an-id").unwrap(), Traced::Unknown));
}

#[test]
fn queries_filter_by_tag_host_and_keep_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::open(dir.path(), keep(1 << 30)).unwrap();
    for i in 0..10 {
        ev(
            &mut w,
            &event(
                "beacon/load",
                if i % 2 == 0 { "a" } else { "b" },
                json!({"i": i}),
            ),
        );
        ev(&mut w, &event("demo/hello", "a", json!({"i": i})));
    }
    w.flush();
    let r = Reader::open(dir.path()).unwrap();
    let q = |tag: Option<&str>, host: Option<&str>, limit| Query {
        tag: tag.map(crate::glob::Glob::new),
        host: host.map(String::from),
        limit,
        ..Query::default()
    };
    let got = query(&r, &q(Some("beacon/*"), Some("a"), 3)).unwrap();
    let is: Vec<i64> = got
        .iter()
        .map(|(_, e)| e.data["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, vec![4, 6, 8], "the newest three, oldest first");
    assert_eq!(query(&r, &q(None, None, 100)).unwrap().len(), 20);
    assert_eq!(
        query(&r, &q(Some("demo/**"), Some("b"), 100))
            .unwrap()
            .len(),
        0
    );
    let future = Query {
        since: Some(bus::now_ms() + 60_000),
        limit: 10,
        ..Query::default()
    };
    assert!(query(&r, &future).unwrap().is_empty());
}

#[test]
fn a_restart_never_appends_to_an_old_segment_and_damage_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::open(dir.path(), keep(1 << 30)).unwrap();
    let first = event("demo/one", "a", json!({}));
    ev(&mut w, &first);
    drop(w);
    // The process died in the middle of a record: a torn tail.
    let seg = segment::list(dir.path()).unwrap()[0].1.clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&seg, &bytes).unwrap();
    let mut w = Writer::open(dir.path(), keep(1 << 30)).unwrap();
    let second = event("demo/two", "a", json!({}));
    ev(&mut w, &second);
    // A record whose body is not a frame is skipped, not fatal.
    w.record(Kind::Event, b"\x01garbage");
    w.flush();
    assert_eq!(w.segments(), 2);
    let r = Reader::open(dir.path()).unwrap();
    let all = query(
        &r,
        &Query {
            limit: 10,
            ..Query::default()
        },
    )
    .unwrap();
    let tags: Vec<&str> = all.iter().map(|(_, e)| e.tag.as_str()).collect();
    assert_eq!(tags, vec!["demo/one", "demo/two"]);
    assert_eq!(traced(&r, &second.id).event.tag, "demo/two");
}
