//! `beacon/cpu`: CPU usage over the last interval, from /proc/stat (all CPUs together), with
//! the iowait and steal shares. The first sample only sets the baseline.
//!
//! Default: threshold on `usage_pct` above 90, clearing below 80.

use super::Defaults;
use crate::gate::Mode;
use crate::{obj, round2, Beacon, Out};
use std::time::Duration;

/// What `cpu` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(10),
    mode: Mode::Threshold,
    field: Some("usage_pct"),
    fields: &["usage_pct", "iowait_pct", "steal_pct"],
    above: Some(90.0),
    below: None,
    hysteresis: 10.0,
};

/// Jiffies of the aggregate `cpu` line: (total, idle, iowait, steal).
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    total: u64,
    idle: u64,
    iowait: u64,
    steal: u64,
}

/// The `cpu` beacon: CPU usage over the last interval.
#[derive(Default)]
pub struct Cpu {
    last: Option<Times>,
}

fn times() -> Result<Times, String> {
    let text = super::read("/proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat has no cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() < 4 {
        return Err(format!("unexpected /proc/stat cpu line: {line:?}"));
    }
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // guest and guest_nice (8, 9) are already counted in user and nice.
    Ok(Times {
        total: v.iter().take(8).sum(),
        idle: at(3),
        iowait: at(4),
        steal: at(7),
    })
}

impl Beacon for Cpu {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let now = times()?;
        let Some(last) = self.last.replace(now) else {
            return Ok(());
        };
        let total = now.total.saturating_sub(last.total);
        if total == 0 {
            return Ok(());
        }
        let share = |d: u64| round2(d as f64 * 100.0 / total as f64);
        let idle = now.idle.saturating_sub(last.idle) + now.iowait.saturating_sub(last.iowait);
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        out.measure(
            "",
            obj! {
                "usage_pct" => share(total.saturating_sub(idle)),
                "iowait_pct" => share(now.iowait.saturating_sub(last.iowait)),
                "steal_pct" => share(now.steal.saturating_sub(last.steal)),
                "cpus" => cpus,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    fn usage_over(cpu: &mut Cpu, d: Duration) -> f64 {
        let mut out = Out::default();
        cpu.sample(&mut out).unwrap();
        std::thread::sleep(d);
        let mut out = Out::default();
        cpu.sample(&mut out).unwrap();
        out.readings[0].data["usage_pct"].as_f64().unwrap()
    }

    #[test]
    fn sees_a_core_kept_busy() {
        let mut cpu = Cpu::default();
        let mut first = Out::default();
        cpu.sample(&mut first).unwrap();
        assert!(
            first.readings.is_empty(),
            "the first sample is the baseline"
        );
        // Keep every core busy: usage over that window must be high (other processes can
        // only add to it).
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let spinners: Vec<_> = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_add(t.elapsed().as_nanos() as u64);
                    }
                    std::hint::black_box(x);
                })
            })
            .collect();
        let busy = usage_over(&mut cpu, Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        for s in spinners {
            s.join().unwrap();
        }
        assert!(busy > 60.0, "usage with every core spinning: {busy}");
        assert!(busy <= 100.0);
    }
}
