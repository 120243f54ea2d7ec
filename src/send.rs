//! `reflex send` (one event, or one per line of stdin, each kept until the manager
//! acknowledges it) and `reflex status` (a manager's counters).

use crate::cli::{hostname, Exit, StackArgs};
use crate::security::{security, Node};
use clap::Args;
use serde_json::{Map, Value};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Event tag, e.g. demo/hello.
    #[arg(required_unless_present = "stdin")]
    pub tag: Option<String>,
    /// Data fields as KEY=VALUE; values that parse as JSON numbers or booleans are sent as such.
    pub fields: Vec<String>,
    /// Data as a JSON object (KEY=VALUE fields are merged over it).
    #[arg(long)]
    pub data: Option<String>,
    /// Host the event is about (default: this machine).
    #[arg(long)]
    pub host: Option<String>,
    /// Manager ingest endpoint (default: from --addr and --port-base). Several (repeated, or
    /// comma-separated) for the managers of one cluster: the first is used until it falls
    /// silent, then the next, and what was not acknowledged is sent there again.
    #[arg(long, value_delimiter = ',')]
    pub to: Vec<String>,
    /// Seconds to wait for the manager to acknowledge every event (after the last is read).
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Read one event per line from stdin, as a JSON object: the data fields plus `tag`
    /// (required) and `host` (optional); all go over one connection. Exits 0 once every
    /// event was acknowledged.
    #[arg(long, conflicts_with_all = ["tag", "fields", "data"])]
    pub stdin: bool,
    /// Send at most N events per second (with --stdin).
    #[arg(long, requires = "stdin")]
    pub rate: Option<f64>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// A field value: JSON numbers and booleans as such, anything else as a string.
fn field_value(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(raw.to_string()),
    }
}

pub fn build_data(data: Option<&str>, fields: &[String]) -> anyhow::Result<Value> {
    let mut map = match data {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(other) if fields.is_empty() => return Ok(other),
            Ok(_) => {
                return Err(Exit::usage(
                    "--data must be a JSON object when KEY=VALUE fields are given too",
                ))
            }
            Err(e) => return Err(Exit::usage(format!("--data is not valid JSON: {e}"))),
        },
    };
    for f in fields {
        let (k, v) = f
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Exit::usage(format!("field {f:?} is not KEY=VALUE")))?;
        map.insert(k.to_string(), field_value(v));
    }
    Ok(Value::Object(map))
}

fn check_tag(tag: &str) -> anyhow::Result<()> {
    if tag.is_empty() || tag.contains(char::is_whitespace) {
        return Err(Exit::usage(format!(
            "bad tag {tag:?}: tags are slash-separated words without spaces"
        )));
    }
    Ok(())
}

pub fn send(a: SendArgs) -> anyhow::Result<ExitCode> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        return Err(Exit::usage(
            "--timeout must be a positive number of seconds",
        ));
    }
    if a.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(Exit::usage(
            "--rate must be a positive number of events per second",
        ));
    }
    // The command line is checked before anything connects.
    let one = match a.stdin {
        true => None,
        false => {
            let tag = a.tag.clone().unwrap_or_default();
            check_tag(&tag)?;
            Some((tag, build_data(a.data.as_deref(), &a.fields)?))
        }
    };
    let to = managers(&a.to, &a.stack)?;
    let sec = security(&a.stack, Node::Client)?;
    let host = a.host.clone().unwrap_or_else(hostname);
    let timeout = Duration::from_secs_f64(a.timeout);
    let em =
        beacons::Emitter::with_config(bus::sender::SenderConfig::with_managers(&to, &sec), &host)?;
    let Some((tag, data)) = one else {
        return send_lines(&em, &host, a.rate, timeout);
    };
    let ev = bus::Event::new(tag, host, data);
    em.send_event(&ev);
    acknowledged(&em, timeout)?;
    println!("{}", ev.id);
    Ok(ExitCode::SUCCESS)
}

/// The managers' ingest endpoints `--to` gives (repeated or comma-separated, blanks left
/// out), else the stack's own; each must end in a port (its acks door and enroll door are
/// counted from it).
pub fn managers(to: &[String], stack: &StackArgs) -> anyhow::Result<Vec<String>> {
    let given: Vec<String> = to
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if given.is_empty() {
        return Ok(vec![stack.endpoints().ingest]);
    }
    for t in &given {
        if bus::endpoints::acks_for(t).is_none() {
            return Err(Exit::usage(format!(
                "{t:?}: expected a manager's ingest endpoint, tcp://HOST:PORT"
            )));
        }
    }
    Ok(given)
}

