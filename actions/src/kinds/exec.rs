//! `exec`: run a shell command once per graph run.
//!
//! The command runs as `sh -c cmd` in its own process group so that a timeout or a stop can
//! kill everything it started, not just the shell. It runs on the first check (Changed on
//! exit 0); later checks are Converged. A failed run is retried when the task is poked again
//! (a dependency changed).

use std::any::Any;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::error::{GraphError, ResourceError};
use crate::fields::Fields;
use crate::resource::{Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// The kind name.
pub const KIND: &str = "exec";

/// Bytes of stdout/stderr kept (the end of the stream).
const KEEP: usize = 4096;
/// Bytes of stderr quoted in an error message.
const QUOTE: usize = 1024;
/// How long to keep reading pipes after the shell exited: a background child may hold them
/// open forever, and we must not wait for it.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// A command to run.
#[derive(Debug)]
pub struct Exec {
    id: String,
    cmd: String,
    /// Seconds, as written (kept for the error message).
    timeout: Option<f64>,
    /// Set once the command succeeded (or, in noop mode, was reported as WouldChange).
    done: AtomicBool,
}

pub(crate) fn build(
    id: String,
    _name: &str,
    fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    let cmd = fields.req_str("cmd")?;
    if cmd.trim().is_empty() {
        return Err(fields.invalid("cmd", "must not be empty"));
    }
    let timeout = fields.opt_number("timeout")?;
    if let Some(t) = timeout {
        if t.is_nan() || t <= 0.0 || Duration::try_from_secs_f64(t).is_err() {
            return Err(fields.invalid(
                "timeout",
                format!("{t} is not a positive number of seconds"),
            ));
        }
    }
    Ok(Arc::new(Exec {
        id,
        cmd,
        timeout,
        done: AtomicBool::new(false),
    }))
}

#[async_trait]
impl Resource for Exec {
    fn id(&self) -> &str {
        &self.id
    }

    fn watch(&self, _ctx: &WatchCtx, _poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        Ok(None)
    }

    async fn check_apply(&self, apply: bool) -> Result<Outcome, ResourceError> {
        if self.done.load(Ordering::SeqCst) {
            return Ok(Outcome::Converged);
        }
        if !apply {
            self.done.store(true, Ordering::SeqCst);
            return Ok(Outcome::WouldChange);
        }
        self.run().await?;
        self.done.store(true, Ordering::SeqCst);
        Ok(Outcome::Changed)
    }

    fn compare(&self, other: &dyn Resource) -> bool {
        other
            .as_any()
            .downcast_ref::<Exec>()
            .is_some_and(|o| o.id == self.id && o.cmd == self.cmd && o.timeout == self.timeout)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Exec {
    async fn run(&self) -> Result<(), ResourceError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| ResourceError::io("spawn sh", e))?;
        // Armed until the shell exits on its own: a timeout, or this future being dropped
        // (graph stopped), kills the whole group.
        let mut group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(GroupKiller);
        let stdout = Tail::spawn(child.stdout.take());
        let stderr = Tail::spawn(child.stderr.take());

        let waited = match self.timeout {
            None => child.wait().await,
            Some(secs) => {
                let limit = Duration::from_secs_f64(secs);
                match tokio::time::timeout(limit, child.wait()).await {
                    Ok(waited) => waited,
                    Err(_) => {
                        drop(group.take());
                        // Reap the shell; it is already dead or dying from SIGKILL.
                        let _ = child.kill().await;
                        return Err(ResourceError::Failed(format!("timed out after {secs}s")));
                    }
                }
            }
        };
        let status = waited.map_err(|e| ResourceError::io("wait for sh", e))?;
        // The shell exited by itself: leave anything it put in the background alone.
        if let Some(g) = group.take() {
            g.disarm();
        }
        let out = stdout.finish().await;
        let err = stderr.finish().await;
        if status.success() {
            tracing::debug!(id = %self.id, stdout = %out, "exec succeeded");
            Ok(())
        } else {
            Err(ResourceError::Failed(describe(status, &err)))
        }
    }
}

fn describe(status: ExitStatus, stderr: &str) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => format!("failed ({status})"),
    };
    let quoted = tail_str(stderr, QUOTE);
    if quoted.is_empty() {
        how
    } else {
        format!("{how}; stderr: {quoted}")
    }
}

/// The last `max` bytes of `s`, cut at a char boundary, trimmed.
fn tail_str(s: &str, max: usize) -> &str {
    let s = s.trim();
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].trim_start()
}

/// Kills a process group when dropped.
struct GroupKiller(i32);

impl GroupKiller {
    /// Give up the kill: the shell ended on its own.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. A negative
        // pid addresses the group we created with process_group(0).
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// Reads a pipe to its end in the background, keeping only the last `KEEP` bytes.
struct Tail {
    buf: Arc<Mutex<Vec<u8>>>,
    task: Option<JoinHandle<()>>,
}

impl Tail {
    fn spawn<R: AsyncRead + Unpin + Send + 'static>(reader: Option<R>) -> Tail {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let task = reader.map(|mut reader| {
            let buf = Arc::clone(&buf);
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = reader.read(&mut chunk).await {
                    let mut b = buf.lock().unwrap_or_else(PoisonError::into_inner);
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > 2 * KEEP {
                        let cut = b.len() - KEEP;
                        b.drain(..cut);
                    }
                }
            })
        });
        Tail { buf, task }
    }

    /// Wait briefly for the end of the stream, then return what was kept.
    async fn finish(mut self) -> String {
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(PIPE_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        let b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let start = b.len().saturating_sub(KEEP);
        String::from_utf8_lossy(&b[start..]).into_owned()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(cmd: &str, timeout: Option<f64>) -> Exec {
        Exec {
            id: format!("exec:{cmd}"),
            cmd: cmd.to_string(),
            timeout,
            done: AtomicBool::new(false),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_once_then_converged() {
        let e = exec("true", None);
        assert_eq!(e.check_apply(true).await.expect("run"), Outcome::Changed);
        assert_eq!(
            e.check_apply(true).await.expect("again"),
            Outcome::Converged
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failure_names_code_and_stderr_tail() {
        let e = exec("echo first >&2; echo boom >&2; exit 3", None);
        let err = e
            .check_apply(true)
            .await
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("exited with code 3"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeout_kills_the_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survived");
        // The grandchild would write the marker if the group were not killed.
        let cmd = format!("(sleep 1; touch {}) & sleep 5", marker.display());
        let e = exec(&cmd, Some(0.3));
        let start = std::time::Instant::now();
        let err = e
            .check_apply(true)
            .await
            .expect_err("must time out")
            .to_string();
        assert_eq!(err, "timed out after 0.3s");
        assert!(start.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "background child outlived the timeout");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_child_holding_the_pipe_does_not_block() {
        let e = exec("sleep 5 & echo started", None);
        let start = std::time::Instant::now();
        assert_eq!(e.check_apply(true).await.expect("run"), Outcome::Changed);
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn noop_does_not_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let e = exec(&format!("touch {}", marker.display()), None);
        assert_eq!(
            e.check_apply(false).await.expect("noop"),
            Outcome::WouldChange
        );
        assert!(!marker.exists());
    }
}
