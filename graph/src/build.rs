//! The one way to assemble a graph: add vertices and edges, then [`GraphBuilder::build`]
//! resolves send/recv, rejects cycles and adds autoedges.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::GraphError;
use crate::schema::{Edge, Graph, Vertex};

/// Assembles a [`Graph`] from vertices and edges named by id.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    vertices: Vec<Vertex>,
    index: HashMap<String, usize>,
    edges: Vec<Edge>,
    /// (from, to) -> position in `edges`, so repeated edges merge in O(1).
    seen: HashMap<(usize, usize), usize>,
    /// Edges written so far (for the 1-based edge number in errors).
    written: usize,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    /// Add a resource; its id must be new.
    pub fn vertex(&mut self, vertex: Vertex) -> Result<&mut GraphBuilder, GraphError> {
        let at = self.vertices.len();
        if let Some(&first) = self.index.get(vertex.id()) {
            return Err(GraphError::DuplicateId {
                id: vertex.id().to_string(),
                first: first + 1,
                second: at + 1,
            });
        }
        self.index.insert(vertex.id().to_string(), at);
        self.vertices.push(vertex);
        Ok(self)
    }

    /// Add an edge: `to` waits for `from` (both ids of resources already added); `notify`
    /// passes a refresh along it.
    pub fn edge(
        &mut self,
        from: &str,
        to: &str,
        notify: bool,
    ) -> Result<&mut GraphBuilder, GraphError> {
        self.written += 1;
        let index = self.written;
        let find = |end: &'static str, id: &str| {
            self.index
                .get(id)
                .copied()
                .ok_or_else(|| GraphError::UnknownEdgeEnd {
                    index,
                    end,
                    id: id.to_string(),
                })
        };
        let (f, t) = (find("from", from)?, find("to", to)?);
        self.add(f, t, notify);
        Ok(self)
    }

    /// A repeated edge adds nothing but its notify flag.
    fn add(&mut self, from: usize, to: usize, notify: bool) {
        if let Some(&at) = self.seen.get(&(from, to)) {
            self.edges[at].notify |= notify;
            return;
        }
        self.seen.insert((from, to), self.edges.len());
        self.edges.push(Edge {
            from,
            to,
            notify,
            auto: false,
        });
    }

    /// Resolve and type-check send/recv (each implies an edge sender -> receiver), reject
    /// cycles, add autoedges.
    pub fn build(mut self) -> Result<Graph, GraphError> {
        let mut implied = Vec::new();
        for (to, receiver) in self.vertices.iter().enumerate() {
            for r in &receiver.recv {
                implied.push((self.resolve(receiver, r)?, to));
            }
        }
        for (from, to) in implied {
            self.add(from, to, false);
        }
        let mut dependents = vec![Vec::new(); self.vertices.len()];
        for e in &self.edges {
            dependents[e.from].push(e.to);
        }
        if let Some(cycle) = find_cycle(&dependents) {
            return Err(GraphError::Cycle {
                path: cycle
                    .iter()
                    .map(|&i| self.vertices[i].id().to_string())
                    .collect(),
            });
        }
        let mut graph = Graph {
            vertices: self.vertices,
            edges: self.edges,
        };
        add_autoedges(&mut graph, dependents);
        Ok(graph)
    }

    /// The sender of `r` (received by `receiver`), checked: the field is receivable, the
    /// sender exists and sends the key, and the types agree.
    fn resolve(&self, receiver: &Vertex, r: &crate::schema::Recv) -> Result<usize, GraphError> {
        let bad = |reason: String| GraphError::InvalidField {
            resource: receiver.id().to_string(),
            field: format!("recv.{}", r.field),
            reason,
        };
        let receives = receiver.resource.receives();
        let Some(&(_, want)) = receives.iter().find(|(f, _)| *f == r.field) else {
            let can: Vec<&str> = receives.iter().map(|(f, _)| *f).collect();
            return Err(bad(format!(
                "cannot be received (receivable: {})",
                list(&can)
            )));
        };
        let Some(&from) = self.index.get(&r.from) else {
            return Err(bad(format!("`{}` is not in the graph", r.from)));
        };
        let sends = self.vertices[from].resource.sends();
        let Some(&(_, got)) = sends.iter().find(|(k, _)| *k == r.key) else {
            let can: Vec<&str> = sends.iter().map(|(k, _)| *k).collect();
            return Err(bad(format!(
                "`{}` does not send `{}` (it sends: {})",
                r.from,
                r.key,
                list(&can)
            )));
        };
        if got != want {
            return Err(bad(format!(
                "`{}.{}` is a {got}, the field needs a {want}",
                r.from, r.key
            )));
        }
        Ok(from)
    }
}

/// mgmt's autoedges: a resource that needs a path runs after the resource that manages it
/// (a file after its parent directory, a user of an `exec`'s `creates` after the exec).
/// Either end can opt out with `meta.autoedge: false`. An implied edge that would close a
/// cycle is left out: autoedges only ever order, never reject, a graph.
fn add_autoedges(graph: &mut Graph, mut dependents: Vec<Vec<usize>>) {
    let vertices = &graph.vertices;
    let mut managers: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    for (i, v) in vertices.iter().enumerate() {
        if v.meta.autoedge {
            for path in v.resource.manages() {
                managers.entry(path).or_default().push(i);
            }
        }
    }
    if managers.is_empty() {
        return;
    }
    let deps = graph.deps();
    let mut implied = Vec::new();
    for (i, v) in vertices.iter().enumerate() {
        if !v.meta.autoedge {
            continue;
        }
        for path in v.resource.needs() {
            for &m in managers.get(&path).into_iter().flatten() {
                if m != i && !deps[i].contains(&m) {
                    implied.push((m, i));
                }
            }
        }
    }
    implied.sort_unstable();
    implied.dedup();
    for (from, to) in implied {
        dependents[from].push(to);
        if find_cycle(&dependents).is_some() {
            dependents[from].pop();
            continue;
        }
        graph.edges.push(Edge {
            from,
            to,
            notify: false,
            auto: true,
        });
    }
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
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
