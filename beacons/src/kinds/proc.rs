//! `beacon/proc`: a process by name or pattern — present or not, how many, their memory and
//! CPU.
//!
//! `name = "nginx"` matches the process name (as in `ps -e`, `/proc/<pid>/comm`) or the file
//! name of its program; `pattern = "gunicorn .*app:main"` is a regex over the whole command
//! line. Default: threshold on `count` below 1, so the events are "it is gone" and "it is
//! back". `cpu_pct` (percent of one core, all matches together) appears from the second sample.

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::gate::Mode;
use crate::{obj, round2, Beacon, Out};
use regex::Regex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What `proc` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(10),
    mode: Mode::Threshold,
    field: Some("count"),
    fields: &["count", "present", "rss_bytes", "cpu_pct"],
    above: None,
    below: Some(1.0),
    hysteresis: 0.0,
};

/// How the process is found.
pub enum Matcher {
    /// Its name, exactly.
    Name(String),
    /// A pattern its command line matches.
    Pattern(Regex),
}

/// The `proc` beacon: a process present or not, how many, their memory and CPU.
pub struct Proc {
    matcher: Matcher,
    /// CPU ticks per pid at the last sample, to turn into a rate.
    last: Option<(Instant, HashMap<u32, u64>)>,
    page: u64,
    ticks_per_s: f64,
}

impl Proc {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<Proc, ConfigError> {
        let name = f.string("name")?;
        let pattern = f.regex("pattern")?;
        let matcher = match (name, pattern) {
            (Some(n), None) if !n.is_empty() => Matcher::Name(n),
            (None, Some(p)) => Matcher::Pattern(p),
            (Some(_), Some(_)) => {
                return Err(f.error("pattern", "give `name` or `pattern`, not both"))
            }
            _ => return Err(f.missing("name", "a process `name` or a command-line `pattern`")),
        };
        Ok(Proc::new(matcher))
    }

    /// Watch the processes `matcher` finds.
    pub fn new(matcher: Matcher) -> Proc {
        // SAFETY: sysconf only reads a system constant.
        let (page, hz) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_CLK_TCK),
            )
        };
        Proc {
            matcher,
            last: None,
            page: if page > 0 { page as u64 } else { 4096 },
            ticks_per_s: if hz > 0 { hz as f64 } else { 100.0 },
        }
    }

    fn matches(&self, pid: u32) -> bool {
        match &self.matcher {
            Matcher::Name(n) => {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim_end() == n {
                    return true;
                }
                // comm is cut at 15 bytes; the program's file name is not.
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
                let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
                base == n.as_bytes()
            }
            Matcher::Pattern(re) => {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let line: Vec<u8> = cmd.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
                re.is_match(String::from_utf8_lossy(&line).trim_end())
            }
        }
    }

    /// (rss bytes, utime + stime ticks) of a process; None when it is gone.
    fn usage(&self, pid: u32) -> Option<(u64, u64)> {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((rss_pages * self.page, ticks))
    }
}

