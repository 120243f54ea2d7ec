//! The ZAP handler on real CURVE sockets over TCP loopback: an accepted key gets through and
//! its messages carry its name; an unknown key, a revoked key and a client without CURVE get
//! nothing through; malformed requests are answered and counted, and the handler goes on.

use bus::keys::{KeyPair, PublicKey, Role};
use bus::zap::{self, KeySet, Mode, Peer, Unknown, Zap, ZapError};
use std::sync::mpsc;
use std::time::Duration;

/// A CURVE PULL server on its own context, guarded by its own handler.
struct Server {
    ctx: zmq::Context,
    pull: zmq::Socket,
    endpoint: String,
    public: PublicKey,
    keys: KeySet,
    zap: Zap,
    unknown: mpsc::Receiver<Unknown>,
}

fn server(mode: Mode, curve: bool) -> Server {
    let ctx = zmq::Context::new();
    let keys = KeySet::new();
    let (tx, unknown) = mpsc::channel();
    let zap = Zap::start(&ctx, keys.clone(), mode, move |u: &Unknown| {
        let _ = tx.send(u.clone());
    })
    .expect("zap handler");
    let pair = KeyPair::generate().expect("server keys");
    let pull = ctx.socket(zmq::PULL).expect("socket");
    if curve {
        pair.curve_server(&pull).expect("curve server");
    } else {
        // NULL sockets consult ZAP only when they have a domain.
        pull.set_zap_domain("reflex").expect("zap domain");
    }
    pull.bind("tcp://127.0.0.1:*").expect("bind");
    let endpoint = pull.get_last_endpoint().expect("endpoint").expect("utf-8");
    Server {
        ctx,
        pull,
        endpoint,
        public: *pair.public(),
        keys,
        zap,
        unknown,
    }
}

impl Server {
    /// A PUSH client with `pair` (or no CURVE at all) that has queued `text`.
    fn client(&self, pair: Option<&KeyPair>, text: &str) -> zmq::Socket {
        let c = self.ctx.socket(zmq::PUSH).expect("socket");
        c.set_linger(0).expect("linger");
        if let Some(pair) = pair {
            pair.curve_client(&c, &self.public).expect("curve client");
        }
        c.connect(&self.endpoint).expect("connect");
        // PUSH queues until a peer completes the handshake.
        let _ = c.send(text, zmq::DONTWAIT);
        c
    }

    fn recv(&self, ms: i32) -> Option<zmq::Message> {
        self.pull.set_rcvtimeo(ms).expect("rcvtimeo");
        self.pull.recv_msg(0).ok()
    }

    fn accept(&self, pair: &KeyPair, name: &str) {
        self.keys.insert(
            *pair.public(),
            Peer {
                name: name.into(),
                role: Role::Host,
                groups: Vec::new(),
            },
        );
    }

    /// Wait until the handler reported `key` as unknown.
    fn saw_unknown(&self, key: &PublicKey) -> Unknown {
        loop {
            let u = self
                .unknown
                .recv_timeout(Duration::from_secs(5))
                .expect("the unknown-key callback ran");
            if u.key == *key {
                return u;
            }
        }
    }
}

#[test]
fn an_accepted_key_gets_through_and_its_messages_carry_its_name() {
    let s = server(Mode::Secure, true);
    let web1 = KeyPair::generate().unwrap();
    s.accept(&web1, "web1");
    let _c = s.client(Some(&web1), "hello");
    let mut msg = s.recv(5000).expect("the accepted client's message arrives");
    assert_eq!(msg.as_str(), Some("hello"));
    assert_eq!(msg.gets("User-Id"), Some("web1"));
    assert_eq!(msg.gets("Role"), Some("host"));
    assert_eq!(s.zap.counts().accepted, 1);
}

#[test]
fn an_unknown_key_gets_nothing_through_and_is_reported() {
    let s = server(Mode::Secure, true);
    let stranger = KeyPair::generate().unwrap();
    let _c = s.client(Some(&stranger), "let me in");
    let u = s.saw_unknown(stranger.public());
    assert_eq!(u.address, "127.0.0.1");
    assert!(
        s.recv(500).is_none(),
        "nothing may arrive from an unknown key"
    );
    assert!(s.zap.counts().unknown >= 1);
    assert_eq!(s.zap.counts().accepted, 0);
}

