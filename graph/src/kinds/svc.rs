//! `svc`: a systemd unit, running or stopped, enabled or disabled.

use std::path::PathBuf;

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::Spec;

/// The kind name.
pub const KIND: &str = "svc";

/// Whether the unit should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvcRun {
    /// Active (the default).
    Running,
    /// Inactive.
    Stopped,
}

/// A managed unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcSpec {
    /// `svc:name`.
    pub id: String,
    /// The unit name (`.service` added when the name has no suffix).
    pub unit: String,
    /// Wanted run state; `None`: not managed.
    pub state: Option<SvcRun>,
    /// Some(true): enabled, Some(false): disabled, None: not managed.
    pub enabled: Option<bool>,
}

pub(crate) fn parse(id: String, name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b));
    if !valid {
        return Err(fields.invalid("name", format!("`{name}` is not a systemd unit name")));
    }
    let unit = if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.service")
    };
    let state = match fields.opt_str("state")?.as_deref() {
        None | Some("running") => Some(SvcRun::Running),
        Some("stopped") => Some(SvcRun::Stopped),
        Some(other) => {
            return Err(fields.invalid(
                "state",
                format!("expected `running` or `stopped`, got `{other}`"),
            ))
        }
    };
    let enabled = match fields.opt_str("startup")?.as_deref() {
        None => None,
        Some("enabled") => Some(true),
        Some("disabled") => Some(false),
        Some(other) => {
            return Err(fields.invalid(
                "startup",
                format!("expected `enabled` or `disabled`, got `{other}`"),
            ))
        }
    };
    Ok(Spec::Svc(Box::new(SvcSpec {
        id,
        unit,
        state,
        enabled,
    })))
}

impl SvcSpec {
    /// Its unit file in each place systemd looks (so a `file` that manages it runs first).
    pub fn needs(&self) -> Vec<PathBuf> {
        [
            "/etc/systemd/system",
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
        ]
        .iter()
        .map(|d| PathBuf::from(d).join(&self.unit))
        .collect()
    }
}
