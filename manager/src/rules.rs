//! The rule engine: Rhai scripts, one per file, run in file-name order for the events whose tags
//! they ask for.
//!
//! A rule declares `const MATCH = "glob";` (or an array of globs; none means every tag) and
//! `fn react(event)`. Inside it, `registers::get/set/incr/del/keys` reach the register store and
//! `act(target, graph [, #{name, expires}])` appends an action. The engine is set up for scripts
//! we do not trust: operation, call-depth and size limits, no `eval`, no `import` (so no file
//! access) and no network. A rule that throws or hits a limit is logged with its file name, what
//! it appended is discarded, and the remaining rules still run.

use crate::glob::{Glob, TagIndex};
use bus::monitor::{Hit, RuleError};
use bus::{Action, Event, Origin, Target};
use registers::Registers;
use rhai::{Dynamic, Engine, EvalAltResult, Map, Module, Scope, AST, INT};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Resource limits for rule scripts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rhai operations one `react` call may take before it is cut off.
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_operations: 200_000,
            max_call_levels: 32,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
        }
    }
}

/// A rule file that could not be loaded, with the position Rhai reported.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// One loaded rule.
pub struct Rule {
    /// The file stem: `10-hello` for `10-hello.rhai`. Actions are named after it by default.
    pub name: String,
    pub file: PathBuf,
    pub globs: Vec<String>,
    ast: AST,
    scope: Scope<'static>,
}

/// What running the rules for one event produced.
#[derive(Debug, Default)]
pub struct Produced {
    pub actions: Vec<Action>,
    pub hits: Vec<Hit>,
    pub errors: Vec<RuleError>,
}

impl Produced {
    pub fn clear(&mut self) {
        self.actions.clear();
        self.hits.clear();
        self.errors.clear();
    }
}

/// The state a running rule's native functions share: which rule and event, and the actions
/// appended so far.
#[derive(Default)]
struct CallCtx {
    rule: String,
    event: String,
    actions: Vec<Action>,
}

type Shared = Arc<Mutex<CallCtx>>;

fn lock(ctx: &Shared) -> MutexGuard<'_, CallCtx> {
    // A panic while holding this lock can only come from our own code; the data stays usable.
    ctx.lock().unwrap_or_else(|p| p.into_inner())
}

type FnResult<T> = Result<T, Box<EvalAltResult>>;

/// The loaded rules, their tag index and the Rhai engine that runs them.
pub struct Rules {
    engine: Engine,
    rules: Vec<Rule>,
    index: TagIndex,
    ctx: Shared,
}

fn to_json(d: &Dynamic) -> FnResult<Value> {
    rhai::serde::from_dynamic::<Value>(d)
}

fn to_rhai(v: &Value) -> FnResult<Dynamic> {
    rhai::serde::to_dynamic(v)
}

fn reg_err(e: registers::RegisterError) -> Box<EvalAltResult> {
    e.to_string().into()
}

fn registers_module(store: Registers) -> Module {
    let mut m = Module::new();
    let r = store.clone();
    m.set_native_fn("get", move |key: &str| -> FnResult<Dynamic> {
        match r.get(key).map_err(reg_err)? {
            Some(v) => to_rhai(&v),
            None => Ok(Dynamic::UNIT),
        }
    });
    let r = store.clone();
    m.set_native_fn("set", move |key: &str, value: Dynamic| -> FnResult<()> {
        r.set(key, &to_json(&value)?).map_err(reg_err)
    });
    let r = store.clone();
    m.set_native_fn("incr", move |key: &str, by: INT| -> FnResult<INT> {
        r.incr(key, by).map_err(reg_err)
    });
    let r = store.clone();
    m.set_native_fn("incr", move |key: &str| -> FnResult<INT> {
        r.incr(key, 1).map_err(reg_err)
    });
    let r = store.clone();
    m.set_native_fn("del", move |key: &str| -> FnResult<bool> {
        r.del(key).map_err(reg_err)
    });
    let r = store;
    m.set_native_fn("keys", move |prefix: &str| -> FnResult<rhai::Array> {
        let keys = r.keys(prefix).map_err(reg_err)?;
        Ok(keys.into_iter().map(Dynamic::from).collect())
    });
    m
}

