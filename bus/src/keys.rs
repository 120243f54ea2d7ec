//! CURVE key pairs: one per host (its actor and beacons share it), one for the manager, one for
//! the admin CLI. [`load_or_create`] makes a pair on first start and loads it afterwards; the
//! key directory (`<state>/keys`, [`key_dir`]) is 0700 and each secret file 0600, and a secret
//! that group or others can read is refused. Names that reach file names or topics (hosts,
//! groups) are checked by [`check_name`], the one rule for them.
//!
//! ```
//! let state = tempfile::tempdir().unwrap();
//! let dir = bus::keys::key_dir(state.path());
//! let pair = bus::keys::load_or_create(&dir, bus::keys::Role::Host).unwrap();
//! let again = bus::keys::load_or_create(&dir, bus::keys::Role::Host).unwrap();
//! assert_eq!(pair.public(), again.public());
//! println!("host key {} ({})", pair.public().to_hex(), pair.public().fingerprint());
//! ```

mod public;

pub use public::{KeyParseError, PublicKey};

use crate::private::{self, Existing, PrivateError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The longest host or group name: a full DNS name.
pub const MAX_NAME: usize = 253;

/// A secret key file is three short lines.
const MAX_SECRET_FILE: u64 = 1024;

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A host: pushes its own events, receives actions for itself, its groups and `all`.
    Host,
    /// The manager: the server side of ingest, monitor and control.
    Manager,
    /// The operator: the control socket, the monitor, sending on behalf of any host.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Host, Role::Manager, Role::Admin];

    /// The role's name: `host`, `manager`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no role.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown role {0:?}: expected host, manager or admin")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// A name that cannot be a host or group name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad name {name}: {why}")]
pub struct NameError {
    /// The name, quoted and shortened.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Check a host or group name, which may come from the network: 1 to [`MAX_NAME`] characters
/// of `A-Z a-z 0-9 . _ -`, starting with a letter or digit. So a name is always a safe file
/// name (no `/`, no `..`, no dot-file) and a valid topic segment.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let bad = |why| {
        Err(NameError {
            name: public::shorten(name),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME {
        return bad("longer than 253 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A key pair could not be made or used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The key directory or a key file cannot be used, or a secret file is not one reflex
    /// wrote.
    #[error(transparent)]
    Private(#[from] PrivateError),
    /// libzmq could not make a key pair (a build without CURVE: see `third_party/zmq-sys`).
    #[error("cannot make a CURVE key pair (is libzmq built with CURVE?): {0}")]
    Generate(zmq::Error),
}

/// A CURVE key pair. The secret never leaves it except into a socket option, and `Debug` does
/// not show it.
#[derive(Clone)]
pub struct KeyPair {
    public: PublicKey,
    secret: [u8; 32],
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl KeyPair {
    /// A fresh pair from libzmq.
    pub fn generate() -> Result<KeyPair, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(KeyError::Generate)?;
        Ok(KeyPair {
            public: PublicKey(pair.public_key),
            secret: pair.secret_key,
        })
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Make `socket` a CURVE server with this pair (before it binds).
    pub fn curve_server(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_server(true)?;
        socket.set_curve_publickey(&self.public.0)?;
        socket.set_curve_secretkey(&self.secret)
    }

    /// Make `socket` a CURVE client with this pair that trusts only `server` (before it
    /// connects).
    pub fn curve_client(&self, socket: &zmq::Socket, server: &PublicKey) -> zmq::Result<()> {
        socket.set_curve_serverkey(&server.0)?;
        socket.set_curve_publickey(&self.public.0)?;
        socket.set_curve_secretkey(&self.secret)
    }

    /// The secret file's text.
    fn file_text(&self, role: Role) -> String {
        format!(
            "# reflex CURVE key pair, role {role}. Secret: keep this file mode 0600.\npublic {}\nsecret {}\n",
            self.public.to_z85(),
            public::z85_encode(&self.secret)
        )
    }

    /// Parse a secret file's text.
    fn from_file_text(path: &Path, bytes: &[u8]) -> Result<KeyPair, KeyError> {
        let bad = |why: &str| {
            KeyError::from(PrivateError::Damaged {
                path: path.to_path_buf(),
                why: why.to_string(),
            })
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
        let (mut public, mut secret) = (None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (field, value) = line
                .split_once(' ')
                .ok_or_else(|| bad("a line without a value"))?;
            let key = public::z85_decode(value.trim())
                .ok_or_else(|| bad("a key that is not 40 Z85 characters"))?;
            match field {
                "public" => public = Some(key),
                "secret" => secret = Some(key),
                _ => return Err(bad("a line that is neither `public` nor `secret`")),
            }
        }
        match (public, secret) {
            (Some(p), Some(s)) => Ok(KeyPair {
                public: PublicKey(p),
                secret: s,
            }),
            _ => Err(bad("needs a `public` and a `secret` line")),
        }
    }
}

/// The key directory under a state dir: `<state>/keys`.
pub fn key_dir(state: &Path) -> PathBuf {
    state.join("keys")
}

/// The secret file of `role` in key directory `dir`: `<role>.secret`.
pub fn secret_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("{role}.secret"))
}

/// The public key file of `role` in key directory `dir`, `<role>.pub`: the file to copy to
/// hosts (`--manager-key FILE`).
pub fn public_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("{role}.pub"))
}

/// The key pair of `role` in key directory `dir`, made on first use.
///
/// The directory is made 0700, the secret file 0600, atomically; when two processes make the
/// same pair at once (an actor and its beacons starting together) the first file written wins
/// and both use it. A secret file or directory open to group or others is refused with the
/// `chmod` that fixes it. The public half is also kept in `<role>.pub`, rewritten from the
/// secret file when it is missing or differs.
pub fn load_or_create(dir: &Path, role: Role) -> Result<KeyPair, KeyError> {
    private::ensure_dir(dir)?;
    let path = secret_path(dir, role);
    let pair = match private::read(&path, MAX_SECRET_FILE)? {
        Some(bytes) => KeyPair::from_file_text(&path, &bytes)?,
        None => {
            let fresh = KeyPair::generate()?;
            if private::write(&path, fresh.file_text(role).as_bytes(), Existing::Keep)? {
                fresh
            } else {
                // Another process wrote it first: use theirs.
                let bytes = private::read(&path, MAX_SECRET_FILE)?.ok_or_else(|| {
                    PrivateError::Damaged {
                        path: path.clone(),
                        why: "vanished while it was being made".into(),
                    }
                })?;
                KeyPair::from_file_text(&path, &bytes)?
            }
        }
    };
    let pub_path = public_path(dir, role);
    let pub_text = format!("{}\n", pair.public.to_z85());
    let current = private::read(&pub_path, MAX_SECRET_FILE).ok().flatten();
    if current.as_deref() != Some(pub_text.as_bytes()) {
        private::write(&pub_path, pub_text.as_bytes(), Existing::Replace)?;
    }
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_pair_is_made_once_private_and_found_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = key_dir(tmp.path());
        let host = load_or_create(&dir, Role::Host).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&secret_path(&dir, Role::Host)), 0o600);
        assert_eq!(
            load_or_create(&dir, Role::Host).unwrap().public(),
            host.public()
        );
        let manager = load_or_create(&dir, Role::Manager).unwrap();
        assert_ne!(manager.public(), host.public());
        // The public file holds the same key, readable by PublicKey::from_file.
        let pub_file = public_path(&dir, Role::Manager);
        assert_eq!(PublicKey::from_file(&pub_file).unwrap(), *manager.public());
        std::fs::remove_file(&pub_file).unwrap();
        load_or_create(&dir, Role::Manager).unwrap();
        assert_eq!(PublicKey::from_file(&pub_file).unwrap(), *manager.public());
        assert!(!format!("{host:?}").contains(&public::z85_encode(&host.secret)));
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = key_dir(tmp.path());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || *load_or_create(&dir, Role::Host).unwrap().public())
            })
            .collect();
        let keys: Vec<PublicKey> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    }

    #[test]
    fn an_exposed_or_damaged_secret_is_refused_with_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = key_dir(tmp.path());
        load_or_create(&dir, Role::Admin).unwrap();
        let secret = secret_path(&dir, Role::Admin);
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&dir, Role::Admin).unwrap_err().to_string();
        assert!(e.contains("admin.secret") && e.contains("chmod 600"), "{e}");

        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&secret, "public abc\n").unwrap();
        let e = load_or_create(&dir, Role::Admin).unwrap_err().to_string();
        assert!(e.contains("admin.secret") && e.contains("Z85"), "{e}");
        std::fs::write(&secret, "# only a comment\n").unwrap();
        let e = load_or_create(&dir, Role::Admin).unwrap_err().to_string();
        assert!(e.contains("needs a `public` and a `secret`"), "{e}");
    }

    #[test]
    fn names_are_safe_file_names_and_topic_segments() {
        for good in ["web1", "db-1.example.com", "a", "x_y", &"a".repeat(253)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            ".hidden",
            "-flag",
            "a b",
            "web1\n",
            "wéb",
            "a\0",
            &"a".repeat(254),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let e = check_name(&"/".repeat(10_000)).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn roles_parse_and_print() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
