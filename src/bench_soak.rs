//! `reflex bench soak`: a steady stream through the whole loop for a long while, watching for
//! leaks. A CURVE stack (the [`FileLoop`]: a rule counting each event in a register and making
//! it a one-file action on a real actor) takes events paced at `--rate` per second for
//! `--minutes`. The events cycle through `--files` distinct files (1,000 by default), each
//! written again and again with the event's number, so the actor keeps a steady number of
//! graphs (each one replaced, never a new one) and what grows is a leak, not the workload.
//!
//! Every `--every` seconds (10) it samples the manager's, the publisher's and the actor's
//! resident memory (VmRSS) and open file descriptors (`/proc/<pid>/fd`). After the warm-up
//! (the first 10 %, at least a minute) each part must stay flat: every later sample within
//! ±10 % of the first one after warm-up. At the end, once everything is acknowledged: events
//! lost (the register short of what was sent) or counted twice, and files whose last write
//! never landed. Exit status 1 when a part is not flat or anything was lost.

use crate::bench_loop::FileLoop;
use crate::bench_util::{fds_split, rss_fds};
use crate::cli::Exit;
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Minutes to run, warm-up included (the first 10 %, at least 1 minute).
    #[arg(long, default_value_t = 60.0)]
    pub minutes: f64,
    /// Events per second, paced.
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Distinct files (kept graphs) the events cycle through.
    #[arg(long, default_value_t = 1_000)]
    pub files: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub every: f64,
    /// Where the files are written (a new directory under it); a tmpfs such as /dev/shm takes
    /// the file system's own cost out.
    #[arg(long, default_value = "/tmp")]
    pub dir: std::path::PathBuf,
}

const ACTOR: &str = "soak-actor";
const PARTS: [&str; 3] = ["manager", "publisher", "actor"];
/// How far a sample may stray from the first one after warm-up.
const FLAT: f64 = 0.10;

/// One sample: seconds since the start, and (RSS bytes, fds held, temp files being written)
/// per part.
struct Sample {
    at: f64,
    parts: Vec<(u64, u64, u64)>,
}

/// min, max, first, last of a series, and whether it stayed within ±[`FLAT`] of its first.
fn flat(series: &[u64]) -> (u64, u64, u64, u64, bool) {
    let (first, last) = (series[0], series[series.len() - 1]);
    let min = series.iter().copied().min().unwrap_or(0);
    let max = series.iter().copied().max().unwrap_or(0);
    let ok = max as f64 <= first as f64 * (1.0 + FLAT) && min as f64 >= first as f64 * (1.0 - FLAT);
    (min, max, first, last, ok)
}

