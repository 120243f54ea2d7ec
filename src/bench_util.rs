//! What the benchmarks share: daemons as child processes on free ports, the raw ZeroMQ floor,
//! and the manager's counters.

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
    let child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {} {}: {e}", exe.display(), args[0]))?;
    Ok(Daemon(child))
}

/// A port base whose five ports are free now.
pub fn free_port_base() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = probe.local_addr()?.port();
        drop(probe);
        if base < 60_000
            && (0..5).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return Ok(base);
        }
    }
    Err(anyhow::anyhow!("no five consecutive free ports found"))
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

pub fn stats(control: &str) -> anyhow::Result<serde_json::Value> {
    crate::send::control_request(control, &json!({"cmd": "stats"}), Duration::from_secs(5))
}

pub fn events_seen(control: &str) -> anyhow::Result<u64> {
    stats(control)?["events"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("manager stats lack an event count"))
}
