//! `exec`: run a command once per graph run — or on each refresh.
//!
//! The command is `argv` (a program and its arguments, run directly: no shell sees them) or
//! `cmd` (run as `sh -c cmd`); `ifcmd` and `watchcmd` are shell lines. Each runs in its own
//! process group so that a timeout or a stop can kill everything it started, not just the
//! program. It runs on the first check (Changed on
//! exit 0); later checks are Converged until a refresh arrives (a `notify` edge) or its
//! `watchcmd` prints a line. `refresh_only` runs it only on a refresh, `ifcmd` only when that
//! command exits 0, `creates` only while that path is missing; `user`, `env` and `cwd` shape
//! the process. It sends its `stdout`. A failed run is retried when poked again (or per
//! `meta.retry`).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use graph::kinds::{ExecCmd, ExecSpec};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::error::ResourceError;
use crate::os;
use crate::resource::{AbortOnDrop, ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

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
    spec: ExecSpec,
    /// Set once the command succeeded (or, in noop mode, was reported as WouldChange).
    done: AtomicBool,
    /// Set by the `watchcmd` watch: its output asked for another run.
    rerun: Arc<AtomicBool>,
    /// Stdout of the last successful run (what `exec` sends).
    last_stdout: Mutex<Option<String>>,
}

#[async_trait]
impl Resource for Exec {
    fn watch(&self, _ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        let Some(watchcmd) = &self.spec.watchcmd else {
            return Ok(None);
        };
        let mut child = self
            .shell(watchcmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ResourceError::io("spawn watchcmd", e))?;
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(GroupKiller);
        let stdout = child.stdout.take();
        let rerun = Arc::clone(&self.rerun);
        let id = self.spec.id.clone();
        let task = tokio::spawn(async move {
            // Owned here so the child is killed (kill_on_drop) when the watch is dropped.
            let _child = child;
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                rerun.store(true, Ordering::SeqCst);
                poke.poke();
            }
            tracing::warn!(%id, "watchcmd ended; no more watch events");
        });
        Ok(Some(WatchGuard::new(WatchCmd {
            _task: AbortOnDrop(task),
            _group: group,
        })))
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        let rerun = self.rerun.swap(false, Ordering::SeqCst);
        let asked = ctx.refresh || rerun;
        if self.spec.refresh_only && !asked {
            return Ok(Outcome::Converged);
        }
        if self.done.load(Ordering::SeqCst) && !asked {
            return Ok(Outcome::Converged);
        }
        if let Some(path) = &self.spec.creates {
            if tokio::fs::symlink_metadata(path).await.is_ok() {
                self.done.store(true, Ordering::SeqCst);
                return Ok(Outcome::Converged);
            }
        }
        if let Some(ifcmd) = &self.spec.ifcmd {
            if self.run(self.shell(ifcmd), "sh").await.is_err() {
                return Ok(Outcome::Converged);
            }
        }
        if !ctx.apply {
            self.done.store(true, Ordering::SeqCst);
            return Ok(Outcome::WouldChange);
        }
        let (main, program) = self.main_command()?;
        let out = self.run(main, program).await?;
        *self
            .last_stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(out);
        self.done.store(true, Ordering::SeqCst);
        Ok(Outcome::Changed)
    }

    fn sent(&self) -> Option<serde_json::Map<String, Value>> {
        let out = self.last_stdout()?;
        let mut sent = serde_json::Map::new();
        sent.insert("stdout".into(), Value::String(out));
        Some(sent)
    }
}

/// The running `watchcmd`: dropping it ends the reader and kills the command's group.
struct WatchCmd {
    _task: AbortOnDrop<()>,
    _group: Option<GroupKiller>,
}

impl Exec {
    /// The command `spec` describes, not run yet.
    pub fn new(spec: ExecSpec) -> Exec {
        Exec {
            spec,
            done: AtomicBool::new(false),
            rerun: Arc::new(AtomicBool::new(false)),
            last_stdout: Mutex::new(None),
        }
    }

    /// Stdout of the last successful run, if any.
    pub fn last_stdout(&self) -> Option<String> {
        self.last_stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `sh -c line` with this exec's user, env and cwd, in its own process group.
    fn shell(&self, line: &str) -> Command {
        let mut cmd = self.process("sh");
        cmd.arg("-c").arg(line);
        cmd
    }

    /// The main command (`cmd` through the shell, `argv` directly) and its program's name.
    fn main_command(&self) -> Result<(Command, &str), ResourceError> {
        match &self.spec.cmd {
            ExecCmd::Shell(line) => Ok((self.shell(line), "sh")),
            ExecCmd::Argv(argv) => {
                // The schema refuses an empty argv; a hand-built spec gets an error, not a panic.
                let (program, args) = argv
                    .split_first()
                    .ok_or_else(|| ResourceError::Failed("argv is empty".into()))?;
                let mut cmd = self.process(program);
                cmd.args(args);
                Ok((cmd, program))
            }
        }
    }

    /// `program` with this exec's user, env and cwd, in its own process group.
    fn process(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null())
            .envs(&self.spec.env)
            .kill_on_drop(true)
            .process_group(0);
        if let Some(cwd) = &self.spec.cwd {
            cmd.current_dir(cwd);
        }
        if let Some((uid, gid)) = self.spec.user.as_deref().and_then(os::user) {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Run one command (`program` names it in errors); its stdout on exit 0.
    async fn run(&self, mut command: Command, program: &str) -> Result<String, ResourceError> {
        if let Some(user) = &self.spec.user {
            if os::user(user).is_none() {
                return Err(ResourceError::Failed(format!("no such user `{user}`")));
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ResourceError::io(format!("spawn {program}"), e))?;
        // Armed until the program exits on its own: a timeout, or this future being dropped
        // (graph stopped), kills the whole group.
        let mut group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(GroupKiller);
        let stdout = Tail::spawn(child.stdout.take());
        let stderr = Tail::spawn(child.stderr.take());

        let waited = match self.spec.timeout {
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
        let status = waited.map_err(|e| ResourceError::io(format!("wait for {program}"), e))?;
        // The program exited by itself: leave anything it put in the background alone.
        if let Some(g) = group.take() {
            g.disarm();
        }
        let out = stdout.finish().await;
        let err = stderr.finish().await;
        if status.success() {
            tracing::debug!(id = %self.spec.id, stdout = %out, "exec succeeded");
            Ok(out)
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
        Exec::new(ExecSpec {
            timeout,
            ..ExecSpec::command(format!("exec:{cmd}"), cmd)
        })
    }

    fn ctx(apply: bool) -> ApplyCtx {
        ApplyCtx::new(apply)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_once_then_converged() {
        let e = exec("true", None);
        assert_eq!(
            e.check_apply(&ctx(true)).await.expect("run"),
            Outcome::Changed
        );
        assert_eq!(
            e.check_apply(&ctx(true)).await.expect("again"),
            Outcome::Converged
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failure_names_code_and_stderr_tail() {
        let e = exec("echo first >&2; echo boom >&2; exit 3", None);
        let err = e
            .check_apply(&ctx(true))
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
            .check_apply(&ctx(true))
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
        assert_eq!(
            e.check_apply(&ctx(true)).await.expect("run"),
            Outcome::Changed
        );
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn noop_does_not_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let e = exec(&format!("touch {}", marker.display()), None);
        assert_eq!(
            e.check_apply(&ctx(false)).await.expect("noop"),
            Outcome::WouldChange
        );
        assert!(!marker.exists());
    }
}
