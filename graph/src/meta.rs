//! Metaparams: the `meta:` map every resource may carry, applied once by the engine for every
//! kind (mgmt's MetaParams): retry/delay, timeout, poll, limit/burst, sema, noop, autoedge.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::GraphError;
use crate::fields::{type_name, Fields};

/// The engine-side settings of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// Retries after a failed check-apply or watch; -1 = forever. Default 0.
    pub retry: i64,
    /// Pause between retries.
    pub delay: Duration,
    /// Upper bound for one check-apply; `None` = no bound.
    pub timeout: Option<Duration>,
    /// Check on this interval instead of watching (for things with no event API).
    pub poll: Option<Duration>,
    /// Check-applies per second allowed on average; `None` = unlimited.
    pub limit: Option<f64>,
    /// Check-applies allowed back to back before `limit` applies. Default 1.
    pub burst: u32,
    /// Named counting semaphores (`"pkg:1"`) held around each check-apply, sorted.
    pub sema: Vec<(String, usize)>,
    /// Check only, never change.
    pub noop: bool,
    /// Let the engine add implied edges (parent directories and the like). Default true.
    pub autoedge: bool,
}

impl Default for Meta {
    fn default() -> Meta {
        Meta {
            retry: 0,
            delay: Duration::ZERO,
            timeout: None,
            poll: None,
            limit: None,
            burst: 1,
            sema: Vec::new(),
            noop: false,
            autoedge: true,
        }
    }
}

/// Largest accepted duration field, so arithmetic on them can never overflow.
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

impl Meta {
    /// This one behind an `Arc`: the defaults are one copy shared by every vertex that has them.
    pub fn shared(self) -> std::sync::Arc<Meta> {
        static DEFAULT: std::sync::LazyLock<std::sync::Arc<Meta>> =
            std::sync::LazyLock::new(|| std::sync::Arc::new(Meta::default()));
        if self == **DEFAULT {
            std::sync::Arc::clone(&DEFAULT)
        } else {
            std::sync::Arc::new(self)
        }
    }

    /// Parse a `meta:` map for `resource` (`kind:name`), rejecting unknown keys.
    pub(crate) fn parse(resource: &str, v: Option<Value>) -> Result<Meta, GraphError> {
        let map: Map<String, Value> = match v {
            None | Some(Value::Null) => return Ok(Meta::default()),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(GraphError::InvalidField {
                    resource: resource.to_string(),
                    field: "meta".into(),
                    reason: format!("expected a map, got {}", type_name(&other)),
                })
            }
        };
        let mut f = Fields::meta(resource.to_string(), map);
        let duration = |f: &mut Fields, key: &str, scale: f64, allow_zero: bool| {
            let Some(n) = f.opt_number(key)? else {
                return Ok(None);
            };
            let secs = n * scale;
            if secs < 0.0 || (!allow_zero && secs == 0.0) || secs > MAX_SECS {
                return Err(f.invalid(key, format!("{n} is out of range")));
            }
            Ok(Some(Duration::from_secs_f64(secs)))
        };
        // In key order, so of several bad keys the first one is reported.
        let mut meta = Meta::default();
        if let Some(autoedge) = f.opt_bool("autoedge")? {
            meta.autoedge = autoedge;
        }
        if let Some(n) = f.opt_number("burst")? {
            if n.fract() != 0.0 || !(1.0..=1e6).contains(&n) {
                return Err(f.invalid("burst", format!("{n} is not a count >= 1")));
            }
            meta.burst = n as u32;
        }
        if let Some(delay) = duration(&mut f, "delay", 1e-3, true)? {
            meta.delay = delay;
        }
        if let Some(n) = f.opt_number("limit")? {
            if n <= 0.0 {
                return Err(f.invalid("limit", format!("{n} is not a positive rate per second")));
            }
            meta.limit = Some(n);
        }
        if let Some(noop) = f.opt_bool("noop")? {
            meta.noop = noop;
        }
        meta.poll = duration(&mut f, "poll", 1.0, false)?;
        if let Some(n) = f.opt_number("retry")? {
            if n.fract() != 0.0 || n < -1.0 || n > u32::MAX as f64 {
                return Err(f.invalid("retry", format!("{n} is not a count (-1 = forever)")));
            }
            meta.retry = n as i64;
        }
        if let Some(value) = f.opt_value("sema") {
            meta.sema = parse_semas(&f, &value)?;
        }
        meta.timeout = duration(&mut f, "timeout", 1e-3, false)?;
        f.finish()?;
        Ok(meta)
    }
}

