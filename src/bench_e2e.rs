//! `reflex bench e2e`: events through the whole loop on a CURVE stack, each making a rule act
//! with a distinct one-file action on a real actor, measured where a user would look: the file
//! on disk (the rule also counts each event in a register). One at a time for latency (send -> file written), then a burst for throughput
//! (applied per second, lost), with the actor's CPU per applied action and its resident memory
//! per kept graph, and the raw ZeroMQ floor of the same run beside them.
//!
//! Two more floors, because most of an applied action's CPU is the kernel's, not the actor's:
//! the CPU one atomic file write (the file resource's own: temp file, fsync, rename) costs a
//! bare loop on the same file system in the same run, and the actor's CPU split into user and
//! kernel time. The memory per kept graph is read once the burst has settled (its results
//! acknowledged, the actor's allocator trimmed after 2 s without actions), and also as it
//! stood when the last file landed.

use crate::bench_loop::FileLoop;
use crate::bench_util::{cpu_split, floor, percentile, usage};
use crate::cli::Exit;
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct E2eArgs {
    /// Events in the burst (each a kept one-file graph on the actor).
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Events sent one at a time for the latency figures.
    #[arg(long, default_value_t = 500)]
    pub pings: u64,
    /// Where the files are written (a new directory under it). A tmpfs such as /dev/shm
    /// shows what the actor itself costs, without the disk's own work.
    #[arg(long, default_value = "/tmp")]
    pub dir: std::path::PathBuf,
}

const ACTOR: &str = "e2e-actor";

pub fn run(a: E2eArgs) -> anyhow::Result<ExitCode> {
    if a.events == 0 || a.pings == 0 {
        return Err(Exit::usage("--events and --pings must be at least 1"));
    }
    let l = FileLoop::start_in("e2e/event", ACTOR, &a.dir)?;
    let pid = l
        .stack
        .pid("actor")
        .ok_or_else(|| anyhow::anyhow!("no actor process"))?;

    eprintln!(
        "latency: {} events one at a time, send -> file on disk...",
        a.pings
    );
    let mut lat = Vec::with_capacity(a.pings as usize);
    for i in 0..a.pings {
        let id = 1_000_000_000 + i;
        let t0 = Instant::now();
        l.send(id);
        l.wait_file(id, Duration::from_secs(10))?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|x, y| x.total_cmp(y));

    eprintln!("burst: {} events, each a kept one-file graph...", a.events);
    let before = l.files();
    let (cpu0, _, anon0) = usage(pid)?;
    let sys0 = cpu_split(pid)?.1;
    let t0 = Instant::now();
    for i in 0..a.events {
        l.send(i);
    }
    let applied = l.wait_files(before + a.events, Duration::from_secs(600)) - before;
    let took = t0.elapsed().as_secs_f64();
    let (cpu1, _, anon1) = usage(pid)?;
    let sys1 = cpu_split(pid)?.1;
    eprintln!("settling: the burst's results acknowledged, the actor's memory trimmed...");
    let anon2 = settled_anon(pid)?;
    let floor_per_s = floor(a.events.max(100_000), 200)?;
    let fs_floor_ms = fs_floor(&a.dir, a.events.min(5_000))?;

    let per = |x: f64| x * 1e3 / applied.max(1) as f64;
    let cpu_ms = per(cpu1 - cpu0);
    let sys_ms = per(sys1 - sys0);
    let kb = |anon: u64| anon.saturating_sub(anon0) as f64 / 1024.0 / applied.max(1) as f64;
    let kb_per_graph = kb(anon2);
    println!("reflex bench e2e: CURVE stack, each event a rule's distinct one-file action on a real actor; {} one at a time, then a burst of {}; files under {}", a.pings, a.events, a.dir.display());
    println!("{:<44} {:>14}", "measure", "value");
    println!(
        "{:<44} {:>14.0}",
        "raw zmq push->pull floor (messages/s)", floor_per_s
    );
    println!(
        "{:<44} {:>14.0}",
        "burst applied (files on disk per s)",
        applied as f64 / took
    );
    println!("{:<44} {:>14}", "lost in the burst", a.events - applied);
    println!(
        "{:<44} {:>14.3}",
        "one at a time: send -> file p50 (ms)",
        percentile(&lat, 0.5)
    );
    println!(
        "{:<44} {:>14.3}",
        "one at a time: send -> file p99 (ms)",
        percentile(&lat, 0.99)
    );
    println!(
        "{:<44} {:>14.3}",
        "actor CPU per applied action (ms)", cpu_ms
    );
    println!("{:<44} {:>14.3}", "  of which in the kernel (ms)", sys_ms);
    println!(
        "{:<44} {:>14.3}",
        "floor: one atomic file write, CPU (ms)", fs_floor_ms
    );
    println!(
        "{:<44} {:>14.3}",
        "actor CPU above that floor (ms)",
        cpu_ms - fs_floor_ms
    );
    println!(
        "{:<44} {:>14.1}",
        "actor private RSS per kept graph (KB)", kb_per_graph
    );
    println!(
        "{:<44} {:>14.1}",
        "  as the last file landed (KB)",
        kb(anon1)
    );
    println!(
        "summary: applied_per_s={:.0} lost={} p50_ms={:.3} p99_ms={:.3} actor_cpu_ms={cpu_ms:.3} kb_per_graph={kb_per_graph:.1} floor_per_s={floor_per_s:.0} actor_sys_ms={sys_ms:.3} fs_floor_ms={fs_floor_ms:.3}",
        applied as f64 / took,
        a.events - applied,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    Ok(ExitCode::SUCCESS)
}

/// The actor's private resident memory once it stops moving: sampled every 500 ms, at least
/// 3 s (past the actor's 2 s trim after the last action), until two samples in a row are
/// within 1 % of each other, 20 s at most.
fn settled_anon(pid: u32) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut last = usage(pid)?.2;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = usage(pid)?.2;
        let steady = now.abs_diff(last) as f64 <= last as f64 * 0.01;
        if (steady && start.elapsed() >= Duration::from_secs(3))
            || start.elapsed() >= Duration::from_secs(20)
        {
            return Ok(now);
        }
        last = now;
    }
}

/// CPU milliseconds one atomic file write (the file resource's: a temp file written and
/// fsynced, then renamed over the target) costs a bare loop writing `n` distinct files in a
/// fresh directory on the same file system as the burst's: what no actor can do without.
fn fs_floor(under: &std::path::Path, n: u64) -> anyhow::Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("reflex-bench-floor")
        .tempdir_in(under)?;
    let thread_cpu = || {
        // SAFETY: getrusage only writes the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    let c0 = thread_cpu();
    for i in 0..n {
        engine::os::atomic_write(
            &dir.path().join(format!("f-{i}")),
            i.to_string().as_bytes(),
            None,
        )?;
    }
    Ok((thread_cpu() - c0) * 1e3 / n.max(1) as f64)
}
