//! Who may speak to the manager, checked per message.
//!
//! [`Trust`] owns the manager's side of enrollment: the process ZAP handler (installed before
//! any socket binds), the enrollment store it answers from (followed on disk, so an offline
//! `reflex keys accept|revoke` lands within [`FOLLOW_EVERY`]), the enroll door's requests, the
//! online `keys` control commands, and the per-message check of each frame's `User-Id`.
//!
//! The per-message check reads a local name → role map rebuilt only when the key set's
//! generation moves: one atomic load and one hash lookup per frame, no lock.

use bus::enroll::{AskReply, AskRequest, EnrollError, Enrollment, Follow, Submitted};
use bus::keys::{KeyError, Role};
use bus::secure::Security;
use bus::zap::{KeySet, Mode, ZapError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How often the enrollment store on disk is looked at for changes made by another process.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// The name the state dir's admin key is enrolled under at manager start.
pub const ADMIN_NAME: &str = "admin";

/// The manager's trust could not be set up.
#[derive(Debug, Error)]
pub enum TrustError {
    /// The enrollment store cannot be used.
    #[error("enrollment store: {0}")]
    Enroll(#[from] EnrollError),
    /// The admin key cannot be loaded or made.
    #[error("admin key: {0}")]
    Key(#[from] KeyError),
    /// The ZAP handler could not start.
    #[error(transparent)]
    Zap(#[from] ZapError),
}

/// What the per-message check says about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Pass,
    /// A host key sending for another host.
    Forged,
    /// A sender no longer in the key set (revoked on a connection still up), or none at all.
    Revoked,
}

/// The process's key set, with the (fail-closed, secure mode) ZAP handler installed on its
/// first use: the handler is process-wide and lives as long as the process, so managers made
/// later in the same process (tests) share it. An insecure manager installs none: its sockets
/// set no ZAP domain, so libzmq never asks one.
fn process_keys() -> Result<KeySet, TrustError> {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    if let Some(keys) = KEYS.get() {
        return Ok(keys.clone());
    }
    let keys = KeySet::new();
    // Strangers can knock in floods: said at most once a second.
    let log = std::sync::Mutex::new(RateLog::default());
    bus::zap::install(keys.clone(), Mode::Secure, move |u| {
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.warn(|quiet| {
            format!(
                "refused unknown key {} from {} at the {} door (a host enrolls through the enroll \
                 door first; {quiet} more not logged)",
                u.key.fingerprint(),
                u.address,
                u.domain
            )
        });
    })?;
    let _ = KEYS.set(keys.clone());
    Ok(keys)
}

/// The manager's trust state (see the module doc).
pub struct Trust {
    secure: bool,
    keys: KeySet,
    store: Enrollment,
    follow: Follow,
    last_follow: Instant,
    generation: u64,
    roles: HashMap<String, Role>,
}

impl Trust {
    /// Open the store of `state_dir`, enroll its admin key and install the ZAP handler. Call
    /// before binding any socket.
    pub fn open(state_dir: &Path, security: &Security) -> Result<Trust, TrustError> {
        let secure = security.is_secure();
        let dir = bus::enroll::store_dir(state_dir);
        let mut follow = Follow::new(&dir);
        // The first poll always reads.
        let mut store = match follow.poll()? {
            Some(s) => s,
            None => Enrollment::open(&dir)?,
        };
        let keys = if secure {
            process_keys()?
        } else {
            KeySet::new()
        };
        if secure {
            let admin = bus::keys::load_or_create(&bus::keys::key_dir(state_dir), Role::Admin)?;
            store.enroll(ADMIN_NAME, admin.public(), Role::Admin, &[])?;
        }
        keys.replace(store.peers());
        if secure {
            keys.follow_store(&dir);
        }
        let mut t = Trust {
            secure,
            keys,
            store,
            follow,
            last_follow: Instant::now(),
            generation: 0,
            roles: HashMap::new(),
        };
        t.refresh_roles();
        Ok(t)
    }

    fn refresh_roles(&mut self) {
        self.generation = self.keys.generation();
        self.roles = self.keys.roles();
    }

    /// Make the key set the store's accepted keys.
    fn publish(&mut self) {
        self.keys.replace(self.store.peers());
    }

    /// Re-read the store when another process changed it (at most every [`FOLLOW_EVERY`]).
    pub fn follow(&mut self) {
        if self.last_follow.elapsed() >= FOLLOW_EVERY {
            self.follow_now();
        }
    }

    /// Re-read the store now when another process changed it: before the manager changes it
    /// itself, so it never writes over what `reflex keys` did offline a moment ago.
    fn follow_now(&mut self) {
        self.last_follow = Instant::now();
        match self.follow.poll() {
            Ok(Some(store)) => {
                self.store = store;
                self.publish();
            }
            Ok(None) => {}
            Err(e) => tracing::error!("enrollment store: {e} (keeping the keys loaded before)"),
        }
    }

    /// True when messages carry a checked `User-Id`.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The role of the sender named `user_id`, as of the last key set change.
    fn role(&mut self, user_id: &str) -> Option<Role> {
        if self.keys.generation() != self.generation {
            self.refresh_roles();
        }
        self.roles.get(user_id).copied()
    }

    /// Check an event from `user_id` about `host`: a host key may speak only for itself, the
    /// admin for anyone; a sender not in the key set is cut off. Insecure: everything passes.
    pub fn check_event(&mut self, user_id: Option<&str>, host: &str) -> Verdict {
        if !self.secure {
            return Verdict::Pass;
        }
        match user_id.and_then(|u| self.role(u).map(|r| (u, r))) {
            Some((_, Role::Admin)) => Verdict::Pass,
            Some((u, Role::Host)) if u == host => Verdict::Pass,
            Some(_) => Verdict::Forged,
            None => Verdict::Revoked,
        }
    }

    /// True when `user_id` is still a sender at all (before its frame is decoded).
    pub fn known(&mut self, user_id: Option<&str>) -> bool {
        !self.secure || user_id.is_some_and(|u| self.role(u).is_some())
    }

    /// True when `user_id` may use the control socket: the admin key only.
    pub fn is_admin(&mut self, user_id: Option<&str>) -> bool {
        !self.secure || user_id.and_then(|u| self.role(u)) == Some(Role::Admin)
    }

    /// Answer one enroll door request from `user_id` (what ZAP let in: `key:<hex>` for an
    /// unknown key, the name of an accepted one). Returns the reply and, for a name that just
    /// became pending, the data of its `manager/keys/pending` event.
    pub fn enroll_request(
        &mut self,
        request: &[u8],
        user_id: Option<&str>,
        address: &str,
    ) -> (AskReply, Option<Value>) {
        let refuse = |error: String| (AskReply::Error { error }, None);
        if !self.secure {
            return refuse("this manager runs --insecure: there is nothing to enroll".into());
        }
        let req: AskRequest = match serde_json::from_slice(request) {
            Ok(r) => r,
            Err(e) => return refuse(format!("request is not {{\"name\": ...}}: {e}")),
        };
        let Some(user_id) = user_id else {
            return refuse("no authenticated key".into());
        };
        self.follow_now();
        let key = match bus::zap::parse_pending_user_id(user_id) {
            Some(k) => k,
            // An accepted key asking again: it is what it was enrolled as.
            None => match self.store.get(user_id) {
                Some(e) if e.name == req.name => e.key,
                Some(e) => return refuse(format!("this key is enrolled as {}", e.name)),
                None => return refuse("this key is no longer enrolled".into()),
            },
        };
        let submitted = match self.store.submit(&req.name, &key) {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string()),
        };
        let Some(entry) = self.store.get(&req.name) else {
            return refuse(format!("{} vanished from the store", req.name));
        };
        let fingerprint = entry.key.fingerprint();
        let pending = (submitted == Submitted::Pending).then(|| {
            tracing::info!(name = %req.name, %fingerprint, %address, "key pending: `reflex keys accept {}` to let it in", req.name);
            json!({"name": req.name, "fingerprint": fingerprint, "address": address})
        });
        let reply = AskReply::Known {
            state: entry.state,
            name: entry.name.clone(),
            fingerprint,
            groups: entry.groups.clone(),
        };
        (reply, pending)
    }

    /// The online `{"cmd": "keys", "op": ...}` control commands; changes reach the key set at
    /// once.
    pub fn keys_command(&mut self, req: &Value) -> Value {
        self.follow_now();
        let str_arg = |k: &str| req.get(k).and_then(Value::as_str);
        let op = str_arg("op");
        if op == Some("list") {
            let all: Vec<_> = self.store.list().cloned().collect();
            return json!({ "ok": all });
        }
        let Some(name) = str_arg("name") else {
            return json!({"error": format!("keys {op:?} needs a name (ops: list, accept, reject, revoke)")});
        };
        let groups: Vec<String> = req
            .get("groups")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let done = match op {
            Some("accept") => self.store.accept(name, &groups).cloned(),
            Some("reject") => self.store.reject(name).cloned(),
            Some("revoke") => self.store.revoke(name),
            other => {
                return json!({"error": format!("unknown keys op {other:?} (known: list, accept, reject, revoke)")})
            }
        };
        match done {
            Ok(entry) => {
                self.publish();
                json!({ "ok": entry })
            }
            Err(e @ (EnrollError::NotFound(_) | EnrollError::Name(_))) => {
                json!({"error": e.to_string(), "usage": true})
            }
            Err(e) => json!({"error": e.to_string()}),
        }
    }
}

/// Logs something that can come in floods at most once per second, with how many were not.
#[derive(Debug, Default)]
pub struct RateLog {
    last: Option<Instant>,
    quiet: u64,
}

impl RateLog {
    /// Log `what` now unless it was logged less than a second ago (then only count it).
    pub fn warn(&mut self, what: impl FnOnce(u64) -> String) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            self.quiet += 1;
            return;
        }
        tracing::warn!("{}", what(self.quiet));
        self.quiet = 0;
        self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::keys::PublicKey;
    use bus::zap::Peer;

    fn trust(secure: bool) -> (tempfile::TempDir, Trust) {
        let dir = tempfile::tempdir().unwrap();
        let sec = if secure {
            let pair = bus::KeyPair::generate().unwrap();
            let server = *pair.public();
            Security::Curve { pair, server }
        } else {
            Security::Insecure
        };
        let t = Trust::open(dir.path(), &sec).unwrap();
        (dir, t)
    }

    #[test]
    fn a_host_speaks_only_for_itself_and_a_revoked_one_not_at_all() {
        let (_dir, mut t) = trust(true);
        assert_eq!(t.check_event(Some(ADMIN_NAME), "anyone"), Verdict::Pass);
        assert!(t.is_admin(Some(ADMIN_NAME)));
        let key = PublicKey([9; 32]);
        t.store.enroll("web1", &key, Role::Host, &[]).unwrap();
        t.publish();
        assert_eq!(t.check_event(Some("web1"), "web1"), Verdict::Pass);
        assert_eq!(t.check_event(Some("web1"), "web2"), Verdict::Forged);
        assert!(!t.is_admin(Some("web1")));
        assert_eq!(t.check_event(None, "web1"), Verdict::Revoked);
        assert_eq!(t.check_event(Some("key:00"), "web1"), Verdict::Revoked);
        let r = t.keys_command(&json!({"cmd": "keys", "op": "revoke", "name": "web1"}));
        assert!(r.get("ok").is_some(), "{r}");
        assert_eq!(t.check_event(Some("web1"), "web1"), Verdict::Revoked);
        assert!(!t.known(Some("web1")));
    }

    #[test]
    fn the_enroll_door_takes_the_key_from_the_handshake() {
        let (_dir, mut t) = trust(true);
        let key = PublicKey([5; 32]);
        let uid = bus::zap::pending_user_id(&key);
        let (reply, pending) = t.enroll_request(br#"{"name":"web1"}"#, Some(&uid), "10.0.0.9");
        assert!(
            matches!(
                reply,
                AskReply::Known {
                    state: bus::enroll::State::Pending,
                    ..
                }
            ),
            "{reply:?}"
        );
        assert_eq!(pending.unwrap()["address"], "10.0.0.9");
        // Asking again changes nothing and emits nothing.
        let (_, again) = t.enroll_request(br#"{"name":"web1"}"#, Some(&uid), "10.0.0.9");
        assert!(again.is_none());
        // Another key under the same name is refused.
        let other = bus::zap::pending_user_id(&PublicKey([6; 32]));
        let (reply, _) = t.enroll_request(br#"{"name":"web1"}"#, Some(&other), "x");
        assert!(matches!(reply, AskReply::Error { .. }), "{reply:?}");
        for bad in [
            &br#"{"name":"a/b"}"#[..],
            b"not json",
            br#"{"name":"x","key":"y"}"#,
        ] {
            let (reply, ev) = t.enroll_request(bad, Some(&other), "x");
            assert!(matches!(reply, AskReply::Error { .. }) && ev.is_none());
        }
        let r = t.keys_command(&json!({"op": "accept", "name": "web1", "groups": ["web"]}));
        assert_eq!(r["ok"]["state"], "accepted", "{r}");
        assert_eq!(
            t.keys.get(&key),
            Some(Peer {
                name: "web1".into(),
                role: Role::Host,
                groups: vec!["web".into()]
            })
        );
        let (reply, _) = t.enroll_request(br#"{"name":"web1"}"#, Some("web1"), "x");
        assert!(matches!(
            reply,
            AskReply::Known {
                state: bus::enroll::State::Accepted,
                ..
            }
        ));
    }

    #[test]
    fn insecure_checks_nothing() {
        let (_dir, mut t) = trust(false);
        assert_eq!(t.check_event(None, "web1"), Verdict::Pass);
        assert!(t.is_admin(None));
    }
}
