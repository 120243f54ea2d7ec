//! `reflex keys list | accept NAME [--group G ...] | reject NAME | revoke NAME | show`: the
//! enrollment store and this node's public keys. Through a running manager's control socket
//! when one answers within about a second (so a change reaches its key set at once), else
//! offline on the state dir (the manager follows the store there); stderr says which.

use crate::cli::{print_table, Exit, KeysCmd, StackArgs};
use crate::security::{security, Node};
use bus::enroll::{store_dir, EnrollError, Enrollment, Entry};
use bus::keys::Role;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// How long to wait for a running manager before working offline.
const ONLINE_WAIT: Duration = Duration::from_secs(1);

pub fn run(cmd: KeysCmd) -> anyhow::Result<ExitCode> {
    let (stack, op, name, groups) = match cmd {
        KeysCmd::Show {
            sign: true, stack, ..
        } => return show_sign(&stack),
        KeysCmd::Show { role, stack, .. } => return show(&stack, role),
        KeysCmd::List { json, stack } => {
            let entries = match online(&stack, json!({"cmd": "keys", "op": "list"}))? {
                Some(v) => serde_json::from_value(v)?,
                None => offline_list(&stack)?,
            };
            return list(&entries, json);
        }
        KeysCmd::Accept {
            name,
            groups,
            stack,
        } => (stack, "accept", name, groups),
        KeysCmd::Reject { name, stack } => (stack, "reject", name, Vec::new()),
        KeysCmd::Revoke { name, stack } => (stack, "revoke", name, Vec::new()),
    };
    let req = json!({"cmd": "keys", "op": op, "name": name, "groups": groups});
    let entry: Entry = match online(&stack, req)? {
        Some(v) => serde_json::from_value(v)?,
        None => {
            let mut store = open(&stack, &name)?;
            match op {
                "accept" => store.accept(&name, &groups).cloned(),
                "reject" => store.reject(&name).cloned(),
                _ => store.revoke(&name),
            }
            .map_err(refused)?
        }
    };
    match op {
        "revoke" => println!("revoked {}: it has to enroll again", describe(&entry)),
        done => println!("{done}ed {}", describe(&entry)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the running manager, when one listens: `Some(answer)`; `None` to work offline.
pub(crate) fn online(stack: &StackArgs, req: Value) -> anyhow::Result<Option<Value>> {
    let control = stack.endpoints().control;
    // Nothing listening is the common offline case: find out at once, not after a timeout.
    let listening = control
        .strip_prefix("tcp://")
        .and_then(|a| std::net::ToSocketAddrs::to_socket_addrs(a).ok()?.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, ONLINE_WAIT).is_ok());
    // Without a manager key to pin this is not the control node: offline.
    let sec = match listening.then(|| security(stack, Node::Client)) {
        Some(Ok(sec)) => sec,
        _ => {
            eprintln!("(offline, on {})", stack.state.display());
            return Ok(None);
        }
    };
    let reply = match crate::send::control_request(&control, &req, ONLINE_WAIT, &sec) {
        Ok(r) => r,
        Err(e) if e.downcast_ref::<Exit>().is_some_and(|x| x.code == 3) => {
            eprintln!(
                "(no manager answered on {control}: offline, on {})",
                stack.state.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    eprintln!("(through the manager on {control})");
    if let Some(err) = reply.get("error") {
        let msg = err.as_str().unwrap_or("error").to_string();
        return Err(if reply.get("usage").is_some() {
            Exit::usage(msg)
        } else {
            anyhow::anyhow!(msg)
        });
    }
    Ok(Some(reply.get("ok").cloned().unwrap_or(Value::Null)))
}

/// The store, for a change to `name`: there is none to change when the store was never made.
fn open(stack: &StackArgs, name: &str) -> anyhow::Result<Enrollment> {
    let dir = store_dir(&stack.state);
    if !dir.exists() {
        return Err(Exit::usage(format!(
            "no key named {name:?}: there is no enrollment store at {}",
            dir.display()
        )));
    }
    Ok(Enrollment::open(&dir)?)
}

/// An unknown or invalid name is bad usage (exit 2); anything else a failure.
fn refused(e: EnrollError) -> anyhow::Error {
    match e {
        EnrollError::NotFound(_) | EnrollError::Name(_) => Exit::usage(e.to_string()),
        other => other.into(),
    }
}

fn groups(e: &Entry) -> String {
    if e.groups.is_empty() {
        "-".into()
    } else {
        e.groups.join(",")
    }
}

fn describe(e: &Entry) -> String {
    format!(
        "{} ({}, key {}, groups {})",
        e.name,
        e.role,
        e.key.fingerprint(),
        groups(e)
    )
}

fn offline_list(stack: &StackArgs) -> anyhow::Result<Vec<Entry>> {
    let dir = store_dir(&stack.state);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(Enrollment::open(&dir)?.list().cloned().collect())
}

fn list(entries: &[Entry], as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "name": e.name, "state": e.state, "role": e.role,
                    "fingerprint": e.key.fingerprint(), "key": e.key.to_hex(),
                    "groups": e.groups, "since": e.since,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.state.as_str().into(),
                e.role.to_string(),
                e.key.fingerprint(),
                groups(e),
            ]
        })
        .collect();
    print_table(&["NAME", "STATE", "ROLE", "FINGERPRINT", "GROUPS"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// The signing key's public half, made if missing, as `--sign-key` takes it.
fn show_sign(stack: &StackArgs) -> anyhow::Result<ExitCode> {
    let key = bus::envelope::SignKey::load_or_create(&stack.state)?;
    println!("{}", key.public());
    eprintln!(
        "action signing key (also in {}): hosts pin it with --sign-key",
        bus::envelope::key::public_path(&stack.state).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(stack: &StackArgs, role: Role) -> anyhow::Result<ExitCode> {
    let dir = bus::keys::key_dir(&stack.state);
    let pair = bus::keys::load_or_create(&dir, role)?;
    println!("{}", pair.public().to_hex());
    eprintln!(
        "{role} key {} (also in {})",
        pair.public().fingerprint(),
        bus::keys::public_path(&dir, role).display()
    );
    Ok(ExitCode::SUCCESS)
}
