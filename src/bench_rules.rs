//! `reflex bench rules`: the rule engine's cost. A real manager with 50 rules loaded, one of
//! which matches the bench events and writes a register, takes N events of ~200 bytes; then N
//! events no rule matches (the index must make those cost nothing). Both against a raw ZeroMQ
//! floor measured in the same run.

use crate::bench_util::{daemon, events_seen, floor, free_port_base};
use crate::cli::Exit;
use clap::Args;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct RulesArgs {
    /// Events per run (matching, then non-matching).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Distinct hosts the events come from.
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
}

const EVENT_BYTES: usize = 200;
const RULES: usize = 50;

fn write_rules(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("25-bench.rhai"),
        "const MATCH = \"bench/event\";\nfn react(event) { registers::incr(`bench/${event.host}`, 1); }\n",
    )?;
    // 49 rules on other tags, with the glob shapes real rule sets use.
    for i in 0..RULES - 1 {
        let glob = match i % 4 {
            0 => format!("app{i}/deploy"),
            1 => format!("app{i}/*"),
            2 => format!("host/web{i}?/down"),
            _ => format!("svc{i}/**"),
        };
        std::fs::write(
            dir.join(format!("{:02}-other.rhai", if i < 25 { i } else { i + 1 })),
            format!("const MATCH = \"{glob}\";\nfn react(event) {{ registers::incr(\"other/{i}\", 1); }}\n"),
        )?;
    }
    Ok(())
}

fn frames(tag: &str, hosts: usize) -> Vec<Vec<u8>> {
    (0..hosts.max(1))
        .map(|h| {
            let mut ev = bus::Event::new(tag, format!("host-{h:03}"), json!({"seq": h, "pad": ""}));
            let base = bus::encode(&ev).len();
            ev.data["pad"] = json!("x".repeat(EVENT_BYTES.saturating_sub(base)));
            bus::encode(&ev)
        })
        .collect()
}

/// Push `n` events (cycling through `frames`) and wait until the manager counted them all.
fn run_through(
    push: &zmq::Socket,
    control: &str,
    frames: &[Vec<u8>],
    n: u64,
) -> anyhow::Result<f64> {
    let before = events_seen(control)?;
    let start = Instant::now();
    for i in 0..n {
        push.send(&frames[(i % frames.len() as u64) as usize][..], 0)?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while events_seen(control)? < before + n {
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "the manager did not take all events within 10 minutes"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub fn run(a: RulesArgs) -> anyhow::Result<ExitCode> {
    if a.events == 0 {
        return Err(Exit::usage("--events must be at least 1"));
    }
    let tmp = tempfile::tempdir()?;
    let state = tmp.path().join("state");
    let rules = tmp.path().join("rules");
    write_rules(&rules)?;
    std::fs::create_dir_all(&state)?;
    let base = free_port_base()?;
    let ep = bus::Endpoints::local(base, &state);
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
    // The manager is ready once its control socket answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let loaded = loop {
        match crate::bench_util::stats(&ep.control) {
            Ok(s) => break s["rules"].as_array().map(Vec::len).unwrap_or(0),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e),
        }
    };
    if loaded != RULES {
        return Err(anyhow::anyhow!(
            "the bench manager loaded {loaded} rules, not {RULES}"
        ));
    }

    let matching = frames("bench/event", a.hosts);
    let nomatch = frames("bench/nomatch", a.hosts);
    let size = matching[0].len();
    eprintln!(
        "floor: raw PUSH->PULL, {} messages of {size} bytes...",
        a.events
    );
    let floor_per_s = floor(a.events, size)?;
    let push = bus::sockets::connect(zmq::PUSH, &ep.ingest)?;
    eprintln!(
        "manager, 1 of {RULES} rules matching: {} events...",
        a.events
    );
    let match_per_s = run_through(&push, &ep.control, &matching, a.events)?;
    eprintln!("manager, no rule matching: {} events...", a.events);
    let nomatch_per_s = run_through(&push, &ep.control, &nomatch, a.events)?;
    let us_per_rule = (1e6 / match_per_s - 1e6 / nomatch_per_s).max(0.0);
    let counted: u64 = (0..a.hosts)
        .filter_map(|h| {
            crate::send::control_request(
                &ep.control,
                &json!({"cmd": "registers", "op": "get", "key": format!("bench/host-{h:03}")}),
                Duration::from_secs(5),
            )
            .ok()?["ok"]
                .as_u64()
        })
        .sum();
    if counted != a.events {
        return Err(anyhow::anyhow!(
            "the matching rule counted {counted} events, not {}",
            a.events
        ));
    }

    println!(
        "reflex bench rules: {} events of {size} B per run, {} hosts, {RULES} rules loaded",
        a.events, a.hosts
    );
    println!("{:<46} {:>14}", "measure", "value");
    println!(
        "{:<46} {:>14.0}",
        "raw zmq push->pull floor (events/s)", floor_per_s
    );
    println!(
        "{:<46} {:>14.0}",
        "1 of 50 rules matching + register (events/s)", match_per_s
    );
    println!(
        "{:<46} {:>14.0}",
        "no rule matching (events/s)", nomatch_per_s
    );
    println!(
        "{:<46} {:>14.3}",
        "matching / floor",
        match_per_s / floor_per_s
    );
    println!(
        "{:<46} {:>14.3}",
        "no match / floor",
        nomatch_per_s / floor_per_s
    );
    println!(
        "{:<46} {:>14.2}",
        "cost per matching rule (us)", us_per_rule
    );
    println!("{:<46} {:>14}", "register writes counted", counted);
    println!(
        "summary: events_per_s={match_per_s:.0} nomatch_events_per_s={nomatch_per_s:.0} floor_per_s={floor_per_s:.0} us_per_matching_rule={us_per_rule:.2}"
    );
    Ok(ExitCode::SUCCESS)
}
