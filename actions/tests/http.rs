//! The `http` kind against a real local HTTP server started by the test.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use engine::{Engine, RunOptions};
use serde_json::json;
use util::*;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<String>,
    body: String,
}

/// A tiny HTTP/1.1 server: records each request, answers `status` with `reply`.
fn serve(status: u16, reply: &'static str) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut headers = Vec::new();
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push(h.trim().to_string());
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            log.lock().expect("log").push(Seen {
                method,
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_called_with_method_headers_body_and_again_on_refresh() {
    let (url, seen) = serve(201, "created");
    let dir = tempfile::tempdir().expect("tempdir");
    let (f, out) = (dir.path().join("watched"), dir.path().join("reply"));
    let g = graph(json!({
        "resources": [
            {"kind": "file", "name": p(&f), "content": "x"},
            {"kind": "http", "name": "hook", "url": format!("{url}/hook"), "method": "post",
             "headers": {"X-Token": "t0k"}, "body": "{\"changed\": true}", "status": 201},
            {"kind": "file", "name": p(&out), "recv": {"content": "http:hook.body"}},
        ],
        "edges": [{"from": file_id(&f), "to": "http:hook", "notify": true}],
    }));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(read(&out), "created");
    {
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("POST", "/hook")
        );
        assert!(
            seen[0]
                .headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case("x-token: t0k")),
            "{seen:?}"
        );
        assert_eq!(seen[0].body, "{\"changed\": true}");
    }
    std::fs::write(&f, "drift").expect("drift");
    eventually("called again after the repair", || {
        seen.lock().expect("seen").len() == 2
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_status_is_an_error_naming_it() {
    let (url, _seen) = serve(500, "boom");
    let g = graph(json!([{"kind": "http", "name": url.clone()}]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].contains("answered 500, expected a 2xx: boom"),
        "{report:?}"
    );
    running.stop().await;
    let (url, _seen) = serve(200, "ok");
    engine::compliance::check(json!({"kind": "http", "name": url}))
        .await
        .expect("http complies");
}

#[test]
fn bad_urls_and_methods_are_rejected() {
    let e = graph::Graph::from_value(&json!([{"kind": "http", "name": "ftp://x"}]))
        .expect_err("bad url")
        .to_string();
    assert!(
        e.contains("field `name`") && e.contains("not an http(s) URL"),
        "{e}"
    );
    let e = graph::Graph::from_value(
        &json!([{"kind": "http", "name": "h", "url": "http://x", "method": "GE T"}]),
    )
    .expect_err("bad method")
    .to_string();
    assert!(e.contains("field `method`"), "{e}");
}
