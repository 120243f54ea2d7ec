//! `reflex up`: the whole stack on this machine, as child processes of one supervisor.
//!
//! It starts the publisher, the manager, one actor and the beacons (each is this same binary
//! with another subcommand), restarts a child that dies (with back-off), prints one line once an
//! actor's subscription has reached the publisher, and on SIGINT/SIGTERM stops every child and
//! exits 0. Children get SIGTERM if the supervisor itself dies, so none is left behind.

#[path = "up_cluster.rs"]
mod clustered;

use crate::cli::{hostname, stop_flag, LogArgs, StackArgs};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Folder of `*.rhai` rules. When the default `rules` folder does not exist, the shipped
    /// rules are written to `<state>/rules` and used.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// The actor's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The actor's groups; repeatable.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Beacon config (TOML). Default: `./beacons.toml` when it exists, else the shipped
    /// default config (`reflex beacon --print-defaults` shows it).
    #[arg(long)]
    pub beacons: Option<PathBuf>,
    /// Seconds between samples for every beacon, instead of each one's own interval.
    #[arg(long)]
    pub beacon_interval: Option<f64>,
    /// Serve no HTTP. By default the manager serves `/metrics` and the live page on
    /// 127.0.0.1:<port base + 7>, the publisher and the actor their `/metrics` on + 8 and
    /// + 9: on loopback only, whatever --addr says.
    #[arg(long)]
    pub no_http: bool,
    /// Start a local etcd and N manager+publisher pairs sharing it (the clustered mode, on
    /// port bases --port-base, +10, +20...), instead of one manager, publisher, actor and
    /// beacons. Needs Debian's etcd-server.
    #[arg(long, value_name = "N")]
    pub cluster: Option<usize>,
}

/// The rules shipped with reflex (every `rules/*.rhai`, embedded by build.rs), so `reflex up`
/// works from any folder.
pub const SHIPPED_RULES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/shipped_rules.rs"));

pub(crate) fn rules_dir(a: &UpArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &a.rules {
        if !dir.is_dir() {
            return Err(crate::cli::Exit::usage(format!(
                "rules folder {} does not exist",
                dir.display()
            )));
        }
        return Ok(dir.clone());
    }
    let default = Path::new("rules");
    if default.is_dir() {
        return Ok(default.to_path_buf());
    }
    let dir = a.stack.state.join("rules");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in SHIPPED_RULES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)?;
        }
    }
    tracing::info!(
        "no ./rules folder: using the shipped rules in {}",
        dir.display()
    );
    Ok(dir)
}

/// One supervised child.
pub(crate) struct Part {
    pub(crate) name: String,
    /// What to run; None: this binary.
    pub(crate) program: Option<PathBuf>,
    pub(crate) args: Vec<String>,
    pub(crate) child: Option<Child>,
    pub(crate) restart_at: Option<Instant>,
    pub(crate) backoff: Duration,
    pub(crate) started: Instant,
}

