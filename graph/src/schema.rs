//! The shapes of a validated graph: vertices (a resource, its metaparams, what it receives)
//! and edges between them.

use std::fmt;

use crate::kinds::Spec;
use crate::meta::Meta;

/// A validated graph of resources, ready to run. Build one with [`Graph::from_value`],
/// [`Graph::from_yaml`] or a [`crate::GraphBuilder`].
#[derive(Clone, PartialEq)]
pub struct Graph {
    pub(crate) vertices: Vec<Vertex>,
    /// Every edge once (explicit, implied by send/recv, and autoedges), in the order added.
    pub(crate) edges: Vec<Edge>,
}

/// One resource of a graph: everything a graph swap compares to keep it running.
#[derive(Debug, Clone, PartialEq)]
pub struct Vertex {
    /// What the resource is (its kind's spec).
    pub resource: Spec,
    /// Its metaparams: one shared copy for all with the defaults (most resources), as a
    /// host may keep tens of thousands of vertices in force.
    pub meta: std::sync::Arc<Meta>,
    /// The fields it receives from other resources.
    pub recv: Vec<Recv>,
}

/// One received field: `field` takes the value `key` that resource `from` sends
/// (`recv: {field: "from.key"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recv {
    /// The receiver's field.
    pub field: String,
    /// The sender's id (`kind:name`).
    pub from: String,
    /// What the sender sends.
    pub key: String,
}

/// One dependency: `to` waits for `from` (positions in the graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The resource that runs first.
    pub from: usize,
    /// The resource that waits for it.
    pub to: usize,
    /// A change in `from` sends `to` a refresh.
    pub notify: bool,
    /// Implied by the graph (autoedge), not written in it.
    pub auto: bool,
}

impl Vertex {
    /// A resource with default metaparams that receives nothing.
    pub fn new(resource: Spec) -> Vertex {
        Vertex {
            resource,
            meta: Meta::default().shared(),
            recv: Vec::new(),
        }
    }

    /// `kind:name`.
    pub fn id(&self) -> &str {
        self.resource.id()
    }
}

impl Graph {
    /// The resources, in graph order.
    pub fn vertices(&self) -> &[Vertex] {
        &self.vertices
    }

    /// Every edge, by position in [`Graph::vertices`].
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The vertices and edges, for whoever runs the graph.
    pub fn into_parts(self) -> (Vec<Vertex>, Vec<Edge>) {
        (self.vertices, self.edges)
    }

    /// For each resource, the resources it waits for (edge sources), in edge order.
    pub fn deps(&self) -> Vec<Vec<usize>> {
        let mut deps = vec![Vec::new(); self.vertices.len()];
        for e in &self.edges {
            deps[e.to].push(e.from);
        }
        deps
    }

    /// The graph in DOT (graphviz): resources as boxes, edges as arrows; notify edges bold
    /// and labelled, autoedges dashed.
    pub fn to_dot(&self, name: &str) -> String {
        crate::dot::render(name, &self.ids(), None, &self.edges)
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.vertices.len()
    }

    /// True when the graph has no resources.
    pub fn is_empty(&self) -> bool {
        self.vertices.is_empty()
    }

    /// Resource ids (`kind:name`), in graph order.
    pub fn ids(&self) -> Vec<String> {
        self.vertices.iter().map(|v| v.id().to_string()).collect()
    }
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("ids", &self.ids())
            .field("deps", &self.deps())
            .field("edges", &self.edges)
            .finish()
    }
}
