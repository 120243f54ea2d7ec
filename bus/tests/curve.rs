//! The libzmq we link has CURVE (see third_party/zmq-sys): a real encrypted, authenticated
//! exchange over loopback works, and a client that pins the wrong server key gets nothing
//! through.

use std::time::Duration;

fn server(ctx: &zmq::Context, keys: &zmq::CurveKeyPair) -> (zmq::Socket, String) {
    let s = ctx.socket(zmq::PULL).expect("socket");
    s.set_curve_server(true).expect("curve server");
    s.set_curve_secretkey(&keys.secret_key).expect("secret key");
    s.set_rcvtimeo(2000).expect("rcvtimeo");
    s.bind("tcp://127.0.0.1:*").expect("bind");
    let endpoint = s.get_last_endpoint().expect("endpoint").expect("utf-8");
    (s, endpoint)
}

fn client(ctx: &zmq::Context, server_public: &[u8], endpoint: &str) -> zmq::Socket {
    let mine = zmq::CurveKeyPair::new().expect("client keys");
    let c = ctx.socket(zmq::PUSH).expect("socket");
    c.set_curve_serverkey(server_public).expect("server key");
    c.set_curve_publickey(&mine.public_key).expect("public key");
    c.set_curve_secretkey(&mine.secret_key).expect("secret key");
    c.set_linger(0).expect("linger");
    c.set_sndtimeo(2000).expect("sndtimeo");
    c.connect(endpoint).expect("connect");
    c
}

#[test]
fn libzmq_is_built_with_curve() {
    assert_eq!(zmq::has("curve"), Some(true));
}

#[test]
fn curve_exchange_works_and_a_wrong_server_key_gets_nothing_through() {
    let ctx = zmq::Context::new();
    let keys = zmq::CurveKeyPair::new().expect("server keys");
    let (pull, endpoint) = server(&ctx, &keys);

    let good = client(&ctx, &keys.public_key, &endpoint);
    good.send("sealed", 0).expect("send");
    let msg = pull
        .recv_msg(0)
        .expect("the CURVE client's message arrives");
    assert_eq!(msg.as_str(), Some("sealed"));

    // A client pinning another server key fails the handshake: its message never arrives.
    let impostor = zmq::CurveKeyPair::new().expect("other keys");
    let bad = client(&ctx, &impostor.public_key, &endpoint);
    // PUSH queues until a peer completes the handshake, which never happens.
    let _ = bad.send("forged", zmq::DONTWAIT);
    pull.set_rcvtimeo(500).expect("rcvtimeo");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pull.recv_msg(0).is_err(),
        "nothing may arrive from a client that pinned the wrong server key"
    );
}
