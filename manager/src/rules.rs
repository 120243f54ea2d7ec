//! The rule engine: Rhai scripts, one per file, run in file-name order for the events whose tags
//! they ask for.
//!
//! A rule declares `const MATCH = "glob";` (or an array of globs; none means every tag) and
//! `fn react(event)`. Inside it:
//!
//! - `registers::get/set/incr/del/keys/expire`, `registers::window/mark/seen` and the throttles
//!   `once_within(key, secs)` / `accumulate(key, threshold, secs)` reach the register store;
//! - `act(target, graph [, #{name, expires, life}])` appends an action (`life`: `"keep"`, the
//!   default, `"once"`, or seconds to keep it for); an exec shell line (`cmd`,
//!   `ifcmd`, `watchcmd`) that holds an event value unquoted fails the rule (see [`crate::shell`]);
//! - `shell_quote(s)` quotes a value for a shell line;
//! - `emit(tag, data)` sends a new event back into the manager, carrying its cause;
//! - `stop()` ends the processing of this event: later rules do not see it.
//!
//! The engine is set up for scripts we do not trust: operation, call-depth and size limits, no
//! `eval`, no `import` (so no file access) and no network. A rule that throws or hits a limit is
//! logged with its file name, what it appended is discarded, and the remaining rules still run;
//! after [`DISABLE_AFTER`] failures in a row it is disabled until its file changes.

use crate::glob::{Glob, TagIndex};
use crate::metrics::{RuleMeter, RuleMeters};
use bus::monitor::{Hit, RuleError};
use bus::{Action, Event, Origin, Target};
use natives::{accumulate_fn, once_within_fn, registers_module};
use registers::Registers;
use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext, Scope, AST, INT};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Resource limits for rule scripts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rhai operations one `react` call may take before it is cut off.
    pub max_operations: u64,
    /// Deepest function call nesting.
    pub max_call_levels: usize,
    /// Longest string a rule may build, in bytes.
    pub max_string_size: usize,
    /// Most elements in one array.
    pub max_array_size: usize,
    /// Most entries in one map.
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
    /// The rule file.
    pub file: PathBuf,
    /// The line of the mistake, when Rhai knows it.
    pub line: Option<usize>,
    /// Its column, when Rhai knows it.
    pub column: Option<usize>,
    /// What is wrong.
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

/// A rule that fails this many times in a row is disabled until its file changes.
pub const DISABLE_AFTER: u32 = 100;

/// One loaded rule.
pub struct Rule {
    /// The file stem: `10-hello` for `10-hello.rhai`. Actions are named after it by default.
    pub name: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// The tags it asks for (`MATCH`; `**` when it says none).
    pub globs: Vec<String>,
    ast: AST,
    scope: Scope<'static>,
    /// The source it was compiled from: a reload of identical text changes nothing.
    source: String,
    /// Failures in a row; reset by a success.
    failures: u32,
    /// Disabled after [`DISABLE_AFTER`] failures in a row, until its file changes.
    pub disabled: bool,
    /// Its hits, errors and run times, as exposed on `/metrics`.
    meter: RuleMeter,
}

/// An event a rule emitted with `emit(tag, data)`.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The rule that emitted it.
    pub rule: String,
    /// The new event's tag.
    pub tag: String,
    /// The new event's data.
    pub data: Value,
}

/// What a reload of one rule file did.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The file compiled and now runs (new or replacing its old version).
    Loaded {
        /// The rule file.
        file: PathBuf,
    },
    /// The file failed to compile; its previous version (if any) keeps running.
    Failed(LoadError),
    /// The file is gone (deleted or renamed away); its rule no longer runs.
    Removed {
        /// The rule file.
        file: PathBuf,
    },
}

/// What running the rules for one event produced.
#[derive(Debug, Default)]
pub struct Produced {
    /// The actions the rules appended, in order.
    pub actions: Vec<Action>,
    /// One per rule that ran through.
    pub hits: Vec<Hit>,
    /// One per rule that failed (or an event no rule could be given).
    pub errors: Vec<RuleError>,
    /// The events the rules emitted, to run next.
    pub emitted: Vec<Emitted>,
    /// Rules disabled by this event (name, file), for the `manager/rules/disabled` event.
    pub disabled: Vec<(String, PathBuf)>,
}

