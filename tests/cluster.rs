//! Clustered managers on a real 3-member etcd, as real processes: three `reflex manager
//! --cluster` share the registers, a burst of events from many hosts goes through senders that
//! all reach one manager (which forwards each stream to the manager that owns it), a counting
//! rule counts each event per host, and the manager that owns the most streams is killed with
//! SIGKILL mid-burst. Its streams move to the others; every count must be exact: no event lost,
//! none counted twice. Counts only, never timings. Skipped (printed) where etcd is missing.
//! The second test kills a manager whose outbox holds actions (the leader publishes them) while
//! a sender given two managers is talking to it (the sender moves to the other).

mod common;
#[path = "support/etcd.rs"]
mod etcd;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const PREFIX: &str = "/reflex-it";
const SENDERS: usize = 8;
const PER_SENDER: usize = 800;
const HOSTS: usize = 40;

fn manager(state: &Path, base: u16, rules: &Path, url: &str, id: &str) -> Proc {
    let mut a = vec!["manager".to_string()];
    a.extend(stack_args(state, base));
    a.extend(
        [
            "--rules",
            &rules.display().to_string(),
            "--no-history",
            "--no-watch",
            "--cluster",
            url,
            "--cluster-prefix",
            PREFIX,
            "--cluster-id",
            id,
            "--cluster-ttl",
            "2",
        ]
        .map(String::from),
    );
    Proc::start(id, &args_ref(&a))
}

fn publisher_proc(state: &Path, base: u16, url: &str, id: &str) -> Proc {
    let mut a = vec!["publisher".to_string()];
    a.extend(stack_args(state, base));
    a.extend(
        [
            "--cluster",
            url,
            "--cluster-prefix",
            PREFIX,
            "--cluster-id",
            id,
            "--cluster-ttl",
            "2",
        ]
        .map(String::from),
    );
    Proc::start(id, &args_ref(&a))
}

