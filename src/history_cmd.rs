//! `reflex events` and `reflex trace`: questions to the manager's history, read from its state
//! dir (`<state>/history`, owner-only: whoever may read it is the manager's admin). They read
//! beside a running manager, which keeps writing.

use crate::cli::Exit;
use clap::Args;
use manager::history::{self, ActionNode, EventNode, Query, Reader, Traced};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only events whose tag matches this glob (`beacon/*`, `actor/**`).
    #[arg(long, value_name = "GLOB")]
    pub tag: Option<String>,
    /// Only events about this host.
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// Taken since: a duration ago (`10m`, `2h`) or a time (`2026-12-02T08:00:00Z`).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Taken until: a duration ago or a time.
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The manager's state dir.
    #[arg(long, env = "REFLEX_STATE", default_value = ".reflex")]
    pub state: PathBuf,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// An event's id, or an action's (its tree is that of the event whose rule appended it).
    pub id: String,
    /// The tree as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The manager's state dir.
    #[arg(long, env = "REFLEX_STATE", default_value = ".reflex")]
    pub state: PathBuf,
}

/// `512`, `64KiB`, `512MiB`, `1GiB`, `2GB`: bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 512MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// A time given as a duration ago or an RFC 3339 time, as Unix ms.
fn parse_when(s: &str, now: SystemTime) -> anyhow::Result<u64> {
    let at = match humantime::parse_duration(s) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            Exit::usage(format!(
                "{s:?} is neither a duration ago (10m, 2h, 1d) nor a time (2026-12-02T08:00:00Z)"
            ))
        })?,
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64)
}

fn open(state: &Path) -> anyhow::Result<Reader> {
    let dir = history::dir(state);
    if !dir.is_dir() {
        return Err(Exit::usage(format!(
            "no history at {} (is {} the manager's state dir? was it started with --no-history?)",
            dir.display(),
            state.display()
        )));
    }
    Reader::open(&dir)
        .map_err(|e| anyhow::anyhow!("cannot read the history at {}: {e}", dir.display()))
}

fn time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A JSON value on one line, cut at `max` characters.
fn short(v: &Value, max: usize) -> String {
    let s = v.to_string();
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

pub fn events(a: EventsArgs) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    let q = Query {
        tag: a.tag.as_deref().map(manager::glob::Glob::new),
        host: a.host.clone(),
        since: a.since.as_deref().map(|s| parse_when(s, now)).transpose()?,
        until: a.until.as_deref().map(|s| parse_when(s, now)).transpose()?,
        limit: a.limit,
    };
    let reader = open(&a.state)?;
    let found = history::query(&reader, &q)?;
    for (at, e) in &found {
        if a.json {
            let mut v = serde_json::to_value(e)?;
            v["taken"] = (*at).into();
            println!("{v}");
        } else {
            println!(
                "{}  {:<24} {:<16} {}  {}",
                time(*at),
                e.tag,
                e.host,
                e.id,
                short(&e.data, 120)
            );
        }
    }
    if found.is_empty() && !a.json {
        eprintln!("no events match");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn trace(a: TraceArgs) -> anyhow::Result<ExitCode> {
    let reader = open(&a.state)?;
    let traced = history::trace(&reader, &a.id)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&traced)?);
    }
    match traced {
        Traced::Yes { tree, truncated } => {
            if !a.json {
                let mut out = String::new();
                print_event(&mut out, &tree, tree.at, 0);
                if truncated {
                    out.push_str("(the tree is larger: cut short)\n");
                }
                print!("{out}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Traced::Unknown => {
            eprintln!("{}: no such event or action in the history", a.id);
            Ok(ExitCode::from(1))
        }
        Traced::Pruned { oldest } => {
            eprintln!(
                "{}: older than the history kept (its oldest record is from {}): pruned",
                a.id,
                time(oldest)
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `+0.4 ms`, `+2.31 s` after the first event.
fn rel(at: u64, t0: u64) -> String {
    let ms = at.saturating_sub(t0);
    if ms < 1_000 {
        format!("+{ms} ms")
    } else {
        format!("+{:.2} s", ms as f64 / 1_000.0)
    }
}

fn print_event(out: &mut String, n: &EventNode, t0: u64, depth: usize) {
    use std::fmt::Write;
    let pad = "  ".repeat(depth);
    let e = &n.event;
    let when = if depth == 0 {
        time(n.at)
    } else {
        rel(n.at, t0)
    };
    let _ = writeln!(
        out,
        "{pad}event {} {} host={} {when}  {}",
        e.id,
        e.tag,
        e.host,
        short(&e.data, 100)
    );
    for h in &n.hits {
        let wrote = if h.wrote.is_empty() {
            String::new()
        } else {
            format!(" wrote {}", h.wrote.join(", "))
        };
        let _ = writeln!(out, "{pad}  rule {} {}{wrote}", h.rule, rel(h.at, t0));
        for a in &h.actions {
            print_action(out, a, t0, depth + 2);
        }
        for c in &h.emitted {
            print_event(out, c, t0, depth + 2);
        }
    }
    for err in &n.errors {
        let _ = writeln!(out, "{pad}  rule {} failed: {}", err.rule, err.message);
    }
}

fn print_action(out: &mut String, a: &ActionNode, t0: u64, depth: usize) {
    use std::fmt::Write;
    let pad = "  ".repeat(depth);
    let act = &a.action;
    // A graph is a list of resources, or `{resources: [...], edges: [...]}`.
    let resources = act
        .graph
        .as_array()
        .or_else(|| act.graph.get("resources").and_then(Value::as_array))
        .map_or(0, Vec::len);
    let life = serde_json::to_value(act.life).unwrap_or_default();
    let life = life.as_str().map_or_else(|| life.to_string(), String::from);
    let _ = writeln!(
        out,
        "{pad}action {} {} -> {} ({life}, {resources} resources) {}",
        act.id,
        act.name,
        act.target,
        rel(a.at, t0)
    );
    for r in &a.reports {
        let d = &r.data;
        let what = match r.tag.as_str() {
            "actor/result" => {
                let status = d.get("status").and_then(Value::as_str).unwrap_or("?");
                let changed = d.get("changed").map(|v| short(v, 80)).unwrap_or_default();
                let errors = d
                    .get("errors")
                    .and_then(Value::as_array)
                    .filter(|e| !e.is_empty());
                match errors {
                    Some(errs) => {
                        format!("{status} errors {}", short(&Value::from(errs.clone()), 160))
                    }
                    None => format!("{status} changed {changed}"),
                }
            }
            "actor/repaired" => str_of(d, "resource").to_string(),
            "actor/error" => format!("{}: {}", str_of(d, "resource"), str_of(d, "error")),
            _ => short(d, 120),
        };
        let _ = writeln!(out, "{pad}  {} {} {what} {}", r.host, r.tag, rel(r.at, t0));
    }
    if a.more_reports > 0 {
        let _ = writeln!(out, "{pad}  ... {} more reports", a.more_reports);
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}