/// Build an action from `act(...)` arguments, validating the target and the graph now so the
/// rule author sees the mistake at the rule, not on some actor later.
fn make_action(ctx: &Shared, target: &str, graph: &Dynamic, opts: &Map) -> FnResult<()> {
    let target = Target::parse(target).map_err(|e| format!("act: {e}"))?;
    let graph = to_json(graph)?;
    actions::Graph::from_value(&graph).map_err(|e| format!("act: invalid graph: {e}"))?;
    let mut name = None;
    let mut expires = None;
    for (k, v) in opts {
        match k.as_str() {
            "name" => {
                name = Some(
                    v.clone()
                        .into_string()
                        .map_err(|t| format!("act: name must be a string, not {t}"))?,
                )
            }
            "expires" => {
                let secs = v
                    .as_int()
                    .map_err(|t| format!("act: expires must be seconds (an integer), not {t}"))?;
                expires = Some(bus::now_ms().saturating_add(secs.max(0) as u64 * 1000));
            }
            other => {
                return Err(format!("act: unknown option {other:?} (known: name, expires)").into())
            }
        }
    }
    let mut c = lock(ctx);
    let action = Action {
        id: bus::new_id(),
        name: name.unwrap_or_else(|| c.rule.clone()),
        seq: 0,
        target: target.to_string(),
        graph,
        origin: Origin {
            event: c.event.clone(),
            rule: c.rule.clone(),
        },
        expires,
    };
    c.actions.push(action);
    Ok(())
}

fn build_engine(store: Registers, ctx: Shared, limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.disable_symbol("eval");
    // No module resolver: `import` cannot read files.
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    let c = ctx.clone();
    engine.on_print(move |s| tracing::info!(rule = %lock(&c).rule, "{s}"));
    let c = ctx.clone();
    engine.on_debug(move |s, _, pos| tracing::debug!(rule = %lock(&c).rule, %pos, "{s}"));
    engine.register_static_module("registers", registers_module(store).into());
    let c = ctx.clone();
    engine.register_fn("act", move |target: &str, graph: Dynamic| -> FnResult<()> {
        make_action(&c, target, &graph, &Map::new())
    });
    let c = ctx;
    engine.register_fn(
        "act",
        move |target: &str, graph: Dynamic, opts: Map| -> FnResult<()> {
            make_action(&c, target, &graph, &opts)
        },
    );
    engine
}

fn position_of(err: &EvalAltResult) -> (Option<usize>, Option<usize>) {
    let p = err.position();
    (p.line(), p.position())
}

impl Rules {
    pub fn new(store: Registers, limits: &Limits) -> Rules {
        let ctx: Shared = Arc::default();
        Rules {
            engine: build_engine(store, ctx.clone(), limits),
            rules: Vec::new(),
            index: TagIndex::default(),
            ctx,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Compile one rule: parse it, run its top level once (constants), read `MATCH`, and check
    /// that it defines `react(event)`.
    pub fn compile(&self, file: &Path, source: &str) -> Result<Rule, LoadError> {
        let fail = |line, column, message: String| LoadError {
            file: file.to_path_buf(),
            line,
            column,
            message,
        };
        let ast = self.engine.compile(source).map_err(|e| {
            let p = e.position();
            fail(p.line(), p.position(), e.err_type().to_string())
        })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "react" && f.params.len() == 1)
        {
            return Err(fail(None, None, "no `fn react(event)` defined".into()));
        }
        let mut scope = Scope::new();
        self.engine
            .run_ast_with_scope(&mut scope, &ast)
            .map_err(|e| {
                let (l, c) = position_of(&e);
                fail(l, c, format!("top level failed: {e}"))
            })?;
        let globs = match scope.get_value::<Dynamic>("MATCH") {
            None => vec!["**".to_string()],
            Some(m) if m.is_string() => vec![m.into_string().unwrap_or_default()],
            Some(m) if m.is_array() => {
                let mut out = Vec::new();
                for g in m.into_array().unwrap_or_default() {
                    let t = g.type_name();
                    out.push(g.into_string().map_err(|_| {
                        fail(None, None, format!("MATCH array holds {t}, not a string"))
                    })?);
                }
                out
            }
            Some(m) => {
                return Err(fail(
                    None,
                    None,
                    format!(
                        "MATCH must be a string or an array of strings, not {}",
                        m.type_name()
                    ),
                ))
            }
        };
        if let Some(bad) = globs.iter().find(|g| g.is_empty()) {
            return Err(fail(
                None,
                None,
                format!("MATCH holds an empty glob {bad:?}"),
            ));
        }
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Rule {
            name,
            file: file.to_path_buf(),
            globs,
            ast,
            scope,
        })
    }

