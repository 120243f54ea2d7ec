//! The beacon config file: TOML, one `[[beacon]]` table per beacon.
//!
//! ```toml
//! host = "web1"              # optional: the host name events carry (default: this machine's)
//! spool = "/var/lib/reflex/spool"  # optional: where unacknowledged events wait on disk
//!
//! [[beacon]]
//! kind = "disk"              # required
//! interval = "60s"           # "500ms", "10s", "5m", "1h", "1d" or a number of seconds
//! mode = "threshold"         # "every" | "change" | "threshold" (numeric kinds)
//! field = "used_pct"         # the number the mode looks at (each kind has a default)
//! above = 90                 # threshold mode: alert above this …
//! below = 5                  # … or below this
//! hysteresis = 2             # the band a value must come back through to clear
//! delta = 1                  # change mode: the least change that counts
//! label = "root disk"        # optional: copied into every event as `label`
//! mounts = ["/"]             # kind-specific fields
//! ```
//!
//! Every mistake is reported with the file, the line and the field: an unknown kind, an unknown
//! field for that kind, a value of the wrong type, a bad duration or regex, a threshold without
//! a limit.

use crate::gate::{GateConfig, Mode};
use crate::Beacon;
use std::collections::HashSet;
use std::time::Duration;
use thiserror::Error;
use toml_edit::{ImDocument, Item, Table, Value};

/// A mistake in a config file, located.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{source_name}:{line}: {}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The file (or what the text came from).
    pub source_name: String,
    /// The line of the mistake.
    pub line: usize,
    /// The field, when the mistake is in one.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// A parsed config: the beacons, built and ready to start.
pub struct Config {
    /// The host name events carry, when the file sets it.
    pub host: Option<String>,
    /// Where the events not acknowledged yet wait on disk, when the file sets it.
    pub spool: Option<std::path::PathBuf>,
    /// The beacons, in file order.
    pub beacons: Vec<Spec>,
}

/// One configured beacon.
pub struct Spec {
    /// The beacon, built from its fields.
    pub beacon: Box<dyn Beacon>,
    /// How often it samples.
    pub interval: Duration,
    /// Its mode.
    pub gate: GateConfig,
    /// A label its events carry, to tell two beacons of one kind apart.
    pub label: Option<String>,
    /// The line of its `[[beacon]]` header, for messages.
    pub line: usize,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("kind", &self.beacon.kind())
            .field("interval", &self.interval)
            .field("gate", &self.gate)
            .field("label", &self.label)
            .field("line", &self.line)
            .finish()
    }
}

impl Config {
    /// Parse `text`; `source_name` (the file name) prefixes every error.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Config::parse_beside(text, source_name, &[])
    }

    /// [`Config::parse`], leaving the top-level keys named in `outside` to the caller: the
    /// settings of the program that runs the beacons (`reflex beacon`'s `addr`, `state`, ...),
    /// which an operator keeps in the same file. `port_base` is taken as `port-base`.
    pub fn parse_beside(
        text: &str,
        source_name: &str,
        outside: &[&str],
    ) -> Result<Config, ConfigError> {
        let doc = ImDocument::parse(text).map_err(|e| ConfigError {
            source_name: source_name.to_string(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            field: None,
            message: e.message().trim().to_string(),
        })?;
        let root = doc.as_table();
        let mut top = Fields::new(root, text, source_name, 1, "the file");
        let host = top.string("host")?;
        if let Some(h) = &host {
            if h.is_empty() || h.contains(['/', ' ']) {
                return Err(top.error("host", "must be a name without '/' or spaces"));
            }
        }
        let spool = top.string("spool")?.map(std::path::PathBuf::from);
        if spool.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(top.error("spool", "must be a path"));
        }
        let mut beacons = Vec::new();
        match root.get("beacon") {
            None => {}
            Some(Item::ArrayOfTables(list)) => {
                for table in list.iter() {
                    let line = table.span().map(|s| line_of(text, s.start)).unwrap_or(1);
                    let mut f = Fields::new(table, text, source_name, line, "this beacon");
                    beacons.push(build(&mut f)?);
                }
            }
            Some(_) => {
                return Err(top.error(
                    "beacon",
                    "must be written as `[[beacon]]` tables, one per beacon",
                ))
            }
        }
        top.used.insert("beacon".into());
        for (key, _) in root.iter() {
            if outside.contains(&key.replace('_', "-").as_str()) {
                top.used.insert(key.to_string());
            }
        }
        top.finish()?;
        Ok(Config {
            host,
            spool,
            beacons,
        })
    }

    /// Read and parse a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        Config::load_beside(path, &[])
    }

    /// Read and parse a file, leaving the keys in `outside` to the caller
    /// ([`Config::parse_beside`]).
    pub fn load_beside(path: &std::path::Path, outside: &[&str]) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            line: 0,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse_beside(&text, &name, outside)
    }

    /// Set every beacon's interval to `interval` (the `--interval` flag, the benchmark).
    pub fn override_interval(&mut self, interval: Duration) {
        for s in &mut self.beacons {
            s.interval = interval;
        }
    }
}

