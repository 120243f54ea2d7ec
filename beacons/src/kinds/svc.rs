//! `beacon/svc`: systemd units changing state, as it happens (D-Bus signals, no polling).
//!
//! `units = ["nginx.service", "postgresql.service"]`: every change of these units'
//! `ActiveState` (active, reloading, inactive, failed, activating, deactivating) is one event
//! `{unit, state, previous, sub_state}`. Without `units`, every unit is watched but only
//! failures are sent: a unit entering `failed`, and leaving it. On a host where systemd does
//! not run (a container, a non-systemd distribution) the beacon fails with a message saying so,
//! once, as `beacon/svc/error`; it retries every interval (30 s), quietly.

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::{obj, Beacon, Out, Waker};
use futures_lite::StreamExt;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// What `svc` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults::happenings(Duration::from_secs(30));

const SYSTEMD: &str = "org.freedesktop.systemd1";
const UNIT_PATHS: &str = "/org/freedesktop/systemd1/unit";

/// The `svc` beacon: systemd units changing state.
pub struct Svc {
    units: Vec<String>,
    queue: Arc<Mutex<Vec<Map<String, Value>>>>,
    /// Why the listener stopped, once it has.
    failure: Arc<Mutex<Option<String>>>,
    listener: Option<JoinHandle<()>>,
    waker: Option<Waker>,
}

impl Svc {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<Svc, ConfigError> {
        Ok(Svc::new(f.strings("units")?.unwrap_or_default()))
    }

    /// Watch `units`.
    pub fn new(units: Vec<String>) -> Svc {
        Svc {
            units,
            queue: Arc::default(),
            failure: Arc::default(),
            listener: None,
            waker: None,
        }
    }

    /// Whether systemd runs here (what sd_booted(3) checks).
    pub fn systemd_runs() -> bool {
        std::path::Path::new("/run/systemd/system").is_dir()
    }

    /// Start the D-Bus listener thread; returns once it is subscribed (or could not be).
    fn spawn_listener(&mut self, waker: Waker) -> Result<(), String> {
        if !Svc::systemd_runs() {
            return Err("systemd is not running on this host (no /run/systemd/system), so there are no units to watch".into());
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (units, queue, failure) =
            (self.units.clone(), self.queue.clone(), self.failure.clone());
        let thread = std::thread::Builder::new()
            .name("beacon-svc-dbus".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the D-Bus runtime: {e}")));
                        return;
                    }
                };
                let result = rt.block_on(listen(units, queue, waker, &ready_tx));
                if let Err(e) = result {
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(e.clone());
                    }
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| format!("cannot start the D-Bus thread: {e}"))?;
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(())) => {
                self.listener = Some(thread);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("systemd did not answer on D-Bus within 15s".into()),
        }
    }
}

/// Subscribe to systemd's unit signals and queue the changes that matter until stopped.
async fn listen(
    units: Vec<String>,
    queue: Arc<Mutex<Vec<Map<String, Value>>>>,
    waker: Waker,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let dbus = |e: zbus::Error| format!("systemd D-Bus: {e}");
    let conn = zbus::Connection::system()
        .await
        .map_err(|e| format!("cannot connect to the system D-Bus: {e}"))?;
    let manager = zbus::Proxy::new(
        &conn,
        SYSTEMD,
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )
    .await
    .map_err(dbus)?;
    // Without Subscribe, systemd does not send unit signals to us.
    let _: () = manager.call("Subscribe", &()).await.map_err(dbus)?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(SYSTEMD)
        .and_then(|b| b.interface("org.freedesktop.DBus.Properties"))
        .and_then(|b| b.member("PropertiesChanged"))
        .and_then(|b| b.path_namespace(UNIT_PATHS))
        .map_err(dbus)?
        .build();
    let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, Some(1024))
        .await
        .map_err(dbus)?;
    // unit path -> (unit name, last active state)
    let mut known: HashMap<String, (String, String)> = HashMap::new();
    for u in &units {
        let path: OwnedObjectPath = manager.call("LoadUnit", &(u,)).await.map_err(dbus)?;
        let unit = zbus::Proxy::new(
            &conn,
            SYSTEMD,
            path.clone(),
            "org.freedesktop.systemd1.Unit",
        )
        .await
        .map_err(dbus)?;
        let state: String = unit.get_property("ActiveState").await.map_err(dbus)?;
        known.insert(path.to_string(), (u.clone(), state));
    }
    let _ = ready.send(Ok(()));
    loop {
        if waker.stopping() {
            return Ok(());
        }
        let msg = match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            Err(_) => continue,
            Ok(None) => return Err("the system D-Bus connection closed".into()),
            Ok(Some(Err(e))) => return Err(dbus(e)),
            Ok(Some(Ok(m))) => m,
        };
        let Some(path) = msg.header().path().map(|p| p.to_string()) else {
            continue;
        };
        let Ok((iface, changed, _)) = msg
            .body()
            .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
        else {
            continue;
        };
        if iface != "org.freedesktop.systemd1.Unit" {
            continue;
        }
        let text = |k: &str| match changed.get(k).map(|v| &**v) {
            Some(zbus::zvariant::Value::Str(s)) => Some(s.as_str().to_string()),
            _ => None,
        };
        let Some(state) = text("ActiveState") else {
            continue;
        };
        let entry = match known.get_mut(&path) {
            Some(e) => e,
            None if units.is_empty() => known
                .entry(path.clone())
                .or_insert_with(|| (unit_name(&path), String::new())),
            None => continue,
        };
        let previous = std::mem::replace(&mut entry.1, state.clone());
        if previous == state {
            continue;
        }
        if units.is_empty() && state != "failed" && previous != "failed" {
            continue;
        }
        let mut data = obj! {"unit" => entry.0, "state" => state, "previous" => previous};
        if let Some(sub) = text("SubState") {
            data.insert("sub_state".into(), sub.into());
        }
        if let Ok(mut q) = queue.lock() {
            q.push(data);
        }
        waker.wake();
    }
}

