//! `reflex bench`: measurements, never timed assertions.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Events through a real manager and publisher, against a raw ZeroMQ floor.
    Bus(crate::bench_bus::BusArgs),
    /// The rule engine: 50 rules, 1 matching vs none, against a raw ZeroMQ floor.
    Rules(crate::bench_rules::RulesArgs),
    /// 1, 2 and 3 clustered managers on a local etcd beside one on sled: events/s, etcd writes
    /// per event, etcd's write rate, and the model they feed.
    Cluster(crate::bench_cluster::ClusterBenchArgs),
    /// The beacons' CPU and memory with the default config, and the emitter's rate.
    Beacons(crate::bench_beacons::BeaconsArgs),
    /// The resource-graph engine: 100k noops wide and deep, 10k files, a 10k swap, drift repair.
    Engine(crate::bench_engine::EngineArgs),
    /// The whole loop to a file on disk: latency, applied/s, actor CPU and memory per graph.
    E2e(crate::bench_e2e::E2eArgs),
    /// Delivery under kill -9: each part killed mid-stream; lost, applied twice, catch-up time.
    Faults(crate::bench_faults::FaultsArgs),
    /// A steady paced stream through the whole loop for M minutes: each part's RSS and open
    /// fds sampled, flat after warm-up or not; lost events.
    Soak(crate::bench_soak::SoakArgs),
    /// Many simulated hosts (one process, many sockets) on a real control node, in steps:
    /// memory, fds and CPU per connected host, heartbeat traffic, fan-out to all, and the
    /// reconnect storm after the manager is killed.
    Fleet(crate::bench_fleet::FleetArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Bus(a) => crate::bench_bus::run(a),
        BenchCmd::Rules(a) => crate::bench_rules::run(a),
        BenchCmd::Cluster(a) => crate::bench_cluster::run(a),
        BenchCmd::Beacons(a) => crate::bench_beacons::run(a),
        BenchCmd::Engine(a) => crate::bench_engine::run(a),
        BenchCmd::Faults(a) => crate::bench_faults::run(a),
        BenchCmd::E2e(a) => crate::bench_e2e::run(a),
        BenchCmd::Soak(a) => crate::bench_soak::run(a),
        BenchCmd::Fleet(a) => crate::bench_fleet::run(a),
    }
}
