//! `exec`: a shell command run once per graph run, or on each refresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::GraphError;
use crate::fields::Fields;
use crate::kinds::{Spec, ValueType, Values};

/// The kind name.
pub const KIND: &str = "exec";

/// What an `exec` sends: the stdout of its last successful run.
pub const SENDS: Values = &[("stdout", ValueType::Str)];

/// Everything that defines an exec's desired behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    /// `exec:name`.
    pub id: String,
    /// The command line, run as `sh -c cmd`.
    pub cmd: String,
    /// Seconds, as written (kept for the error message).
    pub timeout: Option<f64>,
    /// Run `cmd` only when this exits 0.
    pub ifcmd: Option<String>,
    /// Skip `cmd` when this path exists (and let users of the path run after us).
    pub creates: Option<PathBuf>,
    /// Run only when a refresh arrives.
    pub refresh_only: bool,
    /// A long-running command; each line it prints asks for another run.
    pub watchcmd: Option<String>,
    /// Run as this user (name), with its primary group.
    pub user: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

impl ExecSpec {
    /// A plain command with nothing else set.
    pub fn command(id: impl Into<String>, cmd: impl Into<String>) -> ExecSpec {
        ExecSpec {
            id: id.into(),
            cmd: cmd.into(),
            timeout: None,
            ifcmd: None,
            creates: None,
            refresh_only: false,
            watchcmd: None,
            user: None,
            env: BTreeMap::new(),
            cwd: None,
        }
    }

    /// Its `creates` path.
    pub fn manages(&self) -> Vec<PathBuf> {
        self.creates.iter().cloned().collect()
    }

    /// Its working directory.
    pub fn needs(&self) -> Vec<PathBuf> {
        self.cwd.iter().cloned().collect()
    }
}

pub(crate) fn parse(id: String, _name: &str, fields: &mut Fields) -> Result<Spec, GraphError> {
    let cmd = fields.req_str("cmd")?;
    if cmd.trim().is_empty() {
        return Err(fields.invalid("cmd", "must not be empty"));
    }
    let timeout = fields.opt_number("timeout")?;
    if let Some(t) = timeout {
        if t.is_nan() || t <= 0.0 || Duration::try_from_secs_f64(t).is_err() {
            return Err(fields.invalid(
                "timeout",
                format!("{t} is not a positive number of seconds"),
            ));
        }
    }
    let ifcmd = fields.opt_str("ifcmd")?;
    let watchcmd = fields.opt_str("watchcmd")?;
    for (field, value) in [("ifcmd", &ifcmd), ("watchcmd", &watchcmd)] {
        if value.as_ref().is_some_and(|v| v.trim().is_empty()) {
            return Err(fields.invalid(field, "must not be empty"));
        }
    }
    let absolute = |fields: &mut Fields, field: &str| -> Result<Option<PathBuf>, GraphError> {
        match fields.opt_str(field)? {
            None => Ok(None),
            Some(p) if Path::new(&p).is_absolute() => Ok(Some(PathBuf::from(p))),
            Some(p) => Err(fields.invalid(field, format!("`{p}` is not an absolute path"))),
        }
    };
    let creates = absolute(fields, "creates")?;
    let cwd = absolute(fields, "cwd")?;
    let refresh_only = fields.opt_bool("refresh_only")?.unwrap_or(false);
    let user = fields.opt_str("user")?;
    if user
        .as_ref()
        .is_some_and(|u| u.is_empty() || u.contains('\0'))
    {
        return Err(fields.invalid("user", "must be a user name"));
    }
    let env = parse_env(fields)?;
    Ok(Spec::Exec(ExecSpec {
        id,
        cmd,
        timeout,
        ifcmd,
        creates,
        refresh_only,
        watchcmd,
        user,
        env,
        cwd,
    }))
}

fn parse_env(fields: &mut Fields) -> Result<BTreeMap<String, String>, GraphError> {
    let env = fields.opt_str_map("env")?;
    if let Some(k) = env
        .iter()
        .find(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| k)
    {
        return Err(fields.invalid("env", format!("`{k}` is not a valid variable")));
    }
    Ok(env)
}
