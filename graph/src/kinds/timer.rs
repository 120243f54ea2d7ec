//! `timer`: a change every `interval` seconds, to drive periodic work.

use std::time::Duration;

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::Spec;

/// The kind name.
pub const KIND: &str = "timer";

/// A periodic change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerSpec {
    /// `timer:name`.
    pub id: String,
    /// Time between two changes.
    pub interval: Duration,
}

pub(crate) fn parse(id: String, _name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    let Some(secs) = fields.opt_number("interval")? else {
        return Err(GraphError::MissingField {
            resource: id,
            field: "interval".into(),
        });
    };
    // Below 10 ms a timer is a busy loop, not periodic work.
    if !(0.01..=31_536_000.0).contains(&secs) {
        return Err(fields.invalid(
            "interval",
            format!("{secs} is not between 0.01 and 31536000 seconds"),
        ));
    }
    Ok(Spec::Timer(Box::new(TimerSpec {
        id,
        interval: Duration::from_secs_f64(secs),
    })))
}
