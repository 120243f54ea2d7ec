//! Every kind passes the resource contract (engine::compliance): first check runs without
//! a watch event, a second check after converging is Converged, compare is reflexive.

mod util;

use serde_json::json;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_complies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cases = vec![
        json!({"kind": "noop", "name": "n"}),
        json!({"kind": "file", "name": p(&d.join("f")), "content": "x\n", "mode": "0600"}),
        json!({"kind": "file", "name": p(&d.join("gone")), "state": "absent"}),
        json!({"kind": "exec", "name": "e", "cmd": format!("echo hi > '{}'", p(&d.join("e")))}),
        json!({"kind": "exec", "name": "c", "cmd": "true", "creates": p(&d.join("c")),
               "env": {"A": "1"}, "cwd": p(d), "ifcmd": "true"}),
    ];
    for case in cases {
        if let Err(e) = engine::compliance::check(case.clone()).await {
            panic!("{case}: {e}");
        }
    }
}