impl Part {
    pub(crate) fn spawn(&mut self, exe: &Path) {
        let mut cmd = Command::new(self.program.as_deref().unwrap_or(exe));
        cmd.args(&self.args);
        // SAFETY: prctl is async-signal-safe and touches only this child's own settings.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // An own process group: a terminal's Ctrl-C reaches only the supervisor, which
                // then stops the children in order instead of racing them.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(c) => {
                tracing::info!(part = %self.name, pid = c.id(), "started");
                self.child = Some(c);
                self.started = Instant::now();
            }
            Err(e) => {
                tracing::error!(part = %self.name, "cannot start: {e}");
                self.schedule_restart();
            }
        }
    }

    fn schedule_restart(&mut self) {
        // A child that ran for a while gets a fresh back-off; one that keeps dying waits longer.
        if self.started.elapsed() > Duration::from_secs(60) {
            self.backoff = Duration::from_millis(500);
        }
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
    }

    /// Restart the child once it died and its back-off is over.
    pub(crate) fn supervise(&mut self, exe: &Path, stop: &AtomicBool) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                self.schedule_restart();
                tracing::error!(part = %self.name, %status, "died; restarting in {:?}", self.restart_at.map(|t| t.saturating_duration_since(Instant::now())).unwrap_or_default());
            }
        } else if self.restart_at.is_some_and(|t| Instant::now() >= t)
            && !stop.load(Ordering::Relaxed)
        {
            self.restart_at = None;
            self.spawn(exe);
        }
    }

    pub(crate) fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(part = %self.name, "did not stop within 5s; killing it");
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Print one line once the actor announces itself on the manager's monitor stream.
/// Returns once the monitor subscription is in place (or after 10 s), so the actor, started
/// after it, cannot announce itself before anyone listens.
fn announce_when_ready(
    monitor: String,
    actor: String,
    stop: std::sync::Arc<AtomicBool>,
    summary: String,
    sec: bus::secure::Security,
) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((sub, watch)) = bus::secure::connect_watched(zmq::SUB, &monitor, &sec) else {
            return;
        };
        if sub.set_subscribe(b"event/actor/up").is_err() {
            return;
        }
        // The manager binds the monitor: this waits for it to be up, and for our
        // subscription to have travelled.
        while !stop.load(Ordering::Relaxed) && !watch.wait(Duration::from_millis(200)) {}
        std::thread::sleep(Duration::from_millis(100));
        let _ = ready_tx.send(());
        while !stop.load(Ordering::Relaxed) {
            watch.drain();
            let mut items = [sub.as_poll_item(zmq::POLLIN)];
            if bus::sockets::poll(&mut items, 200).is_err() || !items[0].is_readable() {
                continue;
            }
            while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
                let Some(ev) = parts.get(1).and_then(|p| bus::decode::<bus::Event>(p).ok()) else {
                    continue;
                };
                if ev.host == actor {
                    println!("reflex is up: {summary}");
                    return;
                }
            }
        }
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(10));
}

/// The actor's own arguments: its name, groups and policy (the operator's copy in the state
/// dir: written once from the shipped default, then theirs to edit).
pub(crate) fn actor_args(a: &UpArgs, name: &str) -> anyhow::Result<Vec<String>> {
    let policy = a.stack.state.join("policy.toml");
    if !policy.exists() {
        std::fs::write(&policy, actor::UP_POLICY)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", policy.display()))?;
    }
    let mut v = vec![
        "--name".to_string(),
        name.to_string(),
        "--policy".into(),
        policy.display().to_string(),
    ];
    for g in &a.groups {
        v.extend(["--group".to_string(), g.clone()]);
    }
    Ok(v)
}

/// The beacon's own arguments: its host, its config (`--beacons`, else `./beacons.toml`, else
/// the shipped defaults; checked here, so a bad file stops `up` at once, naming its line,
/// instead of a beacon child that keeps dying) and its interval.
pub(crate) fn beacon_args(a: &UpArgs, name: &str) -> anyhow::Result<Vec<String>> {
    let mut v = vec!["--host".to_string(), name.to_string()];
    let beacon_config = a.beacons.clone().or_else(|| {
        let local = PathBuf::from("beacons.toml");
        local.is_file().then_some(local)
    });
    match &beacon_config {
        Some(path) => {
            beacons::Config::load(path).map_err(|e| crate::cli::Exit::usage(e.to_string()))?;
            v.extend(["--config".to_string(), path.display().to_string()]);
        }
        None => v.push("--defaults".to_string()),
    }
    if let Some(secs) = a.beacon_interval {
        if !(secs.is_finite() && secs > 0.0) {
            return Err(crate::cli::Exit::usage(format!(
                "--beacon-interval must be a positive number of seconds, not {secs}"
            )));
        }
        v.extend(["--interval".to_string(), secs.to_string()]);
    }
    Ok(v)
}

