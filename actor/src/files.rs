//! Small file helpers the store and the graphviz output share.
//!
//! Private to the actor for now: they are to be replaced by the engine's shared ones.

use std::path::Path;

/// `name` as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
pub(crate) fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `name` hex-encoded: a collision-free file name for any graph name.
pub(crate) fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Write via a temp file and rename, so a crash never leaves half a file.
pub(crate) fn atomic_write(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)
}
