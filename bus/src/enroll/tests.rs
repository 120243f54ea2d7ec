use super::*;
use std::os::unix::fs::PermissionsExt;

fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn store() -> (tempfile::TempDir, Enrollment) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Enrollment::open(&store_dir(tmp.path())).unwrap();
    (tmp, store)
}

fn groups(g: &[&str]) -> Vec<String> {
    g.iter().map(|s| s.to_string()).collect()
}

#[test]
fn submit_accept_reject_revoke_and_reopen() {
    let (tmp, mut s) = store();
    assert_eq!(s.submit("web1", &key(1)).unwrap(), Submitted::Pending);
    assert_eq!(
        s.submit("web1", &key(1)).unwrap(),
        Submitted::Known(State::Pending)
    );
    assert_eq!(s.lookup_by_key(&key(1)), None, "pending is not accepted");

    let e = s.accept("web1", &groups(&["web", "eu", "web"])).unwrap();
    assert_eq!(e.state, State::Accepted);
    assert_eq!(e.groups, groups(&["eu", "web"]));
    assert_eq!(
        s.lookup_by_key(&key(1)),
        Some(("web1", Role::Host, &groups(&["eu", "web"])[..]))
    );

    s.submit("db1", &key(2)).unwrap();
    assert_eq!(s.reject("db1").unwrap().state, State::Rejected);
    assert_eq!(
        s.submit("db1", &key(2)).unwrap(),
        Submitted::Known(State::Rejected)
    );
    s.submit("spare", &key(3)).unwrap();

    // Everything is on disk: a reopened store sees the same.
    let dir = store_dir(tmp.path());
    let again = Enrollment::open(&dir).unwrap();
    assert_eq!(
        again.list().collect::<Vec<_>>(),
        s.list().collect::<Vec<_>>()
    );
    let names: Vec<&str> = again.list().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["db1", "spare", "web1"]);
    let peers: Vec<_> = again.peers().collect();
    assert_eq!(
        peers,
        [(
            key(1),
            Peer {
                name: "web1".into(),
                role: Role::Host,
                groups: groups(&["eu", "web"]),
            }
        )]
    );

    // Revoking forgets the name: the next key under it is pending.
    let gone = s.revoke("web1").unwrap();
    assert_eq!(gone.key, key(1));
    assert_eq!(s.lookup_by_key(&key(1)), None);
    assert_eq!(s.submit("web1", &key(9)).unwrap(), Submitted::Pending);
    let again = Enrollment::open(&dir).unwrap();
    assert_eq!(again.get("web1").unwrap().key, key(9));

    // Files and directory are private.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("web1.json")), 0o600);
}

#[test]
fn a_name_keeps_its_first_key_and_says_why() {
    let (_tmp, mut s) = store();
    s.submit("web1", &key(1)).unwrap();
    s.accept("web1", &[]).unwrap();
    for _ in 0..2 {
        let e = s.submit("web1", &key(2)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(
            e,
            EnrollError::KeyMismatch {
                state: State::Accepted,
                ..
            }
        ));
        assert!(text.contains(&key(1).fingerprint()) && text.contains(&key(2).fingerprint()));
        assert!(text.contains("reflex keys revoke web1"), "{text}");
    }
    assert_eq!(s.lookup_by_key(&key(1)).map(|l| l.0), Some("web1"));
    assert_eq!(s.lookup_by_key(&key(2)), None);
    // A pending name keeps its first key too, and one key is one host.
    s.submit("web2", &key(3)).unwrap();
    assert!(matches!(
        s.submit("web2", &key(4)),
        Err(EnrollError::KeyMismatch {
            state: State::Pending,
            ..
        })
    ));
    assert!(matches!(
        s.submit("web3", &key(1)),
        Err(EnrollError::KeyInUse { .. })
    ));
}

