//! What every process does about CURVE, decided once: a [`Security`] says whether sockets use
//! CURVE and with which keys, and [`bind`] / [`connect`] apply it, so no socket is made secure
//! (or forgotten) by hand.
//!
//! A server socket gets a ZAP domain naming its [`Door`], so the ZAP handler knows which socket
//! a peer knocks on: the monitor and control doors are for the admin key only. The `ipc://`
//! link between manager and publisher is not CURVE: it is a file in the 0700 state dir, so only
//! the state dir's owner can reach it.
//!
//! ```
//! use bus::secure::{self, Door, Security};
//!
//! // The explicit --insecure: plain sockets, no ZAP domain.
//! let s = secure::bind(zmq::PULL, "tcp://127.0.0.1:*", &Security::Insecure, Door::Ingest).unwrap();
//! assert!(s.get_last_endpoint().unwrap().unwrap().starts_with("tcp://127.0.0.1:"));
//! assert!(secure::is_loopback("tcp://127.0.0.1:4510"));
//! assert!(!secure::is_loopback("tcp://0.0.0.0:4510"));
//! ```

use crate::keys::{KeyPair, PublicKey};
use crate::sockets::{self, HandshakeWatch, SocketError};
use thiserror::Error;

/// The server sockets of a stack, each with its own ZAP domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// Manager event ingest (PULL): hosts and the admin.
    Ingest,
    /// Publisher fan-out (XPUB): hosts, each only for its own topics.
    Publish,
    /// Publisher replay (REP): hosts, each only for its own topics.
    Replay,
    /// Manager monitor stream (PUB): the admin only.
    Monitor,
    /// Manager control socket (REP): the admin only.
    Control,
    /// Manager enrollment socket (REP): the one door an unknown key may pass, to ask to be
    /// enrolled under a name (see [`crate::enroll::ask`]).
    Enroll,
    /// Manager acknowledgements (ROUTER): hosts and the admin learn which of their events are
    /// done (see [`crate::delivery`]).
    Acks,
}

impl Door {
    /// Every door.
    pub const ALL: [Door; 7] = [
        Door::Ingest,
        Door::Publish,
        Door::Replay,
        Door::Monitor,
        Door::Control,
        Door::Enroll,
        Door::Acks,
    ];

    /// The ZAP domain: `ingest`, `publish`, `replay`, `monitor`, `control`, `enroll`, `acks`.
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Ingest => "ingest",
            Door::Publish => "publish",
            Door::Replay => "replay",
            Door::Monitor => "monitor",
            Door::Control => "control",
            Door::Enroll => "enroll",
            Door::Acks => "acks",
        }
    }

    /// True for a ZAP domain only the admin key may pass: the monitor and the control socket.
    pub fn admin_only(domain: &[u8]) -> bool {
        domain == Door::Monitor.as_str().as_bytes() || domain == Door::Control.as_str().as_bytes()
    }
}

/// How a process's TCP sockets are secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// CURVE with this node's key pair. Servers use `pair` as their own key; clients trust only
    /// `server` (the manager's public key, which hosts pin).
    Curve {
        /// This node's key pair.
        pair: KeyPair,
        /// The server key clients pin.
        server: PublicKey,
    },
    /// No CURVE at all: the explicit `--insecure`.
    Insecure,
}

impl Security {
    /// True for CURVE.
    pub fn is_secure(&self) -> bool {
        matches!(self, Security::Curve { .. })
    }

    /// Make `socket` a server at `door` (before it binds): CURVE server with the ZAP domain
    /// of the door. Insecure: nothing.
    pub fn serve(&self, socket: &zmq::Socket, door: Door) -> zmq::Result<()> {
        match self {
            Security::Curve { pair, .. } => {
                socket.set_zap_domain(door.as_str())?;
                pair.curve_server(socket)
            }
            Security::Insecure => Ok(()),
        }
    }

    /// Make `socket` a client that trusts only the pinned server key (before it connects).
    pub fn dial(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        match self {
            Security::Curve { pair, server } => pair.curve_client(socket, server),
            Security::Insecure => Ok(()),
        }
    }
}

/// Bind a server socket at `door`, secured as `sec` says.
pub fn bind(
    kind: zmq::SocketType,
    endpoint: &str,
    sec: &Security,
    door: Door,
) -> Result<zmq::Socket, SocketError> {
    let err = |e| SocketError::new(endpoint, e);
    let s = sockets::socket(kind).map_err(err)?;
    sec.serve(&s, door).map_err(err)?;
    s.bind(endpoint).map_err(err)?;
    Ok(s)
}