/// The unit name in a systemd object path: `nginx_2eservice` is `nginx.service`.
pub fn unit_name(path: &str) -> String {
    let tail = path.rsplit('/').next().unwrap_or(path);
    let b = tail.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&tail[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Beacon for Svc {
    fn kind(&self) -> &'static str {
        "svc"
    }

    fn start(&mut self, waker: Waker) -> Result<(), String> {
        self.waker = Some(waker.clone());
        self.spawn_listener(waker)
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let events = self
            .queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default();
        for e in events {
            out.event(e);
        }
        if self.listener.as_ref().is_some_and(|t| t.is_finished()) {
            self.listener = None;
        }
        if self.listener.is_none() {
            // The listener stopped (systemd restarted, the bus went away): start it again.
            let why = self.failure.lock().ok().and_then(|mut f| f.take());
            if let Some(w) = self.waker.clone() {
                self.spawn_listener(w).map_err(|e| match &why {
                    Some(w) => format!("{e} (after: {w})"),
                    None => e,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn unit_names_are_unescaped() {
        assert_eq!(
            unit_name("/org/freedesktop/systemd1/unit/nginx_2eservice"),
            "nginx.service"
        );
        assert_eq!(
            unit_name("/org/freedesktop/systemd1/unit/dev_2dsda1_2edevice"),
            "dev-sda1.device"
        );
    }

    #[test]
    fn unit_state_changes_over_dbus_or_a_clear_failure_without_systemd() {
        let mut svc = Svc::new(vec![format!("reflex-test-{}.service", std::process::id())]);
        if !Svc::systemd_runs() {
            // What an operator sees on such a host: one clear failure, not silence.
            let err = svc.start(Waker::default()).unwrap_err();
            assert!(err.contains("systemd is not running"), "{err}");
            eprintln!("SKIPPED the svc D-Bus part: systemd is not running here (no /run/systemd/system; PID 1 is not systemd), so there is no systemd D-Bus to watch");
            return;
        }
        let unit = svc.units[0].clone();
        svc.start(Waker::default())
            .expect("subscribed to systemd over D-Bus");
        let run = Command::new("systemd-run")
            .args(["--unit", &unit, "sleep", "300"])
            .status()
            .expect("systemd-run");
        assert!(run.success());
        let mut seen = Vec::new();
        let mut collect = |svc: &mut Svc, want: &str| {
            crate::kinds::tests::wait_for(want, || {
                let mut out = Out::default();
                svc.sample(&mut out).unwrap();
                seen.extend(out.readings.into_iter().map(|r| r.data));
                seen.iter().any(|d| d["state"] == want).then_some(())
            })
        };
        collect(&mut svc, "active");
        let _ = Command::new("systemctl").args(["stop", &unit]).status();
        collect(&mut svc, "inactive");
    }
}
