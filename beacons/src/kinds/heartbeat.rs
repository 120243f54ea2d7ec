//! `beacon/heartbeat`: "this host and its beacon are alive", every interval (default 60 s),
//! with the beacon's own uptime and version and the host's uptime. The one thing a healthy
//! host sends regularly; a rule can notice the silence of a host that stopped.

use super::Defaults;
use crate::{obj, round2, Beacon, Out};
use std::time::{Duration, Instant};

/// What `heartbeat` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults::happenings(Duration::from_secs(60));

/// The `heartbeat` beacon: "this host is alive", every interval.
pub struct Heartbeat {
    started: Instant,
    seq: u64,
}

impl Heartbeat {
    /// A heartbeat that has sent nothing yet.
    pub fn new() -> Heartbeat {
        Heartbeat {
            started: Instant::now(),
            seq: 0,
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new()
    }
}

impl Beacon for Heartbeat {
    fn kind(&self) -> &'static str {
        "heartbeat"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let host_uptime = super::read("/proc/uptime")?
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or("unexpected /proc/uptime")?;
        self.seq += 1;
        out.event(obj! {
            "uptime_s" => round2(self.started.elapsed().as_secs_f64()),
            "host_uptime_s" => round2(host_uptime),
            "version" => crate::VERSION,
            "seq" => self.seq,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_with_uptimes_and_version() {
        let mut h = Heartbeat::new();
        let mut out = Out::default();
        h.sample(&mut out).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        h.sample(&mut out).unwrap();
        let (a, b) = (&out.readings[0], &out.readings[1]);
        assert!(!a.gated, "a heartbeat is always sent");
        assert_eq!(b.data["version"], crate::VERSION);
        assert_eq!(b.data["seq"], 2);
        assert!(b.data["uptime_s"].as_f64().unwrap() >= 0.03);
        let host: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((b.data["host_uptime_s"].as_f64().unwrap() - host).abs() < 5.0);
    }
}
