//! `reflex bench fleet`: what a fleet costs the control node, host by host. A real CURVE control
//! node (manager and publisher as child processes, on loopback) takes more and more simulated
//! hosts, in steps (`--steps`), all held by this one process: each simulated host is a host key
//! enrolled and accepted in the store (as `bus::enroll` does for `reflex keys accept`, before
//! it connects) holding what a real host holds open on the control node:
//!
//! - a SUB to the publisher (base + 1) subscribed to `all/`, `host/<name>/` and `group/<g>/`,
//!   with the actor's ZMTP heartbeats (a ping a second, 5 s timeout);
//! - per sender (`--senders`, 2 by default: the actor's results and the beacon, as on a real
//!   host), a PUSH to the manager's ingest (base + 0, idle here: events are `bench bus`'s
//!   business) and a DEALER to the acks door (base + 6) saying `Hello` every second (the
//!   heartbeat) and reading the `Ack`s.
//!
//! The sockets are written by hand (no `bus::sender` thread per host), spread over a few ZeroMQ
//! contexts with several I/O threads each, served by a few worker threads that say each sender's
//! hello once a second, spread evenly over the second.
//!
//! After each step settles (every sender's hello acknowledged since it connected, the manager
//! counting every host up, every connection open on the daemons), it samples for `--sample`
//! seconds the manager's and the publisher's VmRSS, open fds, CPU (utime + stime from
//! `/proc/PID/stat`, and the busiest thread), the heartbeat traffic (hellos and acks counted
//! here, and the TCP payload bytes and segments on each door from the kernel's per-socket
//! counters, `ss -ti`), then publishes `--rounds` actions to `all` (a rule turns an admin event
//! into a `once` noop action for `all`) and times each one from the event's send until every
//! simulated host's SUB holds it. At the largest step, the manager is killed with SIGKILL and
//! started again: the time until every sender is acknowledged again and every host is up (the
//! reconnect storm: every ingest and acks connection's TCP and CURVE handshakes and ZAP checks
//! at once), with the kernel's listen-queue overflows meanwhile.
//!
//! The per-host cost is the slope of a least-squares line through the steps; the last lines
//! extrapolate it to 10,000 hosts (`docs/fleet-10k.md` has the plan built on them).

use crate::bench_util::{rss_fds, BenchStack};
use crate::cli::Exit;
use bus::delivery::{Ack, Hello, TICK};
use bus::keys::{KeyPair, PublicKey, Role};
use bus::secure::Security;
use clap::Args;
use serde_json::json;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// Simulated hosts at each step, increasing (each step adds hosts to the last one).
    #[arg(long, value_delimiter = ',', default_value = "0,250,500,1000,1250")]
    pub steps: Vec<usize>,
    /// Senders per simulated host, each a PUSH and a DEALER saying hello every second: 2 is a
    /// real host (the actor's results and a beacon), 1 halves what the bench holds (and so
    /// reaches more hosts under this process's open-file limit).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub senders: u8,
    /// Seconds sampled per step once it settled.
    #[arg(long, default_value_t = 10.0)]
    pub sample: f64,
    /// Actions published to `all` per step, each timed to the last host.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// ZeroMQ contexts the simulated hosts are spread over.
    #[arg(long, default_value_t = 4)]
    pub contexts: usize,
    /// I/O threads per context.
    #[arg(long, default_value_t = 2)]
    pub io_threads: i32,
    /// Threads saying the simulated hosts' hellos and reading what they receive.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Skip the reconnect storm (the manager killed and started again at the largest step).
    #[arg(long)]
    pub no_storm: bool,
    /// Hold the manager and the publisher to this many open files (soft and hard, set on them
    /// once started, as a unit's LimitNOFILE would), to see the limit hit; by default they keep
    /// this process's hard limit.
    #[arg(long)]
    pub daemon_nofile: Option<u64>,
    /// Seconds a step may take to settle before the bench stops growing the fleet there.
    #[arg(long, default_value_t = 180.0)]
    pub settle_timeout: f64,
}

