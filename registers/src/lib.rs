//! Registers: the persistent key/value state rules read and write.
//!
//! Values are JSON-shaped ([`serde_json::Value`]: int, float, string, bool, array, map) stored as
//! msgpack in a sled tree under the state dir. `incr` is atomic (a compare-and-swap loop inside
//! sled), so concurrent writers never lose an increment.
//!
//! Durability: sled makes a write durable when it is flushed. The store records that it has
//! unflushed writes, and its owner calls [`Registers::flush_if_dirty`] whenever it goes idle (the
//! manager does so after each burst of events), so a write that was acted on is on disk moments
//! later even if the process is then killed with SIGKILL. sled also flushes by itself every
//! 500 ms as a backstop.

use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegisterError {
    #[error("register store: {0}")]
    Store(#[from] sled::Error),
    #[error("register {key:?} holds a value that cannot be read: {message}")]
    Corrupt { key: String, message: String },
    #[error("register {key:?} holds {found}, not an integer")]
    NotInteger { key: String, found: &'static str },
    #[error("register {key:?} would overflow")]
    Overflow { key: String },
}

/// A handle on the register store; cheap to clone.
#[derive(Clone)]
pub struct Registers {
    db: sled::Db,
    dirty: Arc<AtomicBool>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

fn to_bytes(v: &Value) -> Vec<u8> {
    // A serde_json::Value always serializes (string keys, no foreign types).
    rmp_serde::to_vec(v).expect("JSON values always encode")
}

fn from_bytes(key: &str, bytes: &[u8]) -> Result<Value, RegisterError> {
    rmp_serde::from_slice(bytes).map_err(|e| RegisterError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

impl Registers {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Registers, RegisterError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .open()?;
        Ok(Registers {
            db,
            dirty: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A throwaway store that lives in memory and vanishes on drop (for `reflex rules test`).
    pub fn temporary() -> Result<Registers, RegisterError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Registers {
            db,
            dirty: Arc::new(AtomicBool::new(false)),
        })
    }

    fn touched(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn get(&self, key: &str) -> Result<Option<Value>, RegisterError> {
        match self.db.get(key.as_bytes())? {
            Some(b) => Ok(Some(from_bytes(key, &b)?)),
            None => Ok(None),
        }
    }

    pub fn set(&self, key: &str, value: &Value) -> Result<(), RegisterError> {
        self.db.insert(key.as_bytes(), to_bytes(value))?;
        self.touched();
        Ok(())
    }

    /// Remove a key; true when it existed.
    pub fn del(&self, key: &str) -> Result<bool, RegisterError> {
        let old = self.db.remove(key.as_bytes())?;
        self.touched();
        Ok(old.is_some())
    }

    /// Atomically add `by` to an integer register (absent counts as 0) and return the new value.
    pub fn incr(&self, key: &str, by: i64) -> Result<i64, RegisterError> {
        let mut failure: Option<RegisterError> = None;
        let mut result = 0i64;
        // The closure may run several times under contention; it must decide from `old` alone.
        self.db.update_and_fetch(key.as_bytes(), |old| {
            failure = None;
            let current = match old {
                None => 0,
                Some(bytes) => match from_bytes(key, bytes) {
                    Ok(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(0),
                    Ok(other) => {
                        failure = Some(RegisterError::NotInteger {
                            key: key.to_string(),
                            found: type_name(&other),
                        });
                        return Some(bytes.to_vec());
                    }
                    Err(e) => {
                        failure = Some(e);
                        return Some(bytes.to_vec());
                    }
                },
            };
            match current.checked_add(by) {
                Some(n) => {
                    result = n;
                    Some(to_bytes(&Value::from(n)))
                }
                None => {
                    failure = Some(RegisterError::Overflow {
                        key: key.to_string(),
                    });
                    Some(old.map(|b| b.to_vec()).unwrap_or_default())
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.touched();
        Ok(result)
    }

    /// Keys starting with `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, RegisterError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(prefix.as_bytes()) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    /// Make every write so far durable.
    pub fn flush(&self) -> Result<(), RegisterError> {
        self.dirty.store(false, Ordering::Relaxed);
        self.db.flush()?;
        Ok(())
    }

    /// Flush when anything was written since the last flush; cheap when nothing was.
    pub fn flush_if_dirty(&self) -> Result<(), RegisterError> {
        if self.dirty.load(Ordering::Relaxed) {
            self.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_values_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let r = Registers::open(dir.path()).unwrap();
            r.set("a", &json!({"x": [1, 2.5, "s", true]})).unwrap();
            assert_eq!(r.incr("n", 5).unwrap(), 5);
            assert_eq!(r.incr("n", -2).unwrap(), 3);
            r.flush().unwrap();
        }
        let r = Registers::open(dir.path()).unwrap();
        assert_eq!(r.get("a").unwrap(), Some(json!({"x": [1, 2.5, "s", true]})));
        assert_eq!(r.get("n").unwrap(), Some(json!(3)));
        assert_eq!(r.get("missing").unwrap(), None);
        assert_eq!(r.keys("").unwrap(), vec!["a".to_string(), "n".to_string()]);
        assert!(r.del("a").unwrap());
        assert!(!r.del("a").unwrap());
    }

    #[test]
    fn incr_rejects_non_integers_and_keeps_value() {
        let r = Registers::temporary().unwrap();
        r.set("s", &json!("text")).unwrap();
        let err = r.incr("s", 1).unwrap_err();
        assert!(err.to_string().contains("a string"), "{err}");
        assert_eq!(r.get("s").unwrap(), Some(json!("text")));
        r.set("big", &json!(i64::MAX)).unwrap();
        assert!(matches!(
            r.incr("big", 1),
            Err(RegisterError::Overflow { .. })
        ));
    }

    #[test]
    fn incr_is_atomic_under_concurrency() {
        let r = Registers::temporary().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        r.incr("c", 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.get("c").unwrap(), Some(json!(8_000)));
    }
}
