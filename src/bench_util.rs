//! What the benchmarks share: daemons as child processes on free ports, the raw ZeroMQ floor,
//! and the manager's counters.

use bus::secure::Security;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn daemon(exe: &Path, args: &[String]) -> anyhow::Result<Daemon> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.args(args).env("RUST_LOG", "warn");
    // SAFETY: prctl(2) only, between fork and exec. A bench killed before it could stop its
    // daemons takes them with it, so they never skew the next run.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {} {}: {e}", exe.display(), args[0]))?;
    Ok(Daemon(child))
}

/// A port base whose ports (all [`bus::endpoints::TCP_PORTS`]) are free now.
pub fn free_port_base() -> anyhow::Result<u16> {
    Ok(bus::endpoints::free_local_base()?)
}

/// Raw ZeroMQ PUSH -> PULL over loopback TCP: the floor nothing built on it can beat.
pub fn floor(n: u64, size: usize) -> anyhow::Result<f64> {
    let port = free_port_base()?;
    let ep = format!("tcp://127.0.0.1:{port}");
    let pull = bus::sockets::bind(zmq::PULL, &ep)?;
    let push = bus::sockets::connect(zmq::PUSH, &ep)?;
    push.send("warm-up", 0)?;
    pull.recv_bytes(0)?;
    let payload = vec![0x5au8; size];
    let receiver = std::thread::spawn(move || -> anyhow::Result<Instant> {
        let mut msg = zmq::Message::new();
        for _ in 0..n {
            pull.recv(&mut msg, 0)?;
        }
        Ok(Instant::now())
    });
    let start = Instant::now();
    for _ in 0..n {
        push.send(&payload[..], 0)?;
    }
    let end = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("floor receiver panicked"))??;
    Ok(n as f64 / (end - start).as_secs_f64())
}

pub fn stats(control: &str, sec: &Security) -> anyhow::Result<serde_json::Value> {
    crate::send::control_request(
        control,
        &json!({"cmd": "stats"}),
        Duration::from_secs(5),
        sec,
    )
}

pub fn events_seen(control: &str, sec: &Security) -> anyhow::Result<u64> {
    stats(control, sec)?["events"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("manager stats lack an event count"))
}

/// A manager and publisher (and whatever else a bench adds) as child processes of this one, on
/// free ports with a throwaway state dir; everything is stopped and removed when dropped.
pub struct BenchStack {
    pub endpoints: bus::Endpoints,
    /// The admin key of the stack's state dir, pinning its manager key.
    pub security: Security,
    state: std::path::PathBuf,
    base: u16,
    /// False: every part runs `--insecure`.
    secure: bool,
    exe: std::path::PathBuf,
    /// Each part's arguments (the first is the subcommand) and its process.
    daemons: Vec<(Vec<String>, Daemon)>,
    // Last, so the daemons are stopped before their state dir goes away.
    _tmp: tempfile::TempDir,
}

