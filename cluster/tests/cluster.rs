//! The cluster against a real 3-member etcd on loopback: membership and the host partition
//! agree across clients and move when a member leaves or its process is killed; the cluster
//! carries on when an etcd member is killed; a killed leader is followed by a new one; the
//! leader's guarded writes (a dead member's outbox claimed, old stream marks deleted).
//!
//! Managers "killed" here are real processes: this test binary run again as a member
//! (`member_process`, ignored in a normal run) and sent SIGKILL.

#[path = "../../tests/support/etcd.rs"]
mod etcd;

use cluster::{current_leader, Cluster, Leadership, Members, Membership};
use etcd::EtcdCluster;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(2);
/// How long to wait for an outcome before the test fails (never asserted as a timing).
const PATIENCE: Duration = Duration::from_secs(30);
const PREFIX: &str = "/reflex-test";

fn hosts() -> Vec<String> {
    (0..500).map(|i| format!("host{i}")).collect()
}

fn owners(view: &Members) -> BTreeMap<String, Option<String>> {
    hosts()
        .into_iter()
        .map(|h| {
            let o = view.owner(&h);
            (h, o)
        })
        .collect()
}

fn wait_members(view: &Members, want: &[&str]) {
    let ok = view.wait_for(PATIENCE, |ids| ids == want);
    assert!(ok, "members never became {want:?}: {:?}", view.ids());
}

/// This binary again, as a member that joins, campaigns and waits to be killed.
fn spawn_member(url: &str, id: &str) -> Child {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["member_process", "--exact", "--ignored", "--nocapture"])
        .env("REFLEX_CLUSTER_CHILD", format!("{url}|{PREFIX}|{id}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; the member dies with the test.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn a member process")
}

