//! `svc`: a systemd unit — `state: running|stopped`, `startup: enabled|disabled`, restarted
//! on refresh — through systemd's D-Bus API on the system bus (zbus), never `systemctl`.
//!
//! The watch subscribes to systemd's signals and listens for `PropertiesChanged` on the unit,
//! so a unit stopped or crashed by anyone is started again at once. Autoedge: the unit runs
//! after a `file` resource that manages its unit file.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use zbus::export::futures_core::Stream;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, Proxy};

use graph::kinds::{SvcRun, SvcSpec};

use crate::error::ResourceError;
use crate::resource::{AbortOnDrop, ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
/// How long a start/stop/restart job may take to settle.
const SETTLE: Duration = Duration::from_secs(90);

/// A managed unit.
#[derive(Debug)]
pub struct Svc {
    spec: SvcSpec,
}

impl Svc {
    /// The unit `spec` describes.
    pub fn new(spec: SvcSpec) -> Svc {
        Svc { spec }
    }
}

fn bus_error(what: &str, e: zbus::Error) -> ResourceError {
    ResourceError::Failed(format!("systemd D-Bus {what}: {e}"))
}

async fn connect() -> Result<Connection, ResourceError> {
    Connection::system()
        .await
        .map_err(|e| ResourceError::Failed(format!("cannot reach systemd on the system bus: {e}")))
}

async fn manager(conn: &Connection) -> Result<Proxy<'static>, ResourceError> {
    Proxy::new(conn, DEST, MANAGER_PATH, MANAGER)
        .await
        .map_err(|e| bus_error("manager proxy", e))
}

/// The unit's object (loaded if needed) and its `ActiveState`.
async fn active_state(
    conn: &Connection,
    mgr: &Proxy<'_>,
    unit: &str,
) -> Result<(OwnedObjectPath, String), ResourceError> {
    let path: OwnedObjectPath = mgr
        .call("LoadUnit", &(unit,))
        .await
        .map_err(|e| bus_error("LoadUnit", e))?;
    let proxy = Proxy::new(conn, DEST, path.clone(), UNIT)
        .await
        .map_err(|e| bus_error("unit proxy", e))?;
    let load: String = proxy
        .get_property("LoadState")
        .await
        .map_err(|e| bus_error("LoadState", e))?;
    if load == "not-found" {
        return Err(ResourceError::Failed(format!("unit {unit} does not exist")));
    }
    let active: String = proxy
        .get_property("ActiveState")
        .await
        .map_err(|e| bus_error("ActiveState", e))?;
    Ok((path, active))
}

#[async_trait]
impl Resource for Svc {
    fn watch(&self, _ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        let unit = self.spec.unit.clone();
        let id = self.spec.id.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = watch_unit(&unit, &poke).await {
                // The check reports the same failure as this resource's error.
                tracing::warn!(%id, error = %e, "svc watch ended");
            }
        });
        Ok(Some(WatchGuard::new(AbortOnDrop(task))))
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        let conn = connect().await?;
        let mgr = manager(&conn).await?;
        let mut differs = false;
        if let Some(want) = self.spec.enabled {
            let state: String = mgr
                .call("GetUnitFileState", &(self.spec.unit.as_str(),))
                .await
                .map_err(|e| bus_error("GetUnitFileState", e))?;
            if (state == "enabled") != want {
                differs = true;
                if ctx.apply {
                    let files = vec![self.spec.unit.as_str()];
                    if want {
                        let _: (bool, Vec<(String, String, String)>) = mgr
                            .call("EnableUnitFiles", &(files, false, true))
                            .await
                            .map_err(|e| bus_error("EnableUnitFiles", e))?;
                    } else {
                        let _: Vec<(String, String, String)> = mgr
                            .call("DisableUnitFiles", &(files, false))
                            .await
                            .map_err(|e| bus_error("DisableUnitFiles", e))?;
                    }
                    let _: () = mgr
                        .call("Reload", &())
                        .await
                        .map_err(|e| bus_error("Reload", e))?;
                }
            }
        }
        let (_, active) = active_state(&conn, &mgr, &self.spec.unit).await?;
        let running = matches!(active.as_str(), "active" | "activating" | "reloading");
        let job = match self.spec.state {
            Some(SvcRun::Running) if !running => Some("StartUnit"),
            Some(SvcRun::Stopped) if running => Some("StopUnit"),
            // A refresh restarts a unit that should run and does.
            Some(SvcRun::Running) if ctx.refresh => Some("RestartUnit"),
            _ => None,
        };
        if let Some(method) = job {
            differs = true;
            if ctx.apply {
                let _: OwnedObjectPath = mgr
                    .call(method, &(self.spec.unit.as_str(), "replace"))
                    .await
                    .map_err(|e| bus_error(method, e))?;
                self.settle(&conn, &mgr, method != "StopUnit").await?;
            }
        }
        Ok(match (differs, ctx.apply) {
            (false, _) => Outcome::Converged,
            (true, true) => Outcome::Changed,
            (true, false) => Outcome::WouldChange,
        })
    }
}

impl Svc {
    /// Wait for the job to settle: the unit reaches (or fails to reach) the wanted state.
    async fn settle(
        &self,
        conn: &Connection,
        mgr: &Proxy<'_>,
        up: bool,
    ) -> Result<(), ResourceError> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let (_, active) = active_state(conn, mgr, &self.spec.unit).await?;
            match (up, active.as_str()) {
                (true, "active") | (false, "inactive") => return Ok(()),
                (_, "failed") => {
                    return Err(ResourceError::Failed(format!(
                        "unit {} failed",
                        self.spec.unit
                    )))
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ResourceError::Failed(format!(
                        "unit {} still {active} after {}s",
                        self.spec.unit,
                        SETTLE.as_secs()
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Poke on every property change of the unit (its state moving), until dropped.
async fn watch_unit(unit: &str, poke: &Poke) -> Result<(), ResourceError> {
    let conn = connect().await?;
    let mgr = manager(&conn).await?;
    // Without Subscribe, systemd does not emit unit signals at all.
    let _: () = mgr
        .call("Subscribe", &())
        .await
        .map_err(|e| bus_error("Subscribe", e))?;
    let (path, _) = active_state(&conn, &mgr, unit).await?;
    let props = Proxy::new(&conn, DEST, path, "org.freedesktop.DBus.Properties")
        .await
        .map_err(|e| bus_error("properties proxy", e))?;
    let mut changes = props
        .receive_signal("PropertiesChanged")
        .await
        .map_err(|e| bus_error("PropertiesChanged", e))?;
    while std::future::poll_fn(|cx| Pin::new(&mut changes).poll_next(cx))
        .await
        .is_some()
    {
        poke.poke();
    }
    Ok(())
}
