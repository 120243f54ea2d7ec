//! `reflex tail`: the manager's monitor stream, one readable line per event, rule hit, rule
//! error and action.

use crate::cli::StackArgs;
use bus::monitor::{self, Hit, RuleError};
use bus::{Action, Event};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Monitor endpoint (default: from --addr and --port-base, N+3).
    #[arg(long)]
    pub from: Option<String>,
    /// Only lines whose monitor topic starts with this (e.g. `event/beacon/`, `action/`).
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Print JSON objects instead of text lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

/// Render one monitor message; None for frames this build cannot read.
pub fn render(topic: &str, payload: &[u8], json: bool) -> Option<String> {
    let now = clock(bus::now_ms());
    if topic.starts_with(monitor::EVENT) {
        let e: Event = bus::decode(payload).ok()?;
        if json {
            return Some(serde_json::json!({"type": "event", "event": e}).to_string());
        }
        Some(format!(
            "{now} event  {:<22} host={} id={} {}",
            e.tag, e.host, e.id, e.data
        ))
    } else if topic.starts_with(monitor::HIT) {
        let h: Hit = bus::decode(payload).ok()?;
        if json {
            return Some(serde_json::json!({"type": "hit", "hit": h}).to_string());
        }
        Some(format!(
            "{now} hit    {:<22} rule={} event={} actions={}",
            h.tag, h.rule, h.event, h.actions
        ))
    } else if topic.starts_with(monitor::ACTION) {
        let a: Action = bus::decode(payload).ok()?;
        if json {
            return Some(serde_json::json!({"type": "action", "action": a}).to_string());
        }
        let ids: Vec<String> = graph::Graph::from_value(&a.graph)
            .map(|g| g.ids())
            .unwrap_or_default();
        Some(format!(
            "{now} action {:<22} -> {} rule={} id={} [{}]",
            a.name,
            a.target,
            a.origin.rule,
            a.id,
            ids.join(", ")
        ))
    } else if topic.starts_with(monitor::ERROR) {
        let r: RuleError = bus::decode(payload).ok()?;
        if json {
            return Some(serde_json::json!({"type": "error", "error": r}).to_string());
        }
        Some(format!(
            "{now} ERROR  rule={} event={} {}",
            r.rule, r.event, r.message
        ))
    } else {
        None
    }
}

pub fn run(a: TailArgs) -> anyhow::Result<ExitCode> {
    let from = a.from.unwrap_or(a.stack.endpoints().monitor);
    let stop = crate::cli::stop_flag()?;
    let sec = crate::security::security(&a.stack, crate::security::Node::Client)?;
    let sub = bus::secure::connect(zmq::SUB, &from, &sec)?;
    sub.set_subscribe(a.filter.as_bytes())?;
    eprintln!("tailing {from} (Ctrl-C to stop)");
    let mut out = std::io::stdout().lock();
    while !stop.load(Ordering::Relaxed) {
        let mut items = [sub.as_poll_item(zmq::POLLIN)];
        if bus::sockets::poll(&mut items, 200).is_err() || !items[0].is_readable() {
            continue;
        }
        while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
            let [topic, payload] = parts.as_slice() else {
                continue;
            };
            let topic = String::from_utf8_lossy(topic);
            if let Some(line) = render(&topic, payload, a.json) {
                // A closed pipe (`reflex tail | head`) ends tail quietly.
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
