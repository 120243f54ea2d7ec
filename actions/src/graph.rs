//! The graph schema: parsing and validation, all before anything runs.
//!
//! One schema everywhere (YAML files, rule-built maps, the wire): either
//! `{resources: [...], edges: [...]}` (edges optional) or a bare list of resources.
//! Validation is pure: no file is touched and no command run.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::GraphError;
use crate::fields::{type_name, Fields};
use crate::kinds;
use crate::meta::Meta;
use crate::resource::Resource;

/// A validated graph of resources, ready to run.
#[derive(Clone)]
pub struct Graph {
    pub(crate) nodes: Vec<Arc<dyn Resource>>,
    /// Each node's metaparams.
    pub(crate) metas: Vec<Meta>,
    /// Every edge once (explicit and implied), in the order they were added.
    pub(crate) edges: Vec<Edge>,
    /// Each node's received fields: `(field, sender index, key)`.
    pub(crate) recvs: Vec<Vec<Recv>>,
    /// For each node, the nodes it waits for (edge sources).
    pub(crate) deps: Vec<Vec<usize>>,
    /// For each node, the nodes waiting for it (edge targets).
    pub(crate) dependents: Vec<Vec<usize>>,
}

/// One dependency: `to` waits for `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    pub from: usize,
    pub to: usize,
    /// A change in `from` sends `to` a refresh.
    pub notify: bool,
    /// Implied by the engine (autoedge), not written in the graph.
    pub auto: bool,
}

/// An edge as written: `(from, to, notify)` ids.
pub(crate) type EdgeSpec = (String, String, bool);

/// One received field: `field` takes sender `from`'s value `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recv {
    pub field: String,
    pub from: usize,
    pub key: String,
}

/// A `recv:` entry as written: `(field, "kind:name", key)`.
type RecvSpec = (String, String, String);

/// One resource as parsed: the resource, its metaparams, its `recv:` entries.
type ParsedResource = (Arc<dyn Resource>, Meta, Vec<RecvSpec>);

impl Graph {
    /// Parse and validate a graph: `{resources: [...], edges: [...]}` or a bare list of
    /// resources.
    pub fn from_value(v: &Value) -> Result<Graph, GraphError> {
        let (resources, edges) = split_top(v)?;
        let mut nodes = Vec::with_capacity(resources.len());
        let mut metas = Vec::with_capacity(resources.len());
        let mut recv_specs = Vec::with_capacity(resources.len());
        for (i, item) in resources.iter().enumerate() {
            let (node, meta, recv) = parse_resource(i + 1, item)?;
            nodes.push(node);
            metas.push(meta);
            recv_specs.push(recv);
        }
        let edges = edges
            .iter()
            .enumerate()
            .map(|(i, item)| parse_edge(i + 1, item))
            .collect::<Result<Vec<_>, _>>()?;
        Graph::assemble_full(nodes, metas, recv_specs, edges)
    }

    /// The same schema, as YAML.
    pub fn from_yaml(text: &str) -> Result<Graph, GraphError> {
        let value: Value =
            serde_yaml::from_str(text).map_err(|e| GraphError::Yaml(e.to_string()))?;
        Graph::from_value(&value)
    }

    /// Build from already-constructed resources (default metaparams) and `(from, to)` ids.
    pub fn assemble(
        nodes: Vec<Arc<dyn Resource>>,
        edges: &[(String, String)],
    ) -> Result<Graph, GraphError> {
        let metas = vec![Meta::default(); nodes.len()];
        let edges: Vec<EdgeSpec> = edges
            .iter()
            .map(|(f, t)| (f.clone(), t.clone(), false))
            .collect();
        Graph::assemble_with(nodes, metas, &edges)
    }

    pub(crate) fn assemble_with(
        nodes: Vec<Arc<dyn Resource>>,
        metas: Vec<Meta>,
        edges: &[EdgeSpec],
    ) -> Result<Graph, GraphError> {
        let recvs = vec![Vec::new(); nodes.len()];
        Graph::assemble_full(nodes, metas, recvs, edges.to_vec())
    }