fn acknowledged(em: &beacons::Emitter, timeout: Duration) -> anyhow::Result<()> {
    match em.wait_acked(timeout) {
        Ok(()) => Ok(()),
        Err(e @ beacons::SendError::NoManager { .. }) => Err(Exit::unreachable(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// One event per stdin line; a bad line stops the reading (what was sent before it is still
/// waited for) and is named in the error.
fn send_lines(
    em: &beacons::Emitter,
    host: &str,
    rate: Option<f64>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    let start = std::time::Instant::now();
    let mut sent: u64 = 0;
    let mut bad = None;
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // Paced before the event is made, so its time is when it leaves, not when its line
        // was read.
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(sent as f64 / r);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
        let ev = match line_event(&line, host) {
            Ok(ev) => ev,
            Err(e) => {
                bad = Some(Exit::usage(format!("stdin line {}: {e}", i + 1)));
                break;
            }
        };
        // The emitter holds 100,000 unacknowledged events: past that, wait for room.
        if em.send_event_waiting(&ev) {
            sent += 1;
        }
    }
    acknowledged(em, timeout)?;
    eprintln!("{sent} events sent, every one acknowledged");
    match bad {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn line_event(line: &str, host: &str) -> anyhow::Result<bus::Event> {
    let mut map = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => m,
        Ok(_) => anyhow::bail!("not a JSON object"),
        Err(e) => anyhow::bail!("not JSON: {e}"),
    };
    let tag = match map.remove("tag") {
        Some(Value::String(t)) => t,
        _ => anyhow::bail!("needs a \"tag\" string"),
    };
    check_tag(&tag)?;
    let host = match map.remove("host") {
        Some(Value::String(h)) => h,
        None => host.to_string(),
        Some(_) => anyhow::bail!("\"host\" must be a string"),
    };
    Ok(bus::Event::new(tag, host, Value::Object(map)))
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Seconds to wait for the manager's answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

/// Ask the control socket one JSON question, with the admin key.
pub fn control_request(
    endpoint: &str,
    request: &Value,
    timeout: Duration,
    sec: &bus::secure::Security,
) -> anyhow::Result<Value> {
    let s = bus::secure::connect(zmq::REQ, endpoint, sec)?;
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    s.set_rcvtimeo(ms)?;
    s.set_sndtimeo(ms)?;
    s.set_linger(0)?;
    s.send(request.to_string().as_bytes(), 0)?;
    match s.recv_bytes(0) {
        Ok(b) => Ok(serde_json::from_slice(&b)?),
        Err(zmq::Error::EAGAIN) => Err(Exit::unreachable(format!(
            "no manager answered on {endpoint} within {:.1}s",
            timeout.as_secs_f64()
        ))),
        Err(e) => Err(e.into()),
    }
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let reply = control_request(
        &a.stack.endpoints().control,
        &serde_json::json!({"cmd": "stats"}),
        Duration::from_secs_f64(a.timeout.max(0.1)),
        &security(&a.stack, Node::Client)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn to_takes_several_managers_and_defaults_to_the_stack() {
        let stack = StackArgs {
            state: ".reflex".into(),
            port_base: 4600,
            addr: "10.0.0.1".into(),
            insecure: true,
            manager_key: None,
        };
        assert_eq!(
            managers(&[], &stack).unwrap(),
            ["tcp://10.0.0.1:4600".to_string()]
        );
        // clap splits commas; blanks left by a trailing comma are left out.
        let given = [
            "tcp://a:4510".to_string(),
            " tcp://b:4510".into(),
            "".into(),
        ];
        assert_eq!(
            managers(&given, &stack).unwrap(),
            ["tcp://a:4510".to_string(), "tcp://b:4510".into()]
        );
        let err = managers(&["tcp://a".to_string()], &stack).unwrap_err();
        assert!(err.to_string().contains("tcp://a"), "{err}");
    }

    #[test]
    fn fields_are_typed_and_merged() {
        let v = build_data(
            Some(r#"{"a": 1, "b": "x"}"#),
            &[
                "b=2".into(),
                "c=true".into(),
                "d=hi there".into(),
                "e=1.5".into(),
                "f=".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"a": 1, "b": 2, "c": true, "d": "hi there", "e": 1.5, "f": ""})
        );
        assert!(build_data(None, &["novalue".into()]).is_err());
        assert!(build_data(Some("{bad"), &[]).is_err());
        assert_eq!(build_data(Some("[1,2]"), &[]).unwrap(), json!([1, 2]));
    }
}