/// Not a test: the body of a member process (see [`spawn_member`]).
#[test]
#[ignore = "run by the other tests as a member process"]
fn member_process() {
    let Ok(spec) = std::env::var("REFLEX_CLUSTER_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, prefix, id] = parts[..] else {
        panic!("REFLEX_CLUSTER_CHILD={spec:?}");
    };
    let c = Cluster::connect(url, prefix).expect("connect");
    let me = Membership::join(&c, id, id.as_bytes(), TTL).expect("join");
    let _lead = Leadership::campaign(&c, &me);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn members_agree_on_owners_and_only_a_leavers_hosts_move() {
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    // Each client on a different etcd member: agreement must not depend on which one answers.
    let clients: Vec<Cluster> = (0..3)
        .map(|i| Cluster::connect(&etcd.member_url(i), PREFIX).expect("connect"))
        .collect();
    let views: Vec<Members> = clients
        .iter()
        .map(|c| Members::watch(c).expect("watch"))
        .collect();
    let m1 = Membership::join(&clients[0], "m1", b"one", TTL).unwrap();
    let m2 = Membership::join(&clients[1], "m2", b"two", TTL).unwrap();
    let _m3 = Membership::join(&clients[2], "m3", b"three", TTL).unwrap();
    // A second manager under a live id is refused.
    assert!(matches!(
        Membership::join(&clients[2], "m1", b"", TTL),
        Err(cluster::ClusterError::MemberTaken(_))
    ));
    for v in &views {
        wait_members(v, &["m1", "m2", "m3"]);
    }
    assert_eq!(views[2].info("m2").as_deref(), Some(&b"two"[..]));
    let before = owners(&views[0]);
    for v in &views[1..] {
        assert_eq!(owners(v), before, "two clients disagree on owners");
    }
    for m in ["m1", "m2", "m3"] {
        assert!(
            before.values().any(|o| o.as_deref() == Some(m)),
            "{m} owns nothing"
        );
    }

    // m2 leaves (revokes its lease): only its hosts move.
    assert!(m2.is_alive());
    m2.leave().unwrap();
    for v in &views {
        wait_members(v, &["m1", "m3"]);
    }
    let after = owners(&views[1]);
    for v in [&views[0], &views[2]] {
        assert_eq!(owners(v), after);
    }
    for (h, o) in &before {
        match o.as_deref() {
            Some("m2") => assert_ne!(after[h].as_deref(), Some("m2")),
            _ => assert_eq!(&after[h], o, "{h} moved though its owner stayed"),
        }
    }

    // A member process killed with SIGKILL: its lease runs out and its hosts move back.
    let mut m4 = spawn_member(&etcd.url(), "m4");
    for v in &views {
        wait_members(v, &["m1", "m3", "m4"]);
    }
    let with_m4 = owners(&views[2]);
    assert!(with_m4.values().any(|o| o.as_deref() == Some("m4")));
    let killed = Instant::now();
    m4.kill().unwrap();
    m4.wait().unwrap();
    for v in &views {
        wait_members(v, &["m1", "m3"]);
    }
    eprintln!(
        "killed member gone from every view after {:?} (lease TTL {TTL:?})",
        killed.elapsed()
    );
    for v in &views {
        assert_eq!(
            owners(v),
            after,
            "the killed member's hosts did not move back"
        );
    }
    assert!(m1.is_alive());
}

#[test]
fn an_etcd_member_killed_the_cluster_carries_on() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let c = Cluster::connect(&etcd.url(), PREFIX).unwrap();
    let me = Membership::join(&c, "m1", b"", TTL).unwrap();
    let view = Members::watch(&c).unwrap();
    let lead = Leadership::campaign(&c, &me);
    wait_members(&view, &["m1"]);
    let deadline = Instant::now() + PATIENCE;
    while !lead.is_leader() {
        assert!(Instant::now() < deadline, "m1 alone never became leader");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Kill each member the client may be talking to, one (a quorum of 2 stays).
    etcd.kill(0);
    let mut kv = c.client();
    c.block_on(cluster::retry(|| {
        let mut k = kv.clone();
        async move { k.put("/reflex-test/x", "1", None).await }
    }))
    .expect("a write after one etcd member died");
    let got = c
        .block_on(cluster::retry(|| {
            let mut k = kv.clone();
            async move { k.get("/reflex-test/x", None).await }
        }))
        .unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    let _ = &mut kv;

    // The watch still delivers, a member can still join, and the lease is still kept:
    // alive after several TTLs means renewals went on through the survivors.
    let m2 = Membership::join(&c, "m2", b"", TTL).unwrap();
    wait_members(&view, &["m1", "m2"]);
    std::thread::sleep(TTL * 3);
    assert!(
        me.is_alive(),
        "m1's lease lapsed after one etcd member died"
    );
    assert!(m2.is_alive());
    assert!(
        lead.is_leader(),
        "m1 lost leadership though its lease is kept"
    );
    assert_eq!(view.ids(), ["m1", "m2"], "a lease lapsed in etcd");
}

#[test]
fn a_killed_leader_is_followed_by_a_new_one() {
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    let c = Cluster::connect(&etcd.url(), PREFIX).unwrap();
    let view = Members::watch(&c).unwrap();
    let mut procs: BTreeMap<String, Child> = ["p1", "p2", "p3"]
        .iter()
        .map(|id| (id.to_string(), spawn_member(&etcd.url(), id)))
        .collect();
    wait_members(&view, &["p1", "p2", "p3"]);
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        if let Some(l) = current_leader(&c).unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader among three members");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        procs.contains_key(&first),
        "leader {first:?} is not a member"
    );

    let mut old = procs.remove(&first).unwrap();
    let killed = Instant::now();
    old.kill().unwrap();
    old.wait().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let next = loop {
        match current_leader(&c).unwrap() {
            Some(l) if l != first => break l,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no new leader after {first} was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "leader {first} killed; {next} leads after {:?} (lease TTL {TTL:?})",
        killed.elapsed()
    );
    assert!(
        procs.contains_key(&next),
        "the new leader {next:?} is not a live member"
    );
    for (_, mut p) in procs {
        let _ = p.kill();
        let _ = p.wait();
    }
}

#[test]
fn leadership_in_process_one_leader_and_resign_hands_over() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let c = Cluster::connect(&etcd.url(), PREFIX).unwrap();
    let a = Membership::join(&c, "a", b"", TTL).unwrap();
    let b = Membership::join(&c, "b", b"", TTL).unwrap();
    let la = Leadership::campaign(&c, &a);
    let lb = Leadership::campaign(&c, &b);
    let deadline = Instant::now() + PATIENCE;
    while !(la.is_leader() || lb.is_leader()) {
        assert!(Instant::now() < deadline, "neither a nor b leads");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!(la.is_leader() && lb.is_leader()), "two leaders");
    let (winner, other, who) = if la.is_leader() {
        (la, lb, "b")
    } else {
        (lb, la, "a")
    };
    assert!(winner.token().is_some_and(|t| t > 0));
    winner.resign().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !other.is_leader() {
        assert!(
            Instant::now() < deadline,
            "{who} did not take over after a resign"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(current_leader(&c).unwrap().as_deref(), Some(who));
    leader_only_writes(&c, &other);
}

/// `leader` leads: it claims only a member that is not live, deletes under its claim only, a
/// member back under its id waits until the claim is released, and the leader deletes a key
/// only while it is as it was read.
fn leader_only_writes(c: &Cluster, leader: &Leadership) {
    let client = c.client();
    let put = |k: &str, v: &str| {
        let mut cl = client.clone();
        let resp = c
            .block_on(async move { cl.put(k, v, None).await })
            .expect("put");
        resp.header().map_or(0, |h| h.revision())
    };
    let exists = |k: &str| {
        let mut cl = client.clone();
        let resp = c
            .block_on(async move { cl.get(k, None).await })
            .expect("get");
        !resp.kvs().is_empty()
    };
    // A live member's outbox cannot be claimed; once it left, it can.
    let m = Membership::join(c, "c", b"", TTL).unwrap();
    assert!(
        !leader.claim("c").unwrap(),
        "claimed a live member's outbox"
    );
    m.leave().unwrap();
    assert!(leader.claim("c").unwrap());
    let entry = c.key("r/x81/c/1");
    put(&entry, "x");
    assert!(leader
        .delete_claimed("c", &[entry.as_bytes().to_vec()])
        .unwrap());
    assert!(!exists(&entry));
    // Back under its id, the member waits for the claim; the leader can no longer claim it,
    // and hands it back.
    let m = Membership::join(c, "c", b"", TTL).unwrap();
    assert!(!cluster::wait_unclaimed(c, "c", Duration::from_millis(300)).unwrap());
    assert!(!leader.claim("c").unwrap());
    leader.release_claim("c").unwrap();
    assert!(cluster::wait_unclaimed(c, "c", PATIENCE).unwrap());
    put(&entry, "y");
    assert!(
        !leader
            .delete_claimed("c", &[entry.as_bytes().to_vec()])
            .unwrap(),
        "deleted from an outbox without a claim"
    );
    assert!(exists(&entry));
    drop(m);
    // A key is deleted only as it was read.
    let old = c.key("r/x80/old");
    let rev = put(&old, "1");
    assert!(leader
        .delete_unchanged(&[(old.as_bytes().to_vec(), rev)])
        .unwrap());
    assert!(!exists(&old));
    let moved = c.key("r/x80/moved");
    let rev = put(&moved, "1");
    put(&moved, "2");
    assert!(!leader
        .delete_unchanged(&[(moved.as_bytes().to_vec(), rev)])
        .unwrap());
    assert!(exists(&moved));
}
