//! The daemon subcommands: each parses its flags and runs one component until SIGINT/SIGTERM.

use crate::cli::{hostname, stop_flag, Exit, StackArgs};
use crate::security::{security, Node};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ManagerArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub cfg: crate::config::ConfigArgs,
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
    /// Heartbeats (one a second) a host may miss in a row before it is host/<name>/down.
    #[arg(long, default_value_t = manager::presence::DEFAULT_MISSED)]
    pub missed_heartbeats: u32,
    /// Most history kept under <state>/history (`reflex events`, `reflex trace`): bytes, or
    /// with a unit (`512MiB`, `2GB`). The oldest is pruned first.
    #[arg(long, default_value = "1GiB", value_parser = crate::history_cmd::parse_size)]
    pub history_max_bytes: u64,
    /// Oldest history kept (`7d`, `12h`, `30m`).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub history_max_age: std::time::Duration,
    /// Keep no history.
    #[arg(long)]
    pub no_history: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics and the live page at http://ADDR/
    /// (its token in <state>/http.token); off by default.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Clustered mode: several managers sharing registers and work through etcd.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Run as one of several managers sharing registers, membership and the partition of
    /// senders through etcd: etcd://HOST:PORT[,HOST:PORT...]. Without it: alone, on sled.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// Key prefix of this reflex cluster in etcd (one etcd can hold several).
    #[arg(long, default_value = "/reflex", requires = "cluster")]
    pub cluster_prefix: String,
    /// Seconds of the member lease: how long a dead manager keeps its streams.
    #[arg(long, default_value_t = 3, requires = "cluster")]
    pub cluster_ttl: u64,
    /// This member's id, kept across restarts (its outbox lives under it). Default:
    /// <hostname>-<port base>.
    #[arg(long, requires = "cluster")]
    pub cluster_id: Option<String>,
    /// etcd's --max-txn-ops: a group of events commits before its transaction needs more.
    #[arg(long, default_value_t = manager::clustered::DEFAULT_MAX_TXN_OPS, requires = "cluster")]
    pub cluster_max_txn_ops: usize,
}

impl ClusterArgs {
    /// The manager's cluster settings, checked; None without --cluster.
    pub fn config(
        &self,
        stack: &StackArgs,
    ) -> anyhow::Result<Option<manager::clustered::ClusterConfig>> {
        let Some(url) = &self.cluster else {
            return Ok(None);
        };
        cluster::endpoints::parse(url).map_err(|e| Exit::usage(e.to_string()))?;
        if !(1..=300).contains(&self.cluster_ttl) {
            return Err(Exit::usage("--cluster-ttl must be 1 to 300 seconds"));
        }
        if self.cluster_max_txn_ops < 16 {
            return Err(Exit::usage("--cluster-max-txn-ops must be at least 16"));
        }
        let id = self
            .cluster_id
            .clone()
            .unwrap_or_else(|| default_member_id(stack));
        cluster::check_id(&id).map_err(|e| Exit::usage(format!("--cluster-id: {e}")))?;
        Ok(Some(manager::clustered::ClusterConfig {
            url: url.clone(),
            prefix: self.cluster_prefix.clone(),
            ttl: std::time::Duration::from_secs(self.cluster_ttl),
            id,
            max_txn_ops: self.cluster_max_txn_ops,
            // Managers forward to each other as the admin (as at the control socket).
            peer_security: security(stack, Node::Client)?,
        }))
    }
}

/// Raise this process's soft open-file limit to its hard one (an unlimited hard limit taken as
/// fs.nr_open's default, 1,048,576): (soft, hard) after. The daemons and `reflex bench fleet`.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let hard = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur < hard {
        let want = libc::rlimit {
            rlim_cur: hard,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = hard;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raise the soft open-file limit to the hard one, and say how many hosts it leaves room for:
/// the control node holds one fd per host connection (the manager 4 per host: an actor's and a
/// beacon's PUSH and DEALER; the publisher 1), far past the 1,024 a soft limit often is
/// (systemd's default). See docs/fleet-10k.md.
fn raise_open_files(part: &str, fds_per_host: u64) {
    let soft = match raise_nofile() {
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!("{part}: cannot raise the open-file limit: {e}");
            return;
        }
    };
    let hosts = soft.saturating_sub(100) / fds_per_host;
    if hosts < 1_000 {
        tracing::warn!(
            limit = soft,
            hosts,
            "{part}: the open-file limit leaves room for few hosts: raise LimitNOFILE / ulimit -Hn"
        );
    } else {
        tracing::info!(limit = soft, hosts, "{part}: open-file limit");
    }
}