impl Produced {
    /// Empty it for the next event, keeping its allocations.
    pub fn clear(&mut self) {
        self.actions.clear();
        self.hits.clear();
        self.errors.clear();
        self.emitted.clear();
        self.disabled.clear();
    }
}

/// The state a running rule's native functions share: which rule and event, and the actions
/// appended so far.
#[derive(Default)]
struct CallCtx {
    rule: String,
    event: String,
    actions: Vec<Action>,
    emitted: Vec<Emitted>,
    stop: bool,
    /// The register keys the running rule wrote, each once, at most `MAX_WROTE`.
    wrote: Vec<String>,
    /// The exec shell lines the running rule's actions hold, checked once it returns.
    shell_lines: Vec<ShellLine>,
}

/// One shell line of an exec resource in an appended action.
struct ShellLine {
    /// `exec:<name>.cmd` (or `.ifcmd`, `.watchcmd`).
    field: String,
    line: String,
    /// The line of the `act` call.
    at: Option<usize>,
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
    meters: RuleMeters,
}

fn to_json(d: &Dynamic) -> FnResult<Value> {
    rhai::serde::from_dynamic::<Value>(d)
}

fn to_rhai(v: &Value) -> FnResult<Dynamic> {
    rhai::serde::to_dynamic(v)
}

/// Build an action from `act(...)` arguments, validating the target and the graph now so the
/// rule author sees the mistake at the rule, not on some actor later.
fn make_action(
    ctx: &Shared,
    at: rhai::Position,
    target: &str,
    graph: &Dynamic,
    opts: &Map,
) -> FnResult<()> {
    let target = Target::parse(target).map_err(|e| format!("act: {e}"))?;
    let graph = to_json(graph)?;
    let parsed =
        graph::Graph::from_value(&graph).map_err(|e| format!("act: invalid graph: {e}"))?;
    let mut name = None;
    let mut expires: Option<u64> = None;
    let mut life = bus::Life::Keep;
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
            "life" => life = parse_life(v)?,
            other => {
                return Err(
                    format!("act: unknown option {other:?} (known: name, expires, life)").into(),
                )
            }
        }
    }
    if let bus::Life::For(secs) = life {
        // Released when its time is up, and never started after that.
        let end = bus::now_ms().saturating_add(secs.saturating_mul(1000));
        expires = Some(expires.map_or(end, |e| e.min(end)));
    }
    if let Some(n) = &name {
        if n.is_empty() || n.len() > 256 || n.contains(char::is_control) {
            return Err(
                format!("act: bad name {n:?}: 1 to 256 characters, no control characters").into(),
            );
        }
    }
    let mut c = lock(ctx);
    for v in parsed.vertices() {
        if let graph::Spec::Exec(exec) = &v.resource {
            for (field, line) in exec.shell_lines() {
                c.shell_lines.push(ShellLine {
                    field: format!("{}.{field}", exec.id),
                    line: line.to_string(),
                    at: at.line(),
                });
            }
        }
    }
    let action = Action {
        id: bus::new_id(),
        name: name.unwrap_or_else(|| c.rule.clone()),
        seq: 0,
        target,
        graph,
        origin: Origin {
            event: c.event.clone(),
            rule: c.rule.clone(),
        },
        expires,
        life,
        prev: 0,
    };
    c.actions.push(action);
    Ok(())
}

