//! The two small synchronisation pieces every graph and every node holds, made as small as
//! they get: an idle graph is the common case, and there may be tens of thousands of them
//! (tokio's unbounded channel allocates a 32-slot block and a 512-byte channel up front, its
//! watch channel some 400 bytes).
//!
//! - [`Queue`]: what a graph's tasks tell their `Running`, unbounded, one consumer; it holds
//!   nothing while empty.
//! - [`Stop`]: a flag set once, that tasks wait on.
//! - [`Watch`]: a value many wait on for changes (the graph's convergence status), about 100
//!   bytes where tokio's watch channel takes some 400.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::lock;

/// An unbounded queue with one consumer.
pub(super) struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    ready: Notify,
}

impl<T> Queue<T> {
    pub(super) fn new() -> Queue<T> {
        Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    /// Never blocks.
    pub(super) fn push(&self, item: T) {
        lock(&self.items).push_back(item);
        self.ready.notify_one();
    }

    /// The next item, waiting for one. Cancel-safe: an item is taken only when returned.
    pub(super) async fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            // A push between the look and here left a permit: this returns at once.
            self.ready.notified().await;
        }
    }

    /// The next item if there is one, without waiting.
    pub(super) fn try_pop(&self) -> Option<T> {
        let mut items = lock(&self.items);
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > 0 {
            // Idle again: give the buffer back.
            *items = VecDeque::new();
        }
        item
    }
}

/// A flag that is set once; tasks wait for it.
pub(super) struct Stop {
    set: AtomicBool,
    notify: Notify,
}

impl Stop {
    pub(super) fn new() -> Stop {
        Stop {
            set: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Set it and wake every waiter.
    pub(super) fn stop(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once it is set.
    pub(super) async fn wait(&self) {
        loop {
            let mut notified = pin!(self.notify.notified());
            // Registered before the look, so a `stop` after it wakes this one.
            notified.as_mut().enable();
            if self.set.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// A value with a version that moves on each change; waiters wait for a version they have not
/// seen, or for the owner to close it.
pub(super) struct Watch<T> {
    value: Mutex<(T, u64)>,
    changed: Notify,
    closed: AtomicBool,
}

impl<T: Copy> Watch<T> {
    pub(super) fn new(value: T) -> Watch<T> {
        Watch {
            value: Mutex::new((value, 0)),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Change the value (a new version even if `f` changed nothing) and wake every waiter.
    pub(super) fn modify(&self, f: impl FnOnce(&mut T)) {
        {
            let mut v = lock(&self.value);
            f(&mut v.0);
            v.1 = v.1.wrapping_add(1);
        }
        self.changed.notify_waiters();
    }

    /// The value and its version.
    pub(super) fn get(&self) -> (T, u64) {
        *lock(&self.value)
    }

    /// No change will come any more: every waiter returns.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// A wake-up for the next change (or the close): enable it before looking at the value,
    /// so a change in between is not missed.
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Whether [`Watch::close`] was called.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves with true once the version is not `seen`, with false once closed.
    pub(super) async fn changed(&self, seen: u64) -> bool {
        loop {
            let mut notified = pin!(self.changed.notified());
            // Registered before the look, so a change after it wakes this one.
            notified.as_mut().enable();
            if lock(&self.value).1 != seen {
                return true;
            }
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_hands_items_over_in_order_and_a_stop_wakes_every_waiter() {
        let q = Arc::new(Queue::new());
        let pusher = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                for i in 0..1_000 {
                    q.push(i);
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        for i in 0..1_000 {
            assert_eq!(q.pop().await, i);
        }
        pusher.await.expect("pusher");
        assert_eq!(lock(&q.items).capacity(), 0, "an empty queue holds nothing");

        let stop = Arc::new(Stop::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = Arc::clone(&stop);
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.stop();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .expect("waiter");
        }
        // Set already: returns at once.
        stop.wait().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_wakes_its_waiters_on_a_change_and_on_close() {
        let w = Arc::new(Watch::new(0u32));
        let (_, seen) = w.get();
        let waiter = {
            let w = Arc::clone(&w);
            tokio::spawn(async move { w.changed(seen).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.modify(|v| *v += 1);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("waiter"));
        let (value, now) = w.get();
        assert_eq!((value, now), (1, seen + 1));
        // A version not seen yet: at once, even after a close.
        assert!(w.changed(seen).await);
        let waiter = {
            let w = Arc::clone(&w);
            tokio::spawn(async move { w.changed(now).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.close();
        assert!(!tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("waiter"));
    }
}
