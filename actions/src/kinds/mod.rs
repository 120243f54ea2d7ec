//! The kinds' executing code: one [`Resource`] per kind of `graph::Spec`, built from the
//! spec the graph crate parsed and validated. Which kinds exist is the graph crate's table;
//! the match in [`build`] makes the compiler hold every kind to an implementation here.

use std::sync::Arc;

use graph::Spec;

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

/// The resource that makes `spec` true.
pub fn build(spec: &Spec) -> Arc<dyn Resource> {
    match spec {
        Spec::File(s) => Arc::new(file::File::new(Arc::clone(s))),
        Spec::Exec(s) => Arc::new(exec::Exec::new((**s).clone())),
        Spec::Noop(_) => Arc::new(noop::Noop),
        Spec::Msg(s) => Arc::new(msg::Msg::new((**s).clone())),
        Spec::Timer(s) => Arc::new(timer::Timer::new((**s).clone())),
        Spec::Password(s) => Arc::new(password::Password::new((**s).clone())),
        Spec::Http(s) => Arc::new(http::Http::new((**s).clone())),
        Spec::Pkg(s) => Arc::new(pkg::Pkg::new((**s).clone())),
        Spec::Svc(s) => Arc::new(svc::Svc::new((**s).clone())),
    }
}