impl Beacon for Proc {
    fn kind(&self) -> &'static str {
        "proc"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let me = std::process::id();
        let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me && self.matches(pid))
            .collect();
        pids.sort_unstable();
        let now = Instant::now();
        let mut ticks = HashMap::new();
        let mut rss = 0;
        for &pid in &pids {
            if let Some((r, t)) = self.usage(pid) {
                rss += r;
                ticks.insert(pid, t);
            }
        }
        let what = match &self.matcher {
            Matcher::Name(n) => ("name", n.clone()),
            Matcher::Pattern(p) => ("pattern", p.as_str().to_string()),
        };
        let mut data = obj! {
            what.0 => what.1,
            "count" => pids.len(),
            "present" => !pids.is_empty(),
            "pids" => pids.iter().take(20).collect::<Vec<_>>(),
            "rss_bytes" => rss,
        };
        if let Some((t, before)) = &self.last {
            let secs = now.duration_since(*t).as_secs_f64();
            if secs > 0.0 {
                // Only processes seen both times: a new one has no baseline yet.
                let used: u64 = ticks
                    .iter()
                    .filter_map(|(pid, t)| Some(t.saturating_sub(*before.get(pid)?)))
                    .sum();
                data.insert(
                    "cpu_pct".into(),
                    round2(used as f64 / self.ticks_per_s / secs * 100.0).into(),
                );
            }
        }
        self.last = Some((now, ticks));
        out.measure("", data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{Gate, GateConfig};
    use std::process::Command;

    fn sample(p: &mut Proc) -> serde_json::Map<String, serde_json::Value> {
        let mut out = Out::default();
        p.sample(&mut out).unwrap();
        out.readings.remove(0).data
    }

    fn default_gate() -> Gate {
        Gate::new(GateConfig {
            mode: DEFAULTS.mode,
            field: DEFAULTS.field.map(str::to_string),
            above: DEFAULTS.above,
            below: DEFAULTS.below,
            hysteresis: DEFAULTS.hysteresis,
            delta: 0.0,
        })
    }

    #[test]
    fn a_spawned_process_is_seen_and_its_death_alerts_once() {
        // A unique command line, so no other process on the machine matches.
        let secs = format!("{}.{}", 900 + std::process::id() % 97, std::process::id());
        let pattern = Regex::new(&format!("^sleep {}$", regex::escape(&secs))).unwrap();
        let mut p = Proc::new(Matcher::Pattern(pattern));
        let mut gate = default_gate();
        let absent = sample(&mut p);
        assert_eq!(absent["count"], 0);
        assert_eq!(
            gate.pass(crate::Reading {
                subject: "".into(),
                data: absent,
                gated: true
            })
            .unwrap()["alert"],
            "below"
        );

        let mut child = Command::new("sleep").arg(&secs).spawn().unwrap();
        let pid = child.id();
        let seen = crate::kinds::tests::wait_for("the sleep to be seen", || {
            let d = sample(&mut p);
            (d["count"] == 1).then_some(d)
        });
        assert_eq!(seen["present"], true);
        assert_eq!(seen["pids"], serde_json::json!([pid]));
        assert!(seen["rss_bytes"].as_u64().unwrap() > 0);
        assert!(seen.get("cpu_pct").is_some());
        let back = gate
            .pass(crate::Reading {
                subject: "".into(),
                data: seen.clone(),
                gated: true,
            })
            .unwrap();
        assert_eq!(back["alert"], "clear");
        assert!(gate
            .pass(crate::Reading {
                subject: "".into(),
                data: seen,
                gated: true
            })
            .is_none());

        child.kill().unwrap();
        child.wait().unwrap();
        let gone = sample(&mut p);
        assert_eq!(gone["count"], 0);
        assert_eq!(gone["present"], false);
        assert_eq!(
            gate.pass(crate::Reading {
                subject: "".into(),
                data: gone,
                gated: true
            })
            .unwrap()["alert"],
            "below"
        );
    }

    #[test]
    fn by_name_including_names_longer_than_comm() {
        // A copy of `sleep` under a long, unique name: comm is cut at 15 bytes, the program's
        // file name is not.
        let dir = tempfile::tempdir().unwrap();
        let name = format!("reflex-test-sleeper-{}", std::process::id());
        let exe = dir.path().join(&name);
        let sleep = Command::new("sh")
            .args(["-c", "command -v sleep"])
            .output()
            .unwrap();
        let sleep = String::from_utf8(sleep.stdout).unwrap();
        std::fs::copy(sleep.trim(), &exe).unwrap();
        // A fresh copy can be briefly "text file busy" while another test thread forks.
        let mut child = crate::kinds::tests::wait_for("the sleeper to start", || {
            Command::new(&exe).arg("60").spawn().ok()
        });
        let mut p = Proc::new(Matcher::Name(name));
        let d = crate::kinds::tests::wait_for("the sleeper by name", || {
            let d = sample(&mut p);
            (d["count"] == 1).then_some(d)
        });
        assert_eq!(d["pids"], serde_json::json!([child.id()]));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(sample(&mut p)["count"], 0);
    }
}
