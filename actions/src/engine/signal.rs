//! The two small synchronisation pieces every graph and every node holds, made as small as
//! they get: an idle graph is the common case, and there may be tens of thousands of them
//! (tokio's unbounded channel allocates a 32-slot block and a 512-byte channel up front, its
//! watch channel some 400 bytes).
//!
//! - [`Queue`]: what a graph's tasks tell their `Running`, unbounded, one consumer; it holds
//!   nothing while empty.
//! - [`Stop`]: a flag set once, that tasks wait on.

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

    fn try_pop(&self) -> Option<T> {
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
}
