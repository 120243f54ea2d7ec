//! Beacon kinds, one file each. Every file reads top to bottom: what the kind reports and its
//! defaults, its config, then its sample.

pub mod cert;
pub mod cpu;
pub mod disk;
pub mod file;
pub mod heartbeat;
pub mod http;
pub mod load;
pub mod log;
pub mod mem;
pub mod net;
pub mod proc;
pub mod svc;
pub mod swap;

use crate::config::{ConfigError, Fields};
use crate::gate::Mode;
use crate::Beacon;
use std::time::Duration;

/// Every kind, as named in a config file.
pub const KINDS: &[&str] = &[
    "load",
    "mem",
    "swap",
    "cpu",
    "disk",
    "net",
    "proc",
    "svc",
    "file",
    "log",
    "http",
    "cert",
    "heartbeat",
];

/// What a kind does when the config says nothing: chosen so a healthy host stays quiet.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub interval: Duration,
    pub mode: Mode,
    /// The number the mode looks at; None for kinds that send happenings, not measurements.
    pub field: Option<&'static str>,
    /// The numbers a `field` may name.
    pub fields: &'static [&'static str],
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub hysteresis: f64,
}

impl Defaults {
    /// Defaults of a kind that sends happenings (file, log, svc, heartbeat).
    pub const fn happenings(interval: Duration) -> Defaults {
        Defaults {
            interval,
            mode: Mode::Every,
            field: None,
            fields: &[],
            above: None,
            below: None,
            hysteresis: 0.0,
        }
    }
}

/// A kind's defaults, None for an unknown kind.
pub fn defaults(kind: &str) -> Option<Defaults> {
    Some(match kind {
        "load" => load::DEFAULTS,
        "mem" => mem::DEFAULTS,
        "swap" => swap::DEFAULTS,
        "cpu" => cpu::DEFAULTS,
        "disk" => disk::DEFAULTS,
        "net" => net::DEFAULTS,
        "proc" => proc::DEFAULTS,
        "svc" => svc::DEFAULTS,
        "file" => file::DEFAULTS,
        "log" => log::DEFAULTS,
        "http" => http::DEFAULTS,
        "cert" => cert::DEFAULTS,
        "heartbeat" => heartbeat::DEFAULTS,
        _ => return None,
    })
}

/// Build a kind from its own fields.
pub fn build(kind: &str, f: &mut Fields) -> Result<Box<dyn Beacon>, ConfigError> {
    Ok(match kind {
        "load" => Box::new(load::Load::new()),
        "mem" => Box::new(mem::Mem),
        "swap" => Box::new(swap::Swap),
        "cpu" => Box::new(cpu::Cpu::default()),
        "disk" => Box::new(disk::Disk::from_config(f)?),
        "net" => Box::new(net::Net::from_config(f)?),
        "proc" => Box::new(proc::Proc::from_config(f)?),
        "svc" => Box::new(svc::Svc::from_config(f)?),
        "file" => Box::new(file::File::from_config(f)?),
        "log" => Box::new(log::Log::from_config(f)?),
        "http" => Box::new(http::Http::from_config(f)?),
        "cert" => Box::new(cert::Cert::from_config(f)?),
        "heartbeat" => Box::new(heartbeat::Heartbeat::new()),
        other => return Err(f.error("kind", format!("unknown kind {other:?}"))),
    })
}

/// Read a small system file, with the path in the error.
pub(crate) fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// The `key: value kB` lines of /proc/meminfo, in bytes.
pub(crate) fn meminfo() -> Result<std::collections::HashMap<String, u64>, String> {
    let text = read("/proc/meminfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            let scale = if parts.next() == Some("kB") { 1024 } else { 1 };
            Some((k.to_string(), n * scale))
        })
        .collect())
}

/// Used percentage of `total`, 0 when there is no total.
pub(crate) fn pct(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        crate::round2(used as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, Instant};

    /// Poll `f` until Some, or panic naming `what` after 20 s (a deadline, not a timing).
    pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
