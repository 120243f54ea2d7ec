//! `reflex keys list | accept NAME [--group G ...] | reject NAME | revoke NAME | show`: the
//! enrollment store and this node's public keys, offline on the state dir. (Through a running
//! manager's control socket once the daemons use the store.)

use crate::cli::{Exit, KeysCmd, StateArgs};
use bus::enroll::{store_dir, EnrollError, Enrollment, Entry};
use bus::keys::Role;
use serde_json::json;
use std::process::ExitCode;

pub fn run(cmd: KeysCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::List { json, state } => list(&state, json),
        KeysCmd::Accept {
            name,
            groups,
            state,
        } => {
            let mut store = open(&state, &name)?;
            let e = store.accept(&name, &groups).map_err(refused)?;
            println!("accepted {}", describe(e));
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Reject { name, state } => {
            let mut store = open(&state, &name)?;
            let e = store.reject(&name).map_err(refused)?;
            println!("rejected {}", describe(e));
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Revoke { name, state } => {
            let mut store = open(&state, &name)?;
            let e = store.revoke(&name).map_err(refused)?;
            println!("revoked {}: it has to enroll again", describe(&e));
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Show { role, state } => show(&state, role),
    }
}

/// The store, for a change to `name`: there is none to change when the store was never made.
fn open(state: &StateArgs, name: &str) -> anyhow::Result<Enrollment> {
    let dir = store_dir(&state.state);
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

fn list(state: &StateArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let dir = store_dir(&state.state);
    let store = if dir.exists() {
        Some(Enrollment::open(&dir)?)
    } else {
        None
    };
    let entries: Vec<&Entry> = store.iter().flat_map(|s| s.list()).collect();
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
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.state.as_str().into(),
                e.role.to_string(),
                e.key.fingerprint(),
                groups(e),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "ROLE", "FINGERPRINT", "GROUPS"].map(String::from);
    let mut width = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

fn show(state: &StateArgs, role: Role) -> anyhow::Result<ExitCode> {
    let dir = bus::keys::key_dir(&state.state);
    let pair = bus::keys::load_or_create(&dir, role)?;
    println!("{}", pair.public().to_hex());
    eprintln!(
        "{role} key {} (also in {})",
        pair.public().fingerprint(),
        bus::keys::public_path(&dir, role).display()
    );
    Ok(ExitCode::SUCCESS)
}
