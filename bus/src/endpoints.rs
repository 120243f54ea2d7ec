//! Where each part listens. Everything derives from one port base so a whole stack can be moved
//! (tests, a second stack on one machine) with one number.

use std::path::Path;

/// The default port base: manager ingest.
pub const DEFAULT_PORT_BASE: u16 = 4510;

/// How many TCP ports a stack uses, from its port base up (the last three are the HTTP
/// ports `reflex up` gives its parts, on loopback).
pub const TCP_PORTS: u16 = 10;

/// The manager's HTTP port (`/metrics` and the page) under `reflex up`: port base + 7.
pub const HTTP_MANAGER: u16 = 7;
/// The publisher's `/metrics` under `reflex up`: port base + 8.
pub const HTTP_PUBLISHER: u16 = 8;
/// The actor's `/metrics` under `reflex up`: port base + 9.
pub const HTTP_ACTOR: u16 = 9;

/// `127.0.0.1:<port_base + offset>`: an HTTP address on loopback (`reflex up` never serves
/// HTTP elsewhere).
pub fn http_local(port_base: u16, offset: u16) -> String {
    format!("127.0.0.1:{}", port_base.saturating_add(offset))
}

/// The endpoints of one reflex stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Manager event ingest (PULL, bound by the manager): port base.
    pub ingest: String,
    /// Publisher fan-out (PUB, bound by the publisher): port base + 1.
    pub publish: String,
    /// Publisher replay for late actors: port base + 2.
    pub replay: String,
    /// Manager monitor stream for `reflex tail` (PUB): port base + 3.
    pub monitor: String,
    /// Manager control socket (REP): port base + 4.
    pub control: String,
    /// Manager enrollment door (REP): port base + 5.
    pub enroll: String,
    /// Manager acknowledgements to event senders (ROUTER, bound by the manager): port base + 6.
    pub acks: String,
    /// Manager -> publisher link (PUSH/PULL, bound by the publisher) under the state dir.
    pub link: String,
    /// Publisher -> manager acknowledgements of the link (PUB, bound by the publisher) under
    /// the state dir.
    pub link_acks: String,
}

impl Endpoints {
    /// The endpoints of a stack on `host`, its TCP ports counted from `port_base`, its link
    /// under `state_dir`.
    pub fn new(host: &str, port_base: u16, state_dir: &Path) -> Endpoints {
        let tcp = |off: u16| format!("tcp://{host}:{}", port_base.saturating_add(off));
        Endpoints {
            ingest: tcp(0),
            publish: tcp(1),
            replay: tcp(2),
            monitor: tcp(3),
            control: tcp(4),
            enroll: tcp(5),
            acks: tcp(6),
            link: link_endpoint(state_dir),
            link_acks: ipc_endpoint(state_dir, "publisher-acks.ipc"),
        }
    }

    /// [`Endpoints::new`] on the loopback address.
    pub fn local(port_base: u16, state_dir: &Path) -> Endpoints {
        Endpoints::new("127.0.0.1", port_base, state_dir)
    }
}

/// `tcp://host:N` -> `tcp://host:N+by`; `None` when `endpoint` ends in no port or the sum
/// overflows.
pub fn port_plus(endpoint: &str, by: u16) -> Option<String> {
    let (head, port) = endpoint.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{head}:{}", port.checked_add(by)?))
}

/// The enroll door of the manager whose ingest is `ingest` (it sits 5 ports above).
pub fn enroll_for(ingest: &str) -> Option<String> {
    port_plus(ingest, 5)
}

/// The acknowledgement door of the manager whose ingest is `ingest` (it sits 6 ports above).
pub fn acks_for(ingest: &str) -> Option<String> {
    port_plus(ingest, 6)
}

/// `ipc://<state>/publisher.ipc`, with the state dir made absolute so every process agrees.
pub fn link_endpoint(state_dir: &Path) -> String {
    ipc_endpoint(state_dir, "publisher.ipc")
}

fn ipc_endpoint(state_dir: &Path, file: &str) -> String {
    let abs = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    format!("ipc://{}", abs.join(file).display())
}

/// A port base on loopback whose [`TCP_PORTS`] ports are free now and overlap no base this
/// process handed out before (tests and benches start stacks in parallel threads), from a
/// spot that differs per process and call.
pub fn free_local_base() -> std::io::Result<u16> {
    use std::net::TcpListener;
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    // Below the kernel's usual ephemeral range (32768 up), where any outgoing connection may
    // take a port as its source between our check and the bind.
    let seed = (std::process::id() as u64).wrapping_mul(7_919) ^ crate::now_ms();
    for k in 0..1_000u64 {
        let base = 20_000 + ((seed.wrapping_add(k * u64::from(TCP_PORTS)) % 12_700) as u16);
        if taken.iter().all(|t| t.abs_diff(base) >= TCP_PORTS)
            && (0..TCP_PORTS).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            taken.push(base);
            return Ok(base);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no run of free loopback ports found",
    ))
}
