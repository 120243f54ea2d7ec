//! The daemon subcommands: each parses its flags and runs one component until SIGINT/SIGTERM.

use crate::cli::{hostname, stop_flag, StackArgs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ManagerArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Folder of `*.rhai` rules.
    #[arg(long, default_value = "rules")]
    pub rules: PathBuf,
    /// Largest event frame accepted, in bytes.
    #[arg(long, default_value_t = bus::MAX_FRAME)]
    pub max_frame: usize,
    /// Rhai operations one rule call may take before it is cut off.
    #[arg(long, default_value_t = 200_000)]
    pub max_operations: u64,
}

pub fn manager(a: ManagerArgs) -> anyhow::Result<ExitCode> {
    a.stack.ensure_state()?;
    let stop = stop_flag()?;
    let cfg = manager::Config {
        endpoints: a.stack.endpoints(),
        state_dir: a.stack.state.clone(),
        rules_dir: a.rules,
        max_frame: a.max_frame,
        limits: manager::rules::Limits {
            max_operations: a.max_operations,
            ..Default::default()
        },
    };
    manager::run(cfg, stop)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct PublisherArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// How many of the newest actions the durable log keeps.
    #[arg(long, default_value_t = 100_000)]
    pub keep: u64,
}

pub fn publisher(a: PublisherArgs) -> anyhow::Result<ExitCode> {
    a.stack.ensure_state()?;
    let stop = stop_flag()?;
    let cfg = publisher::Config {
        endpoints: a.stack.endpoints(),
        state_dir: a.stack.state.clone(),
        max_frame: bus::MAX_FRAME,
        keep: a.keep,
    };
    publisher::run(cfg, &stop)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ActorArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// This actor's name (its `host/<name>` target); defaults to the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Groups this actor belongs to (its `group/<g>` targets); repeatable.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Publisher endpoint (default: from --addr and --port-base).
    #[arg(long)]
    pub publisher: Option<String>,
    /// Manager ingest endpoint results go to (default: from --addr and --port-base).
    #[arg(long)]
    pub manager: Option<String>,
}

pub fn actor(a: ActorArgs) -> anyhow::Result<ExitCode> {
    let ep = a.stack.endpoints();
    let stop = stop_flag()?;
    let cfg = actor::Config {
        publish: a.publisher.unwrap_or(ep.publish),
        ingest: a.manager.unwrap_or(ep.ingest),
        name: a.name.unwrap_or_else(hostname),
        groups: a.groups,
        max_frame: bus::MAX_FRAME,
    };
    actor::run(cfg, stop)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct BeaconArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// Host name events carry (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Manager ingest endpoint (default: from --addr and --port-base).
    #[arg(long)]
    pub to: Option<String>,
}

pub fn beacon(a: BeaconArgs) -> anyhow::Result<ExitCode> {
    if !(a.interval.is_finite() && a.interval > 0.0) {
        return Err(crate::cli::Exit::usage(format!(
            "--interval must be a positive number of seconds, not {}",
            a.interval
        )));
    }
    let stop = stop_flag()?;
    let to = a.to.unwrap_or(a.stack.endpoints().ingest);
    let emitter = beacons::Emitter::connect(&to, &a.host.unwrap_or_else(hostname))?;
    tracing::info!(to = %to, interval = a.interval, "load beacon up");
    let mut load = beacons::kinds::load::Load::new();
    beacons::run(
        &mut load,
        &emitter,
        Duration::from_secs_f64(a.interval),
        &stop,
    );
    Ok(ExitCode::SUCCESS)
}