/// Build one beacon from its table: the common fields here, the kind's own in its file.
fn build(f: &mut Fields) -> Result<Spec, ConfigError> {
    let kind = f
        .string("kind")?
        .ok_or_else(|| f.error_at_table("kind", "missing: every beacon needs a kind"))?;
    let Some(found) = crate::kinds::find(&kind) else {
        return Err(f.error(
            "kind",
            format!(
                "unknown kind {kind:?}; known kinds: {}",
                crate::kinds::names()
            ),
        ));
    };
    let defaults = found.defaults;
    f.what = format!("kind {kind:?}");
    let interval = f.duration("interval")?.unwrap_or(defaults.interval);
    let label = f.string("label")?;
    let gate = GateConfig::from_fields(f, &defaults)?;
    let beacon = (found.build)(f)?;
    f.finish()?;
    Ok(Spec {
        beacon,
        interval,
        gate,
        label,
        line: f.line,
    })
}

/// Parse "500ms", "10s", "5m", "1h", "1d" (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"500ms\", \"10s\", \"5m\", \"1h\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Typed access to one table's fields, remembering which were read so that a field nobody
/// read (a typo, a field of another kind) is an error naming its line.
pub struct Fields<'a> {
    table: &'a Table,
    text: &'a str,
    source_name: &'a str,
    /// The line of the table's header.
    pub line: usize,
    /// What the table is, for messages: "this beacon", "kind \"disk\"".
    what: String,
    used: HashSet<String>,
}

impl<'a> Fields<'a> {
    fn new(
        table: &'a Table,
        text: &'a str,
        source_name: &'a str,
        line: usize,
        what: &str,
    ) -> Fields<'a> {
        Fields {
            table,
            text,
            source_name,
            line,
            what: what.to_string(),
            used: HashSet::new(),
        }
    }

    /// The line a field is on (its key), or the table's when it is absent.
    fn line_of_field(&self, key: &str) -> usize {
        self.table
            .get_key_value(key)
            .and_then(|(k, item)| k.span().or_else(|| item.span()))
            .map(|s| line_of(self.text, s.start))
            .unwrap_or(self.line)
    }

    /// An error about `key`, at its line.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source_name.to_string(),
            line: self.line_of_field(key),
            field: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn error_at_table(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source_name.to_string(),
            line: self.line,
            field: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// Whether the table sets `key` (without reading it).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn value(&mut self, key: &str) -> Result<Option<&'a Value>, ConfigError> {
        self.used.insert(key.to_string());
        match self.table.get(key) {
            None => Ok(None),
            Some(Item::Value(v)) => Ok(Some(v)),
            Some(_) => Err(self.error(key, "must be a value, not a table")),
        }
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> ConfigError {
        self.error(key, format!("must be {want}, not {}", got.type_name()))
    }

    /// A string.
    pub fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.value(key)? {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.wrong(key, "a string", v)),
        }
    }

    /// A string or an array of strings.
    pub fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.value(key)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.value().clone()])),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.wrong(key, "an array of strings", v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.wrong(key, "a string or an array of strings", v)),
        }
    }

    /// A number (an integer or a float).
    pub fn f64(&mut self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.value(key)? {
            None => Ok(None),
            Some(v) => match (v.as_float(), v.as_integer()) {
                (Some(x), _) if x.is_finite() => Ok(Some(x)),
                (_, Some(i)) => Ok(Some(i as f64)),
                _ => Err(self.wrong(key, "a number", v)),
            },
        }
    }

    /// An integer of 0 or more.
    pub fn u64(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.value(key)? {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a whole number ≥ 0", v)),
        }
    }

    /// true or false.
    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.value(key)? {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "true or false", v)),
        }
    }

    /// A duration string ("10s") or a number of seconds.
    pub fn duration(&mut self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.value(key)? {
            None => Ok(None),
            Some(v) => {
                let parsed = if let Some(s) = v.as_str() {
                    parse_duration(s)
                } else if let Some(n) = v.as_integer().map(|i| i as f64).or(v.as_float()) {
                    parse_duration(&n.to_string())
                } else {
                    return Err(self.wrong(key, "a duration like \"10s\"", v));
                };
                parsed.map(Some).map_err(|e| self.error(key, e))
            }
        }
    }

    /// A regular expression, compiled.
    pub fn regex(&mut self, key: &str) -> Result<Option<regex::Regex>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => regex::Regex::new(&s)
                .map(Some)
                .map_err(|e| self.error(key, format!("not a valid regex: {e}"))),
        }
    }

    /// One of `choices`.
    pub fn choice(&mut self, key: &str, choices: &[&str]) -> Result<Option<String>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) if choices.contains(&s.as_str()) => Ok(Some(s)),
            Some(s) => Err(self.error(key, format!("{s:?} is not one of {}", choices.join(", ")))),
        }
    }

    /// A required field is missing.
    pub fn missing(&self, key: &str, why: &str) -> ConfigError {
        self.error_at_table(key, format!("missing: {} needs it ({why})", self.what))
    }

    /// Reject fields nobody read.
    fn finish(&self) -> Result<(), ConfigError> {
        let mut unknown: Vec<&str> = self
            .table
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !self.used.contains(*k))
            .collect();
        unknown.sort_by_key(|k| self.line_of_field(k));
        match unknown.first() {
            None => Ok(()),
            Some(k) => {
                let mut known: Vec<&str> = self.used.iter().map(String::as_str).collect();
                known.sort_unstable();
                Err(self.error(
                    k,
                    format!(
                        "unknown field for {}; known fields: {}",
                        self.what,
                        known.join(", ")
                    ),
                ))
            }
        }
    }
}

