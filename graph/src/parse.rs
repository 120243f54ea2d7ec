//! Parsing the graph schema: either `{resources: [...], edges: [...]}` (edges optional) or
//! a bare list of resources, from JSON values (rule-built maps, the wire) or YAML. Parsing
//! is pure: no file is touched and no command run.

use serde_json::{Map, Value};

use crate::build::GraphBuilder;
use crate::error::GraphError;
use crate::fields::{type_name, Fields};
use crate::kinds;
use crate::meta::Meta;
use crate::schema::{Graph, Recv, Vertex};

impl Graph {
    /// Parse and validate a graph: `{resources: [...], edges: [...]}` or a bare list of
    /// resources.
    pub fn from_value(v: &Value) -> Result<Graph, GraphError> {
        let (resources, edges) = split_top(v)?;
        let vertices = resources
            .iter()
            .enumerate()
            .map(|(i, item)| parse_resource(i + 1, item))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = GraphBuilder::new();
        for vertex in vertices {
            builder.vertex(vertex)?;
        }
        for (i, item) in edges.iter().enumerate() {
            parse_edge(&mut builder, i + 1, item)?;
        }
        builder.build()
    }

    /// The same schema, as YAML.
    pub fn from_yaml(text: &str) -> Result<Graph, GraphError> {
        let value: Value =
            serde_yaml::from_str(text).map_err(|e| GraphError::Yaml(e.to_string()))?;
        Graph::from_value(&value)
    }
}

fn split_top(v: &Value) -> Result<(&[Value], &[Value]), GraphError> {
    let map = match v {
        Value::Array(items) => return Ok((items, &[])),
        Value::Object(map) => map,
        other => {
            return Err(GraphError::Shape(format!(
            "expected a map with `resources` (and optional `edges`) or a list of resources, got {}",
            type_name(other)
        )))
        }
    };
    // Typo protection here too: a misspelt `edges` would silently drop all ordering.
    if let Some(key) = map.keys().find(|k| *k != "resources" && *k != "edges") {
        return Err(GraphError::Shape(format!(
            "unknown top-level key `{key}` (expected `resources` and optional `edges`)"
        )));
    }
    let list = |key: &str, required: bool| -> Result<&[Value], GraphError> {
        match map.get(key) {
            Some(Value::Array(items)) => Ok(items),
            None | Some(Value::Null) if !required => Ok(&[]),
            None | Some(Value::Null) => Err(GraphError::Shape(format!("missing `{key}` list"))),
            Some(other) => Err(GraphError::Shape(format!(
                "`{key}` must be a list, got {}",
                type_name(other)
            ))),
        }
    };
    Ok((list("resources", true)?, list("edges", false)?))
}

/// `n` is the 1-based position, used to name a resource that has no usable name yet.
fn parse_resource(n: usize, item: &Value) -> Result<Vertex, GraphError> {
    let anonymous = format!("resource #{n}");
    let Value::Object(map) = item else {
        return Err(GraphError::NotAMap {
            resource: anonymous,
        });
    };
    let mut map: Map<String, Value> = map.clone();
    let kind = required_name(&mut map, "kind", &anonymous)?;
    let name = required_name(&mut map, "name", &anonymous)?;
    let resource = format!("{kind}:{name}");
    let Some(def) = kinds::lookup(&kind) else {
        return Err(GraphError::UnknownKind {
            resource,
            kind,
            known: kinds::kind_names().join(", "),
        });
    };
    let meta = Meta::parse(&resource, map.remove("meta"))?;
    let recv = parse_recv(&resource, map.remove("recv"))?;
    let mut fields = Fields::new(resource.clone(), map);
    let spec = (def.parse)(resource, &name, &mut fields)?;
    fields.finish()?;
    Ok(Vertex {
        resource: spec,
        meta: meta.shared(),
        recv,
    })
}