/// The registers under `count/` as the manager at `base` reads them.
fn counts(state: &Path, base: u16) -> BTreeMap<String, i64> {
    let mut a = vec!["registers".to_string(), "list".into(), "count/".into()];
    a.extend(stack_args(state, base));
    let (code, out, err) = run(&args_ref(&a));
    assert_eq!(code, 0, "registers list: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("registers list prints JSON");
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn status(state: &Path, base: u16) -> serde_json::Value {
    let mut a = vec!["status".to_string()];
    a.extend(stack_args(state, base));
    let (code, out, err) = run(&args_ref(&a));
    assert_eq!(code, 0, "status: {err}");
    serde_json::from_str(&out).expect("status prints JSON")
}

/// The stream marks in etcd (from a mirror of them): the partition key of each stream a
/// manager committed.
fn streams(marks: &cluster::Mirror) -> Vec<String> {
    let root = marks.prefix().to_vec();
    marks.read(|snap| {
        snap.scan(&root)
            .filter_map(|(k, _)| std::str::from_utf8(&k[root.len()..]).ok().map(String::from))
            .collect()
    })
}

/// `n` state dirs of one cluster, one trust domain: the managers share the manager key
/// (senders pin it) and the admin key (managers forward to each other as the admin).
fn shared_states(tmp: &Path, n: usize) -> Vec<std::path::PathBuf> {
    let states: Vec<std::path::PathBuf> = (1..=n).map(|i| tmp.join(format!("s{i}"))).collect();
    let keys = bus::keys::key_dir(&states[0]);
    bus::keys::load_or_create(&keys, bus::keys::Role::Manager).expect("manager key");
    bus::keys::load_or_create(&keys, bus::keys::Role::Admin).expect("admin key");
    for s in &states[1..] {
        let to = bus::keys::key_dir(s);
        std::fs::create_dir_all(&to).unwrap();
        for d in [s.as_path(), to.as_path()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        for f in std::fs::read_dir(&keys).unwrap().flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    states
}

#[test]
fn a_manager_killed_mid_burst_loses_nothing_and_counts_nothing_twice() {
    let Some(etcd) = etcd::EtcdCluster::start(3) else {
        return;
    };
    let url = etcd.url();
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules");
    write_rule(
        &rules,
        "10-count.rhai",
        "const MATCH = \"burst/*\";\nfn react(event) { registers::incr(`count/${event.host}`, 1); }\n",
    );
    let states = shared_states(tmp.path(), 3);
    let bases: Vec<u16> = (0..3).map(|_| free_port_base()).collect();
    let ids = ["m1", "m2", "m3"];
    let mut managers: Vec<Option<Proc>> = (0..3)
        .map(|i| Some(manager(&states[i], bases[i], &rules, &url, ids[i])))
        .collect();

    let view = cluster::Cluster::connect(&url, PREFIX).expect("etcd");
    let members = cluster::Members::watch(&view).expect("members");
    assert!(
        members.wait_for(Duration::from_secs(30), |ids| ids.len() == 3),
        "three managers joined: {:?}",
        members.ids()
    );

    // The burst: SENDERS streams, each over `reflex send --stdin` to m1, events for HOSTS
    // hosts, paced so that the kill lands in the middle.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut lines = String::new();
        for i in 0..PER_SENDER {
            let host = format!("h{}", (s * 7 + i) % HOSTS);
            *expected.entry(format!("count/{host}")).or_default() += 1;
            lines.push_str(&format!(
                "{{\"tag\": \"burst/n\", \"host\": \"{host}\", \"i\": {i}}}\n"
            ));
        }
        let mut a = vec![
            "--rate".to_string(),
            "100".into(),
            "--timeout".into(),
            "45".into(),
        ];
        a.extend(stack_args(&states[0], bases[0]));
        senders.push(spawn_send_stdin(&a, lines));
    }
    let total = (SENDERS * PER_SENDER) as i64;

    // As soon as a manager other than m1 (which the senders reach) has committed a stream it
    // owns, kill the one owning the most: mid-burst, with its streams in flight.
    let mirror = cluster::Mirror::start(&view, &view.key("r/x80/")).expect("mirror");
    let owned = |marks: &[String], id: &str| {
        marks
            .iter()
            .filter(|k| cluster::partition::owner(k, ids).is_some_and(|o| o == id))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (marks, victim) = loop {
        let m = streams(&mirror);
        let (n2, n3) = (owned(&m, "m2"), owned(&m, "m3"));
        if n2 + n3 > 0 {
            break (m, if n2 >= n3 { 1 } else { 2 });
        }
        if std::time::Instant::now() > deadline {
            let all: Vec<serde_json::Value> =
                (0..3).map(|i| status(&states[i], bases[i])).collect();
            panic!("m2 and m3 committed none of the streams after 30 s: {m:?}; managers: {all:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(owned(&marks, ids[victim]) > 0);
    let before = counts(&states[0], bases[0]).values().sum::<i64>();
    let mut still_sending = 0;
    for c in senders.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            still_sending += 1;
        }
    }
    managers[victim].as_mut().unwrap().kill9();
    managers[victim] = None;
    assert!(
        before < total && still_sending > 0,
        "the kill landed after the burst ({before} of {total} counted, {still_sending} senders left)"
    );

    for (i, c) in senders.into_iter().enumerate() {
        let out = c.wait_with_output().expect("sender");
        assert!(
            out.status.success(),
            "sender {i} did not see every event acknowledged: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every event acknowledged means committed; both survivors read the same registers.
    let survivor = if victim == 1 { 2 } else { 1 };
    for i in [0, survivor] {
        let got = counts(&states[i], bases[i]);
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {:?} (expected {v})", got.get(k)))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} counts wrong via {}: {wrong:?}",
            wrong.len(),
            ids[i]
        );
        assert_eq!(got.values().sum::<i64>(), total);
    }
    let s = status(&states[0], bases[0]);
    assert!(
        s["forwarded"].as_u64().unwrap_or(0) > 0,
        "m1 forwarded nothing: {s}"
    );
    drop(managers);
}

/// A spooled sender's stream owned by m1 (of m1 and m2), sent through the manager at `base`:
/// 10 events acknowledged, its mark deleted from etcd, 10 more from the same spool.
fn resumes_after_its_mark_is_forgotten(
    view: &cluster::Cluster,
    state: &Path,
    base: u16,
    spool: &Path,
) {
    let stream = (0..256)
        .map(|i| format!("resume-{i}"))
        .find(|s| cluster::partition::owner(&format!("admin\0{s}"), ["m1", "m2"]) == Some("m1"))
        .expect("a stream m1 owns");
    let sec = admin_security(state);
    let send = |from: u64| {
        let mut cfg = bus::sender::SenderConfig::new(&format!("tcp://127.0.0.1:{base}"), &sec);
        cfg.stream = Some(stream.clone());
        cfg.spool = Some(spool.to_path_buf());
        let s = bus::sender::Sender::start(cfg).expect("sender");
        assert_eq!(s.acked(), from, "the spool's stream resumed");
        for i in from..from + 10 {
            assert!(s.send(&bus::Event::new(
                "tick/n",
                "r0",
                serde_json::json!({ "i": i })
            )));
        }
        assert!(
            s.wait_acked(Duration::from_secs(30)),
            "events {from}.. of a stream whose mark was forgotten never acknowledged ({} of {})",
            s.acked(),
            from + 10
        );
    };
    send(0);
    let mark = view.key(&format!("r/x80/admin\0{stream}"));
    let mut c = view.client();
    let deleted = view
        .block_on(async move { c.delete(mark, None).await })
        .expect("delete the mark");
    assert_eq!(deleted.deleted(), 1, "the stream had a mark");
    send(10);
    assert_eq!(counts(state, base).get("count/r0"), Some(&20));
}

/// Events of the failover sender (m2 then m1) in the takeover test.
const FAILOVER_EVENTS: usize = 450;

/// Every stream mark in etcd (from a mirror of `r/x80/`): its key and the next event number
/// it expects.
fn stream_marks(marks: &cluster::Mirror) -> BTreeMap<Vec<u8>, u64> {
    let root = marks.prefix().to_vec();
    marks.read(|snap| {
        snap.scan(&root)
            .filter_map(|(k, v)| {
                let next = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
                Some((k[root.len()..].to_vec(), next))
            })
            .collect()
    })
}

/// The outbox entries in etcd (from a mirror of `r/x81/`) of member `id`.
fn outbox_entries(outboxes: &cluster::Mirror, id: &str) -> usize {
    let root = [outboxes.prefix(), id.as_bytes(), b"/"].concat();
    outboxes.read(|snap| snap.scan(&root).count())
}

/// The names of every action the publisher at `base` logged for `topic`, from its replay door.
fn logged_names(state: &Path, base: u16, topic: &str) -> Vec<String> {
    let replay = bus::secure::connect(
        zmq::REQ,
        &format!("tcp://127.0.0.1:{}", base + 2),
        &admin_security(state),
    )
    .expect("replay");
    replay.set_rcvtimeo(10_000).expect("timeout");
    let req = serde_json::json!({"since": 0, "topics": [topic], "limit": 10_000});
    replay.send(req.to_string().as_bytes(), 0).expect("ask");
    let parts = replay.recv_multipart(0).expect("replay answer");
    parts[1..]
        .iter()
        .map(|f| {
            bus::envelope::peek(f, usize::MAX)
                .expect("a sealed frame")
                .name
        })
        .collect()
}

/// Two managers; only m1 has a publisher (announced in etcd). Events sent through m2 make one
/// action each; those of the streams m2 owns wait in m2's outbox, which nothing acknowledges.
/// m2 is killed with SIGKILL: the leader (m1) sends m2's outbox to its publisher and deletes it
/// once acknowledged. m2 comes back (with a publisher of its own) while the leader's publisher
/// is stopped, the leader holding m2's outbox: it waits until the leader hands it back. Every
/// action is logged exactly once, by the leader's publisher. A `reflex send
/// --stdin` given both managers (m2 first) is mid-stream when m2 dies: it moves to m1, sends
/// there what m2 left unacknowledged, and every one of its events is counted exactly once.
#[test]
fn the_leader_publishes_a_dead_managers_outbox_once() {
    let Some(etcd) = etcd::EtcdCluster::start(1) else {
        return;
    };
    let url = etcd.url();
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules");
    write_rule(
        &rules,
        "10-job.rhai",
        "const MATCH = \"job/*\";\nfn react(event) { let i = event.data.i; act(\"host/x\", [#{ kind: \"noop\", name: `n-${i}` }], #{ name: `job-${i}` }); }\n",
    );
    write_rule(
        &rules,
        "20-count.rhai",
        "const MATCH = \"tick/*\";\nfn react(event) { registers::incr(`count/${event.host}`, 1); }\n",
    );
    // Two stream marks from before: one idle 8 days (the leader forgets it), one idle 6 days
    // (kept: inside the window).
    let seed = cluster::Cluster::connect(&url, PREFIX).expect("etcd");
    let day = 24 * 3600 * 1000;
    let stale = format!("{PREFIX}/r/x80/admin\0stale");
    let kept = format!("{PREFIX}/r/x80/admin\0kept");
    for (k, idle) in [(&stale, 8 * day), (&kept, 6 * day)] {
        let mut v = 5u64.to_be_bytes().to_vec();
        v.extend_from_slice(&(bus::now_ms() - idle).to_be_bytes());
        let mut c = seed.client();
        let k = k.clone();
        seed.block_on(async move { c.put(k, v, None).await })
            .expect("put a mark");
    }
    let states = shared_states(tmp.path(), 2);
    let bases: Vec<u16> = (0..2).map(|_| free_port_base()).collect();
    let ids = ["m1", "m2"];
    let mut managers: Vec<Option<Proc>> = (0..2)
        .map(|i| Some(manager(&states[i], bases[i], &rules, &url, ids[i])))
        .collect();
    let mut publisher = publisher_proc(&states[0], bases[0], &url, "p1");

    let view = cluster::Cluster::connect(&url, PREFIX).expect("etcd");
    let members = cluster::Members::watch(&view).expect("members");
    assert!(
        members.wait_for(Duration::from_secs(30), |ids| ids.len() == 2),
        "two managers joined: {:?}",
        members.ids()
    );
    // The publisher is announced with its endpoints, for actors to learn.
    let announced = wait_for(
        "the publisher's announcement",
        Duration::from_secs(20),
        || {
            cluster::announced(&view, cluster::PUBLISHERS)
                .ok()
                .filter(|a| !a.is_empty())
        },
    );
    assert_eq!(announced.len(), 1, "{announced:?}");
    let info: serde_json::Value = serde_json::from_slice(&announced[0].1).expect("JSON");
    assert_eq!(announced[0].0, "p1");
    assert_eq!(
        info["publish"],
        serde_json::json!(format!("tcp://127.0.0.1:{}", bases[0] + 1))
    );

    // Rounds of 20 events through m2, each round a new stream (its owner drawn by the hash),
    // until m2 owns one: its actions wait in its outbox.
    let outboxes = cluster::Mirror::start(&view, &view.key("r/x81/")).expect("mirror");
    let mut sent = 0;
    for _ in 0..12 {
        let lines: String = (sent..sent + 20)
            .map(|i| format!("{{\"tag\": \"job/n\", \"host\": \"x\", \"i\": {i}}}\n"))
            .collect();
        sent += 20;
        send_stdin(&states[1], bases[1], &lines);
        if outbox_entries(&outboxes, "m2") > 0 {
            break;
        }
    }
    let waiting = outbox_entries(&outboxes, "m2");
    assert!(waiting > 0, "m2 owned none of 12 streams");

    // A stream whose mark was forgotten (the leader's job, done here by hand) goes on where
    // its sender's hello says: a spooled sender acknowledged up to 10 starts again on its
    // spool and sends 10 more through m2, which forwards them, with the hello's word, to m1,
    // the stream's owner. Each of the 20 is counted once.
    resumes_after_its_mark_is_forgotten(&view, &states[1], bases[1], &tmp.path().join("spool"));

    // Sender failover: one `reflex send --stdin` given both managers, m2 first. Once some of
    // its events are committed, m2 is killed mid-stream: the sender moves to m1 and sends
    // what m2 left unacknowledged there; every event is counted once.
    let marks = cluster::Mirror::start(&view, &view.key("r/x80/")).expect("mirror");
    let known = stream_marks(&marks);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut lines = String::new();
    for i in 0..FAILOVER_EVENTS {
        let host = format!("f{}", i % 5);
        *expected.entry(format!("count/{host}")).or_default() += 1;
        lines.push_str(&format!(
            "{{\"tag\": \"tick/n\", \"host\": \"{host}\", \"i\": {i}}}\n"
        ));
    }
    let mut a = vec![
        "--rate".to_string(),
        "150".into(),
        "--timeout".into(),
        "45".into(),
        "--to".into(),
        format!("tcp://127.0.0.1:{},tcp://127.0.0.1:{}", bases[1], bases[0]),
    ];
    a.extend(stack_args(&states[1], bases[1]));
    let failover = spawn_send_stdin(&a, lines);
    let done_at_kill = wait_for(
        "the sender's first events committed",
        Duration::from_secs(20),
        || {
            stream_marks(&marks)
                .into_iter()
                .filter(|(k, _)| !known.contains_key(k))
                .map(|(_, next)| next)
                .find(|next| *next > 0)
        },
    );

    // m2 back while the leader sends its outbox: the leader's publisher is stopped (SIGSTOP)
    // before m2 dies, so the leader claims m2's outbox and sends it there unacknowledged; m2
    // comes back under its id with a publisher of its own (p2). It must wait for the claim
    // (without it both would send the same entries, one through each publisher): once p1
    // goes on, the leader deletes what p1 acknowledged and hands the outbox back empty.
    publisher.signal(libc::SIGSTOP);
    managers[1].as_mut().unwrap().kill9();
    managers[1] = None;
    assert!(
        done_at_kill < FAILOVER_EVENTS as u64,
        "the kill landed after the stream ({done_at_kill} done)"
    );
    let claim = view.key(&format!("{}/m2", cluster::TAKEOVER));
    let claimed = || {
        let mut c = view.client();
        let k = claim.clone();
        view.block_on(async move { c.get(k, None).await })
            .ok()
            .map(|r| !r.kvs().is_empty())
    };
    wait_for(
        "the leader's claim on m2's outbox",
        Duration::from_secs(20),
        || claimed().filter(|c| *c).map(|_| ()),
    );
    managers[1] = Some(manager(&states[1], bases[1], &rules, &url, "m2"));
    let mut p2 = publisher_proc(&states[1], bases[1], &url, "p2");
    assert!(
        members.wait_for(Duration::from_secs(30), |ids| ids.len() == 2),
        "m2 back: {:?}",
        members.ids()
    );
    publisher.signal(libc::SIGCONT);
    let out = failover.wait_with_output().expect("sender");
    assert!(
        out.status.success(),
        "the sender given m2 then m1 did not see every event acknowledged: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = counts(&states[0], bases[0]);
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "{k} via m1: {got:?}");
    }
    // The leader forgot the mark idle past the window, and only that one.
    let marks_now = stream_marks(&marks);
    let rel = |k: &str| k.as_bytes()[format!("{PREFIX}/r/x80/").len()..].to_vec();
    assert!(
        !marks_now.contains_key(&rel(&stale)),
        "a mark idle 8 days is kept"
    );
    assert!(
        marks_now.contains_key(&rel(&kept)),
        "a mark idle 6 days is forgotten"
    );
    wait_for("m2's outbox taken over", Duration::from_secs(20), || {
        (outbox_entries(&outboxes, "m2") == 0).then_some(())
    });
    // Sent, acknowledged and deleted: the leader's claim on it is released.
    wait_for(
        "the claim on m2's outbox released",
        Duration::from_secs(20),
        || claimed().filter(|c| !*c).map(|_| ()),
    );
    // Each action once across both publishers: all through p1, none through p2.
    let through_p2 = logged_names(&states[1], bases[1], "host/x/");
    assert!(
        through_p2.is_empty(),
        "m2 sent again what the leader sent: {through_p2:?}"
    );
    let names = logged_names(&states[0], bases[0], "host/x/");
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for n in &names {
        *counted.entry(n.clone()).or_default() += 1;
    }
    let twice: Vec<&String> = counted
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| n)
        .collect();
    assert!(twice.is_empty(), "logged more than once: {twice:?}");
    let missing: Vec<String> = (0..sent)
        .map(|i| format!("job-{i}"))
        .filter(|n| !counted.contains_key(n))
        .collect();
    assert!(missing.is_empty(), "never logged: {missing:?}");
    assert_eq!(names.len(), sent);
    let s = status(&states[0], bases[0]);
    assert_eq!(s["taken_over"].as_u64(), Some(waiting as u64), "{s}");

    // A publisher stopped leaves the cluster at once.
    publisher.terminate(Duration::from_secs(10));
    p2.terminate(Duration::from_secs(10));
    assert_eq!(
        cluster::announced(&view, cluster::PUBLISHERS)
            .map(|a| a.len())
            .ok(),
        Some(0)
    );
    drop(managers);
}
