//! `reflex rules check|test` and `reflex registers list|get|set|del`: the operator's tools for
//! rules and their state.

use crate::cli::{Exit, StackArgs};
use clap::Subcommand;
use manager::rules::{Change, Limits, Produced, Rules};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum RulesCmd {
    /// Compile every rule; print `file:line:col: message` per error; exit 1 if any fails.
    /// Also warn (`file:line: warning: ...`, exit code unchanged) where an exec shell line is
    /// built from event values without `shell_quote`.
    Check {
        /// The rules folder (or one file).
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run one rule against a sample event with a throwaway register store; print what it
    /// would do as JSON. Nothing is sent anywhere.
    Test {
        /// The rule file.
        rule: PathBuf,
        /// The event as JSON: `{"tag": ..., "host": ..., "data": {...}}` (id and time optional).
        #[arg(long)]
        event: String,
        /// Seed the registers from a JSON object file `{"key": value, ...}`.
        #[arg(long)]
        registers: Option<PathBuf>,
    },
}

pub fn rules(cmd: RulesCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RulesCmd::Check { dir } => check(&dir),
        RulesCmd::Test {
            rule,
            event,
            registers,
        } => test(&rule, &event, registers.as_deref()),
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let store = registers::Registers::temporary()?;
    let mut rules = Rules::new(store, &Limits::default());
    let changes = if path.is_file() {
        vec![match rules.compile_file(path) {
            Ok(_) => Change::Loaded {
                file: path.to_path_buf(),
            },
            Err(e) => Change::Failed(e),
        }]
    } else {
        rules
            .load_dir(path)
            .map_err(|e| Exit::usage(format!("cannot read rules folder {}: {e}", path.display())))?
    };
    let mut failed = 0;
    let mut warnings = 0;
    for c in &changes {
        match c {
            Change::Failed(e) => {
                failed += 1;
                let pos = match (e.line, e.column) {
                    (Some(l), Some(c)) => format!("{l}:{c}"),
                    (Some(l), None) => format!("{l}:0"),
                    _ => "0:0".into(),
                };
                println!("{}:{pos}: {}", e.file.display(), e.message);
            }
            Change::Loaded { file } => {
                let source = std::fs::read_to_string(file).unwrap_or_default();
                for w in manager::lint::shell_warnings(&source) {
                    warnings += 1;
                    println!("{}:{}: warning: {w}", file.display(), w.line);
                }
                eprintln!("ok {}", file.display());
            }
            Change::Removed { .. } => {}
        }
    }
    eprintln!(
        "{} rules, {failed} failed, {warnings} warnings",
        changes.len()
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Build an event from the operator's JSON, filling what they left out.
fn sample_event(text: &str) -> anyhow::Result<bus::Event> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Exit::usage(format!("--event is not valid JSON: {e}")))?;
    let Some(tag) = v.get("tag").and_then(Value::as_str) else {
        return Err(Exit::usage("--event needs a \"tag\""));
    };
    let host = v.get("host").and_then(Value::as_str).unwrap_or("testhost");
    let mut ev = bus::Event::new(tag, host, v.get("data").cloned().unwrap_or(Value::Null));
    if let Some(id) = v.get("id").and_then(Value::as_str) {
        ev.id = id.to_string();
    }
    if let Some(t) = v.get("time").and_then(Value::as_u64) {
        ev.time = t;
    }
    Ok(ev)
}

fn test(rule: &Path, event: &str, seed: Option<&Path>) -> anyhow::Result<ExitCode> {
    let ev = sample_event(event)?;
    let store = registers::Registers::temporary()?;
    if let Some(path) = seed {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Exit::usage(format!("cannot read {}: {e}", path.display())))?;
        let Value::Object(map) = serde_json::from_str(&text)
            .map_err(|e| Exit::usage(format!("{}: {e}", path.display())))?
        else {
            return Err(Exit::usage(format!(
                "{}: registers must be a JSON object",
                path.display()
            )));
        };
        for (k, v) in map {
            store.set(&k, &v)?;
        }
    }
    let before = store.entries("")?;
    let mut rules = Rules::new(store.clone(), &Limits::default());
    let compiled = rules
        .compile_file(rule)
        .map_err(|e| Exit::usage(e.to_string()))?;
    let globs = compiled.globs.clone();
    rules.set_rules(vec![compiled]);
    let matched = rules.wants(&ev.tag);
    let mut out = Produced::default();
    rules.run(&ev, &mut out);
    let after = store.entries("")?;
    let set: serde_json::Map<String, Value> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deleted: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let report = json!({
        "rule": rule,
        "match": globs,
        "matched": matched,
        "event": ev,
        "actions": out.actions,
        "events": out.emitted.iter().map(|e| json!({"tag": e.tag, "data": e.data})).collect::<Vec<_>>(),
        "errors": out.errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>(),
        "registers": {"set": set, "deleted": deleted},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if out.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Subcommand)]
pub enum RegistersOp {
    /// Keys and values, optionally only those starting with PREFIX.
    List {
        prefix: Option<String>,
        #[command(flatten)]
        stack: StackArgs,
    },
    Get {
        key: String,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// VALUE is JSON (`42`, `"text"`, `{"a": 1}`); anything that is not JSON is a string.
    Set {
        key: String,
        value: String,
        #[command(flatten)]
        stack: StackArgs,
    },
    Del {
        key: String,
        #[command(flatten)]
        stack: StackArgs,
    },
}

/// Against the running manager's control socket, or the state dir when no manager runs.
pub fn registers(op: RegistersOp) -> anyhow::Result<ExitCode> {
    let (op, key, value, stack) = match op {
        RegistersOp::List { prefix, stack } => ("list", prefix, None, stack),
        RegistersOp::Get { key, stack } => ("get", Some(key), None, stack),
        RegistersOp::Set { key, value, stack } => {
            let v = serde_json::from_str(&value).unwrap_or(Value::String(value));
            ("set", Some(key), Some(v), stack)
        }
        RegistersOp::Del { key, stack } => ("del", Some(key), None, stack),
    };
    let req = json!({"cmd": "registers", "op": op, "key": key, "prefix": key, "value": value});
    let sec = crate::security::security(&stack, crate::security::Node::Client)?;
    let reply = match crate::send::control_request(
        &stack.endpoints().control,
        &req,
        Duration::from_millis(1500),
        &sec,
    ) {
        Ok(r) => r,
        Err(e) if e.downcast_ref::<Exit>().is_some_and(|x| x.code == 3) => {
            offline(&stack, op, key.as_deref(), value)?
        }
        Err(e) => return Err(e),
    };
    if let Some(err) = reply.get("error") {
        return Err(anyhow::anyhow!("{}", err.as_str().unwrap_or("error")));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(reply.get("ok").unwrap_or(&Value::Null))?
    );
    Ok(ExitCode::SUCCESS)
}

fn offline(
    stack: &StackArgs,
    op: &str,
    key: Option<&str>,
    value: Option<Value>,
) -> anyhow::Result<Value> {
    let dir = stack.state.join("registers");
    if !dir.exists() {
        return Err(Exit::usage(format!(
            "no manager answered and there is no register store at {}",
            dir.display()
        )));
    }
    let store = registers::Registers::open(&dir).map_err(|e| {
        anyhow::anyhow!(
            "no manager answered, and the store at {} cannot be opened: {e}",
            dir.display()
        )
    })?;
    let key = key.unwrap_or("");
    let v = match op {
        "list" => Value::Object(store.entries(key)?.into_iter().collect()),
        "get" => store.get(key)?.unwrap_or(Value::Null),
        "del" => Value::from(store.del(key)?),
        _ => {
            store.set(key, &value.unwrap_or(Value::Null))?;
            Value::from(true)
        }
    };
    store.flush()?;
    Ok(json!({"ok": v}))
}
