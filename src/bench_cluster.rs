//! `reflex bench cluster`: 1, 2 and 3 clustered managers on one local etcd, on the same
//! workload, with one manager on sled beside them, in one run.
//!
//! The workload: one rule matching every event, with a register write
//! (`registers::incr("bench/<host>", 1)`); `--senders` streams in parallel, each with hosts of
//! its own (so no two managers race on a counter), each stream chosen so that the manager it is
//! sent to owns it (no forwarding: the cost measured is the managers' and etcd's). Events are
//! counted done when acknowledged (committed). Every run checks that the registers add up.
//!
//! Round trips: etcd's committed proposals (`etcd_server_proposals_committed_total`, read from
//! its `/metrics` before and after) per event: one per group transaction, so fewer than one per
//! event when groups hold many; reads cost none (the registers' mirror). etcd's own write rate
//! is probed with concurrent one-put transactions, for the model.

use crate::bench_util::{daemon, stats, Daemon};
use crate::cli::Exit;
use bus::secure::Security;
use clap::Args;
use serde_json::json;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ClusterBenchArgs {
    /// Events per configuration (over all senders).
    #[arg(long, default_value_t = 30_000)]
    pub events: u64,
    /// Parallel sender streams, spread over the managers.
    #[arg(long, default_value_t = 6)]
    pub senders: usize,
    /// Hosts per sender (each sender's own).
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
}

/// etcd's --max-txn-ops for the bench's etcd (as `reflex up --cluster`).
const MAX_TXN_OPS: usize = 10_000;

fn write_rules(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("25-bench.rhai"),
        "const MATCH = \"bench/event\";\nfn react(event) { registers::incr(`bench/${event.host}`, 1); }\n",
    )?;
    Ok(())
}