/// Groups the simulated hosts are spread over (each host is in one).
const GROUPS: usize = 10;
/// Hello slots per second: each tick of a worker says the hellos of one slot's hosts.
const SLOTS: usize = 10;
/// How long an action to `all` may take to reach every host before the round is called short.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// The publisher ticks a topic once a second for 15 s after its last action; samples wait it
/// out so they measure heartbeats only.
const TICKS_FOR: Duration = Duration::from_secs(16);
/// Open files this process keeps for itself beyond the simulated hosts.
const OWN_FDS: u64 = 400;

mod probe;
mod sim;

use probe::*;
use sim::*;

/// One settled step's measures.
struct Step {
    hosts: usize,
    settle_s: f64,
    enroll_s: f64,
    /// (RSS bytes, fds, CPU %, busiest thread and its CPU %) of the manager and the publisher.
    mgr: (u64, u64, f64, String),
    publ: (u64, u64, f64, String),
    hellos_s: f64,
    acks_s: f64,
    /// Payload bytes/s and segments/s, in and out, at the acks door, the ingest and the
    /// publish door (`None` without `ss`).
    acks_wire: Option<(f64, f64, f64, f64)>,
    ingest_wire: Option<(f64, f64, f64, f64)>,
    pub_wire: Option<(f64, f64, f64, f64)>,
    ticks_s: f64,
    /// Per round: (first host, median host, last host) in ms, and hosts reached.
    fanout: Vec<(f64, f64, f64, usize)>,
}

