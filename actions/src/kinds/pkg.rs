//! `pkg`: a Debian package through apt/dpkg — `state: installed` (the default), `absent`, or
//! an exact version.
//!
//! Checks ask `dpkg-query`; fixes run `apt-get` (non-interactive). The watch is dpkg's status
//! file on the engine's inotify hub, so a package removed by hand is put back. Autogrouping:
//! installs and removals that are ready at the same moment (the graph allows them to run in
//! parallel) are collected for a short window and run as ONE apt-get transaction; apt runs one
//! at a time. Grouping never touches the graph, so it can never create a cycle. Autoedges:
//! files the package owns (dpkg's list, directories excluded) depend on it.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::error::{GraphError, ResourceError};
use crate::fields::Fields;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// The kind name.
pub const KIND: &str = "pkg";

const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// How long a transaction waits for other ready packages to join it.
const GROUP_WINDOW: Duration = Duration::from_millis(50);

/// What the package should be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Installed,
    Absent,
    Version(String),
}

/// A managed package.
#[derive(Debug)]
pub struct Pkg {
    id: String,
    name: String,
    want: Want,
}

pub(crate) fn build(
    id: String,
    name: &str,
    fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    // Debian policy: lowercase alphanumerics and + - . , at least two characters.
    let valid = name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        return Err(fields.invalid("name", format!("`{name}` is not a Debian package name")));
    }
    let want = match fields.opt_str("state")?.as_deref() {
        None | Some("installed") => Want::Installed,
        Some("absent") => Want::Absent,
        Some(v)
            if !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+-~:".contains(&b)) =>
        {
            Want::Version(v.to_string())
        }
        Some(other) => {
            return Err(fields.invalid(
                "state",
                format!("expected `installed`, `absent` or a version, got `{other}`"),
            ))
        }
    };
    Ok(Arc::new(Pkg {
        id,
        name: name.to_string(),
        want,
    }))
}

#[async_trait]
impl Resource for Pkg {
    fn id(&self) -> &str {
        &self.id
    }

    fn watch(&self, ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        ctx.files()
            .subscribe(Path::new(DPKG_STATUS), poke)
            .map(Some)
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        let installed = installed_version(&self.name).await?;
        let ok = match (&self.want, &installed) {
            (Want::Installed, Some(_)) | (Want::Absent, None) => true,
            (Want::Version(v), Some(have)) => v == have,
            _ => false,
        };
        if ok {
            return Ok(Outcome::Converged);
        }
        if !ctx.apply {
            return Ok(Outcome::WouldChange);
        }
        let op = match &self.want {
            Want::Installed => Op::Install(self.name.clone()),
            Want::Version(v) => Op::Install(format!("{}={v}", self.name)),
            Want::Absent => Op::Remove(self.name.clone()),
        };
        transaction(op).await.map_err(ResourceError::Failed)?;
        Ok(Outcome::Changed)
    }

    fn compare(&self, other: &dyn Resource) -> bool {
        other
            .as_any()
            .downcast_ref::<Pkg>()
            .is_some_and(|o| o.id == self.id && o.want == self.want)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn manages(&self) -> Vec<PathBuf> {
        if self.want == Want::Absent {
            return Vec::new();
        }
        owned_files(&self.name)
    }
}

/// The version dpkg has installed, if any.
async fn installed_version(name: &str) -> Result<Option<String>, ResourceError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}\t${Version}", name])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| ResourceError::io("run dpkg-query", e))?;
    // Exit 1 with "no packages found" just means never installed.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(match text.split_once('\t') {
        Some(("installed", version)) => Some(version.trim().to_string()),
        _ => None,
    })
}

/// Regular files (not directories) dpkg lists for `name`.
fn owned_files(name: &str) -> Vec<PathBuf> {
    let info = Path::new("/var/lib/dpkg/info");
    let Ok(entries) = std::fs::read_dir(info) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let fname = entry.file_name();
        let fname = fname.to_string_lossy();
        let matches = fname == format!("{name}.list")
            || fname
                .strip_prefix(&format!("{name}:"))
                .is_some_and(|r| r.ends_with(".list"));
        if !matches {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            files.extend(
                text.lines()
                    .map(PathBuf::from)
                    .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir())),
            );
        }
    }
    files
}

#[derive(Debug, Clone)]
enum Op {
    Install(String),
    Remove(String),
}

type Waiter = (Op, oneshot::Sender<Result<(), String>>);

/// Requests waiting for the next transaction.
static QUEUE: Mutex<Vec<Waiter>> = Mutex::new(Vec::new());
/// apt takes the dpkg lock: one transaction at a time.
static RUNNER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Run `op` in the next apt transaction, together with every other request ready now.
async fn transaction(op: Op) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    QUEUE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((op, tx));
    {
        let _turn = RUNNER.lock().await;
        // Let the other packages the graph made ready at the same moment join in.
        tokio::time::sleep(GROUP_WINDOW).await;
        let batch = std::mem::take(&mut *QUEUE.lock().unwrap_or_else(PoisonError::into_inner));
        // Empty: an earlier transaction already took (and ran) our request.
        if !batch.is_empty() {
            run_batch(batch).await;
        }
    }
    rx.await
        .unwrap_or_else(|_| Err("the apt transaction was abandoned".to_string()))
}

async fn run_batch(batch: Vec<Waiter>) {
    let (installs, removes): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|(op, _)| matches!(op, Op::Install(_)));
    for (verb, group) in [("install", installs), ("remove", removes)] {
        if group.is_empty() {
            continue;
        }
        let names: Vec<String> = group
            .iter()
            .map(|(op, _)| match op {
                Op::Install(n) | Op::Remove(n) => n.clone(),
            })
            .collect();
        tracing::info!(verb, packages = ?names, "apt-get transaction");
        TRANSACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = apt(verb, &names).await;
        for (_, tx) in group {
            // The waiter is gone only if its graph stopped meanwhile.
            let _ = tx.send(result.clone());
        }
    }
}

async fn apt(verb: &str, names: &[String]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(["-y", "-q", "--no-install-recommends", verb])
        .args(names)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .trim()
        .chars()
        .rev()
        .take(600)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!(
        "apt-get {verb} {} failed ({}): {tail}",
        names.join(" "),
        out.status
    ))
}

/// How many apt transactions ran in this process (for tests and the bench).
pub fn transactions() -> usize {
    TRANSACTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

static TRANSACTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
