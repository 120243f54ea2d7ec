//! Typed, typo-checking access to one resource's fields while its kind parses them.

use serde_json::{Map, Value};

use crate::error::GraphError;

/// The fields of one resource not yet consumed by its kind. A kind takes what it knows;
/// [`Fields::finish`] then rejects whatever is left, so a typo is an error rather than a
/// silently ignored setting.
pub(crate) struct Fields {
    resource: String,
    map: Map<String, Value>,
}

impl Fields {
    pub(crate) fn new(resource: String, map: Map<String, Value>) -> Fields {
        Fields { resource, map }
    }

    /// Take an optional string field (null counts as absent).
    pub fn opt_str(&mut self, field: &str) -> Result<Option<String>, GraphError> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(field, "a string", &other)),
        }
    }

    /// Take a required string field.
    pub fn req_str(&mut self, field: &str) -> Result<String, GraphError> {
        self.opt_str(field)?
            .ok_or_else(|| GraphError::MissingField {
                resource: self.resource.clone(),
                field: field.to_string(),
            })
    }

    /// Take an optional field of any type (null counts as absent).
    pub(crate) fn opt_value(&mut self, field: &str) -> Option<Value> {
        self.map.remove(field).filter(|v| !v.is_null())
    }

    /// Take an optional number field (null counts as absent).
    pub fn opt_number(&mut self, field: &str) -> Result<Option<f64>, GraphError> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) => Ok(Some(f)),
                None => Err(self.invalid(field, format!("{n} is not representable"))),
            },
            Some(other) => Err(self.wrong_type(field, "a number", &other)),
        }
    }

    /// An invalid-value error for `field` of this resource.
    pub fn invalid(&self, field: &str, reason: impl Into<String>) -> GraphError {
        GraphError::InvalidField {
            resource: self.resource.clone(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Reject any field the kind did not take.
    pub fn finish(self) -> Result<(), GraphError> {
        match self.map.keys().next() {
            Some(field) => Err(GraphError::UnknownField {
                resource: self.resource,
                field: field.clone(),
            }),
            None => Ok(()),
        }
    }

    fn wrong_type(&self, field: &str, expected: &str, got: &Value) -> GraphError {
        self.invalid(
            field,
            format!("expected {expected}, got {}", type_name(got)),
        )
    }
}

/// A JSON type name for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}
