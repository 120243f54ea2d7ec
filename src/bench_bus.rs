//! `reflex bench bus`: events through a real manager (and publisher, and actor), with CURVE on
//! and with every part `--insecure`, both in one run and measured against
//! a raw ZeroMQ PUSH->PULL floor taken in the same run, so the ratio means something on any
//! machine. Each stack is measured with the delivery guarantee (a [`bus::sender::Sender`]:
//! batches of a stream, counted once the manager acknowledged every event, i.e. its effects
//! are committed) and without it (lone frames, fire and forget), so the guarantee's cost is a
//! ratio too.
//!
//! The manager and publisher are child processes on free ports with a temp state dir, loaded
//! with the shipped rules, one rule that matches the bench events and increments a register per
//! host, and ten rules that match other tags. Latency is send -> `actor/result` for events sent
//! one at a time through a real actor.

use crate::bench_util::{floor, padded_frames, percentile, stats, BenchStack};
use crate::cli::Exit;
use clap::Args;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BusArgs {
    /// Events to push through the manager (and through the raw floor).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events sent one at a time for the latency figures.
    #[arg(long, default_value_t = 1_000)]
    pub pings: usize,
    /// Distinct hosts the bench events claim to come from (one register each).
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// Run the manager with `--no-history` (to measure what the history costs).
    #[arg(long)]
    pub no_history: bool,
    /// Run the manager with `--http` (metrics kept up to date, the page served) on a loopback
    /// port of the kernel's choosing, to measure what that costs.
    #[arg(long)]
    pub http: bool,
}

const ACTOR: &str = "bench-actor";
/// Encoded size the bench events are padded to.
const EVENT_BYTES: usize = 200;

fn write_rules(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in crate::up::SHIPPED_RULES {
        std::fs::write(dir.join(name), text)?;
    }
    std::fs::write(
        dir.join("30-bench.rhai"),
        "const MATCH = \"bench/event\";\nfn react(event) { registers::incr(`bench/${event.host}`, 1); }\n",
    )?;
    for i in 0..10 {
        std::fs::write(
            dir.join(format!("40-other-{i:02}.rhai")),
            format!("const MATCH = [\"other/{i}\", \"other/{i}/*\"];\nfn react(event) {{ registers::incr(\"other/{i}\", 1); }}\n"),
        )?;
    }
    std::fs::write(
        dir.join("50-ping.rhai"),
        format!("const MATCH = \"bench/ping\";\nfn react(event) {{ act(\"host/{ACTOR}\", [#{{kind: \"noop\", name: \"ping\"}}], #{{name: \"ping\"}}); }}\n"),
    )?;
    Ok(())
}

fn wait_actor_up(sub: &zmq::Socket, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut items = [sub.as_poll_item(zmq::POLLIN)];
        bus::sockets::poll(&mut items, 100)?;
        while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
            if let Some(ev) = parts.get(1).and_then(|p| bus::decode::<bus::Event>(p).ok()) {
                if ev.tag == "actor/up" && ev.host == ACTOR {
                    return Ok(());
                }
            }
        }
    }
    Err(Exit::unreachable("the bench actor did not come up"))
}