/// `sema: "name:count"` or a list of them, sorted and deduplicated.
fn parse_semas(f: &Fields, value: &Value) -> Result<Vec<(String, usize)>, GraphError> {
    let bad = |reason: String| f.invalid("sema", reason);
    let items = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("expected strings, got {}", type_name(i))))
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(format!(
                "expected \"name:count\" or a list of them, got {}",
                type_name(other)
            )))
        }
    };
    let mut sema = items
        .iter()
        .map(|item| {
            parse_sema(item)
                .ok_or_else(|| bad(format!("`{item}` is not \"name:count\" with count >= 1")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // One global order, so two resources can never deadlock on each other.
    sema.sort();
    sema.dedup();
    Ok(sema)
}

/// `"pkg:1"` -> ("pkg", 1). A bare name means a mutex (count 1).
fn parse_sema(text: &str) -> Option<(String, usize)> {
    let (name, count) = match text.rsplit_once(':') {
        Some((name, count)) => (name, count.parse::<usize>().ok()?),
        None => (text, 1),
    };
    (!name.is_empty() && count >= 1).then(|| (name.to_string(), count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_field() {
        let m = Meta::parse(
            "noop:x",
            Some(json!({"retry": -1, "delay": 250, "timeout": 1000, "poll": 2, "limit": 0.5,
                        "burst": 3, "sema": ["pkg:1", "io:4", "pkg:1"], "noop": true, "autoedge": false})),
        )
        .expect("meta");
        assert_eq!(m.retry, -1);
        assert_eq!(m.delay, Duration::from_millis(250));
        assert_eq!(m.timeout, Some(Duration::from_secs(1)));
        assert_eq!(m.poll, Some(Duration::from_secs(2)));
        assert_eq!(m.limit, Some(0.5));
        assert_eq!(m.burst, 3);
        assert_eq!(m.sema, vec![("io".into(), 4), ("pkg".into(), 1)]);
        assert!(m.noop && !m.autoedge);
    }

    #[test]
    fn rejects_nonsense_naming_the_field() {
        for (meta, field) in [
            (json!({"retry": -2}), "meta.retry"),
            (json!({"retry": 1.5}), "meta.retry"),
            (json!({"timeout": 0}), "meta.timeout"),
            (json!({"delay": -1}), "meta.delay"),
            (json!({"poll": "1s"}), "meta.poll"),
            (json!({"limit": 0}), "meta.limit"),
            (json!({"burst": 0}), "meta.burst"),
            (json!({"sema": "pkg:0"}), "meta.sema"),
            (json!({"noop": "yes"}), "meta.noop"),
            (json!({"retries": 1}), "meta.retries"),
        ] {
            let err = Meta::parse("exec:e", Some(meta.clone())).expect_err("must fail");
            let text = err.to_string();
            assert!(
                text.starts_with("exec:e:") && text.contains(field),
                "{meta}: {text}"
            );
        }
    }

    #[test]
    fn a_null_metaparam_is_an_error_not_a_default() {
        for (meta, reason) in [
            (json!({"retry": null}), "expected a number, got null"),
            (json!({"noop": null}), "expected true or false, got null"),
            (json!({"sema": null}), "got null"),
        ] {
            let err = Meta::parse("noop:x", Some(meta.clone())).expect_err("must fail");
            assert!(err.to_string().contains(reason), "{meta}: {err}");
        }
    }
}
