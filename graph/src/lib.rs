//! The reflex graph schema: the one shape of desired state everywhere (`reflex apply` YAML
//! files, the maps Rhai rules build, the actions on the wire).
//!
//! A [`Graph`] is a list of [`Vertex`]es (a resource's [`Spec`], its metaparams [`Meta`],
//! the fields it receives) and the [`Edge`]s between them. Everything is checked up front
//! and purely — fields per kind (see [`kinds`]), metaparams, edges, send/recv types, cycles
//! — and autoedges are added ([`GraphBuilder`]). Running a graph is the engine's business;
//! this crate only says what a valid one is.
//!
//! ```
//! let graph = graph::Graph::from_yaml(
//!     "resources:\n  - {kind: file, name: /tmp/motd, content: \"hi\\n\"}\n",
//! )?;
//! assert_eq!(graph.ids(), vec!["file:/tmp/motd"]);
//! # Ok::<(), graph::GraphError>(())
//! ```

#![deny(missing_docs)]

mod build;
pub mod dot;
mod error;
mod fields;
pub mod kinds;
mod meta;
mod parse;
mod schema;

pub use build::GraphBuilder;
pub use error::GraphError;
pub use fields::type_name;
pub use kinds::{Spec, ValueType};
pub use meta::Meta;
pub use schema::{Edge, Graph, Recv, Vertex};
