//! `file`: a file or a directory that exists (with content or a `source`, mode, owner and
//! group) or is absent. A name ending in `/` is a directory.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::error::GraphError;
use crate::fields::{type_name, Fields};
use crate::kinds::{Spec, ValueType, Values};

/// The kind name.
pub const KIND: &str = "file";

/// What a `file` can receive: its content.
pub const RECEIVES: Values = &[("content", ValueType::Str)];

/// Whether the file should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// The file exists (the default).
    Exists,
    /// The file does not exist.
    Absent,
}

/// A managed file or directory.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// `file:name`.
    pub id: String,
    /// The absolute path, without a trailing `/`.
    pub path: PathBuf,
    /// The name ended in `/`.
    pub dir: bool,
    /// None: content is not managed.
    pub content: Option<Vec<u8>>,
    /// A local file (or, for a directory, a directory) whose content is wanted.
    pub source: Option<PathBuf>,
    /// Permission bits (0o7777 at most); None: mode is not managed.
    pub mode: Option<u32>,
    /// User name or numeric uid; None: not managed.
    pub owner: Option<String>,
    /// Group name or numeric gid; None: not managed.
    pub group: Option<String>,
    /// Whether it should exist.
    pub state: FileState,
    /// A directory: owner and group for everything below, or mirror subdirectories too.
    pub recurse: bool,
    /// A directory with a source: remove what the source does not have.
    pub purge: bool,
}

// By hand: paths compare as bytes (Path's own == walks components, which dominates a
// 10k-resource graph swap), then everything else.
impl PartialEq for FileSpec {
    fn eq(&self, o: &FileSpec) -> bool {
        self.path.as_os_str() == o.path.as_os_str()
            && self.id == o.id
            && self.dir == o.dir
            && self.content == o.content
            && self.source.as_ref().map(|p| p.as_os_str())
                == o.source.as_ref().map(|p| p.as_os_str())
            && self.mode == o.mode
            && self.owner == o.owner
            && self.group == o.group
            && self.state == o.state
            && self.recurse == o.recurse
            && self.purge == o.purge
    }
}

impl Eq for FileSpec {}

impl FileSpec {
    /// A plain file at `path` with nothing managed but its existence.
    pub fn at(path: &Path) -> FileSpec {
        FileSpec {
            id: format!("{KIND}:{}", path.display()),
            path: path.to_path_buf(),
            dir: false,
            content: None,
            source: None,
            mode: None,
            owner: None,
            group: None,
            state: FileState::Exists,
            recurse: false,
            purge: false,
        }
    }

    /// Its own path.
    pub fn manages(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    /// Its parent directory, and its own path (so a `pkg` that owns the file, or an `exec`
    /// that `creates` it, runs first).
    pub fn needs(&self) -> Vec<PathBuf> {
        let parent = self.path.parent().map(Path::to_path_buf);
        parent.into_iter().chain([self.path.clone()]).collect()
    }
}

pub(crate) fn parse(id: String, name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    let dir = name.ends_with('/');
    let path = PathBuf::from(name.trim_end_matches('/'));
    if !path.is_absolute() {
        return Err(fields.invalid("name", format!("`{name}` is not an absolute path")));
    }
    if path.file_name().is_none() || path.components().any(|c| c == Component::ParentDir) {
        return Err(fields.invalid(
            "name",
            format!("`{name}` must name a file or a directory below / (no `..`)"),
        ));
    }
    let content = fields.opt_str("content")?.map(String::into_bytes);
    let source = match fields.opt_str("source")? {
        None => None,
        Some(s) if Path::new(&s).is_absolute() => Some(PathBuf::from(s.trim_end_matches('/'))),
        Some(s) => return Err(fields.invalid("source", format!("`{s}` is not an absolute path"))),
    };
    let mode = match fields.opt_value("mode") {
        None => None,
        Some(Value::String(text)) => Some(parse_mode(&text).ok_or_else(|| {
            fields.invalid(
                "mode",
                format!("`{text}` is not an octal mode like \"0644\""),
            )
        })?),
        // `mode: 644` in YAML is the decimal number 644, never what was meant.
        Some(other) => {
            return Err(fields.invalid(
                "mode",
                format!(
                    "expected an octal string like \"0644\", got {}",
                    type_name(&other)
                ),
            ))
        }
    };
    let owner = fields.opt_str("owner")?;
    let group = fields.opt_str("group")?;
    for (field, v) in [("owner", &owner), ("group", &group)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.contains('\0')) {
            return Err(fields.invalid(field, "must be a name or a numeric id"));
        }
    }
    let state = match fields.opt_str("state")?.as_deref() {
        None | Some("exists") => FileState::Exists,
        Some("absent") => FileState::Absent,
        Some(other) => {
            return Err(fields.invalid(
                "state",
                format!("expected `exists` or `absent`, got `{other}`"),
            ))
        }
    };
    let recurse = fields.opt_bool("recurse")?.unwrap_or(false);
    let purge = fields.opt_bool("purge")?.unwrap_or(false);
    let spec = FileSpec {
        id,
        path,
        dir,
        content,
        source,
        mode,
        owner,
        group,
        state,
        recurse,
        purge,
    };
    check_consistent(&spec, fields)?;
    Ok(Spec::File(std::sync::Arc::new(spec)))
}

/// Fields that cannot go together.
fn check_consistent(spec: &FileSpec, fields: &Fields) -> Result<(), GraphError> {
    if spec.content.is_some() && spec.source.is_some() {
        return Err(fields.invalid("source", "cannot be set together with `content`"));
    }
    if spec.dir && spec.content.is_some() {
        return Err(fields.invalid("content", "a directory (name ending in `/`) has no content"));
    }
    if !spec.dir {
        for (field, set) in [("recurse", spec.recurse), ("purge", spec.purge)] {
            if set {
                return Err(fields.invalid(field, "only for a directory (name ending in `/`)"));
            }
        }
    }
    if spec.purge && spec.source.is_none() {
        return Err(fields.invalid("purge", "needs a `source` directory to purge against"));
    }
    if spec.state == FileState::Absent {
        for (field, set) in [
            ("content", spec.content.is_some()),
            ("source", spec.source.is_some()),
            ("mode", spec.mode.is_some()),
            ("owner", spec.owner.is_some()),
            ("group", spec.group.is_some()),
        ] {
            if set {
                return Err(fields.invalid(field, "cannot be set when state is `absent`"));
            }
        }
    }
    Ok(())
}

/// "0644", "644", "1777", "0o644" -> bits. Three or four octal digits after the prefix.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let digits = match digits.len() {
        5 => digits.strip_prefix('0')?,
        3 | 4 => digits,
        _ => return None,
    };
    if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("1777"), Some(0o1777));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("00644"), Some(0o644));
        for bad in ["", "64", "0999", "rw-r--r--", "+644", "77777", "0x644"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
    }
}