impl GateConfig {
    /// The mode fields, with the kind's defaults filling in what the file leaves out.
    fn from_fields(f: &mut Fields, d: &crate::kinds::Defaults) -> Result<GateConfig, ConfigError> {
        let mode = match f.choice("mode", &["every", "change", "threshold"])? {
            None => d.mode,
            Some(m) if d.field.is_none() => {
                return Err(f.error(
                    "mode",
                    format!("{m:?}: this kind sends happenings, not numbers, so it has no mode"),
                ))
            }
            Some(m) => match m.as_str() {
                "every" => Mode::Every,
                "change" => Mode::Change,
                _ => Mode::Threshold,
            },
        };
        let field = f.string("field")?;
        if let Some(name) = &field {
            if !d.fields.contains(&name.as_str()) {
                return Err(f.error(
                    "field",
                    format!(
                        "{name:?} is not a number this kind reports; it reports: {}",
                        d.fields.join(", ")
                    ),
                ));
            }
        }
        let above = f.f64("above")?;
        let below = f.f64("below")?;
        let hysteresis = f.f64("hysteresis")?;
        let delta = f.f64("delta")?;
        if hysteresis.is_some_and(|h| h < 0.0) {
            return Err(f.error("hysteresis", "must not be negative"));
        }
        if delta.is_some_and(|h| h < 0.0) {
            return Err(f.error("delta", "must not be negative"));
        }
        // Limits of the file replace the kind's default limits as a whole: a new `above` on
        // another field must not inherit the default `below` of the default field.
        let own_limits = field.is_some() || above.is_some() || below.is_some();
        let (above, below) = if own_limits {
            (above, below)
        } else {
            (d.above, d.below)
        };
        let same_field = field.as_deref().is_none_or(|n| Some(n) == d.field);
        let hysteresis = hysteresis.unwrap_or(if same_field { d.hysteresis } else { 0.0 });
        if mode == Mode::Threshold {
            if above.is_none() && below.is_none() {
                return Err(
                    f.error_at_table("above", "threshold mode needs `above` or `below` (or both)")
                );
            }
            if let (Some(a), Some(b)) = (above, below) {
                if a <= b {
                    return Err(f.error("above", format!("{a} must be more than below ({b})")));
                }
            }
        } else {
            for key in ["above", "below", "hysteresis"] {
                if f.has(key) {
                    return Err(f.error(key, "only means something with mode = \"threshold\""));
                }
            }
        }
        if mode != Mode::Change && f.has("delta") {
            return Err(f.error("delta", "only means something with mode = \"change\""));
        }
        Ok(GateConfig {
            mode,
            field: field.or(d.field.map(str::to_string)),
            above,
            below,
            hysteresis,
            delta: delta.unwrap_or(0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        match Config::parse(text, "b.toml") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn a_good_config_builds_every_beacon() {
        let c = Config::parse(
            "host = \"web1\"\n\n[[beacon]]\nkind = \"disk\"\ninterval = \"10s\"\nmounts = [\"/\"]\n\n[[beacon]]\nkind = \"mem\"\nmode = \"change\"\ndelta = 5\n",
            "b.toml",
        )
        .unwrap();
        assert_eq!(c.host.as_deref(), Some("web1"));
        assert_eq!(c.beacons.len(), 2);
        assert_eq!(c.beacons[0].beacon.kind(), "disk");
        assert_eq!(c.beacons[0].interval, Duration::from_secs(10));
        assert_eq!(c.beacons[0].gate.mode, Mode::Threshold);
        assert_eq!(c.beacons[1].gate.mode, Mode::Change);
        assert_eq!(c.beacons[1].gate.delta, 5.0);
        assert_eq!(c.beacons[1].line, 8);
    }

    #[test]
    fn the_spool_is_a_path_when_set() {
        let c = Config::parse("spool = \"/var/spool/b\"\n", "b.toml").unwrap();
        assert_eq!(c.spool, Some(std::path::PathBuf::from("/var/spool/b")));
        assert_eq!(Config::parse("", "b.toml").unwrap().spool, None);
        let Err(err) = Config::parse("spool = \"\"\n", "b.toml") else {
            panic!("an empty spool path is refused");
        };
        assert_eq!(err.field.as_deref(), Some("spool"));
    }

    #[test]
    fn the_shipped_default_config_is_valid() {
        let c = Config::parse(crate::DEFAULT_CONFIG, "default.toml").unwrap();
        assert!(c.beacons.iter().any(|s| s.beacon.kind() == "heartbeat"));
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = err("[[beacon]]\nkind = \"disk\"\nintervall = \"10s\"\n");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("intervall")));
        assert!(
            e.to_string()
                .starts_with("b.toml:3: field `intervall`: unknown field"),
            "{e}"
        );

        let e = err("[[beacon]]\nkind = \"disk\"\n\ninterval = \"10x\"\n");
        assert_eq!((e.line, e.field.as_deref()), (4, Some("interval")));

        let e = err("[[beacon]]\nkind = \"dsik\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("kind")));
        assert!(e.message.contains("known kinds"), "{e}");

        let e = err("# x\n[[beacon]]\ninterval = \"1s\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("kind")));

        let e = err("[[beacon]]\nkind = \"mem\"\nabove = \"high\"\n");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("above")));
        assert!(e.message.contains("must be a number"), "{e}");

        let e = err("[[beacon]]\nkind = \"mem\"\nmode = \"loud\"\n");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("mode")));

        let e = err("[[beacon]]\nkind = \"mem\"\nfield = \"nope\"\n");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("field")));

        let e = err("[[beacon]]\nkind = \"mem\"\nmode = \"threshold\"\nabove = 10\nbelow = 20\n");
        assert_eq!((e.line, e.field.as_deref()), (4, Some("above")));

        let e = err("[[beacon]]\nkind = \"log\"\npath = \"/x\"\nmatch = \"(\"\n");
        assert_eq!((e.line, e.field.as_deref()), (4, Some("match")));

        let e = err("[[beacon]]\nkind = \"log\"\n");
        assert_eq!((e.line, e.field.as_deref()), (1, Some("path")));

        let e = err("[[beacon]]\nkind = \"file\"\npaths = [\"/tmp\"]\nmode = \"every\"\n");
        assert_eq!((e.line, e.field.as_deref()), (4, Some("mode")));

        let e = err("[[beacon]]\nkind = \"disk\"\nmounts = 3\n");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("mounts")));

        let e = err("hots = \"x\"\n");
        assert_eq!((e.line, e.field.as_deref()), (1, Some("hots")));

        let e = err("[[beacon]]\nkind = \"disk\"\ninterval = \n");
        assert_eq!(e.line, 3);
        assert_eq!(e.field, None);
    }
}
