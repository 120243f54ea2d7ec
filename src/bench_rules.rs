//! `reflex bench rules`: the rule engine's cost. A real manager with 50 rules loaded, one of
//! which matches the bench events and writes a register, takes N events of ~200 bytes; then N
//! events no rule matches (the index must make those cost nothing). Both against a raw ZeroMQ
//! floor measured in the same run.

use crate::bench_util::{floor, padded_frames, BenchStack};
use crate::cli::Exit;
use clap::Args;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

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

pub fn run(a: RulesArgs) -> anyhow::Result<ExitCode> {
    if a.events == 0 {
        return Err(Exit::usage("--events must be at least 1"));
    }
    let stack = BenchStack::start(write_rules)?;
    let ep = &stack.endpoints;
    let loaded = crate::bench_util::stats(&ep.control, &stack.security)?["rules"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    if loaded != RULES {
        return Err(anyhow::anyhow!(
            "the bench manager loaded {loaded} rules, not {RULES}"
        ));
    }

    let matching = padded_frames("bench/event", a.hosts, EVENT_BYTES);
    let nomatch = padded_frames("bench/nomatch", a.hosts, EVENT_BYTES);
    let size = matching[0].len();
    eprintln!(
        "floor: raw PUSH->PULL, {} messages of {size} bytes...",
        a.events
    );
    let floor_per_s = floor(a.events, size)?;
    let push = bus::secure::connect(zmq::PUSH, &ep.ingest, &stack.security)?;
    eprintln!(
        "manager, 1 of {RULES} rules matching: {} events...",
        a.events
    );
    let (match_per_s, _) = stack.push_through(&push, &matching, a.events)?;
    eprintln!("manager, no rule matching: {} events...", a.events);
    let (nomatch_per_s, _) = stack.push_through(&push, &nomatch, a.events)?;
    let us_per_rule = (1e6 / match_per_s - 1e6 / nomatch_per_s).max(0.0);
    let counted: u64 = (0..a.hosts)
        .filter_map(|h| {
            crate::send::control_request(
                &ep.control,
                &json!({"cmd": "registers", "op": "get", "key": format!("bench/host-{h:03}")}),
                Duration::from_secs(5),
                &stack.security,
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
