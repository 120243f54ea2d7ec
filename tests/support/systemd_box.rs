//! Where a live systemd test runs: here when systemd is PID 1, else re-run inside a throwaway
//! systemd machine (`scripts/systemd-box`: systemd-nspawn over a copy-on-write view of this
//! machine's root, systemd as PID 1 with its system D-Bus), else nowhere, saying why. Shared
//! by the svc resource's and the svc beacon's live tests (`#[path]`-included by each).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the live test runs.
pub enum Live {
    /// systemd is PID 1 here.
    Here,
    /// In a systemd box, made by this script.
    InBox(PathBuf),
    /// Nowhere, for this reason.
    Skip(String),
}

/// Where the live test of a crate in this workspace (`manifest_dir`) can run; `root_needed`
/// says what it does as root, for the skip message.
pub fn live_where(manifest_dir: &str, root_needed: &str) -> Live {
    if Path::new("/run/systemd/system").is_dir() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Live::Skip(format!("not root: cannot {root_needed}"));
        }
        return Live::Here;
    }
    if let Ok(name) = std::env::var("SYSTEMD_BOX") {
        // Never a box in a box.
        return Live::Skip(format!(
            "inside systemd box {name}, but systemd is not running there"
        ));
    }
    let script = Path::new(manifest_dir).join("../scripts/systemd-box");
    match Command::new(&script).arg("check").output() {
        Ok(o) if o.status.success() => Live::InBox(script),
        Ok(o) => Live::Skip(format!(
            "systemd is not PID 1 here (no /run/systemd/system) and no systemd box can be made: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Live::Skip(format!(
            "systemd is not PID 1 here and {} does not run: {e}",
            script.display()
        )),
    }
}

/// Run the live test `test` of this binary inside a systemd box, and require that it passed
/// and printed `passed` (the proof it ran against a systemd, not skipped in there).
pub fn in_box(script: &Path, test: &str, passed: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(script)
        .arg("run")
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .output()
        .expect("scripts/systemd-box runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- in a systemd box ---\n{text}--- end of the box ---");
    assert!(
        out.status.success(),
        "the live test failed in the systemd box ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains(passed),
        "the live test did not run against systemd in the box:\n{text}"
    );
}
