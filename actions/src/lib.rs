//! The reflex resource-graph engine: desired state as a DAG, converged in parallel, watched
//! and repaired.
//!
//! In the style of mgmt: a [`Graph`] of resources (`file`, `exec`, `pkg`, `svc`, `password`,
//! `http`, `msg`, `timer`, `noop`; see [`kinds`]) is validated up front ([`Graph::from_value`],
//! [`Graph::from_yaml`]) — fields, metaparams ([`Meta`]), edges, send/recv types, cycles —
//! then an [`Engine`] runs one task per resource. Independent resources run concurrently; an
//! edge makes its target wait for its source, and a `notify` edge passes a refresh. Each
//! resource watches its real state (files through one shared inotify hub, packages through
//! dpkg's status file, units through systemd's signals) and re-converges the moment it
//! drifts. A running graph can be swapped for a new one by diff ([`Running::swap`]). The
//! engine knows nothing of the network; actors feed it graphs and forward its [`Report`]s
//! and [`EngineEvent`]s. [`compliance::check`] is the contract every kind must pass.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let graph = actions::Graph::from_yaml(
//!     "resources:\n  - {kind: file, name: /tmp/motd, content: \"hi\\n\"}\n",
//! )?;
//! let engine = actions::Engine::new()?;
//! let mut running = engine.run(graph, actions::RunOptions::default());
//! let report = running.first_report().await;
//! assert!(report.ok);
//! while let Some(event) = running.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

pub mod compliance;
mod dot;
mod engine;
mod error;
mod fields;
mod graph;
mod hub;
pub mod kinds;
mod meta;
mod resource;

pub use engine::{Convergence, Engine, EngineEvent, Report, RunOptions, Running, SwapStats};
pub use error::{EngineError, GraphError, ResourceError};
pub use graph::Graph;
pub use hub::FileHub;
pub use meta::Meta;
pub use resource::{ApplyCtx, Outcome, Poke, Resource, ValueType, WatchCtx, WatchGuard};
