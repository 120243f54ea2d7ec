//! `password`: a random secret, generated once and sent to other resources
//! (`recv: {content: "password:db.value"}`), never logged.
//!
//! With a state dir (the actor always has one), the secret is kept encrypted at rest —
//! ChaCha20-Poly1305 with a random nonce, the resource id as associated data, and a key file
//! (mode 0600) in `<state>/secrets/` — so it survives restarts while the graph files, logs and
//! events never hold it in the clear. Without one (`reflex apply`), it lives for the run.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde_json::{Map, Value};

use graph::kinds::PasswordSpec;

use crate::error::ResourceError;
use crate::os::hex;
use crate::resource::{ApplyCtx, Outcome, Poke, Resource, WatchCtx, WatchGuard};

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const NONCE: usize = 12;

/// A generated secret.
pub struct Password {
    spec: PasswordSpec,
    secret: Mutex<Option<String>>,
}

impl std::fmt::Debug for Password {
    // Never the secret, not even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Password")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Resource for Password {
    fn watch(&self, _ctx: &WatchCtx, _poke: Poke) -> Result<Option<WatchGuard>, ResourceError> {
        Ok(None)
    }

    async fn check_apply(&self, ctx: &ApplyCtx) -> Result<Outcome, ResourceError> {
        if self.current().is_some() {
            return Ok(Outcome::Converged);
        }
        let store = ctx.state_dir.as_ref().map(|d| Store::new(d, &self.spec.id));
        if let Some(store) = &store {
            if let Some(secret) = store.load()?.filter(|s| s.len() == self.spec.length) {
                *self.lock() = Some(secret);
                return Ok(Outcome::Converged);
            }
        }
        if !ctx.apply {
            return Ok(Outcome::WouldChange);
        }
        let secret = generate(self.spec.length)?;
        if let Some(store) = &store {
            store.save(&secret)?;
        }
        *self.lock() = Some(secret);
        Ok(Outcome::Changed)
    }

    fn sent(&self) -> Option<Map<String, Value>> {
        let secret = self.current()?;
        let mut sent = Map::new();
        sent.insert("value".into(), Value::String(secret));
        Some(sent)
    }
}

impl Password {
    /// The secret `spec` describes, not generated (or loaded) yet.
    pub fn new(spec: PasswordSpec) -> Password {
        Password {
            spec,
            secret: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.secret.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Option<String> {
        self.lock().clone()
    }
}

/// `length` characters from ALPHABET, unbiased (rejection sampling on urandom bytes).
fn generate(length: usize) -> Result<String, ResourceError> {
    let mut out = String::with_capacity(length);
    let limit = 256 - 256 % ALPHABET.len();
    while out.len() < length {
        for b in random(length * 2)? {
            if (b as usize) < limit && out.len() < length {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

fn random(n: usize) -> Result<Vec<u8>, ResourceError> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| ResourceError::io("read /dev/urandom", e))?;
    Ok(buf)
}

/// One secret's encrypted file and the shared key.
struct Store {
    key: PathBuf,
    file: PathBuf,
    aad: Vec<u8>,
}

/// Two passwords creating the key at once must agree on one.
static KEY_LOCK: Mutex<()> = Mutex::new(());

impl Store {
    fn new(state: &Path, id: &str) -> Store {
        let dir = state.join("secrets");
        Store {
            key: dir.join("key"),
            file: dir.join(hex(id)),
            aad: id.as_bytes().to_vec(),
        }
    }

    fn cipher(&self) -> Result<ChaCha20Poly1305, ResourceError> {
        let _guard = KEY_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let shown = self.key.display();
        let key = match fs::read(&self.key) {
            Ok(key) => key,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let key = random(32)?;
                if let Some(dir) = self.key.parent() {
                    fs::create_dir_all(dir)
                        .map_err(|e| ResourceError::io(format!("mkdir {}", dir.display()), e))?;
                }
                write_private(&self.key, &key)
                    .map_err(|e| ResourceError::io(format!("write {shown}"), e))?;
                key
            }
            Err(e) => return Err(ResourceError::io(format!("read {shown}"), e)),
        };
        if key.len() != 32 {
            return Err(ResourceError::Failed(format!(
                "{shown} is not a 32-byte key"
            )));
        }
        Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
    }

    fn load(&self) -> Result<Option<String>, ResourceError> {
        let data = match fs::read(&self.file) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ResourceError::io(
                    format!("read {}", self.file.display()),
                    e,
                ))
            }
        };
        if data.len() <= NONCE {
            return Ok(None);
        }
        let (nonce, ct) = data.split_at(NONCE);
        let payload = Payload {
            msg: ct,
            aad: &self.aad,
        };
        // A file that does not decrypt (other key, tampered) is replaced by a new secret.
        match self.cipher()?.decrypt(Nonce::from_slice(nonce), payload) {
            Ok(plain) => Ok(String::from_utf8(plain).ok()),
            Err(_) => {
                tracing::warn!(file = %self.file.display(), "stored secret does not decrypt; generating a new one");
                Ok(None)
            }
        }
    }

    fn save(&self, secret: &str) -> Result<(), ResourceError> {
        let cipher = self.cipher()?;
        let nonce = random(NONCE)?;
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: &self.aad,
        };
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| ResourceError::Failed("encryption failed".into()))?;
        let mut data = nonce;
        data.extend_from_slice(&ct);
        let tmp = self.file.with_extension("tmp");
        write_private(&tmp, &data)
            .and_then(|()| fs::rename(&tmp, &self.file))
            .map_err(|e| ResourceError::io(format!("write {}", self.file.display()), e))
    }
}

/// Create (or replace) `path` readable by its owner only, synced.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_use_the_alphabet_and_differ() {
        let a = generate(40).expect("a");
        let b = generate(40).expect("b");
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn stored_encrypted_and_bound_to_the_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path(), "password:db");
        store.save("s3cretvalue").expect("save");
        let raw = fs::read(&store.file).expect("raw");
        assert!(
            !raw.windows(11).any(|w| w == b"s3cretvalue"),
            "stored in the clear"
        );
        assert_eq!(store.load().expect("load").as_deref(), Some("s3cretvalue"));
        // Another id cannot read it (the id is the associated data).
        let other = Store {
            aad: b"password:other".to_vec(),
            ..Store::new(dir.path(), "password:db")
        };
        assert_eq!(other.load().expect("load"), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&store.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
