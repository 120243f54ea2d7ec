//! `reflex`: one binary whose subcommands start each part of the system and its tools.
//!
//! Exit codes: 0 success; 1 a runtime failure; 2 bad usage or bad input (a graph, a rule, an
//! argument); 3 a peer did not answer (no manager, no control socket).

mod apply;
mod beacon_cmd;
mod bench;
mod bench_beacons;
mod bench_bus;
mod bench_cluster;
mod bench_e2e;
mod bench_engine;
mod bench_faults;
mod bench_fleet;
mod bench_loop;
mod bench_rules;
mod bench_soak;
mod bench_util;
mod cli;
mod config;
mod daemons;
mod history_cmd;
mod hosts_cmd;
mod keys_cmd;
mod rules_cmd;
mod security;
mod send;
mod tail;
mod up;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv = match config::expand(std::env::args_os().collect(), &cli::Cli::command()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("reflex: config {e}");
            return ExitCode::from(2);
        }
    };
    let matches = cli::Cli::command().get_matches_from(argv);
    if let Some((name, sub)) = matches.subcommand() {
        if sub.try_get_one::<bool>("print_config").ok().flatten() == Some(&true) {
            let mut cmd = cli::Cli::command();
            // Built, so the global flags (the log's) are among the subcommand's.
            cmd.build();
            if let Some(c) = cmd.find_subcommand(name) {
                print!("{}", config::print(c, sub));
                return ExitCode::SUCCESS;
            }
        }
    }
    let args = match cli::Cli::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    cli::init_logging(&args.log);
    // The long-running daemons give freed memory back every 30 s (the actor does it itself,
    // after each burst): their RSS then follows what they hold, not the highest it ever was.
    if matches!(
        matches.subcommand_name(),
        Some("manager" | "publisher" | "beacon")
    ) {
        bus::trim::periodically(std::time::Duration::from_secs(30));
    }
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reflex: {e:#}");
            ExitCode::from(e.downcast_ref::<cli::Exit>().map(|x| x.code()).unwrap_or(1))
        }
    }
}

// jemalloc for every part's Rust heap: measured against glibc's malloc in the same sitting,
// the actor takes less CPU per action and less memory per kept graph (no per-chunk headers,
// size classes that pack tens of thousands of small graph objects tighter), and the bus keeps
// its events/s. Free pages go back to the kernel by themselves: a background thread purges
// what has been unused for a second, so a daemon's RSS comes back down after a burst without
// a trim (glibc's arenas, which only ZeroMQ's C++ allocations use now, still get
// `bus::trim`). Buffers of 1 MiB and more (the actor's store compaction reads its whole log)
// come from jemalloc's oversize arena, which purges at once: otherwise each compaction's few
// MB stayed resident for a second, a sawtooth in the RSS the soak samples.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (the crate builds it with the `_rjem_` prefix).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static _rjem_malloc_conf: &[u8; 87] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,oversize_threshold:1048576\0";
