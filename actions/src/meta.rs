//! Metaparams: the `meta:` map every resource may carry, handled once by the engine for every
//! kind (mgmt's MetaParams): retry/delay, timeout, poll, limit/burst, sema, noop, autoedge.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::GraphError;
use crate::fields::type_name;

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
    /// Parse a `meta:` map for `resource` (`kind:name`), rejecting unknown keys.
    pub(crate) fn parse(resource: &str, v: Option<Value>) -> Result<Meta, GraphError> {
        let map: Map<String, Value> = match v {
            None | Some(Value::Null) => return Ok(Meta::default()),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(invalid(
                    resource,
                    "meta",
                    format!("expected a map, got {}", type_name(&other)),
                ))
            }
        };
        let mut meta = Meta::default();
        for (key, value) in map {
            let field = format!("meta.{key}");
            let bad = |reason: String| invalid(resource, &field, reason);
            let number = || -> Result<f64, GraphError> {
                value
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| bad(format!("expected a number, got {}", type_name(&value))))
            };
            let duration = |scale: f64, allow_zero: bool| -> Result<Duration, GraphError> {
                let n = number()?;
                let secs = n * scale;
                if secs < 0.0 || (!allow_zero && secs == 0.0) || secs > MAX_SECS {
                    return Err(bad(format!("{n} is out of range")));
                }
                Ok(Duration::from_secs_f64(secs))
            };
            match key.as_str() {
                "retry" => {
                    let n = number()?;
                    if n.fract() != 0.0 || n < -1.0 || n > u32::MAX as f64 {
                        return Err(bad(format!("{n} is not a count (-1 = forever)")));
                    }
                    meta.retry = n as i64;
                }
                "delay" => meta.delay = duration(1e-3, true)?,
                "timeout" => meta.timeout = Some(duration(1e-3, false)?),
                "poll" => meta.poll = Some(duration(1.0, false)?),
                "limit" => {
                    let n = number()?;
                    if n <= 0.0 {
                        return Err(bad(format!("{n} is not a positive rate per second")));
                    }
                    meta.limit = Some(n);
                }
                "burst" => {
                    let n = number()?;
                    if n.fract() != 0.0 || !(1.0..=1e6).contains(&n) {
                        return Err(bad(format!("{n} is not a count >= 1")));
                    }
                    meta.burst = n as u32;
                }
                "sema" => {
                    let items = match &value {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(list) => list
                            .iter()
                            .map(|i| {
                                i.as_str().map(str::to_string).ok_or_else(|| {
                                    bad(format!("expected strings, got {}", type_name(i)))
                                })
                            })
                            .collect::<Result<_, _>>()?,
                        other => {
                            return Err(bad(format!(
                                "expected \"name:count\" or a list of them, got {}",
                                type_name(other)
                            )))
                        }
                    };
                    for item in items {
                        meta.sema.push(parse_sema(&item).ok_or_else(|| {
                            bad(format!("`{item}` is not \"name:count\" with count >= 1"))
                        })?);
                    }
                    // One global order, so two resources can never deadlock on each other.
                    meta.sema.sort();
                    meta.sema.dedup();
                }
                "noop" | "autoedge" => {
                    let Value::Bool(b) = value else {
                        return Err(bad(format!(
                            "expected true or false, got {}",
                            type_name(&value)
                        )));
                    };
                    if key == "noop" {
                        meta.noop = b;
                    } else {
                        meta.autoedge = b;
                    }
                }
                _ => {
                    return Err(GraphError::UnknownField {
                        resource: resource.to_string(),
                        field,
                    })
                }
            }
        }
        Ok(meta)
    }
}

/// `"pkg:1"` -> ("pkg", 1). A bare name means a mutex (count 1).
fn parse_sema(text: &str) -> Option<(String, usize)> {
    let (name, count) = match text.rsplit_once(':') {
        Some((name, count)) => (name, count.parse::<usize>().ok()?),
        None => (text, 1),
    };
    (!name.is_empty() && count >= 1).then(|| (name.to_string(), count))
}

fn invalid(resource: &str, field: &str, reason: String) -> GraphError {
    GraphError::InvalidField {
        resource: resource.to_string(),
        field: field.to_string(),
        reason,
    }
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
}
