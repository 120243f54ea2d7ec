//! `pkg`: a Debian package through apt/dpkg — `state: installed` (the default), `absent`, or
//! an exact version.
//!
//! Checks ask `dpkg-query`; fixes run `apt-get` (non-interactive). The watch is dpkg's status
//! file on the engine's inotify hub, so a package removed by hand is put back. Autogrouping:
//! installs and removals that are ready at the same moment (the graph allows them to run in
//! parallel) are collected for a short window and run as ONE apt-get transaction; apt runs one
//! at a time. Grouping never touches the graph, so it can never create a cycle. Autoedges:
//! files the package owns depend on it
//! (the graph crate reads dpkg's list).

use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::oneshot;

use graph::kinds::{PkgSpec, PkgState};

use crate::error::ResourceError;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// How long a transaction waits for other ready packages to join it.
const GROUP_WINDOW: Duration = Duration::from_millis(50);

/// A managed package.
#[derive(Debug)]
pub struct Pkg {
    spec: PkgSpec,
}

impl Pkg {
    /// The package `spec` describes.
    pub fn new(spec: PkgSpec) -> Pkg {
        Pkg { spec }
    }
}

#[async_trait]
impl Resource for Pkg {
    fn watch(&self, ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        ctx.files()
            .subscribe(Path::new(DPKG_STATUS), poke)
            .map(Some)
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        let name = &self.spec.name;
        let installed = installed_version(name).await?;
        let ok = match (&self.spec.state, &installed) {
            (PkgState::Installed, Some(_)) | (PkgState::Absent, None) => true,
            (PkgState::Version(v), Some(have)) => v == have,
            _ => false,
        };
        if ok {
            return Ok(Outcome::Converged);
        }
        if !ctx.apply {
            return Ok(Outcome::WouldChange);
        }
        let op = match &self.spec.state {
            PkgState::Installed => Op::Install(name.clone()),
            PkgState::Version(v) => Op::Install(format!("{name}={v}")),
            PkgState::Absent => Op::Remove(name.clone()),
        };
        transaction(op).await.map_err(ResourceError::Failed)?;
        Ok(Outcome::Changed)
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
