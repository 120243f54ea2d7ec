//! Modes, done once for every numeric kind: which measurements become events.
//!
//! - `every`: each sample is sent.
//! - `change`: the first sample of each subject, then each one whose value moved by more than
//!   `delta` since the last one sent (any move when `delta` is 0).
//! - `threshold`: one event when the value goes above `above` (or below `below`), marked
//!   `alert = "above"` / `"below"`; one event marked `alert = "clear"` when it comes back past
//!   the hysteresis band (below `above - hysteresis`, above `below + hysteresis`). Nothing while
//!   it stays on one side, so a value wobbling around a limit does not flap.
//!
//! Each subject (a mount, an interface) has its own state. Events sent in `change` and
//! `threshold` mode carry `field` and `value`; threshold events carry `limit` too.

use crate::Reading;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Which of a beacon's readings are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send every reading.
    Every,
    /// Send when the field moved by at least `delta`.
    Change,
    /// Send when the field crosses `above` or `below`, and when it comes back past the
    /// hysteresis band.
    Threshold,
}

impl Mode {
    /// The mode as a config names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Every => "every",
            Mode::Change => "change",
            Mode::Threshold => "threshold",
        }
    }
}

/// A beacon's mode, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// Which readings are sent.
    pub mode: Mode,
    /// The field whose number the mode looks at (booleans count as 1 and 0).
    pub field: Option<String>,
    /// Threshold mode: a value above this is a problem.
    pub above: Option<f64>,
    /// Threshold mode: a value below this is a problem.
    pub below: Option<f64>,
    /// Threshold mode: how far back past the threshold a value must come to be normal again.
    pub hysteresis: f64,
    /// Change mode: the smallest move that is sent (0: any move).
    pub delta: f64,
}

