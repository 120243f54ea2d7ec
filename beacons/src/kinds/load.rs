//! `beacon/load`: the 1, 5 and 15 minute load averages, with the CPU count and the 1-minute
//! load per CPU so rules can judge them on any machine.
//!
//! Default: threshold on `load1_per_cpu` above 2 (a queue twice the cores), clearing below 1.5.

use super::Defaults;
use crate::gate::Mode;
use crate::{obj, round2, Beacon, Out};
use std::time::Duration;

/// What `load` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(10),
    mode: Mode::Threshold,
    field: Some("load1_per_cpu"),
    fields: &["load1", "load5", "load15", "load1_per_cpu"],
    above: Some(2.0),
    below: None,
    hysteresis: 0.5,
};

/// The `load` beacon: the load averages.
pub struct Load {
    cpus: usize,
}

impl Load {
    /// A load beacon.
    pub fn new() -> Load {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Load { cpus }
    }
}

impl Default for Load {
    fn default() -> Load {
        Load::new()
    }
}

/// The three load averages, through sysinfo (the kernel's /proc/loadavg on Linux).
pub fn loadavg() -> Result<[f64; 3], String> {
    let l = sysinfo::System::load_average()
        .map_err(|e| format!("cannot read the load average: {e}"))?;
    Ok([l.one, l.five, l.fifteen])
}

impl Beacon for Load {
    fn kind(&self) -> &'static str {
        "load"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let [l1, l5, l15] = loadavg()?;
        out.measure(
            "",
            obj! {
                "load1" => l1, "load5" => l5, "load15" => l15, "cpus" => self.cpus,
                "load1_per_cpu" => round2(l1 / self.cpus as f64),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_real_load_average() {
        let mut out = Out::default();
        Load::new().sample(&mut out).unwrap();
        let v = &out.readings[0].data;
        let proc_line = std::fs::read_to_string("/proc/loadavg").unwrap();
        let want: f64 = proc_line
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        // load15 barely moves between the two reads.
        assert!(
            (v["load15"].as_f64().unwrap() - want).abs() < 0.5,
            "{v:?} vs {proc_line}"
        );
        assert!(v["cpus"].as_u64().unwrap() >= 1);
        let per = v["load1"].as_f64().unwrap() / v["cpus"].as_f64().unwrap();
        assert!((v["load1_per_cpu"].as_f64().unwrap() - per).abs() < 0.01);
    }
}
