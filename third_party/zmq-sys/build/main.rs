//! Build libzmq from source with libsodium, so that `zmq::has("curve")` is true.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    // Set by libsodium-sys-stable's build script (its `links = "sodium"`).
    let (Ok(lib), Ok(include)) = (env::var("DEP_SODIUM_LIB"), env::var("DEP_SODIUM_INCLUDE"))
    else {
        panic!(
            "libsodium-sys-stable did not report where it built libsodium \
             (DEP_SODIUM_LIB / DEP_SODIUM_INCLUDE); a C compiler and make are needed"
        );
    };
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