pub fn manager(a: ManagerArgs) -> anyhow::Result<ExitCode> {
    a.stack.ensure_state()?;
    raise_open_files("manager", 4);
    let security = security(&a.stack, Node::Control)?;
    let cluster = a.cluster.config(&a.stack)?;
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
        security,
        missed_heartbeats: a.missed_heartbeats,
        history: (!a.no_history).then_some(manager::history::Retention {
            max_bytes: a.history_max_bytes,
            max_age: a.history_max_age,
        }),
        http: a.http,
        cluster,
    };
    manager::run(cfg, stop)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct PublisherArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub cfg: crate::config::ConfigArgs,
    /// How many of the newest actions the durable log keeps.
    #[arg(long, default_value_t = 100_000)]
    pub keep: u64,
    /// Tests only: the PUB socket's send high-water mark and kernel buffer, as `MSGS,BYTES`,
    /// made small so that a stalled subscriber is dropped for.
    #[arg(long, hide = true, value_parser = parse_pair)]
    pub send_limits: Option<(i32, i32)>,
    /// Serve Prometheus metrics at http://ADDR/metrics (`127.0.0.1:4617`); off by default.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    #[command(flatten)]
    pub cluster: PublisherClusterArgs,
}

/// A publisher of a cluster announces itself in etcd, so actors can learn every publisher.
#[derive(Args, Debug, Clone)]
pub struct PublisherClusterArgs {
    /// Announce this publisher's endpoints in etcd (`<prefix>/publishers/<id>`, on a lease):
    /// etcd://HOST:PORT[,HOST:PORT...]. It still serves the manager linked to it over ipc.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// Key prefix of this reflex cluster in etcd.
    #[arg(long, default_value = "/reflex", requires = "cluster")]
    pub cluster_prefix: String,
    /// Seconds of the announcement's lease: how long a dead publisher stays announced.
    #[arg(long, default_value_t = 3, requires = "cluster")]
    pub cluster_ttl: u64,
    /// This publisher's id. Default: <hostname>-<port base>, its manager's default.
    #[arg(long, requires = "cluster")]
    pub cluster_id: Option<String>,
}

/// What a publisher announces under `<prefix>/publishers/<id>`.
#[derive(serde::Serialize)]
struct PublisherInfo<'a> {
    /// Its PUB fan-out, for actors to subscribe.
    publish: &'a str,
    /// Its replay door, for actors to catch up.
    replay: &'a str,
}

/// Announce the publisher in etcd until `stop`, joining again under a new lease whenever the
/// lease is lost (etcd away for longer than the TTL): the announcement is for actors to learn
/// the endpoints, nothing is owned by it.
fn announce_publisher(
    a: &PublisherClusterArgs,
    stack: &StackArgs,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    use std::sync::atomic::Ordering;
    let Some(url) = &a.cluster else {
        return Ok(None);
    };
    cluster::endpoints::parse(url).map_err(|e| Exit::usage(e.to_string()))?;
    if !(1..=300).contains(&a.cluster_ttl) {
        return Err(Exit::usage("--cluster-ttl must be 1 to 300 seconds"));
    }
    let id = a
        .cluster_id
        .clone()
        .unwrap_or_else(|| default_member_id(stack));
    cluster::check_id(&id).map_err(|e| Exit::usage(format!("--cluster-id: {e}")))?;
    let ep = stack.endpoints();
    let info = serde_json::to_vec(&PublisherInfo {
        publish: &ep.publish,
        replay: &ep.replay,
    })?;
    let etcd = cluster::Cluster::connect(url, &a.cluster_prefix)?;
    let ttl = std::time::Duration::from_secs(a.cluster_ttl);
    let join = move || cluster::Membership::join_under(&etcd, cluster::PUBLISHERS, &id, &info, ttl);
    // A publisher started again finds its previous life's key until that lease ends.
    let mut member = None;
    let deadline = std::time::Instant::now() + ttl * 2 + std::time::Duration::from_secs(5);
    while member.is_none() {
        match join() {
            Ok(m) => member = Some(m),
            Err(cluster::ClusterError::MemberTaken(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(publish = %ep.publish, replay = %ep.replay, "publisher announced in the cluster");
    Ok(Some(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if member.as_ref().is_some_and(|m| m.is_alive()) {
                continue;
            }
            if let Some(old) = member.take() {
                tracing::warn!("publisher's cluster lease lost: announcing it again");
                drop(old);
            }
            match join() {
                Ok(m) => member = Some(m),
                Err(e) => tracing::debug!("announcing the publisher again: {e}"),
            }
        }
        if let Some(m) = member {
            if let Err(e) = m.leave() {
                tracing::warn!("leaving the cluster: {e}");
            }
        }
    })))
}

/// `<hostname>-<port base>`, the hostname made a valid member id.
fn default_member_id(stack: &StackArgs) -> String {
    let host: String = hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("{host}-{}", stack.port_base)
}

fn parse_pair(s: &str) -> Result<(i32, i32), String> {
    let (a, b) = s.split_once(',').ok_or("expected MSGS,BYTES")?;
    let n = |x: &str| x.trim().parse::<i32>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(a)?, n(b)?))
}

