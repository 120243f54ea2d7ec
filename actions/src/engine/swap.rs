//! Replacing the running graph, mgmt's GraphSync, in named phases (in the style of vector's
//! topology reload): [`plan`] diffs the new vertices against the running nodes, then
//! [`Running::swap`] stops the removed nodes, starts the report of the new generation,
//! relinks every node along the new edges, and spawns the added ones.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use graph::{Graph, Vertex};

use super::node::{Links, Node, NodeState};
use super::serial::BySerial;
use super::{lock, Running, SwapStats};
use crate::resource::Outcome;

/// What becomes of each vertex of the new graph and each running node.
pub(super) struct Plan {
    /// The new graph in order.
    pub slots: Vec<Slot>,
    /// For each running node: kept as it is.
    pub keep: Vec<bool>,
    /// For each running node: replaced by a changed vertex of the same id (its pending
    /// refresh stays for the successor).
    pub replaced: Vec<bool>,
    /// The new graph's copies of kept vertices, to be freed off the swapping task.
    pub discard: Vec<Vertex>,
}

/// One vertex of the new graph.
// Unboxed on purpose: a plan lives for one swap, and boxing would cost an allocation per
// new vertex.
#[allow(clippy::large_enum_variant)]
pub(super) enum Slot {
    /// Equal to the running node at this position: it keeps running.
    Kept(usize),
    /// New, or changed: a node is made for it.
    New(Vertex),
}

/// A running node that stops.
struct Removed {
    node: Arc<Node>,
    replaced: bool,
}

/// Phase 1: diff `vertices` by id against the running `old` nodes; a vertex equal to the
/// running one (spec, metaparams and recv) keeps it. Ids are borrowed, not copied, to stay
/// fast on big graphs.
pub(super) fn plan(old: &[Arc<Node>], vertices: Vec<Vertex>) -> Plan {
    let mut keep = vec![false; old.len()];
    let mut replaced = vec![false; old.len()];
    let mut slots = Vec::with_capacity(vertices.len());
    let mut discard = Vec::with_capacity(vertices.len());
    let index: HashMap<&str, usize> = old.iter().enumerate().map(|(i, n)| (n.id(), i)).collect();
    for vertex in vertices {
        match index.get(vertex.id()).copied() {
            Some(i) if old[i].vertex == vertex => {
                keep[i] = true;
                slots.push(Slot::Kept(i));
                discard.push(vertex);
            }
            Some(i) => {
                replaced[i] = true;
                slots.push(Slot::New(vertex));
            }
            None => slots.push(Slot::New(vertex)),
        }
    }
    Plan {
        slots,
        keep,
        replaced,
        discard,
    }
}

impl Running {
    /// Replace the running graph by `graph`, mgmt's GraphSync: a resource whose vertex is
    /// equal (same kind, name, fields, metaparams and received fields) keeps running — its
    /// watch is not restarted and its state is kept; every other new resource starts and
    /// every resource not in `graph` stops (its watch dropped, its pending refresh
    /// discarded). Edges are rewired in place. Returns once removed resources have
    /// stopped; collect the new report with [`Running::first_report`].
    pub async fn swap(&mut self, graph: Graph) -> SwapStats {
        let now = Instant::now();
        let (vertices, edges) = graph.into_parts();
        let Plan {
            slots,
            keep,
            replaced,
            discard,
        } = plan(&self.nodes, vertices);
        // 10k frees are milliseconds: not on this task.
        tokio::task::spawn_blocking(move || drop(discard));

        let old = std::mem::take(&mut self.nodes);
        let mut added = Vec::new();
        // Not `collect()`: that would reuse the slots' buffer, sized for them, for good.
        let mut nodes: Vec<Arc<Node>> = Vec::with_capacity(slots.len());
        nodes.extend(slots.into_iter().map(|slot| match slot {
            Slot::Kept(i) => Arc::clone(&old[i]),
            Slot::New(vertex) => {
                let node = self.new_node(vertex);
                added.push(Arc::clone(&node));
                node
            }
        }));
        let removed: Vec<Removed> = old
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !keep[*i])
            .map(|(i, node)| Removed {
                node,
                replaced: replaced[i],
            })
            .collect();
        let stats = SwapStats {
            kept: nodes.len() - added.len(),
            added: added.len(),
            removed: removed.len(),
        };

