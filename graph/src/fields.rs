//! Typed, typo-checking access to one resource's fields while its kind parses them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::GraphError;

/// The fields of one resource not yet consumed by its kind. A kind takes what it knows;
/// [`Fields::finish`] then rejects whatever is left, so a typo is an error rather than a
/// silently ignored setting.
pub struct Fields {
    resource: String,
    /// Put before every field name in errors: `meta.` for the metaparams map.
    prefix: &'static str,
    /// A null field counts as absent (a resource's own fields), or has the wrong type
    /// (metaparams, which never accepted null).
    null_is_absent: bool,
    map: Map<String, Value>,
}

impl Fields {
    pub(crate) fn new(resource: String, map: Map<String, Value>) -> Fields {
        Fields {
            resource,
            prefix: "",
            null_is_absent: true,
            map,
        }
    }

    /// The `meta:` map of a resource: errors name its fields `meta.<field>`, and null is
    /// a wrong type there, not an absent field.
    pub(crate) fn meta(resource: String, map: Map<String, Value>) -> Fields {
        Fields {
            resource,
            prefix: "meta.",
            null_is_absent: false,
            map,
        }
    }

    /// Remove `field`: `None` when absent (or null, where null counts as absent).
    fn take(&mut self, field: &str) -> Option<Value> {
        let null_is_absent = self.null_is_absent;
        self.map
            .remove(field)
            .filter(|v| !(null_is_absent && v.is_null()))
    }

    /// Take an optional string field.
    pub fn opt_str(&mut self, field: &str) -> Result<Option<String>, GraphError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(field, "a string", &other)),
        }
    }

    /// Take a required string field.
    pub fn req_str(&mut self, field: &str) -> Result<String, GraphError> {
        self.opt_str(field)?
            .ok_or_else(|| GraphError::MissingField {
                resource: self.resource.clone(),
                field: format!("{}{field}", self.prefix),
            })
    }

    /// Take an optional field of any type.
    pub fn opt_value(&mut self, field: &str) -> Option<Value> {
        self.take(field)
    }

    /// Take an optional boolean field.
    pub fn opt_bool(&mut self, field: &str) -> Result<Option<bool>, GraphError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.invalid(
                field,
                format!("expected true or false, got {}", type_name(&other)),
            )),
        }
    }

    /// Take an optional map of strings (empty when absent).
    pub fn opt_str_map(&mut self, field: &str) -> Result<BTreeMap<String, String>, GraphError> {
        match self.take(field) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(v) => Ok((k, v)),
                    other => Err(self.invalid(
                        field,
                        format!("`{k}`: expected a string, got {}", type_name(&other)),
                    )),
                })
                .collect(),
            Some(other) => Err(self.wrong_type(field, "a map of strings", &other)),
        }
    }

    /// Take an optional number field.
    pub fn opt_number(&mut self, field: &str) -> Result<Option<f64>, GraphError> {
        match self.take(field) {
            None => Ok(None),
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
            field: format!("{}{field}", self.prefix),
            reason: reason.into(),
        }
    }

    /// Reject any field the kind did not take.
    pub fn finish(self) -> Result<(), GraphError> {
        match self.map.keys().next() {
            Some(field) => Err(GraphError::UnknownField {
                field: format!("{}{field}", self.prefix),
                resource: self.resource,
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

/// A JSON type name for error messages ("a string", "a map", ...).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}
