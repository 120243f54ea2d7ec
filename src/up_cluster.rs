//! `reflex up --cluster N`: the clustered mode on this machine in one command.
//!
//! It starts a local etcd (Debian's `etcd-server`; a clear message naming the package when the
//! `etcd` binary is missing) with its data in `<state>/etcd`, on two free loopback ports (kept in
//! `<state>/etcd/ports` and used again while they are free, so the registers survive a restart
//! of `up`), with `--max-txn-ops` [`MAX_TXN_OPS`] so the managers' groups can be large; then N
//! manager+publisher pairs, pair `i` in `<state>/node<i>` on port base `--port-base + 10·(i-1)`,
//! all sharing the state dir's `keys/` (one trust domain: one manager key, one admin key, one
//! signing key). Each one's addresses are printed once every manager has joined. Then, as in
//! `reflex up`, this host's actor, following every publisher and reporting to every manager
//! (tried in order), and its beacons, sending to every manager likewise, both from the state
//! dir itself. Every child is supervised as in `reflex up` (restarted with back-off, stopped
//! on Ctrl-C: beacon and actor first, then managers, publishers, etcd last; they die with
//! `up`).

use super::{Part, UpArgs};
use crate::cli::{stop_flag, LogArgs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// etcd's `--max-txn-ops` for the local etcd (its default, 128, makes groups small).
pub const MAX_TXN_OPS: usize = 10_000;
/// The key prefix of the local cluster.
const PREFIX: &str = "/reflex";
/// Port bases of consecutive pairs are this far apart (each uses base..base+9).
const STRIDE: u16 = 10;

fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// The client and peer ports of the local etcd: the ones kept in `<dir>/ports` while both are
/// free, else new ones (and a new data dir: its member was announced on the old peer port).
fn etcd_ports(dir: &Path) -> anyhow::Result<(u16, u16)> {
    let file = dir.join("ports");
    let kept = std::fs::read_to_string(&file).ok().and_then(|s| {
        let (c, p) = s.trim().split_once(' ')?;
        Some((c.parse::<u16>().ok()?, p.parse::<u16>().ok()?))
    });
    if let Some((c, p)) = kept.filter(|(c, p)| port_free(*c) && port_free(*p)) {
        return Ok((c, p));
    }
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(dir)?;
    let (c, p) = (
        bus::endpoints::free_local_base()?,
        bus::endpoints::free_local_base()?,
    );
    std::fs::write(&file, format!("{c} {p}\n"))?;
    Ok((c, p))
}

/// True when an `etcd` binary runs.
fn etcd_installed() -> bool {
    std::process::Command::new("etcd")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Copy `from` into `to`, recursively, files kept 0600 and folders 0700.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// A child's first arguments: its subcommand, state dir, address, logging and security.
pub(super) fn child_args(sub: &str, state: &Path, a: &UpArgs, log: &LogArgs) -> Vec<String> {
    let mut v = vec![
        sub.to_string(),
        "--state".into(),
        state.display().to_string(),
        "--addr".into(),
        a.stack.addr.clone(),
        "--log-format".into(),
        log.log_format.as_str().into(),
        "--log-level".into(),
        log.log_level.clone(),
    ];
    if a.stack.insecure {
        v.push("--insecure".into());
    }
    v
}

/// Pair `i`'s addresses (1-based): its state dir and port base.
fn pair_endpoints(a: &UpArgs, state: &Path, i: usize) -> bus::Endpoints {
    let mut stack = a.stack.clone();
    stack.port_base = a.stack.port_base + STRIDE * (i as u16 - 1);
    stack.state = state.join(format!("node{i}"));
    stack.endpoints()
}

pub fn run(a: UpArgs, log: &LogArgs, n: usize) -> anyhow::Result<ExitCode> {
    if !(1..=9).contains(&n) {
        return Err(crate::cli::Exit::usage("--cluster takes 1 to 9 pairs"));
    }
    if !etcd_installed() {
        return Err(crate::cli::Exit::usage(
            "reflex up --cluster needs etcd: install Debian's etcd-server (apt-get install etcd-server)",
        ));
    }
    a.stack.ensure_state()?;
    let name = a.name.clone().unwrap_or_else(crate::cli::hostname);
    if u32::from(a.stack.port_base) + u32::from(STRIDE) * n as u32 > 65_535 {
        return Err(crate::cli::Exit::usage(
            "--port-base too high for that many pairs",
        ));
    }
    let rules = super::rules_dir(&a)?;
    let exe = std::env::current_exe()?;
    let state = a.stack.state.clone();
    // One trust domain: the keys made once in the state dir, copied to every pair.
    let security = crate::security::security(&a.stack, crate::security::Node::Control)?;
    if security.is_secure() {
        crate::security::security(&a.stack, crate::security::Node::Client)?;
        // This host's actor and beacons are in at once, at every manager (the keys are
        // copied below).
        crate::security::enroll_local_host(&state, &name, &a.groups)?;
    }
    bus::envelope::SignKey::load_or_create(&state)?;
    let keys = bus::keys::key_dir(&state);
    let etcd_dir = state.join("etcd");
    let (client, peer) = etcd_ports(&etcd_dir)?;
    let url = format!("etcd://127.0.0.1:{client}");
    let stop = stop_flag()?;
    let part = |name: String, program: Option<PathBuf>, args: Vec<String>| Part {
        name,
        program,
        args,
        child: None,
        restart_at: None,
        backoff: Duration::from_millis(500),
        started: Instant::now(),
    };
    let s = |x: &str| x.to_string();
    let etcd_args = vec![
        s("--name"),
        s("reflex"),
        s("--data-dir"),
        etcd_dir.join("data").display().to_string(),
        s("--listen-client-urls"),
        format!("http://127.0.0.1:{client}"),
        s("--advertise-client-urls"),
        format!("http://127.0.0.1:{client}"),
        s("--listen-peer-urls"),
        format!("http://127.0.0.1:{peer}"),
        s("--initial-advertise-peer-urls"),
        format!("http://127.0.0.1:{peer}"),
        s("--initial-cluster"),
        format!("reflex=http://127.0.0.1:{peer}"),
        s("--max-txn-ops"),
        MAX_TXN_OPS.to_string(),
        s("--logger"),
        s("zap"),
        s("--log-level"),
        s("error"),
    ];
    let mut etcd = part(s("etcd"), Some(PathBuf::from("etcd")), etcd_args);
    let mut managers = Vec::new();
    let mut publishers = Vec::new();
    let mut lines = Vec::new();
    for i in 1..=n {
        let dir = state.join(format!("node{i}"));
        std::fs::create_dir_all(&dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        if keys.is_dir() {
            copy_dir(&keys, &bus::keys::key_dir(&dir))?;
        }
        let base = a.stack.port_base + STRIDE * (i as u16 - 1);
        let id = format!("node{i}");
        let common = |sub: &str| -> Vec<String> {
            let mut v = child_args(sub, &dir, &a, log);
            v.extend([
                s("--port-base"),
                base.to_string(),
                s("--cluster"),
                url.clone(),
                s("--cluster-prefix"),
                s(PREFIX),
                s("--cluster-id"),
                id.clone(),
            ]);
            v
        };
        let mut m = common("manager");
        m.extend([
            s("--rules"),
            rules.display().to_string(),
            s("--cluster-max-txn-ops"),
            MAX_TXN_OPS.to_string(),
        ]);
        managers.push(part(format!("manager {id}"), None, m));
        publishers.push(part(format!("publisher {id}"), None, common("publisher")));
        let ep = pair_endpoints(&a, &state, i);
        lines.push(format!(
            "  {id}: ingest {} | publisher {} | replay {} | monitor {} | state {}",
            ep.ingest,
            ep.publish,
            ep.replay,
            ep.monitor,
            dir.display()
        ));
    }
    // This host's actor and beacons, from the state dir itself, with every pair's doors.
    let host_common = |sub: &str| child_args(sub, &state, &a, log);
    let ingests: Vec<String> = (1..=n)
        .map(|i| pair_endpoints(&a, &state, i).ingest)
        .collect();
    let mut actor = host_common("actor");
    for i in 1..=n {
        actor.extend([s("--publisher"), pair_endpoints(&a, &state, i).publish]);
    }
    actor.extend([s("--manager"), ingests.join(",")]);
    actor.extend(super::actor_args(&a, &name)?);
    let mut beacon = host_common("beacon");
    beacon.extend([s("--to"), ingests.join(",")]);
    beacon.extend(super::beacon_args(&a, &name)?);
    let mut host = [
        part(s("actor"), None, actor),
        part(s("beacon"), None, beacon),
    ];
    etcd.spawn(&exe);
    // The managers need etcd up: wait for it to answer (its first start makes its data dir).
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        match cluster::Cluster::connect(&url, PREFIX) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline || stop.load(Ordering::Relaxed) => {
                etcd.stop();
                return Err(anyhow::anyhow!(
                    "the local etcd did not answer on {url}: {e}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    for p in publishers
        .iter_mut()
        .chain(managers.iter_mut())
        .chain(host.iter_mut())
    {
        p.spawn(&exe);
    }
    let announced = {
        let stop = stop.clone();
        let summary = format!(
            "reflex cluster is up: {n} managers | {} | etcd {url} (data {}) | rules {} | actor {name}\n{}",
            crate::security::describe(&security),
            etcd_dir.display(),
            rules.display(),
            lines.join("\n")
        );
        std::thread::spawn(move || {
            let Ok(members) = cluster::Members::watch(&view) else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                if members.wait_for(Duration::from_millis(500), |ids| ids.len() >= n) {
                    println!("{summary}");
                    return;
                }
            }
        })
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        for p in std::iter::once(&mut etcd)
            .chain(publishers.iter_mut())
            .chain(managers.iter_mut())
            .chain(host.iter_mut())
        {
            p.supervise(&exe, &stop);
        }
    }
    tracing::info!("stopping");
    for p in host
        .iter_mut()
        .chain(managers.iter_mut())
        .chain(publishers.iter_mut())
    {
        p.stop();
    }
    etcd.stop();
    let _ = announced.join();
    Ok(ExitCode::SUCCESS)
}