        let unreported = self.stop_removed(&removed).await;
        self.new_generation(&nodes, added.len(), unreported, now);
        let rewired = self.link(&nodes, &edges);
        self.nodes = nodes;
        self.edges = edges;
        self.spawn_added(added, rewired);
        stats
    }

    /// Phase 2: stop the removed nodes and wait for their tasks; returns how many had no
    /// first outcome yet. A node gone for good drops its pending refresh.
    async fn stop_removed(&mut self, removed: &[Removed]) -> usize {
        for r in removed {
            r.node.stop.stop();
        }
        let gone: HashSet<u64, BySerial> = removed.iter().map(|r| r.node.serial).collect();
        let (ending, kept) = std::mem::take(&mut self.handles)
            .into_iter()
            .partition(|(serial, _)| gone.contains(serial));
        self.handles = kept;
        for (_, h) in ending {
            // A task that panicked has ended too.
            let _ = h.await;
        }
        let mut unreported = 0;
        for r in removed {
            if !r.node.reported.load(Ordering::SeqCst) {
                unreported += 1;
            }
            *lock(&r.node.links) = Links::default();
            if !r.replaced {
                self.shared.persist_refresh(r.node.id(), false);
            }
        }
        unreported
    }

    /// Phase 3: the report of the new generation. Kept resources count with what they are
    /// now; new ones are awaited.
    fn new_generation(
        &mut self,
        nodes: &[Arc<Node>],
        added: usize,
        unreported: usize,
        now: Instant,
    ) {
        let mut firsts = HashMap::with_capacity_and_hasher(nodes.len(), BySerial::default());
        for (idx, n) in nodes.iter().enumerate() {
            let carried = n.reported.load(Ordering::SeqCst).then(|| {
                let result = match n.state.load() {
                    NodeState::Failed => Err(lock(&n.last_error)
                        .clone()
                        .unwrap_or_else(|| "failed".to_string())),
                    _ => Ok(Outcome::Converged),
                };
                (result, now)
            });
            firsts.insert(n.serial, (idx, carried));
        }
        self.missing = firsts.values().filter(|f| f.1.is_none()).count();
        self.firsts = firsts;
        self.report = None;
        self.started = now;
        self.shared.status.modify(|s| {
            s.pending = s.pending + added - unreported;
            s.last_activity = now;
        });
    }

    /// Phase 4: spawn the added nodes; a kept node with new dependencies re-checks against
    /// them.
    fn spawn_added(&mut self, added: Vec<Arc<Node>>, rewired: Vec<Arc<Node>>) {
        self.handles.reserve_exact(added.len());
        for n in added {
            self.spawn(n);
        }
        for n in rewired {
            n.poke.poke();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::kinds::{MsgSpec, NoopSpec};
    use graph::Spec;

    fn msg(id: &str, body: &str) -> Vertex {
        Vertex::new(Spec::Msg(Box::new(MsgSpec {
            id: id.into(),
            body: body.into(),
        })))
    }

    fn nodes(vertices: Vec<Vertex>) -> Vec<Arc<Node>> {
        vertices
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let res = crate::kinds::build(&v.resource);
                Arc::new(Node::new(i as u64, v, res, false))
            })
            .collect()
    }

    #[test]
    fn plan_keeps_equal_replaces_changed_and_adds_new() {
        let old = nodes(vec![
            msg("msg:a", "x"),
            msg("msg:b", "x"),
            msg("msg:c", "x"),
        ]);
        let noop = Vertex::new(Spec::Noop(NoopSpec {
            id: "noop:d".into(),
        }));
        let p = plan(&old, vec![msg("msg:b", "y"), msg("msg:a", "x"), noop]);
        assert!(matches!(p.slots[0], Slot::New(_)));
        assert!(matches!(p.slots[1], Slot::Kept(0)));
        assert!(matches!(p.slots[2], Slot::New(_)));
        assert_eq!(p.keep, vec![true, false, false]);
        assert_eq!(p.replaced, vec![false, true, false]);
        assert_eq!(p.discard.len(), 1);
    }
}
