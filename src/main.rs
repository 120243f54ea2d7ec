//! `reflex`: one binary whose subcommands start each part of the system and its tools.
//!
//! Exit codes: 0 success; 1 a runtime failure; 2 bad usage or bad input (a graph, a rule, an
//! argument); 3 a peer did not answer (no manager, no control socket).

mod apply;
mod beacon_cmd;
mod bench;
mod bench_beacons;
mod bench_bus;
mod bench_e2e;
mod bench_engine;
mod bench_faults;
mod bench_loop;
mod bench_rules;
mod bench_soak;
mod bench_util;
mod cli;
mod daemons;
mod keys_cmd;
mod rules_cmd;
mod security;
mod send;
mod tail;
mod up;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args.log);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reflex: {e:#}");
            ExitCode::from(e.downcast_ref::<cli::Exit>().map(|x| x.code()).unwrap_or(1))
        }
    }
}