    /// Resolve and type-check send/recv (each implies an edge sender -> receiver), then
    /// assemble.
    fn assemble_full(
        nodes: Vec<Arc<dyn Resource>>,
        metas: Vec<Meta>,
        recv_specs: Vec<Vec<RecvSpec>>,
        mut edges: Vec<EdgeSpec>,
    ) -> Result<Graph, GraphError> {
        let index: HashMap<&str, usize> =
            nodes.iter().enumerate().map(|(i, n)| (n.id(), i)).collect();
        let mut recvs = Vec::with_capacity(nodes.len());
        for (to, specs) in recv_specs.into_iter().enumerate() {
            let receiver = &nodes[to];
            let mut resolved = Vec::with_capacity(specs.len());
            for (field, from_id, key) in specs {
                let bad = |reason: String| GraphError::InvalidField {
                    resource: receiver.id().to_string(),
                    field: format!("recv.{field}"),
                    reason,
                };
                let Some(&(_, want)) = receiver.receives().iter().find(|(f, _)| *f == field) else {
                    let can: Vec<&str> = receiver.receives().iter().map(|(f, _)| *f).collect();
                    return Err(bad(format!(
                        "cannot be received (receivable: {})",
                        list(&can)
                    )));
                };
                let Some(&from) = index.get(from_id.as_str()) else {
                    return Err(bad(format!("`{from_id}` is not in the graph")));
                };
                let sender = &nodes[from];
                let Some(&(_, got)) = sender.sends().iter().find(|(k, _)| *k == key) else {
                    let can: Vec<&str> = sender.sends().iter().map(|(k, _)| *k).collect();
                    return Err(bad(format!(
                        "`{from_id}` does not send `{key}` (it sends: {})",
                        list(&can)
                    )));
                };
                if got != want {
                    return Err(bad(format!(
                        "`{from_id}.{key}` is a {got}, the field needs a {want}"
                    )));
                }
                edges.push((from_id.clone(), receiver.id().to_string(), false));
                resolved.push(Recv { field, from, key });
            }
            recvs.push(resolved);
        }
        drop(index);
        let mut graph = Graph::assemble_edges(nodes, metas, &edges)?;
        graph.recvs = recvs;
        Ok(graph)
    }