pub fn publisher(a: PublisherArgs) -> anyhow::Result<ExitCode> {
    a.stack.ensure_state()?;
    raise_open_files("publisher", 1);
    let security = security(&a.stack, Node::Control)?;
    let stop = stop_flag()?;
    let announcer = announce_publisher(&a.cluster, &a.stack, stop.clone())?;
    let cfg = publisher::Config {
        endpoints: a.stack.endpoints(),
        state_dir: a.stack.state.clone(),
        max_frame: bus::MAX_FRAME,
        keep: a.keep,
        send_limits: a.send_limits,
        security,
        http: a.http,
    };
    let ran = publisher::run(cfg, &stop);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = announcer {
        let _ = t.join();
    }
    ran?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ActorArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub cfg: crate::config::ConfigArgs,
    /// This actor's name (its `host/<name>` target); defaults to the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Groups this actor belongs to (its `group/<g>` targets); repeatable.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Publisher endpoint; repeat it (or give a list in the config file) to follow every
    /// publisher of a cluster (default: one, from --addr and --port-base).
    #[arg(long = "publisher", value_name = "ENDPOINT")]
    pub publishers: Vec<String>,
    /// Manager ingest endpoint results go to (default: from --addr and --port-base); repeat
    /// it or give a comma-separated list for the managers of a cluster, tried in order.
    #[arg(long = "manager", value_name = "ENDPOINT", value_delimiter = ',')]
    pub managers: Vec<String>,
    /// Publisher replay endpoint, asked for missed actions on each connection (default: the
    /// port after each --publisher's, else from --addr and --port-base); with several
    /// publishers, one per --publisher, in the same order.
    #[arg(long = "replay", value_name = "ENDPOINT")]
    pub replays: Vec<String>,
    /// Take live actions only; never ask the publisher's log for missed ones.
    #[arg(long)]
    pub no_replay: bool,
    /// Write each graph in force as DIR/<name>.dot (graphviz) whenever it converges or changes.
    #[arg(long, value_name = "DIR")]
    pub graphviz: Option<std::path::PathBuf>,
    /// Seconds every graph must be idle and converged before `actor/converged` is reported.
    #[arg(long, default_value_t = 2.0)]
    pub converged_timeout: f64,
    /// The control node's public signing key every action must be sealed with: 64 hex
    /// characters or a file holding them (its `keys/sign.pub`). Default: the state dir's
    /// `keys/sign.pub` when there is one (the same control node, as `reflex up` has it).
    #[arg(long, value_name = "KEY|FILE")]
    pub sign_key: Option<String>,
    /// The host's policy (TOML): what this actor accepts at all. Default: the built-in
    /// strict policy (see --print-policy).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
    /// Print the effective policy and exit.
    #[arg(long)]
    pub print_policy: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (`127.0.0.1:4619`); off by default.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
}

/// The signing key an actor pins: `--sign-key`, else the state dir's `keys/sign.pub`. A secure
/// actor with neither refuses to start; an insecure one runs unverified (it warns).
fn sign_key(
    arg: Option<&str>,
    state: &std::path::Path,
    security: &bus::secure::Security,
) -> anyhow::Result<Option<bus::envelope::ManagerKey>> {
    use bus::envelope::{key::public_path, ManagerKey};
    let key = match arg {
        Some(a) => Some(ManagerKey::parse(a).map_err(|e| Exit::usage(format!("--sign-key: {e}")))?),
        None => ManagerKey::from_state(state)?,
    };
    if key.is_none() && !matches!(security, bus::secure::Security::Insecure) {
        return Err(Exit::usage(format!(
            "no signing key to verify actions with: give --sign-key KEY|FILE (the control node's {}, printed by `reflex keys show --sign`)",
            public_path(std::path::Path::new("<state>")).display()
        )));
    }
    Ok(key)
}

