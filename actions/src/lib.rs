//! The reflex resource-graph engine: desired state as a DAG, converged in parallel, watched
//! and repaired.
//!
//! In the style of mgmt: a [`graph::Graph`] of resources (`file`, `exec`, `pkg`, `svc`,
//! `password`, `http`, `msg`, `timer`, `noop`), parsed and validated by the `graph` crate,
//! is run by an [`Engine`], one task per resource, each built from its spec ([`kinds`]).
//! Independent resources run concurrently; an edge makes its target wait for its source,
//! and a `notify` edge passes a refresh. Each resource watches its real state (files
//! through one shared inotify hub, packages through dpkg's status file, units through
//! systemd's signals) and re-converges the moment it drifts. A running graph can be swapped
//! for a new one by diff ([`Running::swap`]). The engine knows nothing of the network;
//! actors feed it graphs and forward its [`Report`]s and [`EngineEvent`]s.
//! [`compliance::check`] is the contract every kind must pass; [`os`] holds the small
//! system helpers the engine and the actor share.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let graph = graph::Graph::from_yaml(
//!     "resources:\n  - {kind: file, name: /tmp/motd, content: \"hi\\n\"}\n",
//! )?;
//! let engine = engine::Engine::new()?;
//! let mut running = engine.run(graph, engine::RunOptions::default());
//! let report = running.first_report().await;
//! assert!(report.ok);
//! while let Some(event) = running.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod compliance;
mod engine;
mod error;
mod hub;
pub mod kinds;
pub mod os;
mod resource;

pub use engine::{
    Convergence, Engine, EngineEvent, Observe, Report, RunOptions, Running, SwapStats,
};
pub use error::{EngineError, ResourceError};
pub use hub::FileHub;
pub use resource::{ApplyCtx, Outcome, Poke, Poked, Resource, WatchCtx, WatchGuard};
