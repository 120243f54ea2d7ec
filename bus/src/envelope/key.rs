//! The control node's ed25519 signing key and the public half hosts pin.
//!
//! The secret lives in `<state>/keys/sign.secret` (0600, through [`crate::private`]), made on
//! first use by the publisher; its public half in `<state>/keys/sign.pub` as hex, the file (or
//! string) hosts take as `reflex actor --sign-key`.

use crate::private::{self, Existing, PrivateError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest key file read: a hex key, a comment line and some slack.
const MAX_KEY_FILE: u64 = 4096;

/// A signing key cannot be made, read or parsed.
#[derive(Debug, Error)]
pub enum SignKeyError {
    /// The file cannot be used.
    #[error(transparent)]
    Private(#[from] PrivateError),
    /// The file or string is not a key.
    #[error("{what}: not an ed25519 key as 64 hex characters")]
    Parse {
        /// The file or the string that failed.
        what: String,
    },
    /// The system had no randomness to give.
    #[error("no randomness for a new signing key: {0}")]
    Random(String),
    /// A public key file cannot be read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// A key's id: the hex of its public key, what an envelope header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 32]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The control node's signing key (secret).
pub struct SignKey(SigningKey);

impl fmt::Debug for SignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignKey({})", self.id())
    }
}

/// The pinned public half of the control node's signing key: what actors verify against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagerKey(VerifyingKey);

/// The secret file: `<state>/keys/sign.secret`.
pub fn secret_path(state: &Path) -> PathBuf {
    crate::keys::key_dir(state).join("sign.secret")
}

/// The public file hosts pin: `<state>/keys/sign.pub`.
pub fn public_path(state: &Path) -> PathBuf {
    crate::keys::key_dir(state).join("sign.pub")
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(line, &mut out).ok()?;
    Some(out)
}

impl SignKey {
    /// A fresh random key.
    pub fn generate() -> Result<SignKey, SignKeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SignKeyError::Random(e.to_string()))?;
        Ok(SignKey(SigningKey::from_bytes(&seed)))
    }

    /// The key of the state dir `state`, made on first use (the first writer wins when two
    /// processes make it at once); `sign.pub` is rewritten when missing or different.
    pub fn load_or_create(state: &Path) -> Result<SignKey, SignKeyError> {
        private::ensure_dir(&crate::keys::key_dir(state))?;
        let path = secret_path(state);
        let key = match Self::read(&path)? {
            Some(k) => k,
            None => {
                let fresh = SignKey::generate()?;
                let text = format!(
                    "# reflex ed25519 signing key of the control node. Secret: keep mode 0600.\n{}\n",
                    hex::encode(fresh.0.to_bytes())
                );
                if private::write(&path, text.as_bytes(), Existing::Keep)? {
                    fresh
                } else {
                    Self::read(&path)?.ok_or_else(|| PrivateError::Damaged {
                        path: path.clone(),
                        why: "vanished while it was being made".into(),
                    })?
                }
            }
        };
        let pub_path = public_path(state);
        let pub_text = format!("{}\n", key.id());
        if std::fs::read(&pub_path).ok().as_deref() != Some(pub_text.as_bytes()) {
            private::write(&pub_path, pub_text.as_bytes(), Existing::Replace)?;
        }
        Ok(key)
    }

    fn read(path: &Path) -> Result<Option<SignKey>, SignKeyError> {
        let Some(bytes) = private::read(path, MAX_KEY_FILE)? else {
            return Ok(None);
        };
        let seed = std::str::from_utf8(&bytes)
            .ok()
            .and_then(parse_hex)
            .ok_or_else(|| SignKeyError::Parse {
                what: path.display().to_string(),
            })?;
        Ok(Some(SignKey(SigningKey::from_bytes(&seed))))
    }

    /// Its public half.
    pub fn public(&self) -> ManagerKey {
        ManagerKey(self.0.verifying_key())
    }

    /// Its id.
    pub fn id(&self) -> KeyId {
        self.public().id()
    }

    pub(crate) fn signing(&self) -> &SigningKey {
        &self.0
    }
}

impl ManagerKey {
    /// A key given as 64 hex characters, or the path of a file holding them (`sign.pub`).
    pub fn parse(arg: &str) -> Result<ManagerKey, SignKeyError> {
        if let Some(k) = parse_hex(arg).and_then(|b| Self::from_bytes(&b)) {
            return Ok(k);
        }
        Self::from_file(Path::new(arg))
    }

    /// The key in a public key file.
    pub fn from_file(path: &Path) -> Result<ManagerKey, SignKeyError> {
        let io = |source| SignKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_KEY_FILE {
            return Err(SignKeyError::Parse {
                what: path.display().to_string(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        parse_hex(&text)
            .and_then(|b| Self::from_bytes(&b))
            .ok_or_else(|| SignKeyError::Parse {
                what: path.display().to_string(),
            })
    }

    /// The state dir's `keys/sign.pub`, when there is one.
    pub fn from_state(state: &Path) -> Result<Option<ManagerKey>, SignKeyError> {
        let path = public_path(state);
        if !path.exists() {
            return Ok(None);
        }
        Self::from_file(&path).map(Some)
    }

    fn from_bytes(b: &[u8; 32]) -> Option<ManagerKey> {
        VerifyingKey::from_bytes(b).ok().map(ManagerKey)
    }

    /// Its id (hex of the key).
    pub fn id(&self) -> KeyId {
        KeyId(self.0.to_bytes())
    }

    pub(crate) fn verifying(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Display for ManagerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_private_and_pinned_by_hex_or_file() {
        let tmp = tempfile::tempdir().unwrap();
        let k = SignKey::load_or_create(tmp.path()).unwrap();
        let mode = std::fs::metadata(secret_path(tmp.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SignKey::load_or_create(tmp.path()).unwrap().id(), k.id());
        let pub_file = public_path(tmp.path());
        assert_eq!(ManagerKey::from_file(&pub_file).unwrap(), k.public());
        assert_eq!(
            ManagerKey::parse(pub_file.to_str().unwrap()).unwrap(),
            k.public()
        );
        assert_eq!(ManagerKey::parse(&k.id().to_string()).unwrap(), k.public());
        assert_eq!(
            ManagerKey::from_state(tmp.path()).unwrap(),
            Some(k.public())
        );
        assert!(ManagerKey::parse("nothex").is_err());
        assert!(ManagerKey::from_state(&tmp.path().join("none"))
            .unwrap()
            .is_none());
    }
}
