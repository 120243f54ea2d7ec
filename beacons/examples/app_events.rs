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
//! It speaks CURVE with the admin key of the stack's state dir (`REFLEX_STATE`, default
//! `.reflex`, as `reflex up` made it), pinning that dir's `keys/manager.pub`.
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

    let state = std::path::PathBuf::from(
        std::env::var("REFLEX_STATE").unwrap_or_else(|_| ".reflex".into()),
    );
    let keys = bus::keys::key_dir(&state);
    let server = bus::keys::public_path(&keys, bus::keys::Role::Manager);
    let security = match (
        bus::keys::load_or_create(&keys, bus::keys::Role::Admin),
        bus::PublicKey::from_file(&server),
    ) {
        (Ok(pair), Ok(server)) => bus::secure::Security::Curve { pair, server },
        (Err(e), _) => fail(&format!("admin key in {}: {e}", keys.display())),
        (_, Err(e)) => fail(&format!("manager key (is `reflex up` running here?): {e}")),
    };
    let emitter = match Emitter::connect(&endpoint, &host, &security) {
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

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(1)
}
