//! `beacon/mem`: memory in use and available (MemAvailable: what can be had without swapping).
//!
//! Default: threshold on `used_pct` above 90, clearing below 85.

use super::{meminfo, pct, Defaults};
use crate::gate::Mode;
use crate::{obj, Beacon, Out};
use std::time::Duration;

pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(10),
    mode: Mode::Threshold,
    field: Some("used_pct"),
    fields: &["used_pct", "available_bytes", "used_bytes"],
    above: Some(90.0),
    below: None,
    hysteresis: 5.0,
};

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
        // Take and touch 256 MiB: available memory drops by most of it (other processes on the
        // machine move it too, so the check is generous).
        let mut big = vec![0u8; 256 << 20];
        for i in (0..big.len()).step_by(4096) {
            big[i] = 1;
        }
        let after = sample();
        std::hint::black_box(&big);
        let used_more =
            after["used_bytes"].as_i64().unwrap() - before["used_bytes"].as_i64().unwrap();
        assert!(used_more > 128 << 20, "used grew by only {used_more}");
    }
}
