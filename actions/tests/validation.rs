//! Every bad graph is rejected before anything runs, naming what is at fault.

use graph::{Graph, GraphError};
use serde_json::{json, Value};

fn err(v: Value) -> String {
    match Graph::from_value(&v) {
        Ok(g) => panic!("accepted a bad graph: {g:?}"),
        Err(e) => e.to_string(),
    }
}

fn one(resource: Value) -> String {
    err(json!({ "resources": [resource] }))
}

#[test]
fn the_schema_example_loads_from_yaml() {
    let g = Graph::from_yaml(
        r#"
resources:
  - kind: file
    name: /tmp/f1
    content: "hello\n"
    mode: "0644"
    state: exists
  - kind: exec
    name: build
    cmd: "sleep 1; echo hi"
    timeout: 30
  - kind: noop
    name: marker
    meta: {retry: 3}
edges:
  - {from: "exec:build", to: "file:/tmp/f1"}
"#,
    )
    .expect("valid");
    assert_eq!(g.ids(), vec!["file:/tmp/f1", "exec:build", "noop:marker"]);
    assert_eq!(g.len(), 3);
}

#[test]
fn bare_list_and_empty_graphs() {
    assert_eq!(Graph::from_yaml("[]").expect("empty").len(), 0);
    assert!(Graph::from_value(&json!({"resources": []}))
        .expect("empty")
        .is_empty());
    let g = Graph::from_yaml("- {kind: noop, name: a}\n- {kind: noop, name: b}\n").expect("list");
    assert_eq!(g.ids(), vec!["noop:a", "noop:b"]);
}

#[test]
fn validation_is_pure() {
    // A parent that does not exist is a run-time error, not a validation one.
    Graph::from_value(&json!([{"kind": "file", "name": "/nonexistent-reflex/x"}]))
        .expect("no I/O at validation");
}

#[test]
fn unknown_field_names_resource_and_field() {
    let e = one(json!({"kind": "file", "name": "/tmp/x", "contnet": "hi"}));
    assert_eq!(e, "file:/tmp/x: unknown field `contnet`");
    let e = one(json!({"kind": "exec", "name": "b", "cmd": "true", "timeot": 3}));
    assert_eq!(e, "exec:b: unknown field `timeot`");
    let e = one(json!({"kind": "noop", "name": "m", "extra": 1}));
    assert_eq!(e, "noop:m: unknown field `extra`");
}

#[test]
fn unknown_kind() {
    let e = one(json!({"kind": "fiel", "name": "/tmp/x"}));
    assert!(e.starts_with("fiel:/tmp/x: unknown kind `fiel`"), "{e}");
    assert!(e.contains("file, exec, noop"), "{e}");
}

#[test]
fn missing_required_fields() {
    assert_eq!(
        one(json!({"name": "x"})),
        "resource #1: missing required field `kind`"
    );
    let e = err(json!([{"kind": "noop", "name": "a"}, {"kind": "noop"}]));
    assert_eq!(e, "resource #2: missing required field `name`");
    // `cmd` is no longer required alone: one of `cmd` and `argv` is (issue 9).
    assert_eq!(
        one(json!({"kind": "exec", "name": "build"})),
        "exec:build: field `cmd`: one of `cmd` (a shell line) or `argv` (a program and its arguments) is required"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        one(json!({"kind": "exec", "name": "b", "cmd": "true", "timeout": "30"})),
        "exec:b: field `timeout`: expected a number, got a string"
    );
    assert_eq!(
        one(json!({"kind": "noop", "name": 5})),
        "resource #1: field `name`: expected a string, got a number"
    );
    assert_eq!(
        one(json!({"kind": "file", "name": "/tmp/x", "content": ["a"]})),
        "file:/tmp/x: field `content`: expected a string, got a list"
    );
    assert_eq!(
        one(json!({"kind": "noop", "name": "m", "meta": 3})),
        "noop:m: field `meta`: expected a map, got a number"
    );
    assert_eq!(err(json!(["x"])), "resource #1: not a map");
    let e = one(json!({"kind": "exec", "name": "b", "cmd": "true", "timeout": -1}));
    assert!(e.starts_with("exec:b: field `timeout`"), "{e}");
}

#[test]
fn file_specific_values() {
    let e = one(json!({"kind": "file", "name": "tmp/x"}));
    assert!(e.starts_with("file:tmp/x: field `name`"), "{e}");
    assert!(e.contains("absolute"), "{e}");
    let e = one(json!({"kind": "file", "name": "/"}));
    assert!(e.starts_with("file:/: field `name`"), "{e}");
    let e = one(json!({"kind": "file", "name": "/tmp/x/", "content": "x"}));
    assert!(e.starts_with("file:/tmp/x/: field `content`"), "{e}");
    let e = one(json!({"kind": "file", "name": "/tmp/x", "recurse": true}));
    assert!(e.starts_with("file:/tmp/x: field `recurse`"), "{e}");
    let e = one(json!({"kind": "file", "name": "/tmp/x/", "purge": true}));
    assert!(e.contains("needs a `source`"), "{e}");
    let e = one(json!({"kind": "file", "name": "/tmp/x", "content": "a", "source": "/etc/hosts"}));
    assert!(e.starts_with("file:/tmp/x: field `source`"), "{e}");
    let e = one(json!({"kind": "file", "name": "/tmp/x", "mode": "0999"}));
    assert!(e.starts_with("file:/tmp/x: field `mode`"), "{e}");
    assert!(e.contains("0999"), "{e}");
    let e = Graph::from_yaml("- {kind: file, name: /tmp/x, mode: 644}")
        .expect_err("decimal mode")
        .to_string();
    assert_eq!(
        e,
        "file:/tmp/x: field `mode`: expected an octal string like \"0644\", got a number"
    );
    // YAML keeps a leading-zero scalar as a string, so the unquoted form works.
    Graph::from_yaml("- {kind: file, name: /tmp/x, mode: 0644}").expect("unquoted octal");
    let e = one(json!({"kind": "file", "name": "/tmp/x", "state": "gone"}));
    assert!(e.starts_with("file:/tmp/x: field `state`"), "{e}");
    assert!(e.contains("gone"), "{e}");
    let e = one(json!({"kind": "file", "name": "/tmp/x", "state": "absent", "content": "x"}));
    assert!(e.starts_with("file:/tmp/x: field `content`"), "{e}");
}