/// Connect a client socket, secured as `sec` says.
pub fn connect(
    kind: zmq::SocketType,
    endpoint: &str,
    sec: &Security,
) -> Result<zmq::Socket, SocketError> {
    let err = |e| SocketError::new(endpoint, e);
    let s = sockets::socket(kind).map_err(err)?;
    sec.dial(&s).map_err(err)?;
    s.connect(endpoint).map_err(err)?;
    Ok(s)
}

/// [`connect`] with a [`HandshakeWatch`] attached first (see [`sockets::connect_watched`]).
pub fn connect_watched(
    kind: zmq::SocketType,
    endpoint: &str,
    sec: &Security,
) -> Result<(zmq::Socket, HandshakeWatch), SocketError> {
    connect_with_watch(kind, endpoint, sec, HandshakeWatch::new)
}

/// [`connect_watched`], the watch also told when the connection is lost
/// ([`HandshakeWatch::with_losses`]).
pub fn connect_watched_losses(
    kind: zmq::SocketType,
    endpoint: &str,
    sec: &Security,
) -> Result<(zmq::Socket, HandshakeWatch), SocketError> {
    connect_with_watch(kind, endpoint, sec, HandshakeWatch::with_losses)
}

fn connect_with_watch(
    kind: zmq::SocketType,
    endpoint: &str,
    sec: &Security,
    watch: fn(&zmq::Socket) -> Result<HandshakeWatch, SocketError>,
) -> Result<(zmq::Socket, HandshakeWatch), SocketError> {
    let err = |e| SocketError::new(endpoint, e);
    let s = sockets::socket(kind).map_err(err)?;
    sec.dial(&s).map_err(err)?;
    let watch = watch(&s)?;
    s.connect(endpoint).map_err(err)?;
    Ok((s, watch))
}

/// Security was asked for and cannot be had.
#[derive(Debug, Error)]
pub enum SecurityError {
    /// This build's libzmq has no CURVE.
    #[error(
        "this reflex build's libzmq has no CURVE, so it cannot run securely: build reflex from \
         its repository, whose third_party/zmq-sys builds libzmq 4.3.5 with libsodium (needs a \
         C++ compiler and make: apt install g++ make), or pass --insecure"
    )]
    NoCurve,
    /// A non-loopback address without CURVE, and no `--insecure`.
    #[error(
        "{0} is not a loopback address: without CURVE anyone on the network could command this \
         stack. Keep CURVE on (the default), or pass --insecure to accept that"
    )]
    InsecureOnNetwork(String),
}

/// Refuse to go on when this build cannot do CURVE.
pub fn require_curve() -> Result<(), SecurityError> {
    match zmq::has("curve") {
        Some(true) => Ok(()),
        _ => Err(SecurityError::NoCurve),
    }
}

/// True when `endpoint` is reachable only from this machine: `ipc://`, `inproc://`, or TCP on
/// `127.0.0.0/8`, `::1` or `localhost`.
pub fn is_loopback(endpoint: &str) -> bool {
    if endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://") {
        return true;
    }
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return false;
    };
    // A connect endpoint may name a source: `tcp://src;dst`. Look at where it goes.
    let rest = rest.rsplit(';').next().unwrap_or(rest);
    let host = match rest.rsplit_once(':') {
        Some((h, _port)) => h,
        None => rest,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "localhost" {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_only_this_machine() {
        for ep in [
            "tcp://127.0.0.1:1",
            "tcp://127.8.9.10:1",
            "tcp://[::1]:1",
            "tcp://localhost:1",
            "ipc:///tmp/x",
        ] {
            assert!(is_loopback(ep), "{ep}");
        }
        for ep in [
            "tcp://0.0.0.0:1",
            "tcp://*:1",
            "tcp://10.0.0.1:1",
            "tcp://[::]:1",
            "tcp://eth0:1",
            "tcp://127.0.0.1;10.0.0.1:1",
            "udp://127.0.0.1:1",
        ] {
            assert!(!is_loopback(ep), "{ep}");
        }
    }

    #[test]
    fn only_monitor_and_control_are_admin_only() {
        let admin: Vec<_> = Door::ALL
            .iter()
            .filter(|d| Door::admin_only(d.as_str().as_bytes()))
            .collect();
        assert_eq!(admin, [&Door::Monitor, &Door::Control]);
        assert!(!Door::admin_only(b""));
    }
}
