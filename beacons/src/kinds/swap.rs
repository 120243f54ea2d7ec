//! `beacon/swap`: swap in use. A host without swap reports zeros.
//!
//! Default: threshold on `used_pct` above 80, clearing below 75.

use super::{meminfo, pct, Defaults};
use crate::gate::Mode;
use crate::{obj, Beacon, Out};
use std::time::Duration;

/// What `swap` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(30),
    mode: Mode::Threshold,
    field: Some("used_pct"),
    fields: &["used_pct", "used_bytes", "free_bytes"],
    above: Some(80.0),
    below: None,
    hysteresis: 5.0,
};

/// The `swap` beacon: swap in use.
pub struct Swap;

impl Beacon for Swap {
    fn kind(&self) -> &'static str {
        "swap"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let m = meminfo()?;
        let total = *m.get("SwapTotal").ok_or("/proc/meminfo has no SwapTotal")?;
        let free = *m.get("SwapFree").ok_or("/proc/meminfo has no SwapFree")?;
        let used = total.saturating_sub(free);
        out.measure(
            "",
            obj! {
                "total_bytes" => total, "free_bytes" => free, "used_bytes" => used,
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
    fn matches_proc_swaps() {
        let mut out = Out::default();
        Swap.sample(&mut out).unwrap();
        let d = &out.readings[0].data;
        // /proc/swaps lists each swap area's size in KiB; their sum is SwapTotal.
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
        let total_kib: u64 = swaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
            .sum();
        assert_eq!(d["total_bytes"].as_u64().unwrap(), total_kib * 1024);
        let pct = d["used_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pct));
        if total_kib == 0 {
            assert_eq!(pct, 0.0);
        }
    }
}
