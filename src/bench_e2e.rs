//! `reflex bench e2e`: events through the whole loop on a CURVE stack, each making a rule act
//! with a distinct one-file action on a real actor, measured where a user would look: the file
//! on disk (the rule also counts each event in a register). One at a time for latency (send -> file written), then a burst for throughput
//! (applied per second, lost), with the actor's CPU per applied action and its resident memory
//! per kept graph, and the raw ZeroMQ floor of the same run beside them.

use crate::bench_loop::FileLoop;
use crate::bench_util::{floor, percentile, usage};
use crate::cli::Exit;
use clap::Args;
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

pub fn run(a: E2eArgs) -> anyhow::Result<ExitCode> {
    if a.events == 0 || a.pings == 0 {
        return Err(Exit::usage("--events and --pings must be at least 1"));
    }
    let l = FileLoop::start("e2e/event", ACTOR)?;
    let pid = l
        .stack
        .pid("actor")
        .ok_or_else(|| anyhow::anyhow!("no actor process"))?;

    eprintln!(
        "latency: {} events one at a time, send -> file on disk...",
        a.pings
    );
    let mut lat = Vec::with_capacity(a.pings as usize);
    for i in 0..a.pings {
        let id = 1_000_000_000 + i;
        let t0 = Instant::now();
        l.send(id);
        l.wait_file(id, Duration::from_secs(10))?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|x, y| x.total_cmp(y));

    eprintln!("burst: {} events, each a kept one-file graph...", a.events);
    let before = l.files();
    let (cpu0, _, anon0) = usage(pid)?;
    let t0 = Instant::now();
    for i in 0..a.events {
        l.send(i);
    }
    let applied = l.wait_files(before + a.events, Duration::from_secs(600)) - before;
    let took = t0.elapsed().as_secs_f64();
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
