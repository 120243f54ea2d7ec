//! `beacon/load`: the 1, 5 and 15 minute load averages, with the CPU count so rules can judge
//! them per core.

use crate::Beacon;
use serde_json::json;

pub struct Load {
    cpus: usize,
}

impl Load {
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

impl Beacon for Load {
    fn kind(&self) -> &'static str {
        "load"
    }

    fn sample(&mut self) -> Result<Option<serde_json::Value>, String> {
        let l = sysinfo::System::load_average()
            .map_err(|e| format!("cannot read the load average: {e}"))?;
        Ok(Some(
            json!({"load1": l.one, "load5": l.five, "load15": l.fifteen, "cpus": self.cpus}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_real_load_average() {
        let v = Load::new().sample().unwrap().unwrap();
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
            "{v} vs {proc_line}"
        );
        assert!(v["cpus"].as_u64().unwrap() >= 1);
    }
}