/// What one stack measured.
struct Figures {
    /// With the guarantee: until every event is acknowledged.
    events_per_s: f64,
    sent: f64,
    /// Lone frames, no acknowledgements.
    raw_per_s: f64,
    hits: u64,
    errors: u64,
    forged: u64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Start a stack (CURVE on, or every part `--insecure`), push the events through it and ping
/// its actor one event at a time.
fn measure(a: &BusArgs, frames: &[Vec<u8>], secure: bool) -> anyhow::Result<Figures> {
    let mut extra: Vec<String> = Vec::new();
    if a.no_history {
        extra.push("--no-history".into());
    }
    if a.http {
        extra.extend(["--http".into(), "127.0.0.1:0".into()]);
    }
    let mut stack = BenchStack::start_with(write_rules, secure, &extra)?;
    let ep = stack.endpoints.clone();

    // Monitor first, so the actor's announcement cannot be missed.
    let (mon, watch) = bus::secure::connect_watched(zmq::SUB, &ep.monitor, &stack.security)?;
    mon.set_subscribe(b"event/actor/")?;
    if !watch.wait(Duration::from_secs(20)) {
        return Err(Exit::unreachable(
            "the bench manager's monitor did not come up",
        ));
    }
    std::thread::sleep(Duration::from_millis(100));
    if secure {
        stack.enroll_host(ACTOR)?;
    }
    stack.spawn("actor", &["--name".into(), ACTOR.into()])?;
    wait_actor_up(&mon, Duration::from_secs(20))?;

    let what = crate::security::describe(&stack.security);
    eprintln!(
        "manager ({what}): {} events of {} bytes from {} hosts...",
        a.events,
        frames[0].len(),
        a.hosts
    );
    // The admin key may send for any host: the bench's events claim a hundred.
    let push = bus::secure::connect(zmq::PUSH, &ep.ingest, &stack.security)?;
    let (raw_per_s, _) = stack.push_through(&push, frames, a.events)?;
    eprintln!("manager ({what}), acknowledged: {} events...", a.events);
    let (events_per_s, sent) = stack.send_acked(frames, a.events)?;
    let st = stats(&ep.control, &stack.security)?;

    eprintln!(
        "latency ({what}): {} events one at a time through the actor...",
        a.pings
    );
    let mut lat = Vec::with_capacity(a.pings);
    // Pings go the way real events do: a stream, kept until acknowledged.
    let pinger =
        bus::sender::Sender::start(bus::sender::SenderConfig::new(&ep.ingest, &stack.security))?;
    for _ in 0..a.pings {
        let ev = bus::Event::new("bench/ping", ACTOR, json!({}));
        let t0 = Instant::now();
        pinger.send(&ev);
        let deadline = t0 + Duration::from_secs(10);
        'wait: loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(anyhow::anyhow!(
                    "no actor/result for ping {} within 10s",
                    ev.id
                ));
            }
            let mut items = [mon.as_poll_item(zmq::POLLIN)];
            bus::sockets::poll(&mut items, left.as_millis() as i64)?;
            while let Ok(parts) = mon.recv_multipart(zmq::DONTWAIT) {
                let Some(r) = parts.get(1).and_then(|p| bus::decode::<bus::Event>(p).ok()) else {
                    continue;
                };
                if r.tag == "actor/result" && r.data["origin"]["event"] == json!(ev.id) {
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    break 'wait;
                }
            }
        }
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    let count = |k: &str| st[k].as_u64().unwrap_or(0);
    Ok(Figures {
        events_per_s,
        sent,
        raw_per_s,
        hits: count("hits"),
        errors: count("rule_errors"),
        forged: count("forged"),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or(f64::NAN),
    })
}

pub fn run(a: BusArgs) -> anyhow::Result<ExitCode> {
    if a.events == 0 {
        return Err(Exit::usage("--events must be at least 1"));
    }
    let frames = padded_frames("bench/event", a.hosts, EVENT_BYTES);
    let size = frames[0].len();
    eprintln!(
        "floor: raw PUSH->PULL, {} messages of {size} bytes...",
        a.events
    );
    let floor_per_s = floor(a.events, size)?;
    // Both stacks in one run, so the cost of security is a ratio on the same machine state.
    let on = measure(&a, &frames, true)?;
    let off = measure(&a, &frames, false)?;

    println!("reflex bench bus: {} events of {size} B, {} hosts; rules: 1 matching + register incr, 10 on other tags, shipped rules", a.events, a.hosts);
    println!("{:<40} {:>14} {:>14}", "measure", "curve on", "insecure");
    println!(
        "{:<40} {:>14.0} {:>14.0}",
        "raw zmq push->pull floor (events/s)", floor_per_s, floor_per_s
    );
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        println!("{name:<40} {:>14} {:>14}", f(&on), f(&off));
    };
    row("acknowledged through the manager (ev/s)", &|f| {
        format!("{:.0}", f.events_per_s)
    });
    row("ratio acknowledged / floor", &|f| {
        format!("{:.3}", f.events_per_s / floor_per_s)
    });
    row("lone frames, no acks (events/s)", &|f| {
        format!("{:.0}", f.raw_per_s)
    });
    row("cost of the guarantee (acked / lone)", &|f| {
        format!("{:.3}", f.events_per_s / f.raw_per_s)
    });
    row("sender done after (s)", &|f| format!("{:.3}", f.sent));
    row("rule hits", &|f| f.hits.to_string());
    row("rule errors", &|f| f.errors.to_string());
    row("forged (refused)", &|f| f.forged.to_string());
    row("send -> actor/result p50 (ms)", &|f| {
        format!("{:.3}", f.p50)
    });
    row("send -> actor/result p99 (ms)", &|f| {
        format!("{:.3}", f.p99)
    });
    row("send -> actor/result max (ms)", &|f| {
        format!("{:.3}", f.max)
    });
    println!(
        "summary: events_per_s={:.0} floor_per_s={floor_per_s:.0} ratio={:.3} p50_ms={:.3} p99_ms={:.3} lone_events_per_s={:.0} insecure_events_per_s={:.0} insecure_ratio={:.3} insecure_p50_ms={:.3} insecure_p99_ms={:.3} insecure_lone_events_per_s={:.0}",
        on.events_per_s,
        on.events_per_s / floor_per_s,
        on.p50,
        on.p99,
        on.raw_per_s,
        off.events_per_s,
        off.events_per_s / floor_per_s,
        off.p50,
        off.p99,
        off.raw_per_s
    );
    Ok(ExitCode::SUCCESS)
}
