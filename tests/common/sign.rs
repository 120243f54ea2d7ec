//! Signing actions as the publisher does, for tests that play the publisher themselves.

use bus::envelope::{seal, SignKey};
use bus::Action;
use std::path::Path;

/// The control node's signing key of the state dir `state`, made if missing: its
/// `keys/sign.pub` is what an actor on that state dir pins by default.
pub fn pin(state: &Path) -> SignKey {
    SignKey::load_or_create(state).expect("signing key")
}

/// A key nobody pinned.
pub fn stranger() -> SignKey {
    SignKey::generate().expect("signing key")
}

/// `action` sealed with `key`, issued now: the frame the publisher would send.
pub fn sealed(key: &SignKey, action: &Action) -> Vec<u8> {
    seal(key, action, bus::now_ms())
}
