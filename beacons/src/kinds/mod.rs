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

/// What a kind does when the config says nothing: chosen so a healthy host stays quiet.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// How often it samples.
    pub interval: Duration,
    /// Which readings are sent.
    pub mode: Mode,
    /// The number the mode looks at; None for kinds that send happenings, not measurements.
    pub field: Option<&'static str>,
    /// The numbers a `field` may name.
    pub fields: &'static [&'static str],
    /// The threshold above which the field is a problem.
    pub above: Option<f64>,
    /// The threshold below which the field is a problem.
    pub below: Option<f64>,
    /// The band a value must come back past to be normal again.
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

/// One beacon kind: its name in a config file, its defaults, and how to build it from the
/// fields of its `[[beacon]]` table.
pub struct Kind {
    /// The name a config's `kind = "..."` gives, and the tag's `beacon/<name>`.
    pub name: &'static str,
    /// What it does when the config says nothing.
    pub defaults: Defaults,
    /// Build it from its own fields (the common ones are read already).
    pub build: fn(&mut Fields) -> Result<Box<dyn Beacon>, ConfigError>,
}

/// One row of [`KINDS`]: the kind's module (whose name is the kind's name) and how to make
/// its beacon from the fields `f`.
macro_rules! kind {
    ($module:ident, |$f:pat_param| $beacon:expr) => {
        Kind {
            name: stringify!($module),
            defaults: $module::DEFAULTS,
            build: |$f| Ok(Box::new($beacon)),
        }
    };
}

/// Every kind, in the order `reflex` lists them: the one table of kinds.
pub const KINDS: &[Kind] = &[
    kind!(load, |_| load::Load::new()),
    kind!(mem, |_| mem::Mem),
    kind!(swap, |_| swap::Swap),
    kind!(cpu, |_| cpu::Cpu::default()),
    kind!(disk, |f| disk::Disk::from_config(f)?),
    kind!(net, |f| net::Net::from_config(f)?),
    kind!(proc, |f| proc::Proc::from_config(f)?),
    kind!(svc, |f| svc::Svc::from_config(f)?),
    kind!(file, |f| file::File::from_config(f)?),
    kind!(log, |f| log::Log::from_config(f)?),
    kind!(http, |f| http::Http::from_config(f)?),
    kind!(cert, |f| cert::Cert::from_config(f)?),
    kind!(heartbeat, |_| heartbeat::Heartbeat::new()),
];

/// The kind named `name`, None for an unknown kind.
pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The names of every kind, comma-separated, for an error message.
pub fn names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
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
