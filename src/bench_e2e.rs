//! `reflex bench e2e`: events through the whole loop on a CURVE stack, each making a rule act
//! with a distinct one-file action on a real actor, measured where a user would look: the file
//! on disk. One at a time for latency (send -> file written), then a burst for throughput
//! (applied per second, lost), with the actor's CPU per applied action and its resident memory
//! per kept graph, and the raw ZeroMQ floor of the same run beside them.

use crate::bench_util::{floor, usage, BenchStack};
use crate::cli::Exit;
use clap::Args;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct E2eArgs {
    /// Events in the burst (each a kept one-file graph on the actor).
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Events sent one at a time for the latency figures.
    #[arg(long, default_value_t = 500)]
    pub pings: u64,
}

const ACTOR: &str = "e2e-actor";
/// The number of the first event, which wakes everything up and is not counted.
const WARM_UP: u64 = 999_999_999_999;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn files(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

pub fn run(a: E2eArgs) -> anyhow::Result<ExitCode> {
    if a.events == 0 || a.pings == 0 {
        return Err(Exit::usage("--events and --pings must be at least 1"));
    }
    let out = tempfile::Builder::new()
        .prefix("reflex-e2e")
        .tempdir_in("/tmp")?;
    let dir = out.path().to_path_buf();
    let rule = format!(
        "const MATCH = \"e2e/event\";\nfn react(event) {{\n  let i = event.data.i;\n  act(`host/${{event.host}}`, [#{{ kind: \"file\", name: `{}/f-${{i}}`, content: `${{i}}` }}], #{{ name: `e2e-${{i}}` }});\n}}\n",
        dir.display()
    );
    let mut stack = BenchStack::start_as(
        |d| {
            std::fs::create_dir_all(d)?;
            Ok(std::fs::write(d.join("20-e2e.rhai"), &rule)?)
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
    let pid = stack
        .pid("actor")
        .ok_or_else(|| anyhow::anyhow!("no actor process"))?;
    let sender = bus::sender::Sender::start(bus::sender::SenderConfig::new(
        &stack.endpoints.ingest,
        &stack.security,
    ))?;
    let send = |i: u64| {
        sender.send_frame_waiting(bus::encode(&bus::Event::new(
            "e2e/event",
            ACTOR,
            json!({ "i": i }),
        )))
    };
    let wait_file = |i: u64, limit: Duration| -> anyhow::Result<()> {
        let f = dir.join(format!("f-{i}"));
        let deadline = Instant::now() + limit;
        while !f.exists() {
            if Instant::now() > deadline {
                return Err(Exit::unreachable(format!("{} never written", f.display())));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    };
    // The first one wakes everything up and is not counted.
    send(WARM_UP);
    wait_file(WARM_UP, Duration::from_secs(60))?;

    eprintln!(
        "latency: {} events one at a time, send -> file on disk...",
        a.pings
    );
    let mut lat = Vec::with_capacity(a.pings as usize);
    for i in 0..a.pings {
        let id = 1_000_000_000 + i;
        let t0 = Instant::now();
        send(id);
        wait_file(id, Duration::from_secs(10))?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|x, y| x.total_cmp(y));

    eprintln!("burst: {} events, each a kept one-file graph...", a.events);
    let before = files(&dir);
    let (cpu0, _, anon0) = usage(pid)?;
    let t0 = Instant::now();
    for i in 0..a.events {
        send(i);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while files(&dir) < before + a.events && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed().as_secs_f64();
    let applied = files(&dir) - before;
    let (cpu1, _, anon1) = usage(pid)?;
    let floor_per_s = floor(a.events.max(100_000), 200)?;

    let cpu_ms = (cpu1 - cpu0) * 1e3 / applied.max(1) as f64;
    let kb_per_graph = anon1.saturating_sub(anon0) as f64 / 1024.0 / applied.max(1) as f64;
    println!("reflex bench e2e: CURVE stack, each event a rule's distinct one-file action on a real actor; {} one at a time, then a burst of {}", a.pings, a.events);
    println!("{:<44} {:>14}", "measure", "value");
    println!(
        "{:<44} {:>14.0}",
        "raw zmq push->pull floor (messages/s)", floor_per_s
    );
    println!(
        "{:<44} {:>14.0}",
        "burst applied (files on disk per s)",
        applied as f64 / took
    );
    println!("{:<44} {:>14}", "lost in the burst", a.events - applied);
    println!(
        "{:<44} {:>14.3}",
        "one at a time: send -> file p50 (ms)",
        percentile(&lat, 0.5)
    );
    println!(
        "{:<44} {:>14.3}",
        "one at a time: send -> file p99 (ms)",
        percentile(&lat, 0.99)
    );
    println!(
        "{:<44} {:>14.3}",
        "actor CPU per applied action (ms)", cpu_ms
    );
    println!(
        "{:<44} {:>14.1}",
        "actor private RSS per kept graph (KB)", kb_per_graph
    );
    println!(
        "summary: applied_per_s={:.0} lost={} p50_ms={:.3} p99_ms={:.3} actor_cpu_ms={cpu_ms:.3} kb_per_graph={kb_per_graph:.1} floor_per_s={floor_per_s:.0}",
        applied as f64 / took,
        a.events - applied,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    Ok(ExitCode::SUCCESS)
}
