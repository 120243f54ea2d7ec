//! `reflex bench`: measurements, never timed assertions.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Events through a real manager and publisher, against a raw ZeroMQ floor.
    Bus(crate::bench_bus::BusArgs),
    /// The beacons' CPU and memory with the default config, and the emitter's rate.
    Beacons(crate::bench_beacons::BeaconsArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Bus(a) => crate::bench_bus::run(a),
        BenchCmd::Beacons(a) => crate::bench_beacons::run(a),
    }
}
