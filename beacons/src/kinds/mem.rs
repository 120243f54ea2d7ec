//! `beacon/mem`: memory in use and available (MemAvailable: what can be had without swapping).
//!
//! Default: threshold on `used_pct` above 90, clearing below 85.

use super::{meminfo, pct, Defaults};
use crate::gate::Mode;
use crate::{obj, Beacon, Out};
use std::time::Duration;

/// What `mem` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(10),
    mode: Mode::Threshold,
    field: Some("used_pct"),
    fields: &["used_pct", "available_bytes", "used_bytes"],
    above: Some(90.0),
    below: None,
    hysteresis: 5.0,
};

/// The `mem` beacon: memory in use and available.
pub struct Mem;

impl Beacon for Mem {
    fn kind(&self) -> &'static str {
        "mem"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let m = meminfo()?;
        let total = *m.get("MemTotal").ok_or("/proc/meminfo has no MemTotal")?;
        let available = *m
            .get("MemAvailable")
            .ok_or("/proc/meminfo has no MemAvailable")?;
        let used = total.saturating_sub(available);
        out.measure(
            "",
            obj! {
                "total_bytes" => total, "available_bytes" => available, "used_bytes" => used,
                "used_pct" => pct(used, total),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_memory_the_test_takes() {
        let sample = || {
            let mut out = Out::default();
            Mem.sample(&mut out).unwrap();
            out.readings[0].data.clone()
        };
        let before = sample();
        let total = before["total_bytes"].as_u64().unwrap();
        assert!(total > 0);
        assert_eq!(
            before["used_bytes"].as_u64().unwrap() + before["available_bytes"].as_u64().unwrap(),
            total
        );
        // The kernel's own figures, read independently right after.
        let raw = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib = |key: &str| -> u64 {
            let line = raw.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        assert_eq!(kib("MemTotal:"), total);
        let drift = before["available_bytes"].as_i64().unwrap() - kib("MemAvailable:") as i64;
        assert!(drift.abs() < 256 << 20, "available differs by {drift}");

        // Take and touch 1 GiB: memory in use grows by most of it. Builds on the machine free
        // and take memory too, so one try can be drowned out: up to ten, each looking again
        // for up to 2 s.
        let mut seen = Vec::new();
        for _ in 0..10 {
            let base = sample()["used_bytes"].as_i64().unwrap();
            let mut big = vec![0u8; 1 << 30];
            for i in (0..big.len()).step_by(4096) {
                big[i] = 1;
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut most = i64::MIN;
            while std::time::Instant::now() < deadline {
                most = most.max(sample()["used_bytes"].as_i64().unwrap() - base);
                if most > 768 << 20 {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            std::hint::black_box(&big);
            seen.push(most);
        }
        panic!("memory in use never showed the 1 GiB taken; it grew by at most {seen:?}");
    }
}
