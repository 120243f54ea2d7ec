//! `svc`: a systemd unit — `state: running|stopped`, `startup: enabled|disabled`, restarted
//! on refresh — through systemd's D-Bus API on the system bus (zbus), never `systemctl`.
//!
//! The watch subscribes to systemd's signals and listens for `PropertiesChanged` on the unit,
//! so a unit stopped or crashed by anyone is started again at once. Autoedge: the unit runs
//! after a `file` resource that manages its unit file.

use std::any::Any;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use zbus::export::futures_core::Stream;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, Proxy};

use crate::error::{GraphError, ResourceError};
use crate::fields::Fields;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

/// The kind name.
pub const KIND: &str = "svc";

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
/// How long a start/stop/restart job may take to settle.
const SETTLE: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Running,
    Stopped,
}

/// A managed unit.
#[derive(Debug)]
pub struct Svc {
    id: String,
    unit: String,
    state: Option<Run>,
    /// Some(true): enabled, Some(false): disabled, None: not managed.
    enabled: Option<bool>,
}

pub(crate) fn build(
    id: String,
    name: &str,
    fields: &mut Fields,
) -> Result<Arc<dyn Resource>, GraphError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b));
    if !valid {
        return Err(fields.invalid("name", format!("`{name}` is not a systemd unit name")));
    }
    let unit = if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.service")
    };
    let state = match fields.opt_str("state")?.as_deref() {
        None | Some("running") => Some(Run::Running),
        Some("stopped") => Some(Run::Stopped),
        Some(other) => {
            return Err(fields.invalid(
                "state",
                format!("expected `running` or `stopped`, got `{other}`"),
            ))
        }
    };
    let enabled = match fields.opt_str("startup")?.as_deref() {
        None => None,
        Some("enabled") => Some(true),
        Some("disabled") => Some(false),
        Some(other) => {
            return Err(fields.invalid(
                "startup",
                format!("expected `enabled` or `disabled`, got `{other}`"),
            ))
        }
    };
    Ok(Arc::new(Svc {
        id,
        unit,
        state,
        enabled,
    }))
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
    fn id(&self) -> &str {
        &self.id
    }

    fn watch(&self, _ctx: &WatchCtx, poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        let unit = self.unit.clone();
        let id = self.id.clone();
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
        if let Some(want) = self.enabled {
            let state: String = mgr
                .call("GetUnitFileState", &(self.unit.as_str(),))
                .await
                .map_err(|e| bus_error("GetUnitFileState", e))?;
            if (state == "enabled") != want {
                differs = true;
                if ctx.apply {
                    let files = vec![self.unit.as_str()];
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
        let (_, active) = active_state(&conn, &mgr, &self.unit).await?;
        let running = matches!(active.as_str(), "active" | "activating" | "reloading");
        let job = match self.state {
            Some(Run::Running) if !running => Some("StartUnit"),
            Some(Run::Stopped) if running => Some("StopUnit"),
            // A refresh restarts a unit that should run and does.
            Some(Run::Running) if ctx.refresh => Some("RestartUnit"),
            _ => None,
        };
        if let Some(method) = job {
            differs = true;
            if ctx.apply {
                let _: OwnedObjectPath = mgr
                    .call(method, &(self.unit.as_str(), "replace"))
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

    fn compare(&self, other: &dyn Resource) -> bool {
        other.as_any().downcast_ref::<Svc>().is_some_and(|o| {
            o.id == self.id
                && o.unit == self.unit
                && o.state == self.state
                && o.enabled == self.enabled
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn needs(&self) -> Vec<PathBuf> {
        [
            "/etc/systemd/system",
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
        ]
        .iter()
        .map(|d| PathBuf::from(d).join(&self.unit))
        .collect()
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
            let (_, active) = active_state(conn, mgr, &self.unit).await?;
            match (up, active.as_str()) {
                (true, "active") | (false, "inactive") => return Ok(()),
                (_, "failed") => {
                    return Err(ResourceError::Failed(format!("unit {} failed", self.unit)))
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ResourceError::Failed(format!(
                        "unit {} still {active} after {}s",
                        self.unit,
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