/// `tcp://host:N` -> `tcp://host:N+1` (the replay port sits after the publisher's).
fn next_port(endpoint: &str) -> Option<String> {
    bus::endpoints::port_plus(endpoint, 1)
}

/// The publishers an actor follows: each `--publisher` with its `--replay` (given in the same
/// order, or the port after the publisher's), or the stack's one publisher.
fn publishers(
    a: &ActorArgs,
    ep: &bus::endpoints::Endpoints,
) -> anyhow::Result<Vec<actor::Publisher>> {
    let publish = if a.publishers.is_empty() {
        vec![ep.publish.clone()]
    } else {
        a.publishers.clone()
    };
    if !a.replays.is_empty() && a.replays.len() != publish.len() {
        return Err(Exit::usage(format!(
            "{} --replay for {} publishers: give one per --publisher, in the same order",
            a.replays.len(),
            publish.len()
        )));
    }
    publish
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let replay = if a.no_replay {
                None
            } else if let Some(r) = a.replays.get(i) {
                Some(r.clone())
            } else if a.publishers.is_empty() {
                Some(ep.replay.clone())
            } else {
                Some(next_port(&p).ok_or_else(|| {
                    Exit::usage(format!(
                        "cannot derive the replay endpoint from --publisher {p}: give --replay"
                    ))
                })?)
            };
            Ok(actor::Publisher { publish: p, replay })
        })
        .collect()
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
    let security = security(&a.stack, Node::Host)?;
    let publishers = publishers(&a, &ep)?;
    let sign_key = sign_key(a.sign_key.as_deref(), &a.stack.state, &security)?;
    let cfg = actor::Config {
        publishers,
        sign_key,
        managers: crate::send::managers(&a.managers, &a.stack)?,
        name: a.name.unwrap_or_else(hostname),
        groups: a.groups,
        max_frame: bus::MAX_FRAME,
        state: Some(a.stack.state.clone()),
        graphviz: a.graphviz,
        converged_timeout: std::time::Duration::from_secs_f64(a.converged_timeout),
        security,
        policy,
        http: a.http,
    };
    match actor::run(cfg, stop) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A name or group that can never match is bad usage, not a failure at run time.
        Err(e @ actor::ActorError::Config(_)) => Err(Exit::usage(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor_args(args: &[&str]) -> ActorArgs {
        let argv = ["reflex", "actor"].iter().chain(args);
        match <crate::cli::Cli as clap::Parser>::try_parse_from(argv).map(|c| c.cmd) {
            Ok(crate::cli::Cmd::Actor(a)) => a,
            _ => panic!("not an actor command: {args:?}"),
        }
    }

    fn publishers_of(args: &[&str]) -> Result<Vec<(String, Option<String>)>, String> {
        let a = actor_args(args);
        publishers(&a, &a.stack.endpoints())
            .map(|v| v.into_iter().map(|p| (p.publish, p.replay)).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_actor_follows_each_publisher_given_with_its_replay_door() {
        let one = publishers_of(&["--port-base", "4700"]).unwrap();
        assert_eq!(
            one,
            [(
                "tcp://127.0.0.1:4701".to_string(),
                Some("tcp://127.0.0.1:4702".to_string())
            )]
        );
        let two = publishers_of(&["--publisher", "tcp://a:10", "--publisher", "tcp://b:20"]);
        assert_eq!(
            two.unwrap(),
            [
                ("tcp://a:10".into(), Some("tcp://a:11".into())),
                ("tcp://b:20".into(), Some("tcp://b:21".into()))
            ]
        );
        let given = [
            "--publisher",
            "tcp://a:10",
            "--replay",
            "tcp://a:99",
            "--publisher",
            "tcp://b:20",
            "--replay",
            "tcp://b:98",
        ];
        assert_eq!(
            publishers_of(&given).unwrap()[1].1.as_deref(),
            Some("tcp://b:98")
        );
        let off = publishers_of(&["--publisher", "tcp://a:10", "--no-replay"]).unwrap();
        assert_eq!(off[0].1, None);
        let short = [
            "--publisher",
            "tcp://a:10",
            "--publisher",
            "tcp://b:20",
            "--replay",
            "tcp://a:11",
        ];
        assert!(publishers_of(&short)
            .unwrap_err()
            .contains("one per --publisher"));
    }
}