impl GateConfig {
    /// Every reading is sent.
    pub fn every() -> GateConfig {
        GateConfig {
            mode: Mode::Every,
            field: None,
            above: None,
            below: None,
            hysteresis: 0.0,
            delta: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Normal,
    Above,
    Below,
}

#[derive(Debug, Default)]
struct Subject {
    last_sent: Option<f64>,
    side: Option<Side>,
}

/// The mode state of one beacon.
#[derive(Debug)]
pub struct Gate {
    cfg: GateConfig,
    subjects: HashMap<String, Subject>,
}

impl Gate {
    /// A gate that has seen nothing yet.
    pub fn new(cfg: GateConfig) -> Gate {
        Gate {
            cfg,
            subjects: HashMap::new(),
        }
    }

    /// What it was made with.
    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    /// The data to send for `reading`, or None when the mode keeps it back. Happenings (not
    /// gated) always pass. A reading without the mode's field passes in `every` mode only.
    pub fn pass(&mut self, reading: Reading) -> Option<Map<String, Value>> {
        let mut data = reading.data;
        if !reading.gated || self.cfg.mode == Mode::Every {
            return Some(data);
        }
        let field = self.cfg.field.clone()?;
        let value = number(data.get(&field)?)?;
        let st = self.subjects.entry(reading.subject).or_default();
        match self.cfg.mode {
            Mode::Every => unreachable!("handled above"),
            Mode::Change => {
                let moved = match st.last_sent {
                    None => true,
                    Some(last) if self.cfg.delta == 0.0 => last != value,
                    Some(last) => (value - last).abs() >= self.cfg.delta,
                };
                if !moved {
                    return None;
                }
                st.last_sent = Some(value);
                data.insert("field".into(), json!(field));
                data.insert("value".into(), json!(value));
                Some(data)
            }
            Mode::Threshold => {
                let (a, b, h) = (self.cfg.above, self.cfg.below, self.cfg.hysteresis);
                let over = |v: f64| a.is_some_and(|a| v > a);
                let under = |v: f64| b.is_some_and(|b| v < b);
                let old = st.side.unwrap_or(Side::Normal);
                let new = match old {
                    Side::Above if a.is_some_and(|a| value > a - h) => Side::Above,
                    Side::Below if b.is_some_and(|b| value < b + h) => Side::Below,
                    _ if over(value) => Side::Above,
                    _ if under(value) => Side::Below,
                    _ => Side::Normal,
                };
                st.side = Some(new);
                if new == old {
                    return None;
                }
                let (alert, limit) = match new {
                    Side::Above => ("above", a),
                    Side::Below => ("below", b),
                    Side::Normal if old == Side::Above => ("clear", a),
                    Side::Normal => ("clear", b),
                };
                data.insert("alert".into(), json!(alert));
                data.insert("field".into(), json!(field));
                data.insert("value".into(), json!(value));
                data.insert("limit".into(), json!(limit));
                Some(data)
            }
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        other => other.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(mode: Mode, above: Option<f64>, below: Option<f64>, h: f64, delta: f64) -> Gate {
        Gate::new(GateConfig {
            mode,
            field: Some("v".into()),
            above,
            below,
            hysteresis: h,
            delta,
        })
    }

    fn feed(g: &mut Gate, subject: &str, v: Value) -> Option<Map<String, Value>> {
        let mut data = Map::new();
        data.insert("v".into(), v);
        g.pass(Reading {
            subject: subject.into(),
            data,
            gated: true,
        })
    }

    /// The alerts a series of values produces, "-" for silence.
    fn alerts(g: &mut Gate, values: &[f64]) -> Vec<String> {
        values
            .iter()
            .map(|&v| match feed(g, "", json!(v)) {
                None => "-".to_string(),
                Some(d) => d
                    .get("alert")
                    .and_then(Value::as_str)
                    .unwrap_or("sent")
                    .to_string(),
            })
            .collect()
    }

    #[test]
    fn threshold_above_fires_once_and_clears_past_the_band() {
        let mut g = gate(Mode::Threshold, Some(90.0), None, 5.0, 0.0);
        // Quiet while healthy; one alert on crossing; nothing while it wobbles around 90
        // (inside the band); clear only below 85; then a new crossing alerts again.
        let got = alerts(
            &mut g,
            &[
                10.0, 50.0, 91.0, 95.0, 89.0, 91.0, 86.0, 84.9, 80.0, 90.0, 90.5,
            ],
        );
        assert_eq!(
            got,
            ["-", "-", "above", "-", "-", "-", "-", "clear", "-", "-", "above"]
        );
    }

    #[test]
    fn threshold_below_and_both_sides() {
        let mut g = gate(Mode::Threshold, None, Some(1.0), 0.0, 0.0);
        // A count: absent (0) alerts, present again (1) clears.
        assert_eq!(
            alerts(&mut g, &[1.0, 2.0, 0.0, 0.0, 1.0, 3.0]),
            ["-", "-", "below", "-", "clear", "-"]
        );
        let mut g = gate(Mode::Threshold, Some(80.0), Some(20.0), 5.0, 0.0);
        // Straight from above to below is one event saying below.
        assert_eq!(
            alerts(&mut g, &[50.0, 85.0, 10.0, 24.0, 26.0]),
            ["-", "above", "below", "-", "clear"]
        );
    }

    #[test]
    fn threshold_alerts_at_start_when_already_past_the_limit() {
        let mut g = gate(Mode::Threshold, Some(90.0), None, 0.0, 0.0);
        let d = feed(&mut g, "", json!(99.0)).unwrap();
        assert_eq!(d["alert"], "above");
        assert_eq!(d["limit"], 90.0);
        assert_eq!(d["field"], "v");
        assert_eq!(d["value"], 99.0);
    }

    #[test]
    fn booleans_count_as_one_and_zero() {
        let mut g = gate(Mode::Threshold, None, Some(1.0), 0.0, 0.0);
        assert!(feed(&mut g, "eth0", json!(true)).is_none());
        assert_eq!(
            feed(&mut g, "eth0", json!(false)).unwrap()["alert"],
            "below"
        );
        assert_eq!(feed(&mut g, "eth0", json!(true)).unwrap()["alert"], "clear");
    }

    #[test]
    fn subjects_are_independent() {
        let mut g = gate(Mode::Threshold, Some(90.0), None, 0.0, 0.0);
        assert!(feed(&mut g, "/", json!(95.0)).is_some());
        assert!(feed(&mut g, "/home", json!(95.0)).is_some());
        assert!(feed(&mut g, "/", json!(96.0)).is_none());
    }

    #[test]
    fn change_sends_the_first_then_only_moves() {
        let mut g = gate(Mode::Change, None, None, 0.0, 0.0);
        assert_eq!(
            alerts(&mut g, &[1.0, 1.0, 2.0, 2.0, 1.0]),
            ["sent", "-", "sent", "-", "sent"]
        );
        let mut g = gate(Mode::Change, None, None, 0.0, 5.0);
        // Moves are measured from the last value sent, so slow drift still gets through.
        assert_eq!(
            alerts(&mut g, &[50.0, 52.0, 54.0, 56.0, 57.0, 50.0]),
            ["sent", "-", "-", "sent", "-", "sent"]
        );
    }

    #[test]
    fn every_sends_all_and_happenings_always_pass() {
        let mut g = gate(Mode::Every, None, None, 0.0, 0.0);
        assert_eq!(alerts(&mut g, &[1.0, 1.0]), ["sent", "sent"]);
        let mut g = gate(Mode::Threshold, Some(1.0), None, 0.0, 0.0);
        let r = Reading {
            subject: String::new(),
            data: Map::new(),
            gated: false,
        };
        assert!(g.pass(r.clone()).is_some());
        assert!(g.pass(r).is_some());
    }
}
