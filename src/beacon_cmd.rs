//! `reflex beacon`: run beacons from a config file, or the single load beacon from flags.

use crate::cli::{hostname, stop_flag, Exit, StackArgs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BeaconArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Beacon config (TOML, `[[beacon]]` tables). Without it, only the load beacon runs,
    /// sending every sample.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run the shipped default config (the one `reflex up` uses).
    #[arg(long, conflicts_with = "config")]
    pub defaults: bool,
    /// Seconds between samples: the load beacon's (default 5), or, with a config, every
    /// beacon's instead of its own.
    #[arg(long)]
    pub interval: Option<f64>,
    /// Host name events carry (default: the config's `host`, else this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Manager ingest endpoint (default: from --addr and --port-base). Several (repeated,
    /// comma-separated, or `to = [...]` in the config file) for the managers of one cluster:
    /// the first is used until it falls silent, then the next, and what was not acknowledged
    /// (the spool's too) is sent there again. The key is enrolled at the first that answers.
    #[arg(long, value_delimiter = ',')]
    pub to: Vec<String>,
    /// Check the config, list its beacons and exit (0 when it is valid, 2 when not).
    #[arg(long)]
    pub check: bool,
    /// Print the shipped default config and exit.
    #[arg(long)]
    pub print_defaults: bool,
    /// Print the settings in force (file, flags, environment and defaults) and the beacons as
    /// one config file that reads back to the same run, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Keep the events the manager has not acknowledged in this spool directory (default: the
    /// config's `spool`, else `<state>/spool/beacon-<host>` when the state dir exists), so a
    /// beacon restarted while its manager is down still sends them once it is back.
    #[arg(long, value_name = "PATH")]
    pub spool: Option<PathBuf>,
    /// Hold unacknowledged events in memory only (lost when the beacon stops).
    #[arg(long, conflicts_with = "spool")]
    pub no_spool: bool,
}

/// What runs without a config: the single load beacon, every sample, as before configs
/// existed.
pub const FLAGS_ONLY: &str = "[[beacon]]\nkind = \"load\"\nmode = \"every\"\ninterval = \"5s\"\n";

/// Where the beacon's spool is, if it has one.
fn spool_path(a: &BeaconArgs, cfg: &beacons::Config, host: &str) -> Option<PathBuf> {
    if a.no_spool {
        return None;
    }
    if let Some(p) = a.spool.clone().or(cfg.spool.clone()) {
        return Some(p);
    }
    // Only a state dir that is there: a beacon run by hand in any folder makes none.
    a.stack.state.is_dir().then(|| {
        let name: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        a.stack.state.join("spool").join(format!("beacon-{name}"))
    })
}

/// The config the flags ask for.
fn config(a: &BeaconArgs) -> anyhow::Result<beacons::Config> {
    let mut cfg = match (&a.config, a.defaults) {
        (Some(path), _) => {
            // The file's own settings of `reflex beacon` (`addr`, `state`...) became flags
            // before clap ran (crate::config); the beacons crate leaves them be.
            let outside = crate::config::file_settings("beacon");
            let outside: Vec<&str> = outside.iter().map(String::as_str).collect();
            beacons::Config::load_beside(path, &outside).map_err(|e| Exit::usage(e.to_string()))?
        }
        (None, true) => beacons::Config::parse(beacons::DEFAULT_CONFIG, "<shipped default>")
            .map_err(|e| Exit::usage(e.to_string()))?,
        (None, false) => {
            let mut cfg = beacons::Config::parse(FLAGS_ONLY, "<flags>")
                .map_err(|e| Exit::usage(e.to_string()))?;
            cfg.host = None;
            cfg
        }
    };
    if let Some(secs) = a.interval {
        if !(secs.is_finite() && secs > 0.0) {
            return Err(Exit::usage(format!(
                "--interval must be a positive number of seconds, not {secs}"
            )));
        }
        cfg.override_interval(Duration::from_secs_f64(secs));
    }
    Ok(cfg)
}

pub fn beacon(a: BeaconArgs) -> anyhow::Result<ExitCode> {
    if a.print_defaults {
        print!("{}", beacons::DEFAULT_CONFIG);
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = config(&a)?;
    if a.check {
        for s in &cfg.beacons {
            let mode = match &s.gate.field {
                Some(f) => format!("mode {} on {f}", s.gate.mode.as_str()),
                None => "sends what happens".to_string(),
            };
            println!(
                "line {:>3}: {:<9} every {:>6.1}s  {mode}",
                s.line,
                s.beacon.kind(),
                s.interval.as_secs_f64(),
            );
        }
        println!("ok: {} beacons", cfg.beacons.len());
        return Ok(ExitCode::SUCCESS);
    }
    let security = crate::security::security(&a.stack, crate::security::Node::Host)?;
    let stop = stop_flag()?;
    let host = a.host.clone().or(cfg.host.clone()).unwrap_or_else(hostname);
    let managers = crate::send::managers(&a.to, &a.stack)?;
    let to = managers.join(",");
    let spool = spool_path(&a, &cfg, &host);
    // A beacon started by hand on a new host enrolls its (the host's) key like the actor,
    // before it connects. A spool is made only after that, so one that is there means this
    // key was accepted before: with no manager answering (down), sample at once into it
    // rather than wait for the manager to come back.
    let doors: Vec<String> = managers
        .iter()
        .filter_map(|m| bus::endpoints::enroll_for(m))
        .collect();
    if security.is_secure() && !doors.is_empty() {
        let resumed = spool.as_ref().is_some_and(|p| p.is_dir())
            && doors.iter().all(|door| {
                matches!(
                    bus::enroll::ask(door, &security, &host, Duration::from_secs(1)),
                    Err(bus::enroll::AskError::Timeout(_))
                )
            });
        if resumed {
            tracing::warn!(
                "no manager answers at {}: sampling into the spool of the beacon that ran here before",
                doors.join(",")
            );
        } else if !bus::enroll::wait_until_accepted_at(&doors, &security, &host, &stop) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut sender = bus::sender::SenderConfig::with_managers(&managers, &security);
    sender.spool = spool.clone();
    let emitter = Arc::new(beacons::Emitter::with_config(sender, &host)?);
    let kinds: Vec<&str> = cfg.beacons.iter().map(|s| s.beacon.kind()).collect();
    let spool_shown = spool
        .as_ref()
        .map_or("none (memory only)".to_string(), |p| {
            p.display().to_string()
        });
    tracing::info!(to = %to, host = %host, beacons = %kinds.join(","), spool = %spool_shown, "beacons up");
    let running = beacons::run(cfg, emitter.clone());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    running.stop(Duration::from_secs(3));
    tracing::info!(
        sent = emitter.sent(),
        acked = emitter.acked(),
        dropped = emitter.dropped(),
        "beacons stopped"
    );
    Ok(ExitCode::SUCCESS)
}
