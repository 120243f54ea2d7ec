//! Socket setup shared by every process, so high-water marks and linger are chosen once.
//!
//! ZeroMQ sockets are not thread-safe: each one is created and used on a single thread.

use std::sync::OnceLock;

/// Messages queued per peer before a socket applies back-pressure. On PUSH, a full queue makes
/// the sender wait (or fail with EAGAIN when non-blocking); on PUB, messages to that subscriber
/// are dropped: a slow subscriber never stalls the publisher.
pub const HWM: i32 = 100_000;
/// How long a closing socket keeps trying to deliver what it has queued.
pub const LINGER_MS: i32 = 2_000;
/// Connections a bound socket lets wait to be accepted (libzmq's default is 100; the kernel
/// caps it at `net.core.somaxconn`, 4,096 by default since Linux 5.4). A fleet reconnecting at
/// once (the manager restarted under it) overflows 100 at once, and each dropped SYN is retried
/// only after 1, 3, 7... s: `reflex bench fleet` measured 34 s for 1,250 hosts with 100, see
/// docs/fleet-10k.md.
pub const BACKLOG: i32 = 4_096;

/// The process-wide ZeroMQ context.
pub fn context() -> &'static zmq::Context {
    static CTX: OnceLock<zmq::Context> = OnceLock::new();
    CTX.get_or_init(zmq::Context::new)
}

/// A socket with our HWM and linger set.
pub fn socket(kind: zmq::SocketType) -> zmq::Result<zmq::Socket> {
    let s = context().socket(kind)?;
    s.set_sndhwm(HWM)?;
    s.set_rcvhwm(HWM)?;
    s.set_linger(LINGER_MS)?;
    s.set_backlog(BACKLOG)?;
    Ok(s)
}

/// Bind, naming the endpoint in the error (the usual failure is "address in use").
pub fn bind(kind: zmq::SocketType, endpoint: &str) -> Result<zmq::Socket, SocketError> {
    let s = socket(kind).map_err(|e| SocketError::new(endpoint, e))?;
    s.bind(endpoint)
        .map_err(|e| SocketError::new(endpoint, e))?;
    Ok(s)
}

/// Connect (ZeroMQ connects lazily; this fails only on a malformed endpoint).
pub fn connect(kind: zmq::SocketType, endpoint: &str) -> Result<zmq::Socket, SocketError> {
    let s = socket(kind).map_err(|e| SocketError::new(endpoint, e))?;
    s.connect(endpoint)
        .map_err(|e| SocketError::new(endpoint, e))?;
    Ok(s)
}

/// A socket could not be made, bound or connected.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {source}")]
pub struct SocketError {
    /// The endpoint it was for.
    pub endpoint: String,
    /// What ZeroMQ said.
    #[source]
    pub source: zmq::Error,
}

impl SocketError {
    /// The error `source` about `endpoint`.
    pub fn new(endpoint: &str, source: zmq::Error) -> SocketError {
        SocketError {
            endpoint: endpoint.to_string(),
            source,
        }
    }
}

/// Connect with a [`HandshakeWatch`] attached before connecting, so not even the first
/// handshake can be missed.
pub fn connect_watched(
    kind: zmq::SocketType,
    endpoint: &str,
) -> Result<(zmq::Socket, HandshakeWatch), SocketError> {
    let s = socket(kind).map_err(|e| SocketError::new(endpoint, e))?;
    let watch = HandshakeWatch::new(&s)?;
    s.connect(endpoint)
        .map_err(|e| SocketError::new(endpoint, e))?;
    Ok((s, watch))
}

/// What a [`HandshakeWatch`] was told since it was last drained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    /// A handshake succeeded.
    pub shook: bool,
    /// A peer's connection was lost (closed, reset, or timed out by ZMTP heartbeats).
    pub lost: bool,
    /// The peer refused our key (its ZAP handler said no). libzmq never dials a refused
    /// connection again: its owner must (see [`redial`]).
    pub refused: bool,
}

/// Dial `endpoint` again on `socket`: after a refused handshake, the only way the connection
/// comes back (the peer may have accepted our key since).
pub fn redial(socket: &zmq::Socket, endpoint: &str) -> Result<(), SocketError> {
    // Gone already when libzmq dropped the refused session's endpoint: nothing to undo.
    let _ = socket.disconnect(endpoint);
    socket
        .connect(endpoint)
        .map_err(|e| SocketError::new(endpoint, e))
}

/// Watches a socket's connection handshakes (ZeroMQ socket monitor over inproc), so a process
/// can tell when a peer is really there, e.g. for an actor to announce itself only once its
/// subscriptions can reach the publisher.
///
/// Keep the watch alive as long as the socket, and drain it now and then: libzmq sends monitor
/// events from its I/O thread, and a monitor with no reader can stall that thread, and with it
/// every socket of the context.
pub struct HandshakeWatch {
    pair: zmq::Socket,
}

impl HandshakeWatch {
    /// Attach to `socket`; only handshakes after this call are seen (see [`connect_watched`]).
    pub fn new(socket: &zmq::Socket) -> Result<HandshakeWatch, SocketError> {
        HandshakeWatch::watch(socket, zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32)
    }

    /// [`HandshakeWatch::new`], also told when a connection is lost or the peer refused our
    /// key (see [`HandshakeWatch::drain_all`]). Drain it often: a lost peer that keeps coming
    /// back makes an event each time. Close it with [`HandshakeWatch::unwatch`].
    pub fn with_losses(socket: &zmq::Socket) -> Result<HandshakeWatch, SocketError> {
        let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32
            | zmq::SocketEvent::DISCONNECTED as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32;
        HandshakeWatch::watch(socket, events)
    }

