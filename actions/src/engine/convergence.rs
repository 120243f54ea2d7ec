//! Waiting for a running graph to settle: every first outcome in, nothing busy, nothing
//! changed for a while.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::signal::Watch;

/// What `converged` needs to know.
#[derive(Debug, Clone, Copy)]
pub(super) struct Status {
    /// Resources still waiting for their first outcome.
    pub pending: usize,
    /// Check-applies in progress.
    pub busy: usize,
    /// Last change, failure, first outcome or swap.
    pub last_activity: Instant,
}

/// Waits on a running graph's convergence; see [`super::Running::convergence`].
pub struct Convergence {
    status: Arc<Watch<Status>>,
    /// The version of `status` last looked at.
    seen: u64,
    /// `last_activity` when `converged` last resolved.
    mark: Option<Instant>,
}

impl Convergence {
    pub(super) fn new(status: Arc<Watch<Status>>) -> Convergence {
        let (_, seen) = status.get();
        Convergence {
            status,
            seen,
            mark: None,
        }
    }

    /// The status now, marked as seen.
    fn look(&mut self) -> Status {
        let (status, version) = self.status.get();
        self.seen = version;
        status
    }

    /// Resolves when every resource has had its first outcome, no check-apply is in
    /// progress, and nothing changed or failed for `idle`.
    pub async fn converged(&mut self, idle: Duration) {
        loop {
            let status = self.look();
            let settled = status.pending == 0 && status.busy == 0;
            let quiet = status.last_activity.elapsed();
            if settled && quiet >= idle {
                self.mark = Some(status.last_activity);
                return;
            }
            if settled {
                tokio::select! {
                    _ = tokio::time::sleep(idle - quiet) => {}
                    _ = self.status.changed(self.seen) => {}
                }
            } else if !self.status.changed(self.seen).await {
                // The graph is gone: nothing will ever change again.
                return;
            }
        }
    }

    /// After `converged` resolved: resolves when something changed, failed, started or was
    /// swapped in since. Written out rather than on `Watch::changed`: an idle graph's task
    /// holds this future for as long as nothing happens, so it is kept to one wake-up and
    /// the look.
    pub async fn diverged(&mut self) {
        loop {
            let watch = &self.status;
            let mut notified = pin!(watch.notified());
            // Registered before the look, so a change after it wakes this one.
            notified.as_mut().enable();
            let (status, version) = watch.get();
            self.seen = version;
            let mark = *self.mark.get_or_insert(status.last_activity);
            if status.pending > 0 || status.last_activity != mark {
                self.mark = None;
                return;
            }
            if watch.is_closed() {
                // The graph is gone: nothing will ever change again.
                std::future::pending::<()>().await;
            }
            notified.await;
        }
    }
}
