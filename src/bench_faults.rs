//! `reflex bench faults`: the delivery guarantee under kill -9. For each part (publisher,
//! manager, actor) a fresh CURVE stack takes a paced stream of events, each counted in a
//! register and making a distinct file action on a real actor; halfway through, that part is
//! killed with SIGKILL and started again at once. A last row stops the actor for a while
//! (killed, started again 3 s later). Each row says what a user would check afterwards:
//! events lost (files never written), events applied twice (the register past N, or an
//! action logged twice by the publisher), and how long after the last event everything was
//! on disk.

use crate::bench_loop::FileLoop;
use crate::cli::Exit;
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct FaultsArgs {
    /// Events per row.
    #[arg(long, default_value_t = 2_000)]
    pub events: u64,
    /// Events per second (paced, so the kill lands in the middle of the stream).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
}

const ACTOR: &str = "faults-actor";

struct Row {
    fault: &'static str,
    lost: u64,
    twice: u64,
    catch_up: f64,
}

fn row(a: &FaultsArgs, fault: &'static str, part: &str, away: Duration) -> anyhow::Result<Row> {
    let mut l = FileLoop::start("faults/event", ACTOR)?;
    eprintln!("{fault}: {} events at {}/s...", a.events, a.rate);
    let start = Instant::now();
    for i in 0..a.events {
        let due = start + Duration::from_secs_f64(i as f64 / a.rate);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if i == a.events / 2 {
            l.stack.kill_and_restart(part, away)?;
        }
        l.send(i);
    }
    let sent = Instant::now();
    if !l.sender.wait_acked(Duration::from_secs(120)) {
        eprintln!("{fault}: {} events never acknowledged", l.sender.pending());
    }
    // The warm-up event is one of them.
    let want = a.events + 1;
    let got = l.wait_files(want, Duration::from_secs(120));
    let catch_up = sent.elapsed().as_secs_f64();
    let missing: Vec<u64> = (0..a.events).filter(|&i| !l.file(i).exists()).collect();
    if !missing.is_empty() {
        eprintln!("{fault}: never written: {missing:?}");
    }
    let logged = l.logged_names()?;
    let distinct: std::collections::HashSet<&String> = logged.iter().collect();
    let twice = l.counted()?.saturating_sub(want) + (logged.len() - distinct.len()) as u64;
    Ok(Row {
        fault,
        lost: want.saturating_sub(got).max(missing.len() as u64),
        twice,
        catch_up,
    })
}

pub fn run(a: FaultsArgs) -> anyhow::Result<ExitCode> {
    if a.events < 2 || !(a.rate.is_finite() && a.rate > 0.0) {
        return Err(Exit::usage(
            "--events must be at least 2 and --rate positive",
        ));
    }
    let rows = [
        row(&a, "publisher killed", "publisher", Duration::ZERO)?,
        row(&a, "manager killed", "manager", Duration::ZERO)?,
        row(&a, "actor killed", "actor", Duration::ZERO)?,
        row(&a, "actor away 3 s", "actor", Duration::from_secs(3))?,
    ];
    println!(
        "reflex bench faults: {} events at {}/s per row, each a register increment and a distinct file action; the part killed with SIGKILL halfway and started again",
        a.events, a.rate
    );
    println!(
        "{:<20} {:>8} {:>14} {:>22}",
        "fault", "lost", "applied twice", "caught up after (s)"
    );
    for r in &rows {
        println!(
            "{:<20} {:>8} {:>14} {:>22.2}",
            r.fault, r.lost, r.twice, r.catch_up
        );
    }
    let lost: u64 = rows.iter().map(|r| r.lost).sum();
    let twice: u64 = rows.iter().map(|r| r.twice).sum();
    println!("summary: lost={lost} twice={twice}");
    Ok(ExitCode::SUCCESS)
}