    fn watch(socket: &zmq::Socket, events: i32) -> Result<HandshakeWatch, SocketError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ep = format!("inproc://handshake-{}-{n}", std::process::id());
        socket
            .monitor(&ep, events)
            .map_err(|e| SocketError::new(&ep, e))?;
        let pair = context()
            .socket(zmq::PAIR)
            .map_err(|e| SocketError::new(&ep, e))?;
        pair.connect(&ep).map_err(|e| SocketError::new(&ep, e))?;
        Ok(HandshakeWatch { pair })
    }

    /// Stop watching `socket`, before it closes: libzmq tells a lost connection from its own
    /// threads while a socket closes, and one told to a watch already gone blocks that thread
    /// for good, and with it every socket of the context.
    pub fn unwatch(self, socket: &mut zmq::Socket) {
        // SAFETY: the socket pointer is valid while we hold `socket` mutably; a null address
        // with no events is libzmq's documented way to stop a monitor.
        unsafe {
            zmq_sys::zmq_socket_monitor(socket.as_mut_ptr(), std::ptr::null(), 0);
        }
        drop(self);
    }

    /// The socket to poll for handshake notifications.
    pub fn socket(&self) -> &zmq::Socket {
        &self.pair
    }

    /// Take every pending notification; true when at least one handshake succeeded.
    pub fn drain(&self) -> bool {
        self.drain_all().shook
    }

    /// Take every pending notification.
    pub fn drain_all(&self) -> Told {
        let mut told = Told::default();
        while let Ok(parts) = self.pair.recv_multipart(zmq::DONTWAIT) {
            // libzmq's own frames: a 16-bit event number, a 32-bit value, then the endpoint.
            let event = match parts.first() {
                Some(f) if parts.len() == 2 && f.len() >= 2 => u16::from_ne_bytes([f[0], f[1]]),
                _ => continue,
            };
            told.shook |= event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16;
            told.lost |= event == zmq::SocketEvent::DISCONNECTED as u16;
            told.refused |= event == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16;
        }
        told
    }

    /// Wait up to `timeout` for a handshake; true when one happened.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.drain() {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut items = [self.pair.as_poll_item(zmq::POLLIN)];
            if poll(&mut items, left.as_millis().min(i64::MAX as u128) as i64).is_err() {
                return false;
            }
        }
    }
}

/// Put an XPUB socket in manual mode (`ZMQ_XPUB_MANUAL`, which the zmq crate does not wrap):
/// subscriptions arrive as messages, with the subscriber's metadata (`User-Id`), and take effect
/// only when the owner applies them with `set_subscribe`, for the subscriber that sent the
/// last one read. That is how the publisher decides, per subscriber, which topics it gets.
pub fn set_xpub_manual(socket: &mut zmq::Socket) -> zmq::Result<()> {
    let on: i32 = 1;
    // SAFETY: the socket pointer is valid for as long as `socket` lives (we hold it mutably),
    // and the option value is a plain int whose size we pass.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_MANUAL as i32,
            (&on as *const i32).cast(),
            std::mem::size_of::<i32>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads libzmq's thread-local error number.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

/// `zmq::poll`, where a signal arriving (EINTR) is just an early wake-up: callers re-check their
/// stop flag and poll again.
pub fn poll(items: &mut [zmq::PollItem], timeout_ms: i64) -> zmq::Result<()> {
    match zmq::poll(items, timeout_ms) {
        Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn handshake_seen_from_many_threads_at_once() {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(handshake_seen_whether_the_peer_binds_before_or_after))
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn handshake_seen_whether_the_peer_binds_before_or_after() {
        for bind_first in [true, false] {
            // Below the ephemeral range: a port from there can be taken, before the late bind,
            // as the source port of another thread's reconnecting socket.
            let port = crate::endpoints::free_local_base().unwrap();
            let ep = format!("tcp://127.0.0.1:{port}");
            let mut publ = None;
            if bind_first {
                publ = Some(bind(zmq::PUB, &ep).unwrap());
            }
            let (_sub, watch) = connect_watched(zmq::SUB, &ep).unwrap();
            if !bind_first {
                std::thread::sleep(Duration::from_millis(50));
                publ = Some(bind(zmq::PUB, &ep).unwrap());
            }
            assert!(
                watch.wait(Duration::from_secs(5)),
                "bind_first={bind_first}"
            );
            drop(publ);
        }
    }

    #[test]
    fn a_lost_connection_is_told_and_unwatching_leaves_the_context_working() {
        let ep = || {
            let port = crate::endpoints::free_local_base().unwrap();
            format!("tcp://127.0.0.1:{port}")
        };
        for _ in 0..3 {
            let at = ep();
            let publ = bind(zmq::PUB, &at).unwrap();
            let mut sub = socket(zmq::SUB).unwrap();
            let watch = HandshakeWatch::with_losses(&sub).unwrap();
            sub.connect(&at).unwrap();
            assert!(watch.wait(Duration::from_secs(5)), "handshake");
            drop(publ);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut lost = false;
            while !lost && std::time::Instant::now() < deadline {
                lost = watch.drain_all().lost;
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(lost, "the peer went away");
            watch.unwatch(&mut sub);
            drop(sub);
        }
        // Had a loss been told to a watch already gone, libzmq's threads would be stuck and
        // no new connection would complete.
        handshake_seen_whether_the_peer_binds_before_or_after();
    }
}
