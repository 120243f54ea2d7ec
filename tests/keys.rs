//! `reflex keys` through the real binary, offline on a state dir: `show` makes the manager's key
//! once (private files) and prints it; `list`, `accept`, `reject` and `revoke` work the
//! enrollment store; unknown names and bad usage exit 2.

mod common;

use bus::enroll::{store_dir, Enrollment, State};
use bus::keys::{PublicKey, Role};
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn keys(state: &Path, args: &[&str]) -> (i32, String, String) {
    let mut a = vec!["keys"];
    a.extend_from_slice(args);
    a.extend(["--state", state.to_str().unwrap()]);
    run(&a)
}

fn ok(state: &Path, args: &[&str]) -> String {
    let (code, out, err) = keys(state, args);
    assert_eq!(code, 0, "keys {args:?}: {err}");
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_show_list_accept_reject_revoke_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    // show: made once, kept private, printed as hex that --manager-key will take.
    let first = ok(&state, &["show"]);
    let key = PublicKey::parse(first.trim()).expect("show prints a key");
    assert_eq!(first.trim().len(), 64);
    assert_eq!(ok(&state, &["show"]), first);
    let kd = bus::keys::key_dir(&state);
    assert_eq!(mode(&kd), 0o700);
    assert_eq!(mode(&bus::keys::secret_path(&kd, Role::Manager)), 0o600);
    assert_eq!(
        PublicKey::from_file(&bus::keys::public_path(&kd, Role::Manager)).unwrap(),
        key
    );
    assert_ne!(ok(&state, &["show", "--role", "admin"]), first);
    // show --sign: the action signing key, as --sign-key takes it.
    let sign = ok(&state, &["show", "--sign"]);
    assert_eq!(
        bus::envelope::ManagerKey::parse(sign.trim()).expect("a signing key"),
        bus::envelope::ManagerKey::from_state(&state)
            .unwrap()
            .unwrap()
    );
    // REFLEX_STATE finds the same state dir.
    let out = Command::new(REFLEX)
        .args(["keys", "show"])
        .env("REFLEX_STATE", &state)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), first);

    // Nothing enrolled yet: the header alone.
    assert_eq!(ok(&state, &["list"]).lines().count(), 1);

    // Two hosts knock (what the manager will record from its ZAP handler).
    let (web1, db1) = (PublicKey([1; 32]), PublicKey([2; 32]));
    {
        let mut store = Enrollment::open(&store_dir(&state)).unwrap();
        store.submit("web1", &web1).unwrap();
        store.submit("db1", &db1).unwrap();
    }
    let listing = ok(&state, &["list"]);
    let web1_line = listing.lines().find(|l| l.starts_with("web1")).unwrap();
    assert!(web1_line.contains("pending") && web1_line.contains(&web1.fingerprint()));

    ok(
        &state,
        &["accept", "web1", "--group", "web", "--group", "eu"],
    );
    ok(&state, &["reject", "db1"]);
    let rows: Value = serde_json::from_str(&ok(&state, &["list", "--json"])).unwrap();
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
    };
    assert_eq!(row("web1").unwrap()["state"], "accepted");
    assert_eq!(
        row("web1").unwrap()["groups"],
        serde_json::json!(["eu", "web"])
    );
    assert_eq!(row("web1").unwrap()["key"], web1.to_hex());
    assert_eq!(row("db1").unwrap()["state"], "rejected");
    let store = Enrollment::open(&store_dir(&state)).unwrap();
    assert_eq!(store.lookup_by_key(&web1).map(|l| l.0), Some("web1"));
    assert_eq!(store.get("db1").unwrap().state, State::Rejected);

    ok(&state, &["revoke", "web1"]);
    assert!(!ok(&state, &["list"]).contains("web1"));

    // Unknown and invalid names, and bad usage, exit 2 and change nothing.
    for args in [
        &["accept", "nobody"][..],
        &["revoke", "web1"],
        &["reject", "../etc"],
        &["accept"],
        &["show", "--role", "root"],
    ] {
        let (code, _, err) = keys(&state, args);
        assert_eq!(code, 2, "keys {args:?}: {err}");
    }
    let (code, _, err) = keys(&tmp.path().join("elsewhere"), &["accept", "web1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no enrollment store"), "{err}");
    assert_eq!(ok(&state, &["list"]).lines().count(), 2);
}
