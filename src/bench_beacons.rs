//! `reflex bench beacons`: what the beacons cost their host, and how fast the emitter sends.
//!
//! A real `reflex beacon` child runs the shipped default config with every beacon at one
//! interval (1 s) against a real manager for `--secs` (60): its CPU (as % of one core, from
//! utime + stime in /proc/<pid>/stat over the run) and its peak RSS (VmHWM in
//! /proc/<pid>/status), with the private part of it (RssAnon; the rest is the binary and
//! libraries, shared with the other reflex processes). Then an in-process `Emitter` pushes `--events` events into the running
//! manager as fast as it takes them: the rate at which events are handed to the socket, the
//! drops, and how long the manager took to count them all.

use crate::bench_util::{daemon, events_seen, free_port_base, usage};
use crate::cli::Exit;
use bus::secure::Security;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BeaconsArgs {
    /// Seconds the beacon process is measured.
    #[arg(long, default_value_t = 60.0)]
    pub secs: f64,
    /// Interval every beacon of the default config is run at, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Events the emitter pushes for its rate.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
}

fn wait_manager(control: &str, sec: &Security) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match events_seen(control, sec) {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() > deadline => {
                return Err(Exit::unreachable(format!(
                    "the bench manager did not answer: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn run(a: BeaconsArgs) -> anyhow::Result<ExitCode> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !(positive(a.secs) && positive(a.interval)) {
        return Err(Exit::usage("--secs and --interval must be positive"));
    }
    if a.events == 0 {
        return Err(Exit::usage("--events must be at least 1"));
    }
    let tmp = tempfile::tempdir()?;
    let state: PathBuf = tmp.path().join("state");
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(&state)?;
    std::fs::create_dir_all(&rules)?;
    for (name, text) in crate::up::SHIPPED_RULES {
        std::fs::write(rules.join(name), text)?;
    }
    let base = free_port_base()?;
    let ep = bus::Endpoints::local(base, &state);
    let sec = crate::security::local_admin(&state, base)?;
    crate::security::enroll_local_host(&state, "bench-beacon", &[])?;
    let exe = std::env::current_exe()?;
    let common = |sub: &str| -> Vec<String> {
        vec![
            sub.into(),
            "--state".into(),
            state.display().to_string(),
            "--port-base".into(),
            base.to_string(),
        ]
    };
    let _publisher = daemon(&exe, &common("publisher"))?;
    let mut margs = common("manager");
    margs.extend(["--rules".into(), rules.display().to_string()]);
    let _manager = daemon(&exe, &margs)?;
    wait_manager(&ep.control, &sec)?;
    // The beacon's events, counted on the manager's monitor stream (the manager's own events
    // would blur a count of everything it took).
    let (mon, watch) = bus::secure::connect_watched(zmq::SUB, &ep.monitor, &sec)?;
    mon.set_subscribe(b"event/beacon/")?;
    if !watch.wait(Duration::from_secs(20)) {
        return Err(Exit::unreachable(
            "the bench manager's monitor did not come up",
        ));
    }
    let mut beacon_events = 0u64;
    let mut count = |mon: &zmq::Socket| {
        while let Ok(parts) = mon.recv_multipart(zmq::DONTWAIT) {
            if let Some(ev) = parts.get(1).and_then(|p| bus::decode::<bus::Event>(p).ok()) {
                if ev.host == "bench-beacon" {
                    beacon_events += 1;
                }
            }
        }
        watch.drain();
    };

    eprintln!(
        "beacon: the shipped default config, every beacon at {}s, for {}s...",
        a.interval, a.secs
    );
    let mut bargs = common("beacon");
    bargs.extend([
        "--defaults".into(),
        "--interval".into(),
        a.interval.to_string(),
        "--host".into(),
        "bench-beacon".into(),
    ]);
    let beacon = daemon(&exe, &bargs)?;
    let pid = beacon.0.id();
    let t0 = Instant::now();
    let mut peak_rss = 0;
    // RSS counts the pages of the binary and libraries shared with the other reflex
    // processes; the private part is what the beacon alone costs.
    let mut peak_anon = 0;
    let mut cpu_s = 0.0;
    while t0.elapsed().as_secs_f64() < a.secs {
        std::thread::sleep(Duration::from_millis(250).min(Duration::from_secs_f64(a.secs)));
        count(&mon);
        let (c, r, anon) = usage(pid).map_err(|e| anyhow::anyhow!("the beacon process: {e}"))?;
        cpu_s = c;
        peak_rss = peak_rss.max(r);
        peak_anon = peak_anon.max(anon);
    }
    let wall = t0.elapsed().as_secs_f64();
    drop(beacon);
    std::thread::sleep(Duration::from_millis(100));
    count(&mon);
    let cpu_pct = cpu_s / wall * 100.0;
    let rss_mb = peak_rss as f64 / 1e6;

    eprintln!("emitter: {} events into the manager...", a.events);
    // A queue as deep as the run, so the rate is the emitter's, not the manager's back-pressure.
    let queue = usize::try_from(a.events).unwrap_or(usize::MAX);
    let em = beacons::Emitter::with_queue(&ep.ingest, "bench-emitter", queue, &sec)?;
    // One event through first, so the connection is up before the clock starts.
    let seen = events_seen(&ep.control, &sec)?;
    em.emit("bench/warmup", json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_seen(&ep.control, &sec)? <= seen {
        if Instant::now() > deadline {
            return Err(Exit::unreachable(
                "the manager took no event from the emitter",
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = events_seen(&ep.control, &sec)?;
    // The warm-up event is counted as sent too: measure only what the loop sends.
    let sent_before = em.sent();
    let start = Instant::now();
    for i in 0..a.events {
        // A small payload, like an application's own events ({"ms": 12.5}).
        em.emit("bench/emit", json!({ "seq": i }));
    }
    let emit_secs = start.elapsed().as_secs_f64();
    let sent = em.sent() - sent_before;
    let emit_per_s = sent as f64 / emit_secs;
    let want = before + sent;
    let deadline = Instant::now() + Duration::from_secs(600);
    while events_seen(&ep.control, &sec)? < want {
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "the manager did not take the emitted events within 10 minutes"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let manager_per_s = sent as f64 / start.elapsed().as_secs_f64();

    println!("reflex bench beacons");
    println!("  {:<44} {:>14}  target", "measure", "value");
    println!(
        "  {:<44} {:>14.3}  < 0.5",
        format!("beacon CPU, % of one core ({wall:.0} s)"),
        cpu_pct
    );
    println!(
        "  {:<44} {:>14.2}  < 10",
        "beacon peak RSS, MB (VmHWM)", rss_mb
    );
    println!(
        "  {:<44} {:>14.2}",
        "  of which private (RssAnon), MB",
        peak_anon as f64 / 1e6
    );
    println!(
        "  {:<44} {:>14}",
        "beacon events the manager took", beacon_events
    );
    println!(
        "  {:<44} {:>14.0}  >= 1000000",
        "emitter events/s handed to the socket", emit_per_s
    );
    println!(
        "  {:<44} {:>14}",
        "emitter events sent / dropped",
        format!("{} / {}", em.sent(), em.dropped())
    );
    println!(
        "  {:<44} {:>14.0}",
        "manager events/s until it took them all", manager_per_s
    );
    println!("summary: cpu_pct={cpu_pct:.3} rss_mb={rss_mb:.2} emit_per_s={emit_per_s:.0}");
    Ok(ExitCode::SUCCESS)
}
