//! The smaller kinds on the real engine: timer drives periodic work, msg speaks on change.

mod util;

use std::time::Duration;

use engine::{Engine, EngineEvent, RunOptions};
use serde_json::json;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_drives_a_refresh_only_exec_periodically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ticks");
    let g = graph(json!({
        "resources": [
            {"kind": "timer", "name": "t", "interval": 0.1},
            {"kind": "exec", "name": "work", "refresh_only": true,
             "cmd": format!("echo tick >> '{}'", p(&log))},
        ],
        "edges": [{"from": "timer:t", "to": "exec:work", "notify": true}],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok && report.changed.is_empty(), "{report:?}");
    eventually("three ticks of work", || read(&log).lines().count() >= 3).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_speaks_once_and_again_on_refresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("watched");
    let g = graph(json!({
        "resources": [
            {"kind": "file", "name": p(&f), "content": "x"},
            {"kind": "msg", "name": "alert", "body": "watched file repaired"},
        ],
        "edges": [{"from": file_id(&f), "to": "msg:alert", "notify": true}],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert_eq!(report.changed, [file_id(&f), "msg:alert".to_string()]);
    let (id, text) = next_message(&mut running).await;
    assert_eq!(
        (id.as_str(), text.as_str()),
        ("msg:alert", "watched file repaired")
    );
    std::fs::write(&f, "drift").expect("drift");
    next_message(&mut running).await;
    running.converged(Duration::from_millis(200)).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_and_msg_comply() {
    for case in [
        json!({"kind": "timer", "name": "t", "interval": 3600}),
        json!({"kind": "msg", "name": "m", "body": "hello"}),
    ] {
        if let Err(e) = engine::compliance::check(case.clone()).await {
            panic!("{case}: {e}");
        }
    }
}

async fn next_message(running: &mut engine::Running) -> (String, String) {
    let fut = async {
        loop {
            match running.next_event().await {
                Some(EngineEvent::Message { id, text }) => return (id, text),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_generated_once_sent_to_a_file_and_kept_encrypted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let f = dir.path().join("db.conf");
    let g = || {
        graph(json!([
            {"kind": "password", "name": "db", "length": 24},
            {"kind": "file", "name": p(&f), "mode": "0600", "recv": {"content": "password:db.value"}},
        ]))
    };
    let opts = RunOptions {
        state_dir: Some(state.clone()),
        ..Default::default()
    };
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g(), opts.clone());
    let report = running.first_report().await;
    assert_eq!(report.changed, ["password:db".to_string(), file_id(&f)]);
    let secret = read(&f);
    assert_eq!(secret.len(), 24);
    running.stop().await;

    // Nothing under the state dir holds it in the clear.
    for entry in std::fs::read_dir(state.join("secrets")).expect("secrets") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        assert!(!bytes.windows(24).any(|w| w == secret.as_bytes()));
    }

    // A restart decrypts the same secret: nothing changes.
    let mut running = engine.run(g(), opts);
    let report = running.first_report().await;
    assert!(report.ok && report.changed.is_empty(), "{report:?}");
    std::fs::write(&f, "guess").expect("drift");
    eventually("the secret is restored", || read(&f) == secret).await;
    running.stop().await;

    engine::compliance::check(json!({"kind": "password", "name": "p"}))
        .await
        .expect("password complies");
}
