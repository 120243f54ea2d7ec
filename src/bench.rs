//! `reflex bench`: measurements, never timed assertions.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Events through a real manager and publisher, against a raw ZeroMQ floor.
    Bus(crate::bench_bus::BusArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Bus(a) => crate::bench_bus::run(a),
    }
}