fn mb(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

pub fn run(a: SoakArgs) -> anyhow::Result<ExitCode> {
    let total = a.minutes * 60.0;
    let warm = (total * 0.1).max(60.0);
    if !(a.rate.is_finite() && a.rate > 0.0 && a.every.is_finite() && a.every > 0.0) || a.files == 0
    {
        return Err(Exit::usage(
            "--rate and --every must be positive, --files at least 1",
        ));
    }
    if !(total.is_finite() && total >= warm + 2.0 * a.every) {
        return Err(Exit::usage(format!(
            "--minutes {} leaves no samples after the warm-up ({warm:.0} s): give at least {:.1}",
            a.minutes,
            (warm + 2.0 * a.every) / 60.0
        )));
    }
    let l = FileLoop::start_in("soak/event", ACTOR, &a.dir)?;
    let pids: Vec<u32> = PARTS
        .iter()
        .map(|p| {
            l.stack
                .pid(p)
                .ok_or_else(|| anyhow::anyhow!("no {p} process"))
        })
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "soak: {:.0} events/s for {} min through {} files, samples every {} s, warm-up {warm:.0} s",
        a.rate, a.minutes, a.files, a.every
    );
    eprintln!(
        "{:>7} {:>10} {:>9}  {}",
        "t (s)",
        "sent",
        "pending",
        PARTS
            .iter()
            .map(|p| format!("{p:>9} MB/fds+writing"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = 0.0;
    loop {
        let now = start.elapsed().as_secs_f64();
        if now >= total {
            break;
        }
        let due = ((now * a.rate) as u64).max(sent);
        while sent < due {
            l.send_as(sent % a.files, sent);
            sent += 1;
        }
        if now >= next_sample {
            let parts = pids
                .iter()
                .zip(PARTS)
                .map(|(&pid, p)| {
                    let sample = || -> anyhow::Result<(u64, u64, u64)> {
                        let (rss, _) = rss_fds(pid)?;
                        let (held, writing) = fds_split(pid)?;
                        Ok((rss, held, writing))
                    };
                    sample().map_err(|e| anyhow::anyhow!("the {p}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            eprintln!(
                "{now:>7.0} {sent:>10} {:>9}  {}",
                l.sender.pending(),
                parts
                    .iter()
                    .map(|(r, f, w)| format!("{:>9.1} / {f:<3}+{w:<3}", mb(*r)))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            samples.push(Sample { at: now, parts });
            next_sample += a.every;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let achieved = sent as f64 / start.elapsed().as_secs_f64();
    eprintln!("sent {sent} ({achieved:.0}/s); waiting for every acknowledgement and file...");
    if !l.sender.wait_acked(Duration::from_secs(300)) {
        eprintln!("{} events never acknowledged", l.sender.pending());
    }
    // The warm-up event is counted too.
    let want = sent + 1;
    let counted = l.counted()?;
    let (lost, twice) = (want.saturating_sub(counted), counted.saturating_sub(want));
    // File j's last write is the last event numbered j modulo --files.
    let last = |j: u64| (j < sent).then(|| j + (sent - 1 - j) / a.files * a.files);
    let stale = |l: &FileLoop| {
        (0..a.files)
            .filter_map(|j| Some((j, last(j)?)))
            .filter(|(j, n)| {
                std::fs::read_to_string(l.file(*j)).ok().as_deref() != Some(n.to_string().as_str())
            })
            .count() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut not_applied = stale(&l);
    while not_applied > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        not_applied = stale(&l);
    }

    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm).collect();
    println!(
        "reflex bench soak: {} min at {:.0} events/s ({achieved:.0}/s sent) through {} files under {} on a CURVE stack, {} samples every {} s after a {warm:.0} s warm-up; flat = every sample within ±{:.0} % of the first after warm-up; fds = those held (sockets, stores, watches), not the file resource's temp files being written (work in flight: their most is shown)",
        a.minutes,
        a.rate,
        a.files,
        a.dir.display(),
        after.len(),
        a.every,
        FLAT * 100.0
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>5}   {:>5} {:>5} {:>5} {:>5} {:>5}   {:>7}",
        "part",
        "RSS min",
        "max",
        "first",
        "last",
        "flat",
        "fds",
        "max",
        "first",
        "last",
        "flat",
        "writing"
    );
    let mut all_flat = true;
    for (i, p) in PARTS.iter().enumerate() {
        let rss: Vec<u64> = after.iter().map(|s| s.parts[i].0).collect();
        let fds: Vec<u64> = after.iter().map(|s| s.parts[i].1).collect();
        let writing = after.iter().map(|s| s.parts[i].2).max().unwrap_or(0);
        let (r0, r1, rf, rl, rok) = flat(&rss);
        let (f0, f1, ff, fl, fok) = flat(&fds);
        all_flat &= rok && fok;
        let yes = |ok: bool| if ok { "yes" } else { "NO" };
        println!(
            "{p:<10} {:>7.1}MB {:>7.1}MB {:>7.1}MB {:>7.1}MB {:>5}   {f0:>5} {f1:>5} {ff:>5} {fl:>5} {:>5}   {writing:>7}",
            mb(r0),
            mb(r1),
            mb(rf),
            mb(rl),
            yes(rok),
            yes(fok)
        );
    }
    println!(
        "events: {want} sent (the warm-up one included), {counted} counted; lost {lost}, counted twice {twice}; files whose last write never landed: {not_applied}"
    );
    let ok = all_flat && lost == 0 && twice == 0 && not_applied == 0;
    println!(
        "summary: flat={} lost={lost} twice={twice} not_applied={not_applied}",
        if all_flat { "yes" } else { "no" }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
