//! reflex beacons: the senses of a host.
//!
//! A beacon measures something on its host at an interval and PUSHes what it saw to the manager
//! as an event tagged `beacon/<kind>`. Each kind lives in its own file under [`kinds`]; the
//! [`Emitter`] is the small sending library beacons, `reflex send` and any application share.

pub mod emitter;
pub mod kinds;

pub use emitter::{send_once, Emitter, SendError};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One beacon kind: takes a sample each tick.
pub trait Beacon: Send {
    /// The kind, as in the tag `beacon/<kind>`.
    fn kind(&self) -> &'static str;
    /// Measure now; `Ok(None)` when there is nothing to report this tick. An error is the
    /// beacon's own failure (a file that vanished, a URL that timed out): it is reported as an
    /// event too, never swallowed.
    fn sample(&mut self) -> Result<Option<serde_json::Value>, String>;
}

/// Run one beacon every `interval` until `stop` is set, emitting through `emitter`.
pub fn run(beacon: &mut dyn Beacon, emitter: &Emitter, interval: Duration, stop: &AtomicBool) {
    let tag = format!("beacon/{}", beacon.kind());
    let error_tag = format!("beacon/{}/error", beacon.kind());
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            match beacon.sample() {
                Ok(Some(data)) => {
                    emitter.emit(&tag, data);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(beacon = beacon.kind(), "{error}");
                    emitter.emit(
                        &error_tag,
                        serde_json::json!({"kind": beacon.kind(), "error": error}),
                    );
                }
            }
            next += interval;
            // After a long stall (suspend), skip the missed ticks rather than firing them all.
            if next < Instant::now() {
                next = Instant::now() + interval;
            }
        }
        let left = next.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}