impl BenchStack {
    /// Start a publisher and a manager whose rules folder `write_rules` fills; returns once
    /// the manager's control socket answers.
    pub fn start(
        write_rules: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<BenchStack> {
        BenchStack::start_as(write_rules, true)
    }

    /// [`BenchStack::start`], with CURVE (`secure`) or every part `--insecure`.
    pub fn start_as(
        write_rules: impl FnOnce(&Path) -> anyhow::Result<()>,
        secure: bool,
    ) -> anyhow::Result<BenchStack> {
        BenchStack::start_with(write_rules, secure, &[])
    }

    /// [`BenchStack::start_as`], the manager given `manager_extra` flags too.
    pub fn start_with(
        write_rules: impl FnOnce(&Path) -> anyhow::Result<()>,
        secure: bool,
        manager_extra: &[String],
    ) -> anyhow::Result<BenchStack> {
        let tmp = tempfile::tempdir()?;
        let state = tmp.path().join("state");
        let rules = tmp.path().join("rules");
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(&rules)?;
        write_rules(&rules)?;
        // Made before any part starts: the actor pins it from the state dir.
        bus::envelope::SignKey::load_or_create(&state)?;
        let base = free_port_base()?;
        let mut s = BenchStack {
            endpoints: bus::Endpoints::local(base, &state),
            security: if secure {
                crate::security::local_admin(&state, base)?
            } else {
                Security::Insecure
            },
            secure,
            state,
            base,
            exe: std::env::current_exe()?,
            daemons: Vec::new(),
            _tmp: tmp,
        };
        s.spawn("publisher", &[])?;
        let mut margs = vec!["--rules".to_string(), rules.display().to_string()];
        margs.extend_from_slice(manager_extra);
        s.spawn("manager", &margs)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while stats(&s.endpoints.control, &s.security).is_err() {
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!("the bench manager did not come up"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// Enroll the stack's host key, accepted, as `name` (before starting an actor so named).
    pub fn enroll_host(&self, name: &str) -> anyhow::Result<()> {
        crate::security::enroll_local_host(&self.state, name, &[])
    }

    /// Start `reflex SUB --state .. --port-base .. EXTRA...` as part of the stack.
    pub fn spawn(&mut self, sub: &str, extra: &[String]) -> anyhow::Result<()> {
        let mut args = vec![
            sub.to_string(),
            "--state".into(),
            self.state.display().to_string(),
            "--port-base".into(),
            self.base.to_string(),
        ];
        if !self.secure {
            args.push("--insecure".into());
        }
        args.extend_from_slice(extra);
        let d = daemon(&self.exe, &args)?;
        self.daemons.push((args, d));
        Ok(())
    }

    /// Kill the part `sub` with SIGKILL, wait `away`, and start it again as it was.
    pub fn kill_and_restart(&mut self, sub: &str, away: Duration) -> anyhow::Result<()> {
        let Some(i) = self.daemons.iter().position(|(a, _)| a[0] == sub) else {
            return Err(anyhow::anyhow!("no {sub} in this stack"));
        };
        let (args, mut d) = self.daemons.remove(i);
        let _ = d.0.kill();
        let _ = d.0.wait();
        std::thread::sleep(away);
        let d = daemon(&self.exe, &args)?;
        self.daemons.push((args, d));
        Ok(())
    }

    /// The process id of the part `sub`.
    pub fn pid(&self, sub: &str) -> Option<u32> {
        self.daemons
            .iter()
            .find(|(a, _)| a[0] == sub)
            .map(|(_, d)| d.0.id())
    }

    /// The stack's state dir.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// Send `n` frames (cycling through `frames`) through a [`bus::sender::Sender`] as the
    /// admin, and wait until the manager acknowledged them all (done, effects durable):
    /// (events per second, seconds the application took to hand them over).
    pub fn send_acked(&self, frames: &[Vec<u8>], n: u64) -> anyhow::Result<(f64, f64)> {
        let mut cfg = bus::sender::SenderConfig::new(&self.endpoints.ingest, &self.security);
        cfg.retain = 200_000;
        let s = bus::sender::Sender::start(cfg)?;
        // One through first, so the connection and the acks door are up before the clock.
        s.send_frame_waiting(frames[0].clone());
        if !s.wait_acked(Duration::from_secs(20)) {
            return Err(anyhow::anyhow!("the bench manager acknowledged nothing"));
        }
        let start = Instant::now();
        for i in 0..n {
            s.send_frame_waiting(frames[(i % frames.len() as u64) as usize].clone());
        }
        let sent = start.elapsed().as_secs_f64();
        if !s.wait_acked(Duration::from_secs(600)) {
            return Err(anyhow::anyhow!(
                "the manager did not acknowledge all events within 10 minutes ({} left)",
                s.pending()
            ));
        }
        Ok((n as f64 / start.elapsed().as_secs_f64(), sent))
    }

    /// Push `n` lone frames (cycling through `frames`: no stream, no acks) into the manager and
    /// wait until it counted them all: (events per second through the manager, seconds the
    /// sender took).
    pub fn push_through(
        &self,
        push: &zmq::Socket,
        frames: &[Vec<u8>],
        n: u64,
    ) -> anyhow::Result<(f64, f64)> {
        let before = events_seen(&self.endpoints.control, &self.security)?;
        let start = Instant::now();
        for i in 0..n {
            push.send(&frames[(i % frames.len() as u64) as usize][..], 0)?;
        }
        let sent = start.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(600);
        while events_seen(&self.endpoints.control, &self.security)? < before + n {
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!(
                    "the manager did not take all events within 10 minutes"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok((n as f64 / start.elapsed().as_secs_f64(), sent))
    }
}

/// Events with tag `tag` from `hosts` hosts, padded to about `bytes` encoded, encoded ahead so
/// a sender measures the receiver, not its own encoding.
pub fn padded_frames(tag: &str, hosts: usize, bytes: usize) -> Vec<Vec<u8>> {
    (0..hosts.max(1))
        .map(|h| {
            let mut ev = bus::Event::new(tag, format!("host-{h:03}"), json!({"seq": h, "pad": ""}));
            let base = bus::encode(&ev).len();
            ev.data["pad"] = json!("x".repeat(bytes.saturating_sub(base)));
            bus::encode(&ev)
        })
        .collect()
}

/// (user, kernel) CPU seconds of a process so far.
pub fn cpu_split(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) as f64 / hz, ticks(12) as f64 / hz))
}

/// (utime + stime in seconds, peak RSS, private (anonymous) RSS now, in bytes) of a process.
pub fn usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let (user, sys) = cpu_split(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/{pid}/status"))
    };
    Ok((user + sys, kb("VmHWM:")? * 1024, kb("RssAnon:")? * 1024))
}

/// (resident memory now in bytes, open file descriptors) of a process.
pub fn rss_fds(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok((rss * 1024, fds))
}

/// A process's open file descriptors: those it holds (sockets, its store, inotify, pipes) and
/// the file resource's temp files being written now (work in flight, not held: their number
/// follows the write rate and the disk's fsync time).
pub fn fds_split(pid: u32) -> anyhow::Result<(u64, u64)> {
    let (mut held, mut writing) = (0, 0);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        // A descriptor closed between the listing and the look is neither.
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.to_string_lossy().contains(engine::os::TEMP_MARK) {
            writing += 1;
        } else {
            held += 1;
        }
    }
    Ok((held, writing))
}

/// The `p` quantile (0..=1) of sorted samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
