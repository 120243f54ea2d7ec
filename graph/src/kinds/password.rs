//! `password`: a random secret, generated once and sent to other resources.

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::{Spec, ValueType, Values};

/// The kind name.
pub const KIND: &str = "password";

/// What a `password` sends: the secret.
pub const SENDS: Values = &[("value", ValueType::Str)];

/// A generated secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordSpec {
    /// `password:name`.
    pub id: String,
    /// Characters in the secret (8 to 1024; default 32).
    pub length: usize,
}

pub(crate) fn parse(id: String, _name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    let length = match fields.opt_number("length")? {
        None => 32,
        Some(n) if n.fract() == 0.0 && (8.0..=1024.0).contains(&n) => n as usize,
        Some(n) => return Err(fields.invalid("length", format!("{n} is not between 8 and 1024"))),
    };
    Ok(Spec::Password(Box::new(PasswordSpec { id, length })))
}
