//! How every subcommand secures its sockets, decided here once: CURVE by default, with the
//! key pair of its role from the state dir; `--insecure` only when asked, and loudly.
//!
//! - The control node (manager, publisher): the manager key pair, serving as itself.
//! - Hosts (actor, beacon): the host key pair (one per host, shared by its actor and beacons),
//!   pinning the manager's public key.
//! - Client tools (send, tail, registers, status, keys online, bench): the admin key pair,
//!   pinning the manager's public key.

use crate::cli::{Exit, StackArgs};
use bus::keys::{key_dir, load_or_create, public_path, PublicKey, Role};
use bus::secure::Security;
use std::path::Path;

/// Who a process is on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// Manager or publisher: serves with the manager key.
    Control,
    /// Actor or beacon: the host key.
    Host,
    /// A tool an operator runs: the admin key.
    Client,
}

impl Node {
    fn role(self) -> Role {
        match self {
            Node::Control => Role::Manager,
            Node::Host => Role::Host,
            Node::Client => Role::Admin,
        }
    }
}

/// The security of `node` for the stack `stack` names.
pub fn security(stack: &StackArgs, node: Node) -> anyhow::Result<Security> {
    if stack.insecure {
        let ep = stack.endpoints().ingest;
        if bus::secure::is_loopback(&ep) {
            tracing::warn!("--insecure: CURVE is off; anyone on this machine can speak to {ep}");
        } else {
            tracing::warn!(
                "--insecure on {ep}, which is NOT a loopback address: CURVE is off, so anyone \
                 on the network can read this stack's traffic and command it"
            );
        }
        return Ok(Security::Insecure);
    }
    bus::secure::require_curve().map_err(|e| Exit::usage(e.to_string()))?;
    let pair = load_or_create(&key_dir(&stack.state), node.role())?;
    let server = match node {
        Node::Control => *pair.public(),
        Node::Host | Node::Client => pinned_manager_key(stack)?,
    };
    Ok(Security::Curve { pair, server })
}

/// The manager key a host or tool pins: `--manager-key` (hex, Z85 or a file), else the state
/// dir's own `keys/manager.pub` (on the control node itself).
pub fn pinned_manager_key(stack: &StackArgs) -> anyhow::Result<PublicKey> {
    if let Some(arg) = &stack.manager_key {
        return PublicKey::from_arg(arg).map_err(|e| Exit::usage(format!("--manager-key: {e}")));
    }
    let local = public_path(&key_dir(&stack.state), Role::Manager);
    if local.exists() {
        return PublicKey::from_file(&local).map_err(|e| Exit::usage(e.to_string()));
    }
    Err(Exit::usage(format!(
        "no manager key to trust: {} does not exist (this is not the control node's state \
         dir). Pass --manager-key KEY, the hex `reflex keys show` prints on the control node",
        local.display()
    )))
}

/// Enroll this state dir's host key, accepted, as `name` with `groups`: for the hosts the
/// control node runs itself (`reflex up`'s actor and beacons, the benchmarks' actor).
pub fn enroll_local_host(state: &Path, name: &str, groups: &[String]) -> anyhow::Result<()> {
    let host = load_or_create(&key_dir(state), Role::Host)?;
    let mut store = bus::enroll::Enrollment::open(&bus::enroll::store_dir(state))?;
    store.enroll(name, host.public(), Role::Host, groups)?;
    Ok(())
}

/// The admin client security of a stack on this machine whose state dir is `state`, making
/// the manager key first so it can be pinned before the manager runs (benchmarks).
pub fn local_admin(state: &Path, port_base: u16) -> anyhow::Result<Security> {
    load_or_create(&key_dir(state), Role::Manager)?;
    let stack = StackArgs {
        state: state.to_path_buf(),
        port_base,
        addr: "127.0.0.1".into(),
        insecure: false,
        manager_key: None,
    };
    security(&stack, Node::Client)
}

/// "curve on" or "INSECURE", for summary lines.
pub fn describe(sec: &Security) -> &'static str {
    if sec.is_secure() {
        "curve on"
    } else {
        "INSECURE"
    }
}
