//! `pkg`: a Debian package, installed (the default), absent, or at an exact version.
//!
//! Autoedges: files the package owns (dpkg's list, directories excluded) depend on it.

use std::path::{Path, PathBuf};

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::Spec;

/// The kind name.
pub const KIND: &str = "pkg";

/// What the package should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkgState {
    /// Any version installed.
    Installed,
    /// Not installed.
    Absent,
    /// Exactly this version installed.
    Version(String),
}

/// A managed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgSpec {
    /// `pkg:name`.
    pub id: String,
    /// The package name.
    pub name: String,
    /// What it should be.
    pub state: PkgState,
}

pub(crate) fn parse(id: String, name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    // Debian policy: lowercase alphanumerics and + - . , at least two characters.
    let valid = name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        return Err(fields.invalid("name", format!("`{name}` is not a Debian package name")));
    }
    let state = match fields.opt_str("state")?.as_deref() {
        None | Some("installed") => PkgState::Installed,
        Some("absent") => PkgState::Absent,
        Some(v)
            if !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+-~:".contains(&b)) =>
        {
            PkgState::Version(v.to_string())
        }
        Some(other) => {
            return Err(fields.invalid(
                "state",
                format!("expected `installed`, `absent` or a version, got `{other}`"),
            ))
        }
    };
    Ok(Spec::Pkg(Box::new(PkgSpec {
        id,
        name: name.to_string(),
        state,
    })))
}

impl PkgSpec {
    /// The files an installed package owns; none for an absent one.
    pub fn manages(&self) -> Vec<PathBuf> {
        if self.state == PkgState::Absent {
            return Vec::new();
        }
        owned_files(&self.name)
    }
}

/// Regular files (not directories) dpkg lists for `name`.
fn owned_files(name: &str) -> Vec<PathBuf> {
    let info = Path::new("/var/lib/dpkg/info");
    let Ok(entries) = std::fs::read_dir(info) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let fname = entry.file_name();
        let fname = fname.to_string_lossy();
        let matches = fname == format!("{name}.list")
            || fname
                .strip_prefix(&format!("{name}:"))
                .is_some_and(|r| r.ends_with(".list"));
        if !matches {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            files.extend(
                text.lines()
                    .map(PathBuf::from)
                    .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir())),
            );
        }
    }
    files
}