/// `life: "keep" | "once" | SECONDS` of `act`.
fn parse_life(v: &Dynamic) -> FnResult<bus::Life> {
    if let Ok(secs) = v.as_int() {
        return match u64::try_from(secs) {
            Ok(s) if s > 0 => Ok(bus::Life::For(s)),
            _ => Err(format!("act: life must be at least 1 second, not {secs}").into()),
        };
    }
    match v.clone().into_string().as_deref() {
        Ok("keep") => Ok(bus::Life::Keep),
        Ok("once") => Ok(bus::Life::Once),
        Ok(other) => Err(format!(
            "act: life must be \"keep\", \"once\" or seconds (an integer), not {other:?}"
        )
        .into()),
        Err(t) => Err(format!(
            "act: life must be \"keep\", \"once\" or seconds (an integer), not {t}"
        )
        .into()),
    }
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
    engine.on_print(move |s| {
        let c = lock(&c);
        tracing::info!(rule = %c.rule, event = %c.event, "{s}")
    });
    let c = ctx.clone();
    engine.on_debug(move |s, _, pos| {
        let c = lock(&c);
        tracing::debug!(rule = %c.rule, event = %c.event, %pos, "{s}")
    });
    let module = registers_module(store.clone(), ctx.clone());
    engine.register_static_module("registers", module.into());
    // The throttles read naturally without the module prefix too.
    engine.register_fn("once_within", once_within_fn(store.clone(), ctx.clone()));
    engine.register_fn("accumulate", accumulate_fn(store, ctx.clone()));
    let c = ctx.clone();
    engine.register_fn("stop", move || lock(&c).stop = true);
    let c = ctx.clone();
    engine.register_fn("emit", move |tag: &str, data: Dynamic| -> FnResult<()> {
        if tag.is_empty() || tag.contains(char::is_whitespace) {
            return Err(format!("emit: bad tag {tag:?}").into());
        }
        let data = to_json(&data)?;
        let mut c = lock(&c);
        let rule = c.rule.clone();
        c.emitted.push(Emitted {
            rule,
            tag: tag.to_string(),
            data,
        });
        Ok(())
    });
    engine.register_fn(crate::shell::QUOTE_FN, |s: &str| {
        crate::shell::shell_quote(s)
    });
    let c = ctx.clone();
    engine.register_fn(
        "act",
        move |call: NativeCallContext, target: &str, graph: Dynamic| -> FnResult<()> {
            make_action(&c, call.call_position(), target, &graph, &Map::new())
        },
    );
    let c = ctx;
    engine.register_fn(
        "act",
        move |call: NativeCallContext, target: &str, graph: Dynamic, opts: Map| -> FnResult<()> {
            make_action(&c, call.call_position(), target, &graph, &opts)
        },
    );
    engine
}

/// Fail a rule whose actions' shell lines hold a value of `event` unquoted. Only exec
/// actions pay: without shell lines the event is not looked at.
fn refuse_splices(lines: &[ShellLine], event: &Event, file: &Path) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let values = crate::shell::unsafe_values(event);
    for l in lines {
        if let Some(s) = crate::shell::find_splice(&l.line, &values) {
            let shown: String = s.value.chars().take(80).collect();
            let at = l.at.map(|n| format!(" (line {n})")).unwrap_or_default();
            return Err(format!(
                "{}: act{at}: `{}` holds the event's {} = {shown:?} unquoted: pass it in `argv`, or splice shell_quote({})",
                file.display(),
                l.field,
                s.source,
                s.source,
            ));
        }
    }
    Ok(())
}

/// Rule files are `*.rhai`; editor temp and backup files are not.
pub fn is_rule_file(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "rhai")
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The rule files in `dir`, in file-name order (the order rules run in).
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_rule_file(p) && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn position_of(err: &EvalAltResult) -> (Option<usize>, Option<usize>) {
    let p = err.position();
    (p.line(), p.position())
}

impl Rules {
    /// No rules yet, an engine with `limits` whose rules reach `store`.
    pub fn new(store: Registers, limits: &Limits) -> Rules {
        let ctx: Shared = Arc::default();
        Rules {
            engine: build_engine(store, ctx.clone(), limits),
            rules: Vec::new(),
            index: TagIndex::default(),
            ctx,
            meters: RuleMeters::default(),
        }
    }

    /// Every rule's meters (for the manager's `/metrics`).
    pub fn meters(&self) -> &RuleMeters {
        &self.meters
    }

