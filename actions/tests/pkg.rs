//! The `pkg` kind for real: a local apt repository built by the test from two tiny .debs
//! (dpkg-deb), installed in one grouped apt transaction, repaired after a manual removal,
//! then removed. Skips, saying why, where apt cannot be driven (not root, no dpkg tools).

mod util;

use std::path::Path;
use std::process::Command;

use engine::{Engine, RunOptions};
use serde_json::json;
use util::*;

const PKGS: [&str; 2] = ["reflex-test-a", "reflex-test-b"];

fn sh(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", name])
        .output()
        .is_ok_and(|o| o.stdout == b"installed")
}

fn why_skip() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: apt-get cannot install packages".into());
    }
    for tool in ["dpkg-deb", "dpkg-scanpackages", "apt-get", "dpkg-query"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Removes the test's apt source when the test ends, however it ends.
struct Source(std::path::PathBuf);

impl Drop for Source {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Build the two packages and a flat apt repository of them; add it to apt's sources (only
/// it is updated, so no network is needed).
fn local_repo(root: &Path) -> Source {
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    for name in PKGS {
        let build = root.join(name);
        std::fs::create_dir_all(build.join("DEBIAN")).expect("DEBIAN");
        std::fs::create_dir_all(build.join("usr/share/reflex-test")).expect("share");
        std::fs::write(
            build.join("DEBIAN/control"),
            format!("Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: reflex tests <t@example.invalid>\nDescription: reflex pkg test package\n"),
        )
        .expect("control");
        std::fs::write(
            build.join(format!("usr/share/reflex-test/{name}.txt")),
            "hello\n",
        )
        .expect("payload");
        sh(
            "dpkg-deb",
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&build)
                .arg(repo.join(format!("{name}_1.0_all.deb"))),
        );
    }
    let packages = Command::new("dpkg-scanpackages")
        .args([".", "/dev/null"])
        .current_dir(&repo)
        .output()
        .expect("scan");
    std::fs::write(repo.join("Packages"), packages.stdout).expect("Packages");
    let list = std::path::PathBuf::from(format!(
        "/etc/apt/sources.list.d/reflex-test-{}.list",
        std::process::id()
    ));
    let source = Source(list.clone());
    std::fs::write(
        &list,
        format!("deb [trusted=yes] file:{} ./\n", repo.display()),
    )
    .expect("list");
    sh(
        "apt-get update (local repo only)",
        Command::new("apt-get")
            .args(["update", "-q"])
            .arg(format!("-oDir::Etc::sourcelist={}", list.display()))
            .args(["-oDir::Etc::sourceparts=-", "-oAPT::Get::List-Cleanup=0"]),
    );
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_install_grouped_repair_and_remove() {
    if let Some(why) = why_skip() {
        eprintln!("SKIPPED pkg test: {why}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let _source = local_repo(tmp.path());
    for name in PKGS {
        let _ = Command::new("dpkg").args(["-P", name]).output();
    }
    let g = |state: &str| {
        graph(json!([
            {"kind": "pkg", "name": PKGS[0], "state": state},
            {"kind": "pkg", "name": PKGS[1], "state": state},
        ]))
    };
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g("installed"), RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert!(PKGS.iter().all(|p| installed(p)));
    assert_eq!(
        engine::kinds::pkg::transactions(),
        1,
        "the two installs were not grouped"
    );

    // Removed by hand: dpkg's status file changes, the watch sees it, apt puts it back.
    sh("dpkg -r", Command::new("dpkg").args(["-r", PKGS[1]]));
    eventually("package reinstalled", || installed(PKGS[1])).await;

    // Autoedge: a file the package owns depends on it.
    let owned = format!("/usr/share/reflex-test/{}.txt", PKGS[0]);
    let dot = graph(json!([
        {"kind": "file", "name": owned, "content": "hello\n"},
        {"kind": "pkg", "name": PKGS[0]},
    ]))
    .to_dot("g");
    assert!(dot.contains("n1 -> n0 [style=dashed"), "{dot}");

    let stats = running.swap(g("absent")).await;
    assert_eq!(stats.added, 2);
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert!(PKGS.iter().all(|p| !installed(p)));
    running.stop().await;
    engine::compliance::check(json!({"kind": "pkg", "name": PKGS[0], "state": "absent"}))
        .await
        .expect("pkg complies");
}