    /// Replace the rule set with the `*.rhai` files of `dir`, in file-name order. Files that
    /// fail to load are skipped and returned as errors; the others are loaded.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<LoadError>, std::io::Error> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
            .collect();
        files.sort();
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for file in files {
            let loaded = std::fs::read_to_string(&file)
                .map_err(|e| LoadError {
                    file: file.clone(),
                    line: None,
                    column: None,
                    message: e.to_string(),
                })
                .and_then(|src| self.compile(&file, &src));
            match loaded {
                Ok(rule) => rules.push(rule),
                Err(e) => errors.push(e),
            }
        }
        self.set_rules(rules);
        Ok(errors)
    }

    /// Install a compiled rule set (already in order) and rebuild the index.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        let mut index = TagIndex::default();
        for (i, r) in rules.iter().enumerate() {
            for g in &r.globs {
                index.add(i, Glob::new(g));
            }
        }
        self.rules = rules;
        self.index = index;
    }

    /// True when some rule wants this tag (without running anything).
    pub fn wants(&mut self, tag: &str) -> bool {
        !self.index.lookup(tag).is_empty()
    }

    /// Run every matching rule for `event`, appending to `out`.
    pub fn run(&mut self, event: &Event, out: &mut Produced) {
        let hits = self.index.lookup(&event.tag);
        if hits.is_empty() {
            return;
        }
        let data = match to_rhai(&event.data) {
            Ok(d) => d,
            Err(e) => {
                out.errors.push(RuleError {
                    rule: String::new(),
                    event: event.id.clone(),
                    message: format!("event data cannot be given to rules: {e}"),
                });
                return;
            }
        };
        let mut map = Map::new();
        map.insert("id".into(), event.id.clone().into());
        map.insert("tag".into(), event.tag.clone().into());
        map.insert("host".into(), event.host.clone().into());
        map.insert("time".into(), (event.time as INT).into());
        map.insert("depth".into(), (event.depth as INT).into());
        map.insert("data".into(), data);
        for &i in hits.iter() {
            let Some(rule) = self.rules.get_mut(i) else {
                continue;
            };
            let before = {
                let mut c = lock(&self.ctx);
                c.rule.clone_from(&rule.name);
                c.event.clone_from(&event.id);
                c.actions.len()
            };
            let result = self.engine.call_fn_with_options::<Dynamic>(
                rhai::CallFnOptions::new()
                    .eval_ast(false)
                    .rewind_scope(true),
                &mut rule.scope,
                &rule.ast,
                "react",
                (Dynamic::from_map(map.clone()),),
            );
            let mut c = lock(&self.ctx);
            match result {
                Ok(_) => out.hits.push(Hit {
                    rule: rule.name.clone(),
                    event: event.id.clone(),
                    tag: event.tag.clone(),
                    actions: (c.actions.len() - before) as u32,
                }),
                Err(e) => {
                    // A failed rule produces nothing: drop what it appended before failing.
                    c.actions.truncate(before);
                    let message = e.to_string();
                    tracing::warn!(rule = %rule.file.display(), event = %event.id, "rule failed: {message}");
                    out.errors.push(RuleError {
                        rule: rule.name.clone(),
                        event: event.id.clone(),
                        message,
                    });
                }
            }
        }
        out.actions.append(&mut lock(&self.ctx).actions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules_with(sources: &[(&str, &str)]) -> (Rules, Vec<LoadError>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, src) in sources {
            std::fs::write(dir.path().join(name), src).unwrap();
        }
        let mut r = Rules::new(Registers::temporary().unwrap(), &Limits::default());
        let errs = r.load_dir(dir.path()).unwrap();
        (r, errs)
    }

    #[test]
    fn matching_rule_acts_and_counts() {
        let (mut r, errs) = rules_with(&[
            (
                "10-a.rhai",
                r#"const MATCH = "demo/*"; fn react(e) { let n = registers::incr("n/" + e.host, 1); act("host/" + e.host, [#{kind: "noop", name: `n${n}`}]); }"#,
            ),
            (
                "20-b.rhai",
                r#"const MATCH = ["other/x"]; fn react(e) { act("all", []); }"#,
            ),
        ]);
        assert!(errs.is_empty(), "{errs:?}");
        let mut out = Produced::default();
        r.run(&Event::new("demo/hello", "web1", json!({})), &mut out);
        r.run(&Event::new("demo/hello", "web1", json!({})), &mut out);
        assert_eq!(out.actions.len(), 2);
        assert_eq!(out.actions[1].target, "host/web1");
        assert_eq!(out.actions[1].name, "10-a");
        assert_eq!(
            out.actions[1].graph,
            json!([{"kind": "noop", "name": "n2"}])
        );
        assert_eq!(out.hits.len(), 2);
        assert!(out.errors.is_empty());
    }

    #[test]
    fn bad_rules_are_reported_with_position_and_others_load() {
        let (r, errs) = rules_with(&[
            ("a.rhai", "fn react(e) { let x = ; }"),
            ("b.rhai", "fn nope() {}"),
            ("c.rhai", "fn react(e) {}"),
        ]);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].line, Some(1));
        assert!(errs[1].message.contains("react"));
        assert_eq!(r.rules().len(), 1);
    }

    #[test]
    fn runaway_and_throwing_rules_are_cut_off_and_others_run() {
        let (mut r, _) = rules_with(&[
            ("10-loop.rhai", "fn react(e) { act(\"all\", []); loop {} }"),
            ("20-throw.rhai", "fn react(e) { throw \"boom\"; }"),
            (
                "30-badgraph.rhai",
                "fn react(e) { act(\"all\", [#{kind: \"nope\", name: \"x\"}]); }",
            ),
            ("40-badtarget.rhai", "fn react(e) { act(\"hosts/x\", []); }"),
            (
                "50-ok.rhai",
                "fn react(e) { act(\"group/db\", [], #{name: \"fine\"}); }",
            ),
        ]);
        let mut out = Produced::default();
        r.run(&Event::new("x", "h", json!(null)), &mut out);
        assert_eq!(out.errors.len(), 4, "{:?}", out.errors);
        assert!(
            out.errors[0]
                .message
                .to_lowercase()
                .contains("too many operations"),
            "{:?}",
            out.errors[0]
        );
        assert!(out.errors[1].message.contains("boom"));
        assert!(out.errors[2].message.contains("nope"));
        assert!(out.errors[3].message.contains("bad target"));
        assert_eq!(
            out.actions.len(),
            1,
            "the looping rule's action is discarded"
        );
        assert_eq!(out.actions[0].name, "fine");
    }

    #[test]
    fn no_eval_no_import() {
        let (_, errs) = rules_with(&[
            ("a.rhai", "fn react(e) { eval(\"1\"); }"),
            ("b.rhai", "import \"x\" as y; fn react(e) {}"),
        ]);
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