    fn assemble_edges(
        nodes: Vec<Arc<dyn Resource>>,
        metas: Vec<Meta>,
        edges: &[EdgeSpec],
    ) -> Result<Graph, GraphError> {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            if let Some(first) = index.insert(node.id(), i) {
                return Err(GraphError::DuplicateId {
                    id: node.id().to_string(),
                    first: first + 1,
                    second: i + 1,
                });
            }
        }
        let mut deps = vec![Vec::new(); nodes.len()];
        let mut dependents = vec![Vec::new(); nodes.len()];
        let mut all: Vec<Edge> = Vec::with_capacity(edges.len());
        // (from, to) -> position in `all`, so repeated edges merge in O(1).
        let mut seen: HashMap<(usize, usize), usize> = HashMap::with_capacity(edges.len());
        for (i, (from, to, notify)) in edges.iter().enumerate() {
            let find = |end: &'static str, id: &String| {
                index
                    .get(id.as_str())
                    .copied()
                    .ok_or_else(|| GraphError::UnknownEdgeEnd {
                        index: i + 1,
                        end,
                        id: id.clone(),
                    })
            };
            let (f, t) = (find("from", from)?, find("to", to)?);
            // A repeated edge adds nothing but its notify flag.
            if let Some(&at) = seen.get(&(f, t)) {
                all[at].notify |= notify;
            } else {
                seen.insert((f, t), all.len());
                deps[t].push(f);
                dependents[f].push(t);
                all.push(Edge {
                    from: f,
                    to: t,
                    notify: *notify,
                    auto: false,
                });
            }
        }
        drop(index);
        if let Some(cycle) = find_cycle(&dependents) {
            return Err(GraphError::Cycle {
                path: cycle.iter().map(|&i| nodes[i].id().to_string()).collect(),
            });
        }
        let n = nodes.len();
        let mut graph = Graph {
            nodes,
            metas,
            recvs: vec![Vec::new(); n],
            edges: all,
            deps,
            dependents,
        };
        graph.add_autoedges();
        Ok(graph)
    }

    /// mgmt's autoedges: a resource that needs a path runs after the resource that manages
    /// it (a file after its parent directory, a user of an `exec`'s `creates` after the
    /// exec). Either end can opt out with `meta.autoedge: false`. An implied edge that would
    /// close a cycle is left out: autoedges only ever order, never reject, a graph.
    fn add_autoedges(&mut self) {
        let mut managers: HashMap<PathBuf, Vec<usize>> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if self.metas[i].autoedge {
                for path in node.manages() {
                    managers.entry(path).or_default().push(i);
                }
            }
        }
        if managers.is_empty() {
            return;
        }
        let mut implied = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !self.metas[i].autoedge {
                continue;
            }
            for path in node.needs() {
                for &m in managers.get(&path).into_iter().flatten() {
                    if m != i && !self.deps[i].contains(&m) {
                        implied.push((m, i));
                    }
                }
            }
        }
        implied.sort_unstable();
        implied.dedup();
        for (from, to) in implied {
            self.deps[to].push(from);
            self.dependents[from].push(to);
            if find_cycle(&self.dependents).is_some() {
                self.deps[to].pop();
                self.dependents[from].pop();
                continue;
            }
            self.edges.push(Edge {
                from,
                to,
                notify: false,
                auto: true,
            });
        }
    }

    /// The graph in DOT (graphviz): resources as boxes, edges as arrows; notify edges bold
    /// and labelled, autoedges dashed.
    pub fn to_dot(&self, name: &str) -> String {
        crate::dot::render(name, &self.ids(), None, &self.edges)
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the graph has no resources.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Resource ids (`kind:name`), in graph order.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id().to_string()).collect()
    }
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("ids", &self.ids())
            .field("deps", &self.deps)
            .field("edges", &self.edges)
            .finish()
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
fn parse_resource(n: usize, item: &Value) -> Result<ParsedResource, GraphError> {
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
    let built = (def.build)(resource, &name, &mut fields)?;
    fields.finish()?;
    Ok((built, meta, recv))
}

/// `recv: {field: "kind:name.key"}`; the key is after the last dot.
fn parse_recv(resource: &str, v: Option<Value>) -> Result<Vec<RecvSpec>, GraphError> {
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
                Some((id, key)) => Ok((field, id.to_string(), key.to_string())),
                None => Err(GraphError::InvalidField {
                    resource: resource.to_string(),
                    field: format!("recv.{field}"),
                    reason: format!("expected \"kind:name.key\", got {source}"),
                }),
            }
        })
        .collect()
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
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

fn parse_edge(index: usize, item: &Value) -> Result<EdgeSpec, GraphError> {
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
    Ok((end("from")?, end("to")?, notify))
}

/// A cycle in `adj` (node -> successors), as node indices with the first repeated at the
/// end. Depth-first in graph order, so the reported cycle is deterministic.
fn find_cycle(adj: &[Vec<usize>]) -> Option<Vec<usize>> {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut color = vec![NEW; adj.len()];
    for start in 0..adj.len() {
        if color[start] != NEW {
            continue;
        }
        color[start] = ON_PATH;
        // (node, index of the next successor to visit)
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = path.last_mut() {
            let node = top.0;
            let Some(&next) = adj[node].get(top.1) else {
                color[node] = DONE;
                path.pop();
                continue;
            };
            top.1 += 1;
            match color[next] {
                NEW => {
                    color[next] = ON_PATH;
                    path.push((next, 0));
                }
                ON_PATH => {
                    let from = path.iter().position(|&(n, _)| n == next).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                    cycle.push(next);
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
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
        assert_eq!(g.deps, vec![vec![], vec![0]]);
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
