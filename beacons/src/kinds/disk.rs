//! `beacon/disk`: per mount, space and inodes used (as `df` counts them: space reserved for
//! root is not free to others).
//!
//! `mounts = ["/", "/var"]` picks mounts (a missing one is reported as a failure of that
//! subject); by default every mount of a real (block device) filesystem, plus `/`, one mount
//! per device. Default: threshold on `used_pct` above 90, clearing below 88.

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::gate::Mode;
use crate::{obj, Beacon, Out};
use std::collections::HashSet;
use std::time::Duration;

/// What `disk` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(60),
    mode: Mode::Threshold,
    field: Some("used_pct"),
    fields: &["used_pct", "free_bytes", "inodes_used_pct", "inodes_free"],
    above: Some(90.0),
    below: None,
    hysteresis: 2.0,
};

/// The `disk` beacon: space and inodes used, per mount.
pub struct Disk {
    mounts: Option<Vec<String>>,
}

impl Disk {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<Disk, ConfigError> {
        Ok(Disk {
            mounts: f.strings("mounts")?,
        })
    }

    /// The given mounts, or every mount of a real filesystem (and `/`) when None.
    pub fn new(mounts: Option<Vec<String>>) -> Disk {
        Disk { mounts }
    }
}

/// One line of /proc/self/mounts.
struct Mount {
    device: String,
    path: String,
    fstype: String,
}

/// Undo the octal escapes of /proc/self/mounts (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Result<Vec<Mount>, String> {
    Ok(super::read("/proc/self/mounts")?
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some(Mount {
                device: unescape(p.next()?),
                path: unescape(p.next()?),
                fstype: p.next()?.to_string(),
            })
        })
        .collect())
}

/// Filesystems without a block device (proc, tmpfs, cgroup…), from /proc/filesystems.
fn nodev_types() -> HashSet<String> {
    super::read("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nodev").map(|t| t.trim().to_string()))
        .collect()
}

/// The default mounts: real filesystems and `/`, the first mount of each device.
fn default_mounts() -> Result<Vec<Mount>, String> {
    let nodev = nodev_types();
    let mut devices = HashSet::new();
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.path == "/" || !nodev.contains(&m.fstype))
        .filter(|m| devices.insert(m.device.clone()))
        .collect())
}

/// statvfs(3) of a path.
pub fn statvfs(path: &str) -> Result<libc::statvfs, String> {
    let c = std::ffi::CString::new(path).map_err(|_| format!("bad path {path:?}"))?;
    // SAFETY: a valid C string and a zeroed out-struct the call fills in.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(format!(
                "cannot stat {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(st)
    }
}

/// statvfs fields as u64: their C types are 32 bits wide on some targets.
#[allow(clippy::unnecessary_cast)]
fn counts(st: &libc::statvfs) -> [u64; 6] {
    [
        st.f_frsize as u64,
        st.f_blocks as u64,
        st.f_bfree as u64,
        st.f_bavail as u64,
        st.f_files as u64,
        st.f_ffree as u64,
    ]
}

impl Beacon for Disk {
    fn kind(&self) -> &'static str {
        "disk"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let all = mounts()?;
        let picked: Vec<Mount> = match &self.mounts {
            None => default_mounts()?,
            Some(list) => list
                .iter()
                .map(|p| {
                    // The last mount at a path is the one in effect.
                    all.iter()
                        .rev()
                        .find(|m| &m.path == p)
                        .map(|m| Mount {
                            device: m.device.clone(),
                            path: m.path.clone(),
                            fstype: m.fstype.clone(),
                        })
                        .unwrap_or(Mount {
                            device: String::new(),
                            path: p.clone(),
                            fstype: String::new(),
                        })
                })
                .collect(),
        };
        for m in picked {
            if m.fstype.is_empty() {
                out.problem(&m.path, format!("{} is not a mount point", m.path));
                continue;
            }
            let st = match statvfs(&m.path) {
                Ok(st) => st,
                Err(e) => {
                    out.problem(&m.path, e);
                    continue;
                }
            };
            let [frsize, blocks, bfree, bavail, files, ffree] = counts(&st);
            let used = blocks.saturating_sub(bfree);
            out.measure(
                m.path.clone(),
                obj! {
                    "mount" => m.path, "device" => m.device, "fstype" => m.fstype,
                    "total_bytes" => blocks * frsize,
                    "free_bytes" => bavail * frsize,
                    // As df: used over what non-root users can have.
                    "used_pct" => super::pct(used, used + bavail),
                    "inodes_total" => files,
                    "inodes_free" => ffree,
                    "inodes_used_pct" => super::pct(files.saturating_sub(ffree), files),
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_matches_df_and_a_missing_mount_is_a_problem() {
        let mut d = Disk::new(Some(vec!["/".into(), "/no/such/mount".into()]));
        let mut out = Out::default();
        d.sample(&mut out).unwrap();
        assert_eq!(out.readings.len(), 1);
        let r = &out.readings[0];
        assert_eq!(r.subject, "/");
        assert_eq!(out.problems.len(), 1);
        assert_eq!(out.problems[0].0, "/no/such/mount");
        // df's own view of / (it rounds the percentage up to a whole number).
        let df = std::process::Command::new("df")
            .args(["-P", "-B1", "/"])
            .output()
            .expect("df runs");
        let text = String::from_utf8_lossy(&df.stdout);
        let cols: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        let total: f64 = cols[1].parse().unwrap();
        let df_pct: f64 = cols[4].trim_end_matches('%').parse().unwrap();
        let ours = r.data["used_pct"].as_f64().unwrap();
        assert!((ours - df_pct).abs() <= 2.0, "ours {ours} df {df_pct}");
        assert_eq!(r.data["total_bytes"].as_f64().unwrap(), total);
        assert!(r.data["inodes_total"].as_u64().is_some());
    }

    #[test]
    fn default_mounts_include_root_once() {
        let mut d = Disk::new(None);
        let mut out = Out::default();
        d.sample(&mut out).unwrap();
        let roots = out.readings.iter().filter(|r| r.subject == "/").count();
        assert_eq!(roots, 1, "{:?}", out.readings);
        assert!(out.readings.iter().all(|r| r.data["fstype"] != "proc"));
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