#[test]
fn names_from_the_network_are_checked_and_unknown_names_are_errors() {
    let (tmp, mut s) = store();
    for bad in ["../evil", "a/b", "..", ".hidden", "", "x y"] {
        assert!(
            matches!(s.submit(bad, &key(1)), Err(EnrollError::Name(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        s.submit(&"a".repeat(300), &key(1)),
        Err(EnrollError::Name(_))
    ));
    assert_eq!(std::fs::read_dir(store_dir(tmp.path())).unwrap().count(), 0);
    assert!(matches!(
        s.accept("nobody", &[]),
        Err(EnrollError::NotFound(_))
    ));
    assert!(matches!(s.reject("nobody"), Err(EnrollError::NotFound(_))));
    assert!(matches!(s.revoke("nobody"), Err(EnrollError::NotFound(_))));
    s.submit("web1", &key(1)).unwrap();
    assert!(matches!(
        s.accept("web1", &groups(&["ok", "../bad"])),
        Err(EnrollError::Name(_))
    ));
    assert_eq!(s.get("web1").unwrap().state, State::Pending);
}

#[test]
fn pending_is_bounded() {
    let (_tmp, mut s) = store();
    assert_eq!(s.max_pending, MAX_PENDING);
    s.max_pending = 20;
    for i in 0..s.max_pending {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_be_bytes());
        s.submit(&format!("h{i}"), &PublicKey(k)).unwrap();
    }
    assert!(matches!(
        s.submit("one-more", &key(255)),
        Err(EnrollError::TooManyPending)
    ));
    // Accepting one makes room.
    s.accept("h0", &[]).unwrap();
    s.submit("one-more", &key(255)).unwrap();
}

#[test]
fn enroll_accepts_directly_with_a_role() {
    let (_tmp, mut s) = store();
    let e = s.enroll("admin", &key(5), Role::Admin, &[]).unwrap();
    assert_eq!((e.state, e.role), (State::Accepted, Role::Admin));
    s.enroll("web1", &key(6), Role::Host, &groups(&["web"]))
        .unwrap();
    assert_eq!(
        s.lookup_by_key(&key(6)),
        Some(("web1", Role::Host, &groups(&["web"])[..]))
    );
    assert!(matches!(
        s.enroll("web1", &key(7), Role::Host, &[]),
        Err(EnrollError::KeyMismatch { .. })
    ));
}

#[test]
fn a_bad_file_is_an_error_naming_it() {
    let (tmp, mut s) = store();
    s.submit("web1", &key(1)).unwrap();
    let dir = store_dir(tmp.path());
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let expect_err = |needle: &str| {
        let e = Enrollment::open(&dir).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
        e
    };

    let p = write("web2.json", "{not json");
    expect_err("web2.json");
    std::fs::remove_file(&p).unwrap();

    let mut entry = s.get("web1").unwrap().clone();
    entry.name = "other".into();
    let p = write("web3.json", &serde_json::to_string(&entry).unwrap());
    expect_err("holds the entry of \"other\"");
    std::fs::remove_file(&p).unwrap();

    let mut dup = s.get("web1").unwrap().clone();
    dup.name = "web0".into();
    let p = write("web0.json", &serde_json::to_string(&dup).unwrap());
    let e = expect_err("same key");
    assert!(e.contains("web0.json") || e.contains("web1.json"), "{e}");
    std::fs::remove_file(&p).unwrap();

    let p = write("notes.txt", "hello");
    expect_err("notes.txt");
    std::fs::remove_file(&p).unwrap();

    let p = dir.join("web1.json");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    expect_err("chmod 600");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A leftover temp file of an interrupted write is not an entry.
    write(".reflex-tmp-abc", "half");
    assert_eq!(Enrollment::open(&dir).unwrap().list().count(), 1);
}

#[test]
fn follow_sees_another_writer_and_costs_nothing_while_quiet() {
    let (tmp, mut writer) = store();
    let mut follow = Follow::new(&store_dir(tmp.path()));
    assert_eq!(follow.poll().unwrap().map(|s| s.list().count()), Some(0));
    // Past the clock tick of the store's last change, a quiet store is not read again.
    std::thread::sleep(super::SAME_TICK);
    assert_eq!(follow.poll().unwrap().map(|s| s.list().count()), Some(0));
    assert!(follow.poll().unwrap().is_none(), "nothing changed");
    writer.submit("web1", &key(1)).unwrap();
    writer.accept("web1", &[]).unwrap();
    let seen = follow.poll().unwrap().expect("a change");
    assert_eq!(
        seen.peers().map(|(_, p)| p.name).collect::<Vec<_>>(),
        ["web1"]
    );
    writer.revoke("web1").unwrap();
    let seen = follow.poll().unwrap().expect("a change");
    assert_eq!(seen.peers().count(), 0);
}

#[test]
fn follow_sees_a_change_made_right_after_the_one_it_read() {
    // Changes a few microseconds apart share the directory's time (the kernel's clock ticks
    // every few ms): a follower that read the first must still see the second.
    let (tmp, mut writer) = store();
    let mut follow = Follow::new(&store_dir(tmp.path()));
    for n in 0..20u8 {
        let name = format!("web{n}");
        writer.submit(&name, &key(n)).unwrap();
        writer.accept(&name, &[]).unwrap();
        let seen = follow.poll().unwrap().expect("a change");
        assert!(seen.peers().any(|(_, p)| p.name == name), "{name}");
    }
}
