//! The resource kinds: each kind's spec (a plain data struct, parsed and validated from its
//! fields) and its static facts (values it sends and receives, paths it manages and needs).
//!
//! The table of kinds here (see [`kind_names`]) is the one source of truth for which kinds
//! exist.

use std::fmt;
use std::path::PathBuf;

use crate::error::GraphError;
use crate::fields::Fields;

pub mod exec;
pub mod file;
pub mod http;
pub mod msg;
pub mod noop;
pub mod password;
pub mod pkg;
pub mod svc;
pub mod timer;

pub use exec::{ExecCmd, ExecSpec};
pub use file::{FileSpec, FileState};
pub use http::HttpSpec;
pub use msg::MsgSpec;
pub use noop::NoopSpec;
pub use password::PasswordSpec;
pub use pkg::{PkgSpec, PkgState};
pub use svc::{SvcRun, SvcSpec};
pub use timer::TimerSpec;

/// The type of a sent or received value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// A string.
    Str,
    /// An integer.
    Int,
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::Str => "string",
            ValueType::Int => "integer",
        })
    }
}

/// Named values with their types: what a kind sends or receives.
pub type Values = &'static [(&'static str, ValueType)];

/// One resource's desired state: the spec of its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// `file`. Shared: the engine's file resource keeps the same spec, not a copy of it (a
    /// host may keep tens of thousands of one-file graphs in force).
    File(std::sync::Arc<FileSpec>),
    /// `exec`. Boxed, as every kind but the smallest: a vertex is as big as the biggest
    /// variant, and a host may keep tens of thousands of them in force.
    Exec(Box<ExecSpec>),
    /// `noop`.
    Noop(NoopSpec),
    /// `msg`.
    Msg(Box<MsgSpec>),
    /// `timer`.
    Timer(Box<TimerSpec>),
    /// `password`.
    Password(Box<PasswordSpec>),
    /// `http`.
    Http(Box<HttpSpec>),
    /// `pkg`.
    Pkg(Box<PkgSpec>),
    /// `svc`.
    Svc(Box<SvcSpec>),
}

/// Parses a kind's fields into its spec. `id` is `kind:name`. Leftover fields are rejected
/// by the caller, so a parser only takes what it knows.
type Parse = fn(id: String, name: &str, fields: &mut Fields) -> Result<Spec, GraphError>;

/// One kind: its name and its parser.
pub(crate) struct KindDef {
    pub name: &'static str,
    pub parse: Parse,
}

/// Every kind, in the order `known kinds` lists them.
const KINDS: &[KindDef] = &[
    KindDef {
        name: file::KIND,
        parse: file::parse,
    },
    KindDef {
        name: exec::KIND,
        parse: exec::parse,
    },
    KindDef {
        name: noop::KIND,
        parse: noop::parse,
    },
    KindDef {
        name: msg::KIND,
        parse: msg::parse,
    },
    KindDef {
        name: timer::KIND,
        parse: timer::parse,
    },
    KindDef {
        name: password::KIND,
        parse: password::parse,
    },
    KindDef {
        name: http::KIND,
        parse: http::parse,
    },
    KindDef {
        name: pkg::KIND,
        parse: pkg::parse,
    },
    KindDef {
        name: svc::KIND,
        parse: svc::parse,
    },
];

pub(crate) fn lookup(kind: &str) -> Option<&'static KindDef> {
    KINDS.iter().find(|k| k.name == kind)
}

/// The names of every known kind, in registry order.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

impl Spec {
    /// `kind:name`.
    pub fn id(&self) -> &str {
        match self {
            Spec::File(s) => &s.id,
            Spec::Exec(s) => &s.id,
            Spec::Noop(s) => &s.id,
            Spec::Msg(s) => &s.id,
            Spec::Timer(s) => &s.id,
            Spec::Password(s) => &s.id,
            Spec::Http(s) => &s.id,
            Spec::Pkg(s) => &s.id,
            Spec::Svc(s) => &s.id,
        }
    }

    /// Values this kind can send (`recv: {field: "kind:name.key"}` on a receiver).
    pub fn sends(&self) -> Values {
        match self {
            Spec::Exec(_) => exec::SENDS,
            Spec::Password(_) => password::SENDS,
            Spec::Http(_) => http::SENDS,
            _ => &[],
        }
    }

    /// Fields this kind can receive from another resource.
    pub fn receives(&self) -> Values {
        match self {
            Spec::File(_) => file::RECEIVES,
            Spec::Msg(_) => msg::RECEIVES,
            Spec::Http(_) => http::RECEIVES,
            _ => &[],
        }
    }

    /// Paths this resource creates or manages (for autoedges: whoever needs one runs
    /// after).
    pub fn manages(&self) -> Vec<PathBuf> {
        match self {
            Spec::File(s) => s.manages(),
            Spec::Exec(s) => s.manages(),
            Spec::Pkg(s) => s.manages(),
            _ => Vec::new(),
        }
    }

    /// Paths this resource needs to exist first (for autoedges).
    pub fn needs(&self) -> Vec<PathBuf> {
        match self {
            Spec::File(s) => s.needs(),
            Spec::Exec(s) => s.needs(),
            Spec::Svc(s) => s.needs(),
            _ => Vec::new(),
        }
    }
}
