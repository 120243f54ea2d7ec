//! The reflex wire.
//!
//! Everything that crosses a socket is defined here and nowhere else: the [`Event`] a beacon,
//! `reflex send` or an actor pushes to the manager; the [`Action`] the manager hands the
//! publisher and the publisher broadcasts to actors; the msgpack [`codec`] with its version byte
//! and size limit; the default [`Endpoints`]; the publish [`Target`]s and their topic frames; and
//! the few socket options every process sets the same way ([`sockets`]).
//!
//! Trust starts here too: CURVE key pairs and public keys ([`keys`]), the private files they
//! live in ([`private`]), how sockets apply them ([`secure`]), the ZAP handler that decides who may connect ([`zap`]), and the enrollment store of the keys it
//! accepts ([`enroll`]). Actions travel signed by the control node's key ([`envelope`]).
//!
//! Delivery (stream numbers, batches and acknowledgements) is [`delivery`]'s; the [`sender`]
//! keeps what it holds until acknowledged, in memory or in a [`spool`] on disk.
//!
//! Receivers count what they drop with [`BadFrames`].
//!
//! This crate depends on no other reflex crate: it is the bottom of the graph.
//!
//! ```
//! use bus::{Action, Origin, Target};
//!
//! let action = Action {
//!     id: bus::new_id(),
//!     name: "motd".into(),
//!     seq: 0,
//!     target: Target::parse("host/web1").unwrap(),
//!     graph: serde_json::json!([{"kind": "noop", "name": "x"}]),
//!     origin: Origin::default(),
//!     expires: None,
//!     life: bus::Life::Keep,
//!     prev: 0,
//! };
//! let frame = bus::encode(&action);
//! let back: Action = bus::decode(&frame).unwrap();
//! assert_eq!(back.target.topic(), "host/web1/");
//! ```

#![deny(missing_docs)]

pub mod bad;
pub mod codec;
pub mod delivery;
pub mod endpoints;
pub mod enroll;
pub mod envelope;
pub mod keys;
pub mod monitor;
pub mod private;
pub mod secure;
pub mod sender;
pub mod sink;
pub mod sockets;
pub mod spool;
pub mod target;
pub mod trim;
pub mod wire;
pub mod zap;

pub use bad::BadFrames;
pub use codec::{
    decode, decode_with_limit, encode, DecodeError, MalformedKind, MAX_FRAME, VERSION,
};
pub use endpoints::Endpoints;
pub use keys::{KeyPair, PublicKey, Role};
pub use target::{Target, TargetError};
pub use wire::{new_id, now_ms, Action, Event, Life, Origin};
