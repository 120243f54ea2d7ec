//! CURVE public keys as people and files carry them: Z85 (what libzmq takes, 40 characters) or
//! hex (64 digits, easy to paste), and a short fingerprint for listings.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::Read;
use std::path::Path;
use thiserror::Error;

/// Z85's alphabet (ZeroMQ RFC 32).
const Z85: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// A public key file is one line; anything much longer is not one.
const MAX_KEY_FILE: u64 = 4096;

/// A CURVE public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// A string or file that is not a public key; the message says what was expected.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct KeyParseError(pub String);

impl PublicKey {
    /// Parse a key written as 64 hex digits or 40 Z85 characters (surrounding whitespace is
    /// ignored).
    pub fn parse(text: &str) -> Result<PublicKey, KeyParseError> {
        let t = text.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(PublicKey(hex_decode(t)));
        }
        if t.len() == 40 {
            return z85_decode(t).map(PublicKey).ok_or_else(|| {
                KeyParseError("not a key: 40 characters but not valid Z85".to_string())
            });
        }
        Err(KeyParseError(format!(
            "not a key: expected 64 hex digits or 40 Z85 characters, got {} characters",
            t.chars().count()
        )))
    }

    /// Read a key from a file holding it on one line (`#` comment lines are skipped), as
    /// written by [`crate::keys::load_or_create`] next to the secret.
    pub fn from_file(path: &Path) -> Result<PublicKey, KeyParseError> {
        let bad = |why: String| KeyParseError(format!("{}: {why}", path.display()));
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
            .map_err(|e| bad(e.to_string()))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(bad(format!("larger than {MAX_KEY_FILE} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        match (lines.next(), lines.next()) {
            (Some(line), None) => PublicKey::parse(line).map_err(|e| bad(e.0)),
            (None, _) => Err(bad("no key in the file".into())),
            (Some(_), Some(_)) => Err(bad("more than one line besides comments".into())),
        }
    }

    /// A key given on the command line (`--manager-key`): the key itself, or a file holding it.
    pub fn from_arg(arg: &str) -> Result<PublicKey, KeyParseError> {
        match PublicKey::parse(arg) {
            Ok(k) => Ok(k),
            Err(_) if Path::new(arg).is_file() => PublicKey::from_file(Path::new(arg)),
            Err(e) => Err(KeyParseError(format!(
                "{}: {} (and no file of that name)",
                shorten(arg),
                e.0
            ))),
        }
    }

    /// The key as Z85: what libzmq's CURVE options take and the form files hold.
    pub fn to_z85(&self) -> String {
        z85_encode(&self.0)
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A short fingerprint for listings: the key's first 8 bytes, `ab12:cd34:ef56:7890`.
    ///
    /// No hash is needed: a public key is already uniformly random, so finding another key with
    /// the same 64-bit prefix costs an attacker as much as matching a truncated hash would.
    pub fn fingerprint(&self) -> String {
        let hex = self.to_hex();
        let groups: Vec<&str> = (0..4).filter_map(|i| hex.get(i * 4..i * 4 + 4)).collect();
        groups.join(":")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<PublicKey, KeyParseError> {
        PublicKey::parse(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_z85())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// At most 80 characters of `text`, for error messages about hostile input.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// 32 bytes as 40 Z85 characters.
pub(crate) fn z85_encode(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(40);
    for chunk in bytes.chunks_exact(4) {
        let mut v = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = Z85[(v % 85) as usize];
            v /= 85;
        }
        out.extend(digits.iter().map(|&b| char::from(b)));
    }
    out
}

/// 40 Z85 characters as 32 bytes; `None` for a character outside the alphabet or a group
/// above 2^32 (libzmq's own decoder, as the `zmq` crate calls it, checks neither).
pub(crate) fn z85_decode(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 40 {
        return None;
    }
    let mut out = [0u8; 32];
    for (chunk, dest) in bytes.chunks_exact(5).zip(out.chunks_exact_mut(4)) {
        let mut v: u64 = 0;
        for &c in chunk {
            let digit = Z85.iter().position(|&z| z == c)?;
            v = v * 85 + digit as u64;
        }
        dest.copy_from_slice(&u32::try_from(v).ok()?.to_be_bytes());
    }
    Some(out)
}

/// 64 hex digits (already checked) as 32 bytes.
fn hex_decode(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = text
            .get(i * 2..i * 2 + 2)
            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            .unwrap_or(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z85_and_hex_round_trip_and_agree_with_libzmq() {
        for _ in 0..50 {
            let pair = zmq::CurveKeyPair::new().unwrap();
            let key = PublicKey(pair.public_key);
            let z85 = key.to_z85();
            assert_eq!(z85, zmq::z85_encode(&pair.public_key).unwrap());
            assert_eq!(PublicKey::parse(&z85).unwrap(), key);
            assert_eq!(PublicKey::parse(&key.to_hex()).unwrap(), key);
            assert_eq!(
                PublicKey::parse(&format!(" {}\n", key.to_hex())).unwrap(),
                key
            );
        }
        // The RFC 32 test vector.
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&[0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]);
        assert!(z85_encode(&bytes).starts_with("HelloWorld"));
    }

    #[test]
    fn bad_keys_say_what_was_expected() {
        let e = PublicKey::parse("abc").unwrap_err();
        assert!(e.0.contains("64 hex digits or 40 Z85"), "{e}");
        assert!(e.0.contains("got 3"), "{e}");
        // 40 characters, one outside the alphabet.
        let mut z = PublicKey([7; 32]).to_z85();
        z.replace_range(0..1, "~");
        assert!(PublicKey::parse(&z)
            .unwrap_err()
            .0
            .contains("not valid Z85"));
        // A group above 2^32 ("#####" is 85^5 - 1).
        let over = format!("#####{}", &PublicKey([0; 32]).to_z85()[5..]);
        assert!(PublicKey::parse(&over).is_err());
        // 64 characters but a sign where a digit belongs.
        let signed = format!("+{}", &"0".repeat(63));
        assert!(PublicKey::parse(&signed).is_err());
        assert!(PublicKey::parse(&"ü".repeat(40)).is_err());
    }

    #[test]
    fn keys_from_files_and_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let key = PublicKey([42; 32]);
        let f = tmp.path().join("manager.pub");
        std::fs::write(&f, format!("# the manager\n{key}\n")).unwrap();
        assert_eq!(PublicKey::from_file(&f).unwrap(), key);
        assert_eq!(PublicKey::from_arg(f.to_str().unwrap()).unwrap(), key);
        assert_eq!(PublicKey::from_arg(&key.to_hex()).unwrap(), key);

        std::fs::write(&f, format!("{key}\n{key}\n")).unwrap();
        let e = PublicKey::from_file(&f).unwrap_err();
        assert!(
            e.0.contains("manager.pub") && e.0.contains("more than one"),
            "{e}"
        );
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(PublicKey::from_file(&f).unwrap_err().0.contains("no key"));
        std::fs::write(&f, vec![b'a'; 5000]).unwrap();
        assert!(PublicKey::from_file(&f).unwrap_err().0.contains("larger"));

        let e = PublicKey::from_arg("/no/such/file").unwrap_err();
        assert!(
            e.0.contains("/no/such/file") && e.0.contains("no file"),
            "{e}"
        );
        let long = "x".repeat(10_000);
        assert!(PublicKey::from_arg(&long).unwrap_err().0.len() < 300);
    }

    #[test]
    fn fingerprints_are_the_key_prefix_grouped() {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&[0xab, 0x12, 0xcd, 0x34, 0xef, 0x56, 0x78, 0x90]);
        assert_eq!(PublicKey(bytes).fingerprint(), "ab12:cd34:ef56:7890");
        assert!(PublicKey(bytes).to_hex().starts_with("ab12cd34ef567890"));
    }
}