#[test]
fn duplicate_ids() {
    let e = err(json!([{"kind": "noop", "name": "a"}, {"kind": "noop", "name": "a"}]));
    assert_eq!(e, "duplicate resource id `noop:a` (resources #1 and #2)");
}

#[test]
fn edges_must_name_resources_in_the_graph() {
    let e = err(json!({
        "resources": [{"kind": "noop", "name": "a"}],
        "edges": [{"from": "noop:a", "to": "exec:nope"}],
    }));
    assert_eq!(
        e,
        "edge #1: `to` names `exec:nope`, which is not in the graph"
    );
    let e = err(json!({
        "resources": [{"kind": "noop", "name": "a"}],
        "edges": [{"from": "noop:a", "too": "noop:a"}],
    }));
    assert_eq!(e, "edge #1: unknown field `too`");
    let e = err(json!({
        "resources": [{"kind": "noop", "name": "a"}],
        "edges": [{"from": "noop:a"}],
    }));
    assert_eq!(e, "edge #1: missing `to`");
}

#[test]
fn cycles_are_named() {
    let g = json!({
        "resources": [
            {"kind": "exec", "name": "a", "cmd": "true"},
            {"kind": "exec", "name": "b", "cmd": "true"},
            {"kind": "noop", "name": "c"},
        ],
        "edges": [
            {"from": "exec:a", "to": "exec:b"},
            {"from": "exec:b", "to": "noop:c"},
            {"from": "exec:b", "to": "exec:a"},
        ],
    });
    match Graph::from_value(&g) {
        Err(GraphError::Cycle { path }) => assert_eq!(path, ["exec:a", "exec:b", "exec:a"]),
        other => panic!("expected a cycle, got {other:?}"),
    }
    assert_eq!(err(g), "cycle: exec:a -> exec:b -> exec:a");
}

#[test]
fn top_level_shape() {
    let e = err(json!({"resources": [], "edge": []}));
    assert!(e.contains("`edge`"), "{e}");
    let e = err(json!({"edges": []}));
    assert!(e.contains("missing `resources`"), "{e}");
    let e = err(json!("file"));
    assert!(e.starts_with("invalid graph"), "{e}");
    let e = Graph::from_yaml("resources: [")
        .expect_err("bad yaml")
        .to_string();
    assert!(e.starts_with("invalid graph YAML"), "{e}");
}

#[test]
fn the_readme_graph_example_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme.split("## Graphs").nth(1).expect("a Graphs section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a yaml block");
    let g = Graph::from_yaml(yaml).unwrap_or_else(|e| panic!("README example: {e}"));
    assert_eq!(g.len(), 7);
}

#[test]
fn exec_needs_exactly_one_of_cmd_and_argv() {
    let e = one(json!({"kind": "exec", "name": "b", "cmd": "true", "argv": ["true"]}));
    assert_eq!(
        e,
        "exec:b: field `argv`: give `cmd` (a shell line) or `argv` (a program and its arguments), not both"
    );
    let e = one(json!({"kind": "exec", "name": "b"}));
    assert_eq!(
        e,
        "exec:b: field `cmd`: one of `cmd` (a shell line) or `argv` (a program and its arguments) is required"
    );
    let e = one(json!({"kind": "exec", "name": "b", "argv": []}));
    assert_eq!(
        e,
        "exec:b: field `argv`: must not be empty: it names the program"
    );
    let e = one(json!({"kind": "exec", "name": "b", "argv": ["echo", 3]}));
    assert_eq!(
        e,
        "exec:b: field `argv`: argv[1]: expected a string, got a number"
    );
    let e = one(json!({"kind": "exec", "name": "b", "argv": [["sh"]]}));
    assert_eq!(
        e,
        "exec:b: field `argv`: argv[0]: expected a string, got a list"
    );
    let e = one(json!({"kind": "exec", "name": "b", "argv": ["", "x"]}));
    assert_eq!(
        e,
        "exec:b: field `argv`: argv[0] (the program) must not be empty"
    );
    let e = one(json!({"kind": "exec", "name": "b", "argv": "echo hi"}));
    assert_eq!(
        e,
        "exec:b: field `argv`: expected a list of strings, got a string"
    );
    let e = one(json!({"kind": "exec", "name": "b", "argv": ["echo", "a\u{0}b"]}));
    assert_eq!(e, "exec:b: field `argv`: argv[1] holds a NUL byte");
    let e = one(json!({"kind": "exec", "name": "b", "cmd": "echo a\u{0}b"}));
    assert_eq!(e, "exec:b: field `cmd`: holds a NUL byte");
    let e = one(json!({"kind": "exec", "name": "b", "argv": ["true"], "ifcmd": "x\u{0}"}));
    assert_eq!(e, "exec:b: field `ifcmd`: holds a NUL byte");
    // An empty argument after the program is a real argument, not a mistake.
    Graph::from_value(&json!([{"kind": "exec", "name": "b", "argv": ["printf", ""]}]))
        .expect("an empty argument is allowed");
}