/// `recv: {field: "kind:name.key"}`; the key is after the last dot.
fn parse_recv(resource: &str, v: Option<Value>) -> Result<Vec<Recv>, GraphError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(GraphError::InvalidField {
                resource: resource.to_string(),
                field: "recv".into(),
                reason: format!(
                    "expected a map of field: \"kind:name.key\", got {}",
                    type_name(&other)
                ),
            })
        }
    };
    map.into_iter()
        .map(|(field, source)| {
            let parsed = source
                .as_str()
                .and_then(|s| s.rsplit_once('.'))
                .filter(|(id, key)| id.contains(':') && !key.is_empty());
            match parsed {
                Some((id, key)) => Ok(Recv {
                    from: id.to_string(),
                    key: key.to_string(),
                    field,
                }),
                None => Err(GraphError::InvalidField {
                    resource: resource.to_string(),
                    field: format!("recv.{field}"),
                    reason: format!("expected \"kind:name.key\", got {source}"),
                }),
            }
        })
        .collect()
}

fn required_name(
    map: &mut Map<String, Value>,
    field: &str,
    resource: &str,
) -> Result<String, GraphError> {
    let invalid = |reason: String| GraphError::InvalidField {
        resource: resource.to_string(),
        field: field.to_string(),
        reason,
    };
    match map.remove(field) {
        None | Some(Value::Null) => Err(GraphError::MissingField {
            resource: resource.to_string(),
            field: field.to_string(),
        }),
        Some(Value::String(s)) if s.trim().is_empty() => Err(invalid("must not be empty".into())),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid(format!(
            "expected a string, got {}",
            type_name(&other)
        ))),
    }
}

/// Add edge `index` (1-based) as written to `builder`.
fn parse_edge(builder: &mut GraphBuilder, index: usize, item: &Value) -> Result<(), GraphError> {
    let invalid = |reason: String| GraphError::InvalidEdge { index, reason };
    let Value::Object(map) = item else {
        return Err(invalid(format!(
            "expected a map with `from` and `to`, got {}",
            type_name(item)
        )));
    };
    if let Some(key) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "from" | "to" | "notify"))
    {
        return Err(invalid(format!("unknown field `{key}`")));
    }
    let notify = match map.get("notify") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "`notify` must be true or false, got {}",
                type_name(other)
            )))
        }
    };
    let end = |key: &str| match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(invalid(format!("missing `{key}`"))),
        Some(other) => Err(invalid(format!(
            "`{key}` must be a resource id string, got {}",
            type_name(other)
        ))),
    };
    builder.edge(&end("from")?, &end("to")?, notify)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bare_list_and_map_forms() {
        let list = json!([{"kind": "noop", "name": "a"}, {"kind": "noop", "name": "b"}]);
        let g = Graph::from_value(&list).expect("list");
        assert_eq!(g.ids(), vec!["noop:a", "noop:b"]);
        let map = json!({"resources": list, "edges": [{"from": "noop:a", "to": "noop:b"}]});
        let g = Graph::from_value(&map).expect("map");
        assert_eq!(g.deps(), vec![vec![], vec![0]]);
        assert_eq!(g.len(), 2);
        assert!(!g.is_empty());
    }

    #[test]
    fn cycle_is_named() {
        let g = json!({
            "resources": [
                {"kind": "noop", "name": "x"},
                {"kind": "exec", "name": "a", "cmd": "true"},
                {"kind": "exec", "name": "b", "cmd": "true"},
            ],
            "edges": [
                {"from": "noop:x", "to": "exec:a"},
                {"from": "exec:a", "to": "exec:b"},
                {"from": "exec:b", "to": "exec:a"},
            ],
        });
        let err = Graph::from_value(&g).expect_err("cycle");
        assert_eq!(err.to_string(), "cycle: exec:a -> exec:b -> exec:a");
    }

    #[test]
    fn self_edge_is_a_cycle() {
        let g = json!({
            "resources": [{"kind": "noop", "name": "a"}],
            "edges": [{"from": "noop:a", "to": "noop:a"}],
        });
        let err = Graph::from_value(&g).expect_err("cycle");
        assert_eq!(err.to_string(), "cycle: noop:a -> noop:a");
    }
}
