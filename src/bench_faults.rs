//! `reflex bench faults`: the delivery guarantee under kill -9. For each part (publisher,
//! manager, actor) a fresh CURVE stack takes a paced stream of events, each counted in a
//! register and making a distinct file action on a real actor; halfway through, that part is
//! killed with SIGKILL and started again at once. A last row stops the actor for a while
//! (killed, started again 3 s later). Each row says what a user would check afterwards:
//! events lost (files never written), events applied twice (the register past N, or an
//! action logged twice by the publisher), and how long after the last event everything was
//! on disk.

use crate::bench_util::BenchStack;
use crate::cli::Exit;
use clap::Args;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct FaultsArgs {
    /// Events per row.
    #[arg(long, default_value_t = 2_000)]
    pub events: u64,
    /// Events per second (paced, so the kill lands in the middle of the stream).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
}

const ACTOR: &str = "faults-actor";
/// The number of the first event, which wakes everything up (counted in the N + 1 expected).
const WARM_UP: u64 = 999_999_999_999;

struct Row {
    fault: &'static str,
    lost: u64,
    twice: u64,
    catch_up: f64,
}

fn files(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn row(a: &FaultsArgs, fault: &'static str, part: &str, away: Duration) -> anyhow::Result<Row> {
    let out = tempfile::Builder::new()
        .prefix("reflex-faults")
        .tempdir_in("/tmp")?;
    let dir = out.path().to_path_buf();
    let rule = format!(
        "const MATCH = \"faults/event\";\nfn react(event) {{\n  registers::incr(\"faults/count\", 1);\n  let i = event.data.i;\n  act(`host/${{event.host}}`, [#{{ kind: \"file\", name: `{}/f-${{i}}`, content: `${{i}}` }}], #{{ name: `faults-${{i}}` }});\n}}\n",
        dir.display()
    );
    let mut stack = BenchStack::start_as(
        |d| {
            std::fs::create_dir_all(d)?;
            Ok(std::fs::write(d.join("20-faults.rhai"), &rule)?)
        },
        true,
    )?;
    stack.enroll_host(ACTOR)?;
    let policy = stack.state().join("policy.toml");
    std::fs::write(&policy, actor::UP_POLICY)?;
    stack.spawn(
        "actor",
        &[
            "--name".into(),
            ACTOR.into(),
            "--policy".into(),
            policy.display().to_string(),
        ],
    )?;
    let sender = bus::sender::Sender::start(bus::sender::SenderConfig::new(
        &stack.endpoints.ingest,
        &stack.security,
    ))?;
    let event = |i: u64| bus::Event::new("faults/event", ACTOR, json!({ "i": i }));
    // One through the whole loop first: the actor is up and converging.
    sender.send_frame_waiting(bus::encode(&event(WARM_UP)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(&dir) < 1 {
        if Instant::now() > deadline {
            return Err(Exit::unreachable(
                "the faults stack never applied its first action",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{fault}: {} events at {}/s...", a.events, a.rate);
    let start = Instant::now();
    for i in 0..a.events {
        let due = start + Duration::from_secs_f64(i as f64 / a.rate);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if i == a.events / 2 {
            stack.kill_and_restart(part, away)?;
        }
        sender.send_frame_waiting(bus::encode(&event(i)));
    }
    let sent = Instant::now();
    if !sender.wait_acked(Duration::from_secs(120)) {
        eprintln!("{fault}: {} events never acknowledged", sender.pending());
    }
    let want = a.events + 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    while files(&dir) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let catch_up = sent.elapsed().as_secs_f64();
    let got = files(&dir);
    let reply = crate::send::control_request(
        &stack.endpoints.control,
        &json!({"cmd": "registers", "op": "get", "key": "faults/count"}),
        Duration::from_secs(5),
        &stack.security,
    )?;
    let counted = reply["ok"].as_u64().unwrap_or(0);
    let logged = logged_names(&stack)?;
    let distinct: std::collections::HashSet<&String> = logged.iter().collect();
    let twice = counted.saturating_sub(want) + (logged.len() - distinct.len()) as u64;
    Ok(Row {
        fault,
        lost: want.saturating_sub(got),
        twice,
        catch_up,
    })
}

/// Every action the publisher logged for the bench actor, read from its replay door.
fn logged_names(stack: &BenchStack) -> anyhow::Result<Vec<String>> {
    let replay = bus::secure::connect(zmq::REQ, &stack.endpoints.replay, &stack.security)?;
    replay.set_rcvtimeo(30_000)?;
    let topic = format!("host/{ACTOR}/");
    let req = json!({"since": 0, "topics": [topic], "limit": 1_000_000});
    replay.send(req.to_string().as_bytes(), 0)?;
    let parts = replay.recv_multipart(0)?;
    Ok(parts
        .iter()
        .skip(1)
        .filter_map(|f| bus::envelope::peek(f, usize::MAX).ok())
        .map(|h| h.name)
        .collect())
}

pub fn run(a: FaultsArgs) -> anyhow::Result<ExitCode> {
    if a.events < 2 || !(a.rate.is_finite() && a.rate > 0.0) {
        return Err(Exit::usage(
            "--events must be at least 2 and --rate positive",
        ));
    }
    let rows = [
        row(&a, "publisher killed", "publisher", Duration::ZERO)?,
        row(&a, "manager killed", "manager", Duration::ZERO)?,
        row(&a, "actor killed", "actor", Duration::ZERO)?,
        row(&a, "actor away 3 s", "actor", Duration::from_secs(3))?,
    ];
    println!(
        "reflex bench faults: {} events at {}/s per row, each a register increment and a distinct file action; the part killed with SIGKILL halfway and started again",
        a.events, a.rate
    );
    println!(
        "{:<20} {:>8} {:>14} {:>22}",
        "fault", "lost", "applied twice", "caught up after (s)"
    );
    for r in &rows {
        println!(
            "{:<20} {:>8} {:>14} {:>22.2}",
            r.fault, r.lost, r.twice, r.catch_up
        );
    }
    let lost: u64 = rows.iter().map(|r| r.lost).sum();
    let twice: u64 = rows.iter().map(|r| r.twice).sum();
    println!("summary: lost={lost} twice={twice}");
    Ok(ExitCode::SUCCESS)
}
