//! An application that reports what it does to reflex, through the embeddable [`Emitter`].
//!
//! It "processes jobs" and emits `app/job/done` for each (with how long it took) and
//! `app/job/failed` for the ones that fail. A rule can react to them like to any beacon:
//!
//! ```sh
//! reflex up &                                            # a manager on tcp://127.0.0.1:4510
//! cargo run -p beacons --example app_events -- tcp://127.0.0.1:4510 20
//! reflex tail --filter app/
//! ```
//!
//! `emit` never blocks the application: with no manager there, events wait in a bounded queue
//! and, once it is full, are dropped and counted; the application goes on at full speed.

use beacons::Emitter;
use serde_json::json;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "tcp://127.0.0.1:4510".to_string());
    let jobs: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());

    let emitter = match Emitter::connect(&endpoint, &host) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot set up the emitter for {endpoint}: {e}");
            std::process::exit(1);
        }
    };
    for job in 0..jobs {
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(50)); // the application's real work
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if job % 7 == 6 {
            emitter.emit(
                "app/job/failed",
                json!({"job": job, "error": "disk quota exceeded"}),
            );
        } else {
            emitter.emit("app/job/done", json!({"job": job, "ms": ms}));
        }
    }
    println!(
        "{jobs} jobs done: {} events queued for {endpoint}, {} dropped",
        emitter.sent(),
        emitter.dropped()
    );
    // Give ZeroMQ a moment to write what is queued before the process exits (the emitter
    // itself never holds an application open).
    std::thread::sleep(Duration::from_millis(200));
}
