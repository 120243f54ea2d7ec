//! Graphviz output: a graph (optionally with each resource's live state) in DOT.

use std::fmt::Write;

use crate::schema::Edge;

/// DOT text for graph `name`. `states`, when given, is one label per id ("converged",
/// "failed", ...) shown under the id and used to colour the box.
pub fn render(name: &str, ids: &[String], states: Option<&[&str]>, edges: &[Edge]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(name));
    let _ = writeln!(out, "  label={};", quote(name));
    let _ = writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fillcolor=white];"
    );
    for (i, id) in ids.iter().enumerate() {
        match states.and_then(|s| s.get(i)) {
            Some(state) => {
                let colour = match *state {
                    "converged" => "palegreen",
                    "failed" => "lightpink",
                    _ => "lightyellow",
                };
                let _ = writeln!(
                    out,
                    "  n{i} [label={}, fillcolor={colour}];",
                    quote(&format!("{id}\n{state}"))
                );
            }
            None => {
                let _ = writeln!(out, "  n{i} [label={}];", quote(id));
            }
        }
    }
    for e in edges {
        let mut attrs = Vec::new();
        if e.notify {
            attrs.push("style=bold, color=red, label=\"notify\"");
        }
        if e.auto {
            attrs.push("style=dashed, label=\"auto\"");
        }
        if attrs.is_empty() {
            let _ = writeln!(out, "  n{} -> n{};", e.from, e.to);
        } else {
            let _ = writeln!(out, "  n{} -> n{} [{}];", e.from, e.to, attrs.join(", "));
        }
    }
    out.push_str("}\n");
    out
}

/// A DOT quoted string: backslash, quote and newline escaped.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
