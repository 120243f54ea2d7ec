//! The registry of resource kinds: kind name -> constructor. This table is the one source
//! of truth for which kinds exist.

use std::sync::Arc;

use crate::error::GraphError;
use crate::fields::Fields;
use crate::resource::Resource;

pub mod exec;
pub mod file;
pub mod http;
pub mod msg;
pub mod noop;
pub mod password;
pub mod pkg;
pub mod svc;
pub mod timer;

/// Builds a resource from its `name` and the rest of its fields. `id` is `kind:name`.
/// Leftover fields are rejected by the caller, so a builder only takes what it knows.
pub(crate) type Build =
    fn(id: String, name: &str, fields: &mut Fields) -> Result<Arc<dyn Resource>, GraphError>;

pub(crate) struct KindDef {
    pub name: &'static str,
    pub build: Build,
}

const KINDS: &[KindDef] = &[
    KindDef {
        name: file::KIND,
        build: file::build,
    },
    KindDef {
        name: exec::KIND,
        build: exec::build,
    },
    KindDef {
        name: noop::KIND,
        build: noop::build,
    },
    KindDef {
        name: msg::KIND,
        build: msg::build,
    },
    KindDef {
        name: timer::KIND,
        build: timer::build,
    },
    KindDef {
        name: password::KIND,
        build: password::build,
    },
    KindDef {
        name: http::KIND,
        build: http::build,
    },
    KindDef {
        name: pkg::KIND,
        build: pkg::build,
    },
    KindDef {
        name: svc::KIND,
        build: svc::build,
    },
];

pub(crate) fn lookup(kind: &str) -> Option<&'static KindDef> {
    KINDS.iter().find(|k| k.name == kind)
}

/// The names of every known kind, in registry order.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}