/// A one-member etcd on free loopback ports in a temporary dir.
struct Etcd {
    _child: Daemon,
    client_port: u16,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> anyhow::Result<Etcd> {
        let ok = std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err(Exit::usage(
                "reflex bench cluster needs etcd: install Debian's etcd-server (apt-get install etcd-server)",
            ));
        }
        let dir = tempfile::tempdir()?;
        let port = bus::endpoints::free_local_base;
        let (client, peer) = (port()?, port()?);
        let args: Vec<String> = [
            "--name".to_string(),
            "bench".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-cluster".into(),
            format!("bench=http://127.0.0.1:{peer}"),
            "--max-txn-ops".into(),
            MAX_TXN_OPS.to_string(),
            "--logger".into(),
            "zap".into(),
            "--log-level".into(),
            "error".into(),
        ]
        .into();
        let child = daemon(Path::new("etcd"), &args)?;
        let url = format!("etcd://127.0.0.1:{client}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster::Cluster::connect(&url, "/probe").is_err() {
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!("the bench's etcd did not answer on {url}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Etcd {
            _child: child,
            client_port: client,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// Raft proposals etcd committed so far (every write: transactions, lease grants).
    fn proposals(&self) -> anyhow::Result<u64> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        body.lines()
            .find_map(|l| {
                l.strip_prefix("etcd_server_proposals_committed_total ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map(|v| v as u64)
            .ok_or_else(|| anyhow::anyhow!("etcd's /metrics has no proposals_committed_total"))
    }
}

/// One manager of a configuration: its endpoints and its member id.
struct Node {
    endpoints: bus::Endpoints,
    id: Option<String>,
}

/// What one configuration measured.
struct Run {
    events_per_s: f64,
    /// etcd proposals committed per event (None on sled).
    writes_per_event: Option<f64>,
    conflicts: u64,
}

/// The events of sender `s`: its own hosts.
fn frames(s: usize, hosts: usize) -> Vec<Vec<u8>> {
    (0..hosts.max(1))
        .map(|h| {
            bus::encode(&bus::Event::new(
                "bench/event",
                format!("s{s}-h{h:04}"),
                json!({"pad": "x".repeat(120)}),
            ))
        })
        .collect()
}

/// A stream id that `owner` owns among `ids` (the partition key of an insecure sender's
/// stream is `"\0" + stream`).
fn stream_owned_by(owner: &str, ids: &[String]) -> String {
    loop {
        let s = bus::delivery::new_stream();
        let pk = format!("\0{s}");
        if cluster::partition::owner(&pk, ids.iter().map(String::as_str)) == Some(owner) {
            return s;
        }
    }
}

/// `senders` streams in parallel, round-robin over `nodes`, `events` in all; each sends one
/// event first (not timed), then its share, and the clock stops when the last is
/// acknowledged. Events per second.
fn drive(nodes: &[Node], a: &ClusterBenchArgs) -> anyhow::Result<f64> {
    let ids: Vec<String> = nodes.iter().filter_map(|n| n.id.clone()).collect();
    let per = a.events / a.senders as u64;
    let start = std::sync::Arc::new(std::sync::Barrier::new(a.senders + 1));
    let mut threads = Vec::new();
    for s in 0..a.senders {
        let node = &nodes[s % nodes.len()];
        let mut cfg = bus::sender::SenderConfig::new(&node.endpoints.ingest, &Security::Insecure);
        cfg.retain = 200_000;
        cfg.stream = node.id.as_ref().map(|id| stream_owned_by(id, &ids));
        let frames = frames(s, a.hosts);
        let start = start.clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<Instant> {
            let sender = bus::sender::Sender::start(cfg)?;
            sender.send_frame_waiting(frames[0].clone());
            let warm = sender.wait_acked(Duration::from_secs(30));
            start.wait();
            if !warm {
                return Err(anyhow::anyhow!("a bench manager acknowledged nothing"));
            }
            for i in 0..per {
                sender.send_frame_waiting(frames[(i % frames.len() as u64) as usize].clone());
            }
            if !sender.wait_acked(Duration::from_secs(600)) {
                return Err(anyhow::anyhow!(
                    "not all events acknowledged within 10 minutes ({} left)",
                    sender.pending()
                ));
            }
            Ok(Instant::now())
        }));
    }
    start.wait();
    let t0 = Instant::now();
    let mut last = t0;
    for t in threads {
        let end = t
            .join()
            .map_err(|_| anyhow::anyhow!("a bench sender panicked"))??;
        last = last.max(end);
    }
    Ok((per * a.senders as u64) as f64 / (last - t0).as_secs_f64())
}

/// The sum of the `bench/` registers as the manager at `ep` reads them.
fn counted(ep: &bus::Endpoints) -> anyhow::Result<u64> {
    let reply = crate::send::control_request(
        &ep.control,
        &json!({"cmd": "registers", "op": "list", "prefix": "bench/"}),
        Duration::from_secs(10),
        &Security::Insecure,
    )?;
    Ok(reply["ok"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0))
}

fn check_counted(ep: &bus::Endpoints, a: &ClusterBenchArgs, what: &str) -> anyhow::Result<()> {
    let want = (a.events / a.senders as u64 + 1) * a.senders as u64;
    let got = counted(ep)?;
    if got != want {
        return Err(anyhow::anyhow!(
            "{what}: the registers counted {got} events, not {want}"
        ));
    }
    Ok(())
}

fn wait_control(ep: &bus::Endpoints) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(&ep.control, &Security::Insecure).is_err() {
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("a bench manager did not come up"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn sled_run(a: &ClusterBenchArgs) -> anyhow::Result<Run> {
    let stack =
        crate::bench_util::BenchStack::start_with(write_rules, false, &["--no-history".into()])?;
    let nodes = [Node {
        endpoints: stack.endpoints.clone(),
        id: None,
    }];
    let events_per_s = drive(&nodes, a)?;
    check_counted(&stack.endpoints, a, "sled")?;
    Ok(Run {
        events_per_s,
        writes_per_event: None,
        conflicts: 0,
    })
}

fn cluster_run(etcd: &Etcd, k: usize, a: &ClusterBenchArgs) -> anyhow::Result<Run> {
    let exe = std::env::current_exe()?;
    let prefix = format!("/bench-{k}");
    let tmp = tempfile::tempdir()?;
    let rules = tmp.path().join("rules");
    write_rules(&rules)?;
    let mut daemons = Vec::new();
    let mut nodes = Vec::new();
    for i in 1..=k {
        let state = tmp.path().join(format!("m{i}"));
        std::fs::create_dir_all(&state)?;
        let base = crate::bench_util::free_port_base()?;
        let id = format!("m{i}");
        let args: Vec<String> = [
            "manager".to_string(),
            "--state".into(),
            state.display().to_string(),
            "--port-base".into(),
            base.to_string(),
            "--insecure".into(),
            "--no-history".into(),
            "--no-watch".into(),
            "--rules".into(),
            rules.display().to_string(),
            "--cluster".into(),
            etcd.url(),
            "--cluster-prefix".into(),
            prefix.clone(),
            "--cluster-id".into(),
            id.clone(),
            "--cluster-max-txn-ops".into(),
            MAX_TXN_OPS.to_string(),
        ]
        .into();
        daemons.push(daemon(&exe, &args)?);
        nodes.push(Node {
            endpoints: bus::Endpoints::local(base, &state),
            id: Some(id),
        });
    }
    for n in &nodes {
        wait_control(&n.endpoints)?;
    }
    let view = cluster::Cluster::connect(&etcd.url(), &prefix)?;
    let members = cluster::Members::watch(&view)?;
    if !members.wait_for(Duration::from_secs(30), |ids| ids.len() == k) {
        return Err(anyhow::anyhow!("{k} bench managers did not all join"));
    }
    let before = etcd.proposals()?;
    let events_per_s = drive(&nodes, a)?;
    let writes = etcd.proposals()?.saturating_sub(before);
    check_counted(&nodes[0].endpoints, a, &format!("{k} managers"))?;
    let conflicts = nodes
        .iter()
        .filter_map(|n| stats(&n.endpoints.control, &Security::Insecure).ok())
        .filter_map(|s| s["conflicts"].as_u64())
        .sum();
    drop(daemons);
    Ok(Run {
        events_per_s,
        writes_per_event: Some(writes as f64 / a.events as f64),
        conflicts,
    })
}

pub fn run(a: ClusterBenchArgs) -> anyhow::Result<ExitCode> {
    if a.events == 0 || a.senders == 0 || a.events < a.senders as u64 {
        return Err(Exit::usage(
            "--events must be at least --senders, which is at least 1",
        ));
    }
    let etcd = Etcd::start()?;
    eprintln!("etcd's write rate: 20,000 one-put transactions from 16 clients...");
    let probe = cluster::Cluster::connect(&etcd.url(), "/probe")?;
    let etcd_txns = cluster::txn_rate(&probe, 16, 20_000)?;
    let one_txns = cluster::txn_rate(&probe, 1, 2_000)?;
    eprintln!("1 manager on sled: {} events...", a.events);
    let sled = sled_run(&a)?;
    let mut runs = Vec::new();
    for k in 1..=3 {
        eprintln!("{k} managers on etcd: {} events...", a.events);
        runs.push(cluster_run(&etcd, k, &a)?);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "reflex bench cluster: {} events per configuration, {} sender streams ({} hosts each), 1 rule with a register write; local 1-member etcd; {cores} cores",
        a.events, a.senders, a.hosts
    );
    println!(
        "{:<28} {:>12} {:>14} {:>11}",
        "configuration", "events/s", "etcd writes/ev", "conflicts"
    );
    println!(
        "{:<28} {:>12.0} {:>14} {:>11}",
        "1 manager, sled", sled.events_per_s, "-", "-"
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "{:<28} {:>12.0} {:>14.4} {:>11}",
            format!("{} manager(s), etcd", i + 1),
            r.events_per_s,
            r.writes_per_event.unwrap_or(0.0),
            r.conflicts
        );
    }
    let one = &runs[0];
    let per_txn = one
        .writes_per_event
        .filter(|w| *w > 0.0)
        .map_or(0.0, |w| 1.0 / w);
    let bound = etcd_txns * per_txn;
    println!("etcd one-put transactions/s: {etcd_txns:.0} (16 clients), {one_txns:.0} (1 client, back to back)");
    println!(
        "model: throughput(k) = min(k x {:.0} events/s per manager, etcd {etcd_txns:.0} txn/s x {per_txn:.0} events per txn = {bound:.0} events/s)",
        one.events_per_s
    );
    println!(
        "  under light load a group holds one event: the bound is then etcd's {etcd_txns:.0} txn/s over all managers, {one_txns:.0}/s for one manager committing back to back"
    );
    for (i, r) in runs.iter().enumerate() {
        let k = (i + 1) as f64;
        println!(
            "  k={}: model {:.0}, measured {:.0}",
            i + 1,
            (k * one.events_per_s).min(bound),
            r.events_per_s
        );
    }
    println!(
        "on {cores} cores the managers, etcd and the senders share the same CPUs: k managers cannot run k times as fast here, so the measured k>1 rows show the cost of sharing and coordination, not the scaling; the per-manager figure and etcd's rate are what feed the model"
    );
    println!(
        "summary: sled_events_per_s={:.0} etcd1_events_per_s={:.0} etcd2_events_per_s={:.0} etcd3_events_per_s={:.0} etcd_writes_per_event={:.4} etcd_txn_per_s={etcd_txns:.0}",
        sled.events_per_s,
        runs[0].events_per_s,
        runs[1].events_per_s,
        runs[2].events_per_s,
        one.writes_per_event.unwrap_or(0.0)
    );
    Ok(ExitCode::SUCCESS)
}
