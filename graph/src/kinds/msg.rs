//! `msg`: a message for whoever runs the engine, once per run and again on each refresh.

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::{Spec, ValueType, Values};

/// The kind name.
pub const KIND: &str = "msg";

/// What a `msg` can receive: its body.
pub const RECEIVES: Values = &[("body", ValueType::Str)];

/// A message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgSpec {
    /// `msg:name`.
    pub id: String,
    /// What it says (unless a body is received).
    pub body: String,
}

pub(crate) fn parse(id: String, _name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    let body = fields.req_str("body")?;
    Ok(Spec::Msg(Box::new(MsgSpec { id, body })))
}
