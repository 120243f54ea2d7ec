//! `beacon/net`: per interface, bytes per second in and out over the last interval, error and
//! drop counters, and whether the link is up.
//!
//! `interfaces = ["eth0"]` picks interfaces; by default every one but `lo`. Default: threshold
//! on `up` below 1, so the only events are a link going down and coming back. Rates appear from
//! the second sample on.

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::gate::Mode;
use crate::{obj, round2, Beacon, Out};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What `net` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(10),
    mode: Mode::Threshold,
    field: Some("up"),
    fields: &[
        "up",
        "rx_bytes_per_s",
        "tx_bytes_per_s",
        "rx_errors",
        "tx_errors",
        "rx_dropped",
        "tx_dropped",
    ],
    above: None,
    below: Some(1.0),
    hysteresis: 0.0,
};

/// The `net` beacon: bytes per second in and out, per interface.
pub struct Net {
    interfaces: Option<Vec<String>>,
    last: HashMap<String, (Instant, u64, u64)>,
}

impl Net {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<Net, ConfigError> {
        Ok(Net::new(f.strings("interfaces")?))
    }

    /// The given interfaces, or every one but loopback when None.
    pub fn new(interfaces: Option<Vec<String>>) -> Net {
        Net {
            interfaces,
            last: HashMap::new(),
        }
    }
}

/// Counters of one interface from /proc/net/dev.
struct Counters {
    rx_bytes: u64,
    rx_errors: u64,
    rx_dropped: u64,
    tx_bytes: u64,
    tx_errors: u64,
    tx_dropped: u64,
}

fn counters() -> Result<HashMap<String, Counters>, String> {
    let text = super::read("/proc/net/dev")?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            if v.len() < 12 {
                return None;
            }
            Some((
                name.trim().to_string(),
                Counters {
                    rx_bytes: v[0],
                    rx_errors: v[2],
                    rx_dropped: v[3],
                    tx_bytes: v[8],
                    tx_errors: v[10],
                    tx_dropped: v[11],
                },
            ))
        })
        .collect())
}

/// (up, operstate): "unknown" (loopback, some virtual links) counts as up when the interface
/// is administratively up.
fn link(name: &str) -> (bool, String) {
    let base = format!("/sys/class/net/{name}");
    let state = std::fs::read_to_string(format!("{base}/operstate"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let flags = std::fs::read_to_string(format!("{base}/flags"))
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    let admin_up = flags & libc::IFF_UP as u64 != 0;
    (state == "up" || (state == "unknown" && admin_up), state)
}

impl Beacon for Net {
    fn kind(&self) -> &'static str {
        "net"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let all = counters()?;
        let names: Vec<String> = match &self.interfaces {
            Some(list) => list.clone(),
            None => {
                let mut v: Vec<String> = all.keys().filter(|n| *n != "lo").cloned().collect();
                v.sort();
                v
            }
        };
        let now = Instant::now();
        for name in names {
            let Some(c) = all.get(&name) else {
                out.problem(&name, format!("no interface {name}"));
                continue;
            };
            let (up, state) = link(&name);
            let mut data = obj! {
                "interface" => name, "up" => up, "operstate" => state,
                "rx_bytes" => c.rx_bytes, "tx_bytes" => c.tx_bytes,
                "rx_errors" => c.rx_errors, "tx_errors" => c.tx_errors,
                "rx_dropped" => c.rx_dropped, "tx_dropped" => c.tx_dropped,
            };
            if let Some((t, rx, tx)) = self.last.get(&name) {
                let secs = now.duration_since(*t).as_secs_f64();
                if secs > 0.0 {
                    let rate = |a: u64, b: u64| round2(a.saturating_sub(b) as f64 / secs);
                    data.insert("rx_bytes_per_s".into(), rate(c.rx_bytes, *rx).into());
                    data.insert("tx_bytes_per_s".into(), rate(c.tx_bytes, *tx).into());
                }
            }
            self.last
                .insert(name.clone(), (now, c.rx_bytes, c.tx_bytes));
            out.measure(name, data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn loopback_traffic_shows_as_bytes_and_rate() {
        let mut n = Net::new(Some(vec!["lo".into(), "nosuch0".into()]));
        let mut first = Out::default();
        n.sample(&mut first).unwrap();
        assert_eq!(first.problems[0].0, "nosuch0");
        let r = &first.readings[0].data;
        assert_eq!(r["up"], true, "{r:?}");
        assert!(
            r.get("rx_bytes_per_s").is_none(),
            "no rate before a second sample"
        );
        // 4 MiB over a real loopback TCP connection.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            buf.len()
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(&vec![7u8; 4 << 20]).unwrap();
        drop(c);
        assert_eq!(t.join().unwrap(), 4 << 20);
        let mut second = Out::default();
        n.sample(&mut second).unwrap();
        let r2 = &second.readings[0].data;
        let grew = r2["rx_bytes"].as_u64().unwrap() - r["rx_bytes"].as_u64().unwrap();
        assert!(grew >= 4 << 20, "lo rx grew by {grew}");
        assert!(r2["rx_bytes_per_s"].as_f64().unwrap() > 0.0);
    }
}
