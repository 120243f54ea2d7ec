//! Giving the allocator's free pages back to the kernel.
//!
//! glibc keeps what a process frees inside its arenas (one per thread that allocated), so a
//! daemon's resident memory stays at the highest it ever reached: after a burst, a backlog
//! while a peer was slow, a reconnect storm. `malloc_trim` hands the free pages back. It
//! walks each arena under that arena's lock, so it runs off the hot paths: the actor after a
//! burst (see the actor's `trim`), the other daemons on a slow timer ([`periodically`]).
//!
//! The `reflex` binary's Rust heap is jemalloc's, which gives free pages back by itself (see
//! its `main.rs`); what glibc still holds there is ZeroMQ's, and what a library user's program
//! allocates with glibc.

use std::time::Duration;

/// Hand the allocator's free pages back to the kernel (glibc only; elsewhere nothing).
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`release`] every `every`, on a thread of its own, for the life of the process.
pub fn periodically(every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("reflex-trim".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            release();
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the memory trim thread: {e}");
    }
}