#[test]
fn a_refused_client_is_told_and_gets_in_when_it_dials_again_once_accepted() {
    let s = server(Mode::Secure, true);
    let web1 = KeyPair::generate().unwrap();
    // On the process context, where a handshake watch can see it.
    let mut c = bus::sockets::socket(zmq::PUSH).unwrap();
    c.set_linger(0).unwrap();
    web1.curve_client(&c, &s.public).unwrap();
    let watch = bus::sockets::HandshakeWatch::with_losses(&c).unwrap();
    c.connect(&s.endpoint).unwrap();
    let until = |what: &str, pred: &dyn Fn(bus::sockets::Told) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !pred(watch.drain_all()) {
            assert!(std::time::Instant::now() < deadline, "not {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    until("refused", &|t| t.refused);
    s.accept(&web1, "web1");
    // libzmq gave up on the refused connection: nothing gets through until it is dialed again.
    let _ = c.send("too early", zmq::DONTWAIT);
    assert!(s.recv(700).is_none(), "libzmq dialed again by itself");
    bus::sockets::redial(&c, &s.endpoint).unwrap();
    until("shaken hands after the redial", &|t| t.shook);
    c.send("in", 0).unwrap();
    let mut got = Vec::new();
    while let Some(mut m) = s.recv(5000) {
        assert_eq!(m.gets("User-Id"), Some("web1"));
        got.push(m.as_str().unwrap_or_default().to_string());
        if got.last().is_some_and(|t| t == "in") {
            break;
        }
    }
    assert_eq!(got.last().map(String::as_str), Some("in"), "{got:?}");
    watch.unwatch(&mut c);
}

#[test]
fn a_revoked_key_is_refused_on_its_next_connection() {
    let s = server(Mode::Secure, true);
    let web1 = KeyPair::generate().unwrap();
    s.accept(&web1, "web1");
    let first = s.client(Some(&web1), "before");
    assert_eq!(s.recv(5000).expect("accepted").as_str(), Some("before"));
    drop(first);

    assert!(s.keys.remove(web1.public()).is_some());
    let _again = s.client(Some(&web1), "after");
    s.saw_unknown(web1.public());
    assert!(s.recv(500).is_none(), "a revoked key gets nothing through");
}

#[test]
fn a_client_without_curve_gets_nothing_through_a_curve_server() {
    let s = server(Mode::Secure, true);
    let _plain = s.client(None, "plain");
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.recv(500).is_none());
    assert_eq!(s.zap.counts().accepted, 0);
}

#[test]
fn null_peers_get_in_only_in_insecure_mode() {
    let secure = server(Mode::Secure, false);
    let _c = secure.client(None, "null");
    assert!(secure.recv(1000).is_none());
    assert!(secure.zap.counts().refused >= 1);

    let insecure = server(Mode::Insecure, false);
    let _c = insecure.client(None, "null");
    let msg = insecure.recv(5000).expect("insecure mode lets NULL in");
    assert_eq!(msg.as_str(), Some("null"));
}

#[test]
fn malformed_requests_get_500_and_the_handler_goes_on() {
    let s = server(Mode::Secure, true);
    let req = s.ctx.socket(zmq::REQ).unwrap();
    req.set_rcvtimeo(5000).unwrap();
    req.connect(zap::ENDPOINT).unwrap();
    let short: Vec<&[u8]> = vec![b"junk"];
    let bad_key: Vec<&[u8]> = vec![b"1.0", b"42", b"", b"1.2.3.4", b"", b"CURVE", b"12345"];
    for frames in [short, bad_key] {
        req.send_multipart(frames, 0).unwrap();
        let reply = req
            .recv_multipart(0)
            .expect("a reply to a malformed request");
        assert_eq!(reply.len(), 6);
        assert_eq!(reply[2], b"500");
    }
    assert_eq!(s.zap.counts().malformed, 2);

    let web1 = KeyPair::generate().unwrap();
    s.accept(&web1, "web1");
    let _c = s.client(Some(&web1), "still works");
    assert_eq!(
        s.recv(5000).expect("accepted").as_str(),
        Some("still works")
    );
}

#[test]
fn a_panicking_callback_does_not_stop_the_handler() {
    let ctx = zmq::Context::new();
    let keys = KeySet::new();
    let _zap = Zap::start(&ctx, keys.clone(), Mode::Secure, |_: &Unknown| {
        panic!("callback bug")
    })
    .unwrap();
    let pair = KeyPair::generate().unwrap();
    let pull = ctx.socket(zmq::PULL).unwrap();
    pair.curve_server(&pull).unwrap();
    pull.bind("tcp://127.0.0.1:*").unwrap();
    let ep = pull.get_last_endpoint().unwrap().unwrap();
    let push = |who: &KeyPair, text: &str| {
        let c = ctx.socket(zmq::PUSH).unwrap();
        c.set_linger(0).unwrap();
        who.curve_client(&c, pair.public()).unwrap();
        c.connect(&ep).unwrap();
        let _ = c.send(text, zmq::DONTWAIT);
        c
    };
    let _stranger = push(&KeyPair::generate().unwrap(), "x");
    std::thread::sleep(Duration::from_millis(300));
    let web1 = KeyPair::generate().unwrap();
    keys.insert(
        *web1.public(),
        Peer {
            name: "web1".into(),
            role: Role::Host,
            groups: Vec::new(),
        },
    );
    let _c = push(&web1, "ok");
    pull.set_rcvtimeo(5000).unwrap();
    assert_eq!(pull.recv_msg(0).unwrap().as_str(), Some("ok"));
}

#[test]
fn the_process_handler_is_installed_once_and_guards_the_shared_context() {
    let keys = KeySet::new();
    let zap = zap::install(keys.clone(), Mode::Secure, |_: &Unknown| {}).expect("install");
    assert!(matches!(
        zap::install(KeySet::new(), Mode::Secure, |_: &Unknown| {}),
        Err(ZapError::AlreadyInstalled)
    ));
    let pair = KeyPair::generate().unwrap();
    let pull = bus::sockets::socket(zmq::PULL).unwrap();
    pair.curve_server(&pull).unwrap();
    pull.bind("tcp://127.0.0.1:*").unwrap();
    let ep = pull.get_last_endpoint().unwrap().unwrap();
    let stranger = KeyPair::generate().unwrap();
    let c = bus::sockets::socket(zmq::PUSH).unwrap();
    c.set_linger(0).unwrap();
    stranger.curve_client(&c, pair.public()).unwrap();
    c.connect(&ep).unwrap();
    let _ = c.send("x", zmq::DONTWAIT);
    pull.set_rcvtimeo(1000).unwrap();
    assert!(
        pull.recv_msg(0).is_err(),
        "unknown key refused on the shared context"
    );
    assert!(zap.counts().unknown >= 1);
}
