//! The command line: shared options, logging, and dispatch to each subcommand.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "reflex",
    version,
    about = "Event-driven infrastructure automation: beacons sense, rules decide, actors converge."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Where a stack lives (its state dir, its port base) and how it is secured.
#[derive(Args, Clone, Debug)]
pub struct StackArgs {
    /// State directory (registers, action log, the ipc link; `keys/` holds this node's key
    /// pairs and the enrollment store).
    #[arg(long, env = "REFLEX_STATE", default_value = ".reflex")]
    pub state: PathBuf,
    /// Port base: ingest on N, publisher on N+1, replay N+2, monitor N+3, control N+4, enroll N+5.
    #[arg(long, default_value_t = bus::endpoints::DEFAULT_PORT_BASE)]
    pub port_base: u16,
    /// Address the manager and publisher bind and clients connect to.
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: String,
    /// No CURVE: plain, unauthenticated sockets that anyone who can reach them may use.
    /// Logged as a warning at every start.
    #[arg(long)]
    pub insecure: bool,
    /// The manager's public key to trust (hex, Z85, or a file holding it; `reflex keys show`
    /// prints it on the control node). Default: the state dir's `keys/manager.pub`.
    #[arg(long, value_name = "KEY")]
    pub manager_key: Option<String>,
}

impl StackArgs {
    pub fn endpoints(&self) -> bus::Endpoints {
        bus::Endpoints::new(&self.addr, self.port_base, &self.state)
    }

    /// Make the state dir, owner-only (0700): it holds the keys, the registers, the action
    /// log and the ipc link, which is how the manager and publisher trust each other. An
    /// existing one open to others is closed, and said so.
    pub fn ensure_state(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = &self.state;
        let err = |e| anyhow::anyhow!("cannot create state dir {}: {e}", dir.display());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
            tracing::warn!(
                "state dir {} was open to others (mode {mode:o}): made it 0700",
                dir.display()
            );
        }
        Ok(())
    }
}

/// `reflex keys ...`: through a running manager's control socket, else offline on the state
/// dir (see `keys_cmd.rs`).
#[derive(Subcommand)]
pub enum KeysCmd {
    /// Every enrolled key: name, state, role, fingerprint, groups.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Accept a pending (or rejected) key with its groups; for an accepted one, set its groups.
    Accept {
        /// The host's name, as `keys list` shows it.
        name: String,
        /// A group the host is in (repeat for more); a host's groups come only from here.
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Reject a pending or accepted key: it is refused until revoked.
    Reject {
        /// The host's name.
        name: String,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Forget a key whatever its state: the host has to enroll again.
    Revoke {
        /// The host's name.
        name: String,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Print a public key of this node as hex, made if missing: by default the manager's, what
    /// hosts take as `--manager-key`.
    Show {
        /// Whose key: manager, host or admin.
        #[arg(long, default_value = "manager")]
        role: bus::keys::Role,
        /// The control node's action signing key instead (what hosts pin with `--sign-key`).
        #[arg(long, conflicts_with = "role")]
        sign: bool,
        #[command(flatten)]
        stack: StackArgs,
    },
}

#[derive(Subcommand)]
pub enum Cmd {
    /// The whole stack on this machine: publisher, manager, an actor and the beacons.
    Up(crate::up::UpArgs),
    /// Run the manager: event ingest, rules, registers.
    Manager(crate::daemons::ManagerArgs),
    /// Run the publisher: numbers, logs and broadcasts actions.
    Publisher(crate::daemons::PublisherArgs),
    /// Run an actor: executes actions for this host and its groups.
    Actor(crate::daemons::ActorArgs),
    /// Run beacons: from a config file (--config), the shipped defaults (--defaults), or the
    /// load beacon alone.
    Beacon(crate::beacon_cmd::BeaconArgs),
    /// Send one event to the manager.
    Send(crate::send::SendArgs),
    /// Print events, rule hits and actions as they flow through the manager.
    Tail(crate::tail::TailArgs),
    /// Converge a graph file on this machine, standalone.
    Apply(crate::apply::ApplyArgs),
    /// Check rules, or test one against a sample event.
    #[command(subcommand)]
    Rules(crate::rules_cmd::RulesCmd),
    /// Read and write registers (through the running manager, or the state dir).
    #[command(subcommand)]
    Registers(crate::rules_cmd::RegistersOp),
    /// Enrolled keys (list, accept, reject, revoke; through the running manager, or the state
    /// dir) and this node's public key (show).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Ask a running manager for its counters.
    Status(crate::send::StatusArgs),
    /// Events from the manager's history (its state dir), newest last.
    Events(crate::history_cmd::EventsArgs),
    /// What became of an event (or an action): the rules it hit, the registers they wrote, the
    /// actions, each host's results and repairs, and the events emitted from it, recursively.
    Trace(crate::history_cmd::TraceArgs),
    /// The fleet at a glance: each enrolled host, its groups, up or down and since when, its
    /// last event, graphs in force, converged or not, failures in the last hour (from the
    /// manager's state dir).
    Hosts(crate::hosts_cmd::HostsArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
}

/// Print rows under a header, each column as wide as its widest cell.
pub fn print_table<H: AsRef<str>>(header: &[H], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| h.as_ref().to_string()).collect();
    let mut width = vec![0usize; header.len()];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit {
            code: 2,
            message: message.into(),
        })
    }

    pub fn unreachable(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit {
            code: 3,
            message: message.into(),
        })
    }

    pub fn code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// A flag set by SIGINT or SIGTERM.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// This machine's host name, usable as a topic segment.
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c.is_whitespace() {
                '-'
            } else {
                c
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Up(a) => crate::up::run(a, &cli.log),
        Cmd::Manager(a) => crate::daemons::manager(a),
        Cmd::Publisher(a) => crate::daemons::publisher(a),
        Cmd::Actor(a) => crate::daemons::actor(a),
        Cmd::Beacon(a) => crate::beacon_cmd::beacon(a),
        Cmd::Send(a) => crate::send::send(a),
        Cmd::Tail(a) => crate::tail::run(a),
        Cmd::Apply(a) => crate::apply::run(a),
        Cmd::Status(a) => crate::send::status(a),
        Cmd::Events(a) => crate::history_cmd::events(a),
        Cmd::Trace(a) => crate::history_cmd::trace(a),
        Cmd::Hosts(a) => crate::hosts_cmd::run(a),
        Cmd::Rules(c) => crate::rules_cmd::rules(c),
        Cmd::Registers(a) => crate::rules_cmd::registers(a),
        Cmd::Keys(k) => crate::keys_cmd::run(k),
        Cmd::Bench(b) => crate::bench::run(b),
    }
}
