//! `reflex hosts`: the fleet at a glance from the control node. Each enrolled host with its
//! groups (from the enrollment store) and what the manager's history says of it: up or down
//! and since when, its last event, its graphs in force, converged or not, failures in the last
//! hour. Both are read from the state dir, beside a running manager. Up or down and since when
//! come from the running manager's presence when one answers on the control socket (the
//! history holds presence only as the events of each change, which it may have pruned).

use crate::cli::{print_table, Exit, StackArgs};
use bus::enroll::{store_dir, Enrollment, Entry};
use bus::keys::Role;
use clap::Args;
use manager::page::view::{Host, View};
use manager::presence::Seen;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Args, Debug)]
pub struct HostsArgs {
    /// One JSON array of hosts instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

const HOUR_MS: u64 = 3_600_000;

/// A host as listed: its enrollment (if any) and what the history says (if anything).
struct Row<'a> {
    name: &'a str,
    entry: Option<&'a Entry>,
    host: Option<&'a Host>,
}

/// The running manager's presence, by host: `None` with no manager answering.
fn presence(stack: &StackArgs) -> anyhow::Result<Option<BTreeMap<String, Seen>>> {
    match crate::keys_cmd::online(stack, json!({"cmd": "hosts"}))? {
        Some(v) => Ok(Some(serde_json::from_value(v)?)),
        None => Ok(None),
    }
}

pub fn run(a: HostsArgs) -> anyhow::Result<ExitCode> {
    let state = &a.stack.state;
    let history = manager::history::dir(state);
    let keys = store_dir(state);
    if !history.is_dir() && !keys.is_dir() {
        return Err(Exit::usage(format!(
            "no manager state at {} (no history, no enrollment store): is it the manager's state dir?",
            state.display()
        )));
    }
    let live = presence(&a.stack)?;
    let entries: Vec<Entry> = if keys.is_dir() {
        Enrollment::open(&keys)?
            .list()
            .filter(|e| e.role == Role::Host)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let mut view = View::hosts_only(&history);
    view.update();
    let now = now_ms();
    // The manager's word on who is up, and since when, over what the history still holds.
    let mut hosts = view.hosts.clone();
    for (name, seen) in live.iter().flatten() {
        let h = hosts.entry(name.clone()).or_default();
        h.up = seen.up;
        h.since = seen.since;
        h.seen = h.seen.max(seen.last);
    }

    // Enrolled hosts (any state), and hosts the history knows that are not enrolled (an
    // insecure stack, or a key since removed).
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for e in &entries {
        rows.insert(
            &e.name,
            Row {
                name: &e.name,
                entry: Some(e),
                host: None,
            },
        );
    }
    for (name, h) in &hosts {
        rows.entry(name)
            .or_insert(Row {
                name,
                entry: None,
                host: None,
            })
            .host = Some(h);
    }

    if a.json {
        let out: Vec<_> = rows.values().map(|r| json_row(r, now)).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let header = [
            "HOST",
            "KEY",
            "GROUPS",
            "STATE",
            "SINCE",
            "LAST EVENT",
            "GRAPHS",
            "CONVERGED",
            "FAILED 1H",
        ];
        let table: Vec<Vec<String>> = rows.values().map(|r| text_row(r, now)).collect();
        print_table(&header, &table);
    }
    let newest = hosts.values().map(|h| h.seen).max().unwrap_or(0);
    eprintln!(
        "({} hosts; from the enrollment store and the history in {}{}{})",
        rows.len(),
        state.display(),
        if live.is_some() {
            ", up or down from the running manager"
        } else {
            ""
        },
        if newest > 0 {
            format!(", newest host record {}", ago(newest, now))
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn json_row(r: &Row, now: u64) -> serde_json::Value {
    let h = r.host;
    json!({
        "name": r.name,
        "key": r.entry.map(|e| e.state.as_str()),
        "fingerprint": r.entry.map(|e| e.key.fingerprint()),
        "groups": r.entry.map(|e| e.groups.clone()).unwrap_or_default(),
        "up": h.map(|h| h.up),
        "since": h.map(|h| h.since).filter(|s| *s > 0),
        "seen": h.map(|h| h.seen).filter(|s| *s > 0),
        "last_tag": h.map(|h| h.last_tag.as_str()).filter(|t| !t.is_empty()),
        "graphs": h.map(|h| h.graphs.keys().collect::<Vec<_>>()).unwrap_or_default(),
        "converged": h.and_then(|h| h.converged),
        "failures_1h": h.map(|h| h.failures_since(now.saturating_sub(HOUR_MS))).unwrap_or(0),
    })
}

fn text_row(r: &Row, now: u64) -> Vec<String> {
    let dash = || "-".to_string();
    let h = r.host;
    let state = match h {
        Some(h) if h.since > 0 || h.up => if h.up { "up" } else { "down" }.to_string(),
        _ => dash(),
    };
    let since = h
        .map(|h| h.since)
        .filter(|s| *s > 0)
        .map_or_else(dash, |s| ago(s, now));
    let last = h
        .filter(|h| h.seen > 0)
        .map_or_else(dash, |h| format!("{} {}", h.last_tag, ago(h.seen, now)));
    let converged = match h.and_then(|h| h.converged) {
        Some(true) => "yes".to_string(),
        Some(false) => "no".to_string(),
        None => dash(),
    };
    vec![
        r.name.to_string(),
        r.entry
            .map_or("not enrolled", |e| e.state.as_str())
            .to_string(),
        r.entry
            .filter(|e| !e.groups.is_empty())
            .map_or_else(dash, |e| e.groups.join(",")),
        state,
        since,
        last,
        h.map_or(0, |h| h.graphs.len()).to_string(),
        converged,
        h.map_or(0, |h| h.failures_since(now.saturating_sub(HOUR_MS)))
            .to_string(),
    ]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `4s ago`, `12m ago`, `3h ago`, `2d ago`.
fn ago(at: u64, now: u64) -> String {
    let s = now.saturating_sub(at) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::ago;

    #[test]
    fn ages_read_as_an_operator_says_them() {
        let now = 10_000_000;
        assert_eq!(ago(now - 4_000, now), "4s ago");
        assert_eq!(ago(now - 125_000, now), "2m ago");
        assert_eq!(ago(now - 2 * 3_600_000, now), "2h ago");
        assert_eq!(ago(now + 5, now), "0s ago");
    }
}