fn mb(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

fn busiest(before: &HashMap<String, f64>, after: &HashMap<String, f64>, secs: f64) -> String {
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                (t - before.get(n).copied().unwrap_or(0.0)) / secs * 100.0,
            )
        })
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .take(2)
        .map(|(n, p)| format!("{n}:{p:.1}%"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Least-squares slope of `ys` over `xs` (0 with fewer than two distinct xs).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn intercept(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    ys.iter().sum::<f64>() / n - slope(xs, ys) * xs.iter().sum::<f64>() / n
}

/// What the bench waits for before a step counts as settled.
struct Want {
    senders: i64,
    hosts: usize,
    mgr_fds: u64,
    pub_fds: u64,
}

/// Wait until every sender is acknowledged, the manager counts every host up and the daemons
/// hold every connection; `Err` says what is missing at the deadline.
fn settle(
    fleet: &Fleet,
    stack: &BenchStack,
    want: &Want,
    timeout: Duration,
) -> Result<f64, String> {
    let t0 = Instant::now();
    let mpid = stack.pid("manager");
    let m0 = mpid.and_then(|p| cpu(p).ok());
    loop {
        let up = crate::bench_util::stats(&stack.endpoints.control, &stack.security)
            .ok()
            .and_then(|s| s["hosts_up"].as_u64())
            .unwrap_or(0) as usize;
        let fds = |p: &str| {
            stack
                .pid(p)
                .and_then(|pid| rss_fds(pid).ok())
                .map_or(0, |r| r.1)
        };
        let (mf, pf) = (fds("manager"), fds("publisher"));
        let acked = fleet.acked();
        if acked >= want.senders && up >= want.hosts && mf >= want.mgr_fds && pf >= want.pub_fds {
            return Ok(t0.elapsed().as_secs_f64());
        }
        let missing = format!(
            "senders acknowledged {acked}/{}, hosts up {up}/{}, manager fds {mf}/{}, publisher fds {pf}/{}",
            want.senders, want.hosts, want.mgr_fds, want.pub_fds
        );
        if t0.elapsed() > timeout {
            let m1 = mpid.and_then(|p| cpu(p).ok());
            let spent = match (m0, m1) {
                (Some(a), Some(b)) => {
                    let secs = t0.elapsed().as_secs_f64();
                    format!(
                        "; manager CPU meanwhile {:.0} % [{}]",
                        (b.0 - a.0) / secs * 100.0,
                        busiest(&a.1, &b.1, secs)
                    )
                }
                _ => String::new(),
            };
            return Err(format!("{missing}{spent}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publish one action to `all` through the manager and time it to every host.
fn fanout_round(
    fleet: &Fleet,
    admin: &bus::sender::Sender,
    round: u64,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    let rx = fleet.arm()?;
    let ev = bus::Event::new("fleet/all", "bench", json!({ "round": round }));
    let t0 = Instant::now();
    if !admin.send(&ev) {
        anyhow::bail!("the admin sender refused the fan-out event");
    }
    let mut times: Vec<f64> = Vec::with_capacity(fleet.hosts);
    for _ in &fleet.workers {
        let got = rx
            .recv_timeout(FANOUT_TIMEOUT + Duration::from_secs(10))
            .map_err(|_| anyhow::anyhow!("a fleet worker did not report the fan-out"))?;
        times.extend(
            got.iter()
                .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1e3),
        );
    }
    times.sort_by(f64::total_cmp);
    let pick = |p: f64| crate::bench_util::percentile(&times, p);
    Ok((pick(0.0), pick(0.5), pick(1.0), times.len()))
}

fn rate(a: u64, b: u64, secs: f64) -> f64 {
    b.saturating_sub(a) as f64 / secs
}

fn wire_rate(
    before: &Option<HashMap<u16, Wire>>,
    after: &Option<HashMap<u16, Wire>>,
    port: u16,
    secs: f64,
) -> Option<(f64, f64, f64, f64)> {
    let (b, a) = (before.as_ref()?.get(&port)?, after.as_ref()?.get(&port)?);
    if a.conns != b.conns {
        // Connections came or went during the sample: the sums are not comparable.
        return None;
    }
    Some((
        rate(b.rx_bytes, a.rx_bytes, secs),
        rate(b.tx_bytes, a.tx_bytes, secs),
        rate(b.rx_segs, a.rx_segs, secs),
        rate(b.tx_segs, a.tx_segs, secs),
    ))
}

fn port_of(endpoint: &str) -> anyhow::Result<u16> {
    endpoint
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {endpoint}"))
}

/// Sample the daemons and the traffic for `secs` seconds.
fn sample(fleet: &Fleet, stack: &BenchStack, ports: [u16; 3], secs: f64) -> anyhow::Result<Step> {
    let pid = |p: &str| {
        stack
            .pid(p)
            .ok_or_else(|| anyhow::anyhow!("no {p} process"))
    };
    let (mpid, ppid) = (pid("manager")?, pid("publisher")?);
    let c = &fleet.counts;
    let w0 = wire(&ports);
    let (m0, p0) = (cpu(mpid)?, cpu(ppid)?);
    let (h0, a0, t0c) = (
        c.hellos.load(Ordering::Relaxed),
        c.acks.load(Ordering::Relaxed),
        c.ticks.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let mut peak = [(0u64, 0u64); 2];
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_millis(500));
        for (i, p) in [mpid, ppid].into_iter().enumerate() {
            let (r, f) = rss_fds(p)?;
            peak[i] = (peak[i].0.max(r), peak[i].1.max(f));
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    let (m1, p1) = (cpu(mpid)?, cpu(ppid)?);
    let w1 = wire(&ports);
    let (h1, a1, t1c) = (
        c.hellos.load(Ordering::Relaxed),
        c.acks.load(Ordering::Relaxed),
        c.ticks.load(Ordering::Relaxed),
    );
    Ok(Step {
        hosts: fleet.hosts,
        settle_s: 0.0,
        enroll_s: 0.0,
        mgr: (
            peak[0].0,
            peak[0].1,
            (m1.0 - m0.0) / dt * 100.0,
            busiest(&m0.1, &m1.1, dt),
        ),
        publ: (
            peak[1].0,
            peak[1].1,
            (p1.0 - p0.0) / dt * 100.0,
            busiest(&p0.1, &p1.1, dt),
        ),
        hellos_s: rate(h0, h1, dt),
        acks_s: rate(a0, a1, dt),
        acks_wire: wire_rate(&w0, &w1, ports[1], dt),
        ingest_wire: wire_rate(&w0, &w1, ports[0], dt),
        pub_wire: wire_rate(&w0, &w1, ports[2], dt),
        ticks_s: rate(t0c, t1c, dt),
        fanout: Vec::new(),
    })
}

fn fmt_wire(w: Option<(f64, f64, f64, f64)>) -> String {
    match w {
        Some((rx, tx, rs, ts)) => format!(
            "{:.1}/{:.1} KB/s {:.0}/{:.0} seg/s",
            rx / 1e3,
            tx / 1e3,
            rs,
            ts
        ),
        None => "-".into(),
    }
}

pub fn run(a: FleetArgs) -> anyhow::Result<ExitCode> {
    if a.steps.is_empty() || a.steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Exit::usage(
            "--steps must be increasing, e.g. 0,250,500,1000",
        ));
    }
    if !(a.sample.is_finite() && a.sample >= 1.0 && a.settle_timeout.is_finite()) {
        return Err(Exit::usage("--sample must be at least 1 second"));
    }
    let max_hosts = a.steps.iter().copied().max().unwrap_or(0);
    let senders = a.senders as usize;
    // Each simulated socket is a TCP connection and a libzmq mailbox (this libzmq build signals
    // through a socketpair: two fds).
    let fds_per_host = 3 * (1 + 2 * senders) as u64;
    let (soft, hard) = crate::daemons::raise_nofile()?;
    let need = max_hosts as u64 * fds_per_host + OWN_FDS;
    if need > soft {
        return Err(Exit::usage(format!(
            "{max_hosts} simulated hosts with {senders} sender(s) need about {need} open files in this process \
             ({fds_per_host} per host), over its limit of {soft} (hard {hard}): at most {} hosts here; \
             lower --steps, use --senders 1, or raise the hard limit (ulimit -Hn, LimitNOFILE)",
            soft.saturating_sub(OWN_FDS) / fds_per_host
        )));
    }
    let daemon_nofile = a.daemon_nofile.unwrap_or(hard);
    eprintln!(
        "fleet: steps {:?}, {senders} sender(s) per host, {} contexts x {} I/O threads, {} workers; open files: this process {soft}, the daemons {daemon_nofile}",
        a.steps, a.contexts, a.io_threads, a.workers
    );
    let rule = "const MATCH = \"fleet/all\";\nfn react(event) {\n  act(\"all\", [#{ kind: \"noop\", name: \"fleet\" }], #{ name: `fleet-${event.data.round}`, life: \"once\" });\n}\n";
    let mut stack = BenchStack::start(|d| Ok(std::fs::write(d.join("50-fleet.rhai"), rule)?))?;
    limit_daemons(&stack, a.daemon_nofile)?;
    let admin = bus::sender::Sender::start(bus::sender::SenderConfig::new(
        &stack.endpoints.ingest,
        &stack.security,
    ))?;
    let ports = [
        port_of(&stack.endpoints.ingest)?,
        port_of(&stack.endpoints.acks)?,
        port_of(&stack.endpoints.publish)?,
    ];
    let mut fleet = Fleet::new(&a, &stack, max_hosts)?;
    // Let the admin sender's connections settle, then take the daemons' own fds as the base.
    std::thread::sleep(Duration::from_secs(2));
    let base_fds = |stack: &BenchStack, p: &str| -> anyhow::Result<u64> {
        let pid = stack
            .pid(p)
            .ok_or_else(|| anyhow::anyhow!("no {p} process"))?;
        Ok(rss_fds(pid)?.1)
    };
    let (mgr_base, pub_base) = (base_fds(&stack, "manager")?, base_fds(&stack, "publisher")?);
    let mut steps: Vec<Step> = Vec::new();
    let mut last_fanout: Option<Instant> = None;
    let mut stopped: Option<String> = None;
    let mut round = 0u64;
    for &n in &a.steps {
        let enroll = fleet.grow(stack.state(), n)?;
        let want = Want {
            senders: (n * senders) as i64,
            hosts: n,
            // Every connection is one fd on the daemon's side; a few may be the daemon's own
            // coming and going, so allow 1 %.
            mgr_fds: mgr_base + (2 * senders * n) as u64 * 99 / 100,
            pub_fds: pub_base + n as u64 * 99 / 100,
        };
        let settled = match settle(
            &fleet,
            &stack,
            &want,
            Duration::from_secs_f64(a.settle_timeout),
        ) {
            Ok(s) => s,
            Err(why) => {
                eprintln!("step {n}: NOT settled within {} s: {why}", a.settle_timeout);
                stopped = Some(format!("{n} hosts did not settle: {why}"));
                break;
            }
        };
        // Wait out the publisher's ticks of the last round, then two heartbeats more.
        if let Some(t) = last_fanout {
            std::thread::sleep(TICKS_FOR.saturating_sub(t.elapsed()));
        }
        std::thread::sleep(Duration::from_secs(2));
        let mut step = sample(&fleet, &stack, ports, a.sample)?;
        step.settle_s = settled;
        step.enroll_s = enroll.as_secs_f64();
        if n > 0 {
            for _ in 0..a.rounds {
                round += 1;
                step.fanout.push(fanout_round(&fleet, &admin, round)?);
                std::thread::sleep(Duration::from_millis(300));
            }
            last_fanout = Some(Instant::now());
        }
        eprintln!(
            "step {n}: enrolled in {:.1} s, settled in {settled:.1} s; manager {:.1} MB {} fds {:.1} % CPU [{}]; publisher {:.1} MB {} fds {:.1} % CPU [{}]; hellos {:.0}/s acks {:.0}/s; acks door {}; publish door {}; fan-out last host {}",
            step.enroll_s,
            mb(step.mgr.0),
            step.mgr.1,
            step.mgr.2,
            step.mgr.3,
            mb(step.publ.0),
            step.publ.1,
            step.publ.2,
            step.publ.3,
            step.hellos_s,
            step.acks_s,
            fmt_wire(step.acks_wire),
            fmt_wire(step.pub_wire),
            step.fanout
                .iter()
                .map(|f| format!("{:.1} ms ({} hosts)", f.2, f.3))
                .collect::<Vec<_>>()
                .join(", ")
        );
        steps.push(step);
    }

    // The reconnect storm: the manager killed and started again under the largest fleet.
    let mut storm: Option<(f64, f64, f64, (u64, u64))> = None;
    if !a.no_storm && stopped.is_none() && fleet.hosts > 0 {
        eprintln!(
            "storm: killing the manager (SIGKILL) under {} hosts and starting it again",
            fleet.hosts
        );
        let drops0 = listen_drops();
        let t0 = Instant::now();
        stack.kill_and_restart("manager", Duration::ZERO)?;
        limit_daemons(&stack, a.daemon_nofile)?;
        fleet.forget_acks()?;
        let restarted = t0.elapsed().as_secs_f64();
        // Up when its control socket answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        while crate::bench_util::stats(&stack.endpoints.control, &stack.security).is_err() {
            if Instant::now() > deadline {
                anyhow::bail!("the manager did not come back within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let answering = t0.elapsed().as_secs_f64();
        let want = Want {
            senders: (fleet.hosts * senders) as i64,
            hosts: fleet.hosts,
            mgr_fds: mgr_base + (2 * senders * fleet.hosts) as u64 * 99 / 100,
            pub_fds: 0,
        };
        match settle(
            &fleet,
            &stack,
            &want,
            Duration::from_secs_f64(a.settle_timeout),
        ) {
            Ok(_) => {
                let all = t0.elapsed().as_secs_f64();
                let drops1 = listen_drops();
                storm = Some((
                    restarted,
                    answering,
                    all,
                    (drops1.0 - drops0.0, drops1.1 - drops0.1),
                ));
                eprintln!(
                    "storm: manager started again {restarted:.2} s after the kill, answering at {answering:.2} s, every host acknowledged and up at {all:.2} s; listen overflows {} drops {}",
                    drops1.0 - drops0.0,
                    drops1.1 - drops0.1
                );
            }
            Err(why) => {
                eprintln!("storm: NOT recovered within {} s: {why}", a.settle_timeout);
                stopped = Some(format!("the reconnect storm did not recover: {why}"));
            }
        }
    }

    print_report(&a, &steps, storm, stopped.as_deref());
    drop(fleet);
    drop(admin);
    drop(stack);
    Ok(if stopped.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_report(
    a: &FleetArgs,
    steps: &[Step],
    storm: Option<(f64, f64, f64, (u64, u64))>,
    stopped: Option<&str>,
) {
    let senders = a.senders as usize;
    println!(
        "reflex bench fleet: a CURVE control node on loopback; each simulated host holds 1 SUB (3 topics, ZMTP ping 1 s) and {senders} sender(s) (PUSH + DEALER, hello 1/s): {} connections per host, {} of them to the manager; samples of {} s per step; {} action(s) to all per step",
        1 + 2 * senders,
        2 * senders,
        a.sample,
        a.rounds
    );
    println!(
        "{:>6} {:>9} {:>6} {:>6} {:>9} {:>6} {:>6} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "hosts",
        "mgr MB",
        "fds",
        "CPU%",
        "pub MB",
        "fds",
        "CPU%",
        "hello/s",
        "ack/s",
        "acks KB/s",
        "pub KB/s",
        "fan p50ms",
        "last ms",
        "settle s"
    );
    for s in steps {
        let kb = |w: Option<(f64, f64, f64, f64)>| {
            w.map_or("-".into(), |w| format!("{:.1}", (w.0 + w.1) / 1e3))
        };
        // The median round (by its last host).
        let mut f = s.fanout.clone();
        f.sort_by(|x, y| x.2.total_cmp(&y.2));
        let mid = f.get(f.len() / 2).copied();
        println!(
            "{:>6} {:>9.1} {:>6} {:>6.1} {:>9.1} {:>6} {:>6.1} {:>8.0} {:>8.0} {:>10} {:>10} {:>10} {:>9} {:>9.1}",
            s.hosts,
            mb(s.mgr.0),
            s.mgr.1,
            s.mgr.2,
            mb(s.publ.0),
            s.publ.1,
            s.publ.2,
            s.hellos_s,
            s.acks_s,
            kb(s.acks_wire),
            kb(s.pub_wire),
            mid.map_or("-".into(), |m| format!("{:.1}", m.1)),
            mid.map_or("-".into(), |m| format!("{:.1}", m.2)),
            s.settle_s
        );
    }
    for s in steps {
        println!(
            "  {} hosts: manager threads [{}], publisher threads [{}]; acks door {}; ingest {}; publish door {}; ticks {:.0}/s; fan-out rounds (first/p50/last ms, hosts): {}",
            s.hosts,
            s.mgr.3,
            s.publ.3,
            fmt_wire(s.acks_wire),
            fmt_wire(s.ingest_wire),
            fmt_wire(s.pub_wire),
            s.ticks_s,
            s.fanout
                .iter()
                .map(|f| format!("{:.1}/{:.1}/{:.1} ({})", f.0, f.1, f.2, f.3))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let xs: Vec<f64> = steps.iter().map(|s| s.hosts as f64).collect();
    let fit = |f: &dyn Fn(&Step) -> f64| {
        let ys: Vec<f64> = steps.iter().map(f).collect();
        (slope(&xs, &ys), intercept(&xs, &ys))
    };
    let (m_rss, m_rss0) = fit(&|s| s.mgr.0 as f64);
    let (m_fds, m_fds0) = fit(&|s| s.mgr.1 as f64);
    let (m_cpu, m_cpu0) = fit(&|s| s.mgr.2);
    let (p_rss, p_rss0) = fit(&|s| s.publ.0 as f64);
    let (p_fds, p_fds0) = fit(&|s| s.publ.1 as f64);
    let (p_cpu, p_cpu0) = fit(&|s| s.publ.2);
    // CPU per hello: the manager's CPU over the hellos it answered, at the largest step.
    let top = steps.last();
    let cpu_per_hello = top
        .filter(|s| s.hellos_s > 0.0)
        .map_or(f64::NAN, |s| s.mgr.2 / 100.0 / s.hellos_s * 1e6);
    let per_host_wire = |w: Option<(f64, f64, f64, f64)>, hosts: usize| {
        w.filter(|_| hosts > 0)
            .map_or(f64::NAN, |w| (w.0 + w.1) / hosts as f64)
    };
    let acks_b = top.map_or(f64::NAN, |s| per_host_wire(s.acks_wire, s.hosts));
    let pub_b = top.map_or(f64::NAN, |s| per_host_wire(s.pub_wire, s.hosts));
    println!(
        "per connected host (least squares over the steps): manager {:.1} KB RSS, {:.2} fds, {:.4} % CPU; publisher {:.1} KB RSS, {:.2} fds, {:.4} % CPU; manager CPU per hello {:.1} us (all its threads, largest step); heartbeat payload on the wire {:.0} B/s at the acks door, {:.0} B/s at the publish door (TCP payload both ways, ss)",
        m_rss / 1024.0,
        m_fds,
        m_cpu,
        p_rss / 1024.0,
        p_fds,
        p_cpu,
        cpu_per_hello,
        acks_b,
        pub_b
    );
    let at = 10_000.0;
    println!(
        "extrapolated to 10,000 hosts ({senders} sender(s) each): manager {:.0} MB, {:.0} fds, {:.0} % CPU; publisher {:.0} MB, {:.0} fds, {:.0} % CPU; {:.0} hellos/s",
        (m_rss0 + m_rss * at) / 1_048_576.0,
        m_fds0 + m_fds * at,
        m_cpu0 + m_cpu * at,
        (p_rss0 + p_rss * at) / 1_048_576.0,
        p_fds0 + p_fds * at,
        p_cpu0 + p_cpu * at,
        at * senders as f64
    );
    if let Some((restarted, answering, all, (over, drops))) = storm {
        println!(
            "reconnect storm at {} hosts ({} manager connections): manager started again {restarted:.2} s after SIGKILL, answering at {answering:.2} s, every sender acknowledged and every host up at {all:.2} s; listen queue overflows {over}, drops {drops}",
            top.map_or(0, |s| s.hosts),
            top.map_or(0, |s| s.hosts * 2 * senders)
        );
    }
    if let Some(why) = stopped {
        println!("stopped: {why}");
    }
    let last_fan = top
        .and_then(|s| {
            let mut f = s.fanout.clone();
            f.sort_by(|x, y| x.2.total_cmp(&y.2));
            f.get(f.len() / 2).map(|m| m.2)
        })
        .unwrap_or(f64::NAN);
    println!(
        "summary: hosts={} senders={senders} mgr_kb_per_host={:.1} mgr_fds_per_host={:.2} pub_kb_per_host={:.1} pub_fds_per_host={:.2} mgr_us_per_hello={:.1} fanout_last_ms={:.1} storm_s={} settled={}",
        top.map_or(0, |s| s.hosts),
        m_rss / 1024.0,
        m_fds,
        p_rss / 1024.0,
        p_fds,
        cpu_per_hello,
        last_fan,
        storm.map_or("-".into(), |s| format!("{:.2}", s.2)),
        if stopped.is_some() { "no" } else { "yes" }
    );
}