    /// The loaded rules, in the order they run.
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
            file: file.to_path_buf(),
            globs,
            ast,
            scope,
            source: source.to_string(),
            failures: 0,
            disabled: false,
            meter: self.meters.for_rule(&name),
            name,
        })
    }

    /// Read and compile one rule file.
    pub fn compile_file(&self, file: &Path) -> Result<Rule, LoadError> {
        let src = std::fs::read_to_string(file).map_err(|e| LoadError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: e.to_string(),
        })?;
        self.compile(file, &src)
    }

    /// Replace the rule set with the `*.rhai` files of `dir`, in file-name order: what loaded
    /// and what failed, per file.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<Change>, std::io::Error> {
        let files = rule_files(dir)?;
        let mut rules = Vec::new();
        let mut changes = Vec::new();
        for file in files {
            match self.compile_file(&file) {
                Ok(rule) => {
                    rules.push(rule);
                    changes.push(Change::Loaded { file });
                }
                Err(e) => changes.push(Change::Failed(e)),
            }
        }
        self.set_rules(rules);
        Ok(changes)
    }

    /// Pick up what happened to one rule file: (re)load it when it exists, drop its rule when
    /// it does not. A file that fails to compile leaves its previous version running.
    pub fn reload(&mut self, file: &Path) -> Option<Change> {
        if !is_rule_file(file) {
            return None;
        }
        let at = self.rules.iter().position(|r| r.file == file);
        if !file.is_file() {
            let at = at?;
            let mut rules = std::mem::take(&mut self.rules);
            let gone = rules.remove(at);
            self.meters.forget(&gone.name);
            self.set_rules(rules);
            return Some(Change::Removed {
                file: file.to_path_buf(),
            });
        }
        // Unchanged text (a touch, an editor saving without edits): nothing to do, and a
        // disabled rule stays disabled until its file really changes.
        if let (Some(i), Ok(text)) = (at, std::fs::read_to_string(file)) {
            if self.rules[i].source == text {
                return None;
            }
        }
        match self.compile_file(file) {
            Ok(rule) => {
                let mut rules = std::mem::take(&mut self.rules);
                match at {
                    Some(i) => rules[i] = rule,
                    None => rules.push(rule),
                }
                rules.sort_by(|a, b| a.file.cmp(&b.file));
                self.set_rules(rules);
                Some(Change::Loaded {
                    file: file.to_path_buf(),
                })
            }
            Err(e) => Some(Change::Failed(e)),
        }
    }

    /// Install a rule set and rebuild the index (rules run in the order given).
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
        {
            let mut c = lock(&self.ctx);
            c.event.clone_from(&event.id);
            c.stop = false;
        }
        for &i in hits.iter() {
            let Some(rule) = self.rules.get_mut(i) else {
                continue;
            };
            if rule.disabled {
                continue;
            }
            let (actions_before, emitted_before) = {
                let mut c = lock(&self.ctx);
                c.rule.clone_from(&rule.name);
                c.shell_lines.clear();
                c.wrote.clear();
                (c.actions.len(), c.emitted.len())
            };
            let started = Instant::now();
            let result = self.engine.call_fn_with_options::<Dynamic>(
                rhai::CallFnOptions::new()
                    .eval_ast(false)
                    .rewind_scope(true),
                &mut rule.scope,
                &rule.ast,
                "react",
                (Dynamic::from_map(map.clone()),),
            );
            rule.meter.seconds.observe(started.elapsed().as_secs_f64());
            let mut c = lock(&self.ctx);
            let result = result
                .map_err(|e| e.to_string())
                .and_then(|_| refuse_splices(&c.shell_lines, event, &rule.file));
            match result {
                Ok(()) => {
                    rule.failures = 0;
                    rule.meter.hits.inc();
                    out.hits.push(Hit {
                        rule: rule.name.clone(),
                        event: event.id.clone(),
                        tag: event.tag.clone(),
                        actions: (c.actions.len() - actions_before) as u32,
                        wrote: std::mem::take(&mut c.wrote),
                    });
                }
                Err(message) => {
                    rule.meter.errors.inc();
                    // A failed rule produces nothing: drop what it appended before failing.
                    c.actions.truncate(actions_before);
                    c.emitted.truncate(emitted_before);
                    c.stop = false;
                    rule.failures += 1;
                    tracing::warn!(rule = %rule.file.display(), event = %event.id, "rule failed: {message}");
                    out.errors.push(RuleError {
                        rule: rule.name.clone(),
                        event: event.id.clone(),
                        message,
                    });
                    if rule.failures >= DISABLE_AFTER {
                        rule.disabled = true;
                        tracing::error!(rule = %rule.file.display(), event = %event.id, "rule failed {DISABLE_AFTER} times in a row: disabled until its file changes");
                        out.disabled.push((rule.name.clone(), rule.file.clone()));
                    }
                }
            }
            if c.stop {
                break;
            }
        }
        let mut c = lock(&self.ctx);
        out.actions.append(&mut c.actions);
        out.emitted.append(&mut c.emitted);
    }
}

mod natives;
#[cfg(test)]
mod tests;
