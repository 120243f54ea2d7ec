//! What an operator looks at, on a real `reflex up`: the three `/metrics` endpoints scraped
//! and read with a real Prometheus exposition-format parser, and the live page loaded in a
//! real headless browser (Debian's chromium), its rendered DOM checked for the events, the
//! rule hit counts, a trace and a graph drawn as SVG. A screenshot is left in the temp dir.

mod common;

use common::*;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// GET `path` from `addr`: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{addr}/metrics: {body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{addr}/metrics does not parse: {e}\n{body}"))
}

/// The value of the sample `metric` whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Wait until `metric{labels}` on `addr` is at least `min`; returns the scrape.
fn wait_metric(
    addr: &str,
    metric: &str,
    labels: &[(&str, &str)],
    min: f64,
) -> prometheus_parse::Scrape {
    let mut last = None;
    let mut scrape_now = || {
        let s = scrape(addr);
        last = value(&s, metric, labels);
        (last.unwrap_or(-1.0) >= min).then_some(s)
    };
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Some(s) = scrape_now() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{addr}: {metric}{labels:?} stayed at {last:?}, wanted >= {min}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Chromium, headless, rendering `url`; its DOM after scripts ran (and a screenshot when
/// `shot` is given). `None` when no browser is installed.
fn chromium(profile: &Path, url: &str, shot: Option<&Path>) -> Option<String> {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        // Time enough for the page's scripts and its first polls of the API.
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn metrics_and_the_live_page_show_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let state = tmp.path().join("state");
    let mut sa = stack_args(&state, base);
    sa.extend([
        "--rules".into(),
        repo().join("rules").display().to_string(),
        "--name".into(),
        "testhost".into(),
    ]);
    let up = Proc::start_logged(
        "up",
        &args_ref(
            &[
                vec!["up".to_string(), "--log-format".into(), "json".into()],
                sa,
            ]
            .concat(),
        ),
    );
    let line = up.wait_line("reflex is up", T).pop().unwrap_or_default();
    let http = |off: u16| format!("127.0.0.1:{}", base + off);
    let (manager, publisher, actor) = (http(7), http(8), http(9));
    let token = std::fs::read_to_string(state.join("http.token")).expect("the page's token");
    assert!(
        line.contains(&format!("page http://{manager}/?token={}", token.trim())),
        "up names the page: {line}"
    );

    // Three hellos (three actions), one without a path (the rule throws), one bad frame.
    let mut ids = Vec::new();
    for i in 0..3 {
        let path = tmp.path().join(format!("hello{i}")).display().to_string();
        let (code, out, err) = run(&args_ref(
            &[
                vec![
                    "send".into(),
                    "demo/hello".into(),
                    format!("path={path}"),
                    format!("text=hi{i}"),
                    "--host".into(),
                    "testhost".into(),
                ],
                stack_args(&state, base),
            ]
            .concat(),
        ));
        assert_eq!(code, 0, "send: {err}");
        ids.push(out.trim().to_string());
    }
    let (code, _, err) = run(&args_ref(
        &[
            vec![
                "send".into(),
                "demo/hello".into(),
                "text=nowhere".into(),
                "--host".into(),
                "testhost".into(),
            ],
            stack_args(&state, base),
        ]
        .concat(),
    ));
    assert_eq!(code, 0, "send: {err}");
    admin_push(&state, base)
        .send(&b"\x93not an event"[..], 0)
        .unwrap();

    // The manager.
    let m = wait_metric(
        &manager,
        "reflex_manager_rule_hits_total",
        &[("rule", "10-hello")],
        3.0,
    );
    assert_eq!(
        value(
            &m,
            "reflex_manager_rule_hits_total",
            &[("rule", "10-hello")]
        ),
        Some(3.0)
    );
    let m = wait_metric(
        &manager,
        "reflex_manager_rule_errors_total",
        &[("rule", "10-hello")],
        1.0,
    );
    assert_eq!(
        value(
            &m,
            "reflex_manager_rule_errors_total",
            &[("rule", "10-hello")]
        ),
        Some(1.0)
    );
    // Every run of the rule is timed, the failed one too.
    assert!(
        value(
            &m,
            "reflex_manager_rule_run_seconds_count",
            &[("rule", "10-hello")]
        ) >= Some(4.0)
    );
    // The frame's first byte is not the wire version.
    let dropped = [("reason", "malformed"), ("kind", "version")];
    let m = wait_metric(
        &manager,
        "reflex_manager_frames_dropped_total",
        &dropped,
        1.0,
    );
    assert!(value(&m, "reflex_manager_events_total", &[]) >= Some(4.0));
    assert!(value(&m, "reflex_manager_actions_total", &[]) >= Some(3.0));
    assert_eq!(
        value(
            &m,
            "reflex_manager_frames_dropped_total",
            &[("reason", "forged")]
        ),
        Some(0.0)
    );
    assert!(value(&m, "reflex_manager_history_bytes", &[]) > Some(0.0));
    assert!(value(&m, "reflex_manager_registers_bytes", &[]) > Some(0.0));
    let m = wait_metric(&manager, "reflex_manager_hosts", &[("state", "up")], 1.0);
    assert_eq!(
        value(&m, "reflex_manager_hosts", &[("state", "down")]),
        Some(0.0)
    );
    // No per-event label anywhere: every label value is one of a bounded set.
    for s in &m.samples {
        for id in &ids {
            assert!(!format!("{:?}", s.labels).contains(id.as_str()), "{s:?}");
        }
    }
    // The publisher.
    let p = wait_metric(
        &publisher,
        "reflex_publisher_actions_published_total",
        &[],
        3.0,
    );
    assert!(value(&p, "reflex_publisher_last_seq", &[]) >= Some(3.0));
    assert!(value(&p, "reflex_publisher_log_bytes", &[]) > Some(0.0));
    // The actor: three results, three graphs in force, their check-applies timed.
    let a = wait_metric(
        &actor,
        "reflex_actor_reports_total",
        &[("tag", "actor/result")],
        3.0,
    );
    assert!(value(&a, "reflex_actor_check_apply_seconds_count", &[]) >= Some(3.0));
    wait_metric(&actor, "reflex_actor_graphs", &[], 3.0);

    // The logs join the history on the event id: the actor's line for the action an event
    // caused, and the manager's for the rule that failed on one, carry it.
    let mut logged = Vec::new();
    let failed_id = wait_for("the failing event's id in the history", T, || {
        let state = state.display().to_string();
        let (_, out, _) = run(&["events", "--state", &state, "--tag", "demo/hello", "--json"]);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["data"]["path"].is_null() && e["tag"] == "demo/hello")
            .and_then(|e| e["id"].as_str().map(String::from))
    });
    let says = |lines: &[String], message: &str, event: &str| {
        lines.iter().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|j| {
                j["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
                    && j["fields"]["event"] == event
            })
        })
    };
    wait_for("log lines carrying the event ids", T, || {
        logged.extend(up.drain_lines(Duration::from_millis(100)));
        (says(&logged, "action converged", &ids[0]) && says(&logged, "rule failed", &failed_id))
            .then_some(())
    });

    // The page and its API are for the token's holder only; /metrics is counts only.
    let (status, _) = get(&manager, "/api/overview");
    assert_eq!(status, 401);
    let (status, _) = get(&manager, "/api/overview?token=0000");
    assert_eq!(status, 401);
    let (status, body) = get(&manager, &format!("/api/overview?token={}", token.trim()));
    assert_eq!(status, 200, "{body}");

    let profile = tmp.path().join("browser");
    let page = format!("http://{manager}/?token={}", token.trim());
    let id = &ids[2];
    let Some(dom) = chromium(&profile, &format!("{page}#trace={id}"), None) else {
        eprintln!("SKIPPED the browser half: no chromium installed (apt-get install chromium)");
        return;
    };
    // The events, newest first, each row named by its id.
    for id in &ids {
        assert!(
            dom.contains(&format!("data-id=\"{id}\"")),
            "event {id} not on the page:\n{dom}"
        );
    }
    // The rule's hit count, as the page drew it.
    let row = dom
        .split("<tr data-rule=\"10-hello\"")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for 10-hello:\n{dom}"));
    assert!(
        row.contains("<td class=\"hits\">3</td>"),
        "10-hello row: {row}"
    );
    // The trace of the event asked for: the rule that hit it, its action and the host's result.
    let trace = dom
        .split("id=\"trace\"")
        .nth(1)
        .filter(|t| {
            t.split('>')
                .next()
                .is_some_and(|tag| tag.contains(&format!("data-id=\"{id}\"")))
        })
        .unwrap_or_else(|| panic!("no trace of {id}:\n{dom}"));
    for class in ["hit", "action", "report"] {
        assert!(
            trace.contains(&format!("class=\"{class}")),
            "trace lacks a {class}:\n{trace}"
        );
    }
    assert!(
        trace.contains("10-hello") && trace.contains("actor/result"),
        "{trace}"
    );
    // A graph in force, drawn as a picture by Graphviz (a link to its DOT where there is none).
    let name = format!("hello:{}", tmp.path().join("hello0").display());
    let dom =
        chromium(&profile, &format!("{page}#graph=testhost/{name}"), None).unwrap_or_default();
    let drawn = dom
        .split("id=\"graph\"")
        .nth(1)
        .and_then(|t| t.split('>').next())
        .and_then(|tag| tag.split("data-drawn=\"").nth(1))
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("graph {name} not shown:\n{dom}"));
    let graphviz = Command::new("dot")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if graphviz {
        assert!(drawn > 0, "graph {name} not drawn:\n{dom}");
    } else {
        eprintln!("no Graphviz: the graph is offered as DOT, not drawn");
        assert_eq!(drawn, 0);
    }
    let shot = tmp.path().join("page.png");
    chromium(&profile, &format!("{page}#trace={id}"), Some(&shot));
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
    drop(up);
}
