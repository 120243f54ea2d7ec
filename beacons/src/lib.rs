//! reflex beacons: the senses of a host, cheap and quiet.
//!
//! A beacon measures something on its host and PUSHes what it saw to the manager as an event
//! tagged `beacon/<kind>`, carrying the host name and, in its data, the beacon `kind`. Each kind
//! lives in its own file under [`kinds`] and implements one small interface, [`Beacon`]: take a
//! sample, put [`Out`] readings and problems into it. Everything around that is done once, in
//! the [`runner`], for every kind alike:
//!
//! - **modes** ([`gate`]): `every`, `change` or `threshold` (above/below with a hysteresis
//!   band), so a healthy host says little;
//! - **failures as events**: a beacon's own failure becomes `beacon/<kind>/error` when it starts
//!   (or changes), and `beacon/<kind>/recovered` when it ends — never silence, never a flood;
//! - **scheduling**: each beacon on its own thread, sampling at its interval, or at once when an
//!   event-driven kind (file, svc) wakes it.
//!
//! The [`config`] module reads the `[[beacon]]` TOML file and names the line and field of any
//! mistake. The [`Emitter`] is the small sending library beacons, `reflex send` and any
//! application share: non-blocking, bounded, drops counted, reconnecting by itself, and, with a
//! spool, keeping what it holds on disk across a restart.

#![deny(missing_docs)]

pub mod config;
pub mod emitter;
pub mod gate;
pub mod kinds;
pub mod runner;

pub use config::{Config, ConfigError};
pub use emitter::{send_once, Emitter, SendError};
pub use gate::{Gate, GateConfig, Mode};
pub use runner::{run, Running, Waker};

use serde_json::{Map, Value};

/// The shipped default beacon config: what `reflex up` runs.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// The beacons' version, reported by the heartbeat.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One beacon kind.
pub trait Beacon: Send {
    /// The kind, as in the tag `beacon/<kind>`.
    fn kind(&self) -> &'static str;

    /// Set up what the kind watches (inotify, a D-Bus subscription). `waker` makes the runner
    /// sample at once instead of at the next tick. Called again at each tick until it succeeds;
    /// an error is reported like a failed sample.
    fn start(&mut self, _waker: Waker) -> Result<(), String> {
        Ok(())
    }

    /// Measure now, or collect what happened since the last call. An `Err` is the beacon's own
    /// failure as a whole; a problem with one subject (one mount, one path) goes to
    /// [`Out::problem`] so the others still report.
    fn sample(&mut self, out: &mut Out) -> Result<(), String>;
}

/// What one sample produced.
#[derive(Debug, Default)]
pub struct Out {
    /// The measurements and happenings, in order.
    pub readings: Vec<Reading>,
    /// (subject, message): failures of one part of a beacon.
    pub problems: Vec<(String, String)>,
}

impl Out {
    /// A measurement of `subject` ("" for the host as a whole): it goes through the mode gate.
    pub fn measure(&mut self, subject: impl Into<String>, data: Map<String, Value>) {
        self.readings.push(Reading {
            subject: subject.into(),
            data,
            gated: true,
        });
    }

    /// Something that happened (a file changed, a log line matched): always sent.
    pub fn event(&mut self, data: Map<String, Value>) {
        self.readings.push(Reading {
            subject: String::new(),
            data,
            gated: false,
        });
    }

    /// A failure of one subject; the rest of the sample still counts.
    pub fn problem(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.problems.push((subject.into(), message.into()));
    }
}

/// One measurement or happening, before identity and mode are applied.
#[derive(Debug, Clone)]
pub struct Reading {
    /// What it is about: a mount, an interface, a unit; "" for the host as a whole.
    pub subject: String,
    /// The event's data.
    pub data: Map<String, Value>,
    /// A measurement the mode gate decides on; false for a happening, always sent.
    pub gated: bool,
}

/// Build a JSON object from `key => value` pairs.
#[macro_export]
macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = ::serde_json::Map::new();
        $( m.insert(($k).to_string(), ::serde_json::json!($v)); )*
        m
    }};
}

/// Round to two decimals: enough for percentages and rates, and stable for `change` mode.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