pub fn run(a: UpArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = a.cluster {
        return clustered::run(a, log, n);
    }
    a.stack.ensure_state()?;
    let rules = rules_dir(&a)?;
    let exe = std::env::current_exe()?;
    let name = a.name.clone().unwrap_or_else(hostname);
    // The control node's security (refusing a build without CURVE, warning on --insecure),
    // and its own host enrolled before the parts start, so its actor and beacons are in at
    // once and the admin key of the state dir drives send, tail, registers, keys and status.
    let security = crate::security::security(&a.stack, crate::security::Node::Control)?;
    if security.is_secure() {
        crate::security::enroll_local_host(&a.stack.state, &name, &a.groups)?;
    }
    // The signing key exists before the actor starts, which pins it from the state dir.
    bus::envelope::SignKey::load_or_create(&a.stack.state)?;
    // Insecure was said (and warned about) once above.
    let admin = if security.is_secure() {
        crate::security::security(&a.stack, crate::security::Node::Client)?
    } else {
        bus::secure::Security::Insecure
    };
    let stop = stop_flag()?;
    let common = |sub: &str| -> Vec<String> {
        let mut v = clustered::child_args(sub, &a.stack.state, &a, log);
        v.extend(["--port-base".into(), a.stack.port_base.to_string()]);
        v
    };
    let mut actor = common("actor");
    actor.extend(actor_args(&a, &name)?);
    let mut manager = common("manager");
    manager.extend(["--rules".to_string(), rules.display().to_string()]);
    let mut publisher = common("publisher");
    let http = |offset| bus::endpoints::http_local(a.stack.port_base, offset);
    let mut page = String::new();
    if !a.no_http {
        use bus::endpoints::{HTTP_ACTOR, HTTP_MANAGER, HTTP_PUBLISHER};
        for (args, offset) in [
            (&mut manager, HTTP_MANAGER),
            (&mut publisher, HTTP_PUBLISHER),
            (&mut actor, HTTP_ACTOR),
        ] {
            args.extend(["--http".to_string(), http(offset)]);
        }
        // Made here, before the manager (which reads the same file), to print the page's address.
        let token = manager::page::token(&a.stack.state).map_err(|e| {
            anyhow::anyhow!(
                "cannot make the page's token in {}: {e}",
                a.stack.state.display()
            )
        })?;
        page = format!(
            " | page http://{}/?token={token} | metrics http://{}/metrics (publisher {}, actor {})",
            http(HTTP_MANAGER),
            http(HTTP_MANAGER),
            http(HTTP_PUBLISHER),
            http(HTTP_ACTOR)
        );
    }
    let mut beacon = common("beacon");
    beacon.extend(beacon_args(&a, &name)?);
    let part = |name: &str, args| Part {
        name: name.to_string(),
        program: None,
        args,
        child: None,
        restart_at: None,
        backoff: Duration::from_millis(500),
        started: Instant::now(),
    };
    let mut parts = [
        part("publisher", publisher),
        part("manager", manager),
        part("actor", actor),
        part("beacon", beacon),
    ];
    let ep = a.stack.endpoints();
    let summary = format!(
        "{} | ingest {} | publisher {} | monitor {} | state {} | rules {} | actor {}{page}",
        crate::security::describe(&security),
        ep.ingest,
        ep.publish,
        ep.monitor,
        a.stack.state.display(),
        rules.display(),
        name
    );
    // Publisher and manager first; the actor and the beacons once the manager listens.
    for p in parts.iter_mut().take(2) {
        p.spawn(&exe);
    }
    announce_when_ready(ep.monitor.clone(), name, stop.clone(), summary, admin);
    for p in parts.iter_mut().skip(2) {
        p.spawn(&exe);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        for p in parts.iter_mut() {
            p.supervise(&exe, &stop);
        }
    }
    tracing::info!("stopping");
    // Producers first, the publisher last, so nothing in flight is cut off early.
    for p in parts.iter_mut().rev() {
        p.stop();
    }
    Ok(ExitCode::SUCCESS)
}
