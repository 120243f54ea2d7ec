//! The daemon subcommands: each parses its flags and runs one component until SIGINT/SIGTERM.

use crate::cli::{hostname, stop_flag, Exit, StackArgs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Load the rules once at start; do not watch the folder for changes.
    #[arg(long)]
    pub no_watch: bool,
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
        host: hostname(),
        watch_rules: !a.no_watch,
        security: bus::secure::Security::Insecure,
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
        security: bus::secure::Security::Insecure,
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
    /// Publisher replay endpoint, asked for missed actions on each connection (default: the
    /// port after --publisher's, else from --addr and --port-base).
    #[arg(long)]
    pub replay: Option<String>,
    /// Take live actions only; never ask the publisher's log for missed ones.
    #[arg(long)]
    pub no_replay: bool,
    /// Write each graph in force as DIR/<name>.dot (graphviz) whenever it converges or changes.
    #[arg(long, value_name = "DIR")]
    pub graphviz: Option<std::path::PathBuf>,
    /// Seconds every graph must be idle and converged before `actor/converged` is reported.
    #[arg(long, default_value_t = 2.0)]
    pub converged_timeout: f64,
    /// The host's policy (TOML): what this actor accepts at all. Default: the built-in
    /// strict policy (see --print-policy).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
    /// Print the effective policy and exit.
    #[arg(long)]
    pub print_policy: bool,
}

/// `tcp://host:N` -> `tcp://host:N+1` (the replay port sits after the publisher's).
fn next_port(endpoint: &str) -> Option<String> {
    let (head, port) = endpoint.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{head}:{}", port.checked_add(1)?))
}

pub fn actor(a: ActorArgs) -> anyhow::Result<ExitCode> {
    // A bad policy file stops the actor at start, naming its line and field.
    let policy = match &a.policy {
        Some(path) => actor::Policy::load(path).map_err(|e| Exit::usage(e.to_string()))?,
        None => actor::Policy::strict(),
    };
    if a.print_policy {
        print!("# {}\n{}", policy.source_name(), policy.text());
        return Ok(ExitCode::SUCCESS);
    }
    let ep = a.stack.endpoints();
    let stop = stop_flag()?;
    if !(a.converged_timeout.is_finite() && (0.0..=86400.0).contains(&a.converged_timeout)) {
        return Err(crate::cli::Exit::usage(
            "--converged-timeout must be a number of seconds between 0 and 86400",
        ));
    }
    a.stack.ensure_state()?;
    let replay = match (a.no_replay, a.replay, &a.publisher) {
        (true, _, _) => None,
        (false, Some(r), _) => Some(r),
        (false, None, Some(p)) => Some(next_port(p).ok_or_else(|| {
            crate::cli::Exit::usage(format!(
                "cannot derive the replay endpoint from --publisher {p}: give --replay"
            ))
        })?),
        (false, None, None) => Some(ep.replay.clone()),
    };
    let cfg = actor::Config {
        replay,
        publish: a.publisher.unwrap_or(ep.publish),
        ingest: a.manager.unwrap_or(ep.ingest),
        name: a.name.unwrap_or_else(hostname),
        groups: a.groups,
        max_frame: bus::MAX_FRAME,
        state: Some(a.stack.state.clone()),
        graphviz: a.graphviz,
        converged_timeout: std::time::Duration::from_secs_f64(a.converged_timeout),
        security: bus::secure::Security::Insecure,
        policy,
    };
    match actor::run(cfg, stop) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A name or group that can never match is bad usage, not a failure at run time.
        Err(e @ actor::ActorError::Config(_)) => Err(Exit::usage(e.to_string())),
        Err(e) => Err(e.into()),
    }
}
