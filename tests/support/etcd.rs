//! A real etcd cluster for tests: N members (3 by default) on free loopback ports, each in its
//! own temporary data dir, started from Debian's `etcd-server` binary and waited for until every
//! member reports healthy. Drop kills every member and removes the dirs, also when the test
//! panics; the members also die with the test process (PR_SET_PDEATHSIG), so a test killed by
//! SIGKILL leaves none behind.
//!
//! `EtcdCluster::start` returns None, after printing why, only when `etcd` is not installed
//! (`.ci/run` installs it, so in CI the tests run). Included by the tests that need it with
//! `#[path = ".../tests/support/etcd.rs"] mod etcd;`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    dir: tempfile::TempDir,
}

/// True when an `etcd` binary is on PATH.
pub fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port free on loopback now, below the ephemeral range (it is closed again before etcd binds
/// it, and a port from that range may meanwhile become some connection's source port).
fn free_port() -> u16 {
    bus::endpoints::free_local_base().expect("a free loopback port")
}

impl EtcdCluster {
    /// Start `n` members and wait until each is healthy; None when etcd is not installed.
    pub fn start(n: usize) -> Option<EtcdCluster> {
        if !installed() {
            // Straight to stderr: the test harness captures eprintln! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: etcd is not installed (apt-get install etcd-server; .ci/run does it)"
            );
            return None;
        }
        // A port taken between our pick and etcd's bind fails the start: pick again.
        let mut last = String::new();
        for _ in 0..3 {
            match EtcdCluster::try_start(n) {
                Ok(c) => return Some(c),
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start: {last}");
    }

    fn try_start(n: usize) -> Result<EtcdCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut members: Vec<EtcdMember> = (1..=n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                log: dir.path().join(format!("m{i}.log")),
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            let log = std::fs::File::create(&m.log).map_err(|e| e.to_string())?;
            let log2 = log.try_clone().map_err(|e| e.to_string())?;
            let client = format!("http://127.0.0.1:{}", m.client_port);
            let peer = format!("http://127.0.0.1:{}", m.peer_port);
            let mut cmd = Command::new("etcd");
            cmd.arg("--name")
                .arg(&m.name)
                .arg("--data-dir")
                .arg(dir.path().join(&m.name))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args([
                    "--initial-cluster-token",
                    &format!("t{}", std::process::id()),
                ])
                // A group of a busy manager may write more keys than etcd's default of 128.
                .args(["--max-txn-ops", "10000"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            // SAFETY: prctl is async-signal-safe; the child dies with the thread that made it.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            m.child = Some(cmd.spawn().map_err(|e| e.to_string())?);
        }
        let cluster = EtcdCluster { members, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..n {
            while !cluster.healthy(i) {
                if cluster.members[i].exited() || Instant::now() > deadline {
                    return Err(format!(
                        "member {} not healthy; its log:\n{}",
                        cluster.members[i].name,
                        cluster.log(i)
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(cluster)
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,...` over every member (dead ones included).
    pub fn url(&self) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", eps.join(","))
    }

    /// The URL of member `i` alone.
    pub fn member_url(&self, i: usize) -> String {
        format!("etcd://127.0.0.1:{}", self.members[i].client_port)
    }

    /// True when member `i` answers `/health` with `"health":"true"`.
    pub fn healthy(&self, i: usize) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.members[i].client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }

    /// SIGKILL member `i` and wait for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl EtcdMember {
    fn exited(&self) -> bool {
        // try_wait needs &mut; a member that exited has closed its port, which health sees.
        self.child.is_none()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
