//! `exec`: a command run once per graph run, or on each refresh: a program with its arguments
//! (`argv`, no shell) or a shell line (`cmd`, run as `sh -c`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::error::GraphError;
use crate::fields::{type_name, Fields};
use crate::kinds::{Spec, ValueType, Values};

/// The kind name.
pub const KIND: &str = "exec";

/// What an `exec` sends: the stdout of its last successful run.
pub const SENDS: Values = &[("stdout", ValueType::Str)];

/// The fields a shell reads as shell syntax: whatever is spliced into them can change what
/// runs. `argv` is not among them.
pub const SHELL_FIELDS: &[&str] = &["cmd", "ifcmd", "watchcmd"];

/// How the main command is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecCmd {
    /// `cmd`: one line, run as `sh -c line`.
    Shell(String),
    /// `argv`: a program (looked up in `PATH`) and its arguments, run directly: no shell,
    /// each element one argument, untouched.
    Argv(Vec<String>),
}

/// Everything that defines an exec's desired behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    /// `exec:name`.
    pub id: String,
    /// The command: `cmd` (a shell line) or `argv` (a program and its arguments).
    pub cmd: ExecCmd,
    /// Seconds, as written (kept for the error message).
    pub timeout: Option<f64>,
    /// A shell line: run the command only when it exits 0.
    pub ifcmd: Option<String>,
    /// Skip the command when this path exists (and let users of the path run after us).
    pub creates: Option<PathBuf>,
    /// Run only when a refresh arrives.
    pub refresh_only: bool,
    /// A long-running shell line; each line it prints asks for another run.
    pub watchcmd: Option<String>,
    /// Run as this user (name), with its primary group.
    pub user: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

impl ExecSpec {
    /// A plain shell command (`cmd`) with nothing else set.
    pub fn command(id: impl Into<String>, cmd: impl Into<String>) -> ExecSpec {
        ExecSpec::new(id.into(), ExecCmd::Shell(cmd.into()))
    }

    /// A plain program with arguments (`argv`) with nothing else set.
    pub fn argv(id: impl Into<String>, argv: Vec<String>) -> ExecSpec {
        ExecSpec::new(id.into(), ExecCmd::Argv(argv))
    }

    fn new(id: String, cmd: ExecCmd) -> ExecSpec {
        ExecSpec {
            id,
            cmd,
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

    /// The shell lines it runs, with their field names (see [`SHELL_FIELDS`]): `cmd` when
    /// given, `ifcmd`, `watchcmd`.
    pub fn shell_lines(&self) -> Vec<(&'static str, &str)> {
        let cmd = match &self.cmd {
            ExecCmd::Shell(line) => Some(line.as_str()),
            ExecCmd::Argv(_) => None,
        };
        [cmd, self.ifcmd.as_deref(), self.watchcmd.as_deref()]
            .into_iter()
            .zip(SHELL_FIELDS)
            .filter_map(|(line, field)| Some((*field, line?)))
            .collect()
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
    let cmd = parse_cmd(fields)?;
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
        if let Some(line) = value {
            check_line(fields, field, line)?;
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
    Ok(Spec::Exec(Box::new(ExecSpec {
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
    })))
}

/// Exactly one of `cmd` (a shell line) and `argv` (a non-empty list of strings whose first
/// names the program).
fn parse_cmd(fields: &mut Fields) -> Result<ExecCmd, GraphError> {
    let line = fields.opt_str("cmd")?;
    let argv = fields.opt_value("argv");
    match (line, argv) {
        (Some(_), Some(_)) => Err(fields.invalid(
            "argv",
            "give `cmd` (a shell line) or `argv` (a program and its arguments), not both",
        )),
        (None, None) => Err(fields.invalid(
            "cmd",
            "one of `cmd` (a shell line) or `argv` (a program and its arguments) is required",
        )),
        (Some(line), None) => {
            check_line(fields, "cmd", &line)?;
            Ok(ExecCmd::Shell(line))
        }
        (None, Some(Value::Array(items))) => {
            if items.is_empty() {
                return Err(fields.invalid("argv", "must not be empty: it names the program"));
            }
            let mut argv = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let arg = match item {
                    Value::String(arg) => arg,
                    other => {
                        return Err(fields.invalid(
                            "argv",
                            format!("argv[{i}]: expected a string, got {}", type_name(&other)),
                        ))
                    }
                };
                if arg.contains('\0') {
                    return Err(fields.invalid("argv", format!("argv[{i}] holds a NUL byte")));
                }
                if i == 0 && arg.is_empty() {
                    return Err(fields.invalid("argv", "argv[0] (the program) must not be empty"));
                }
                argv.push(arg);
            }
            Ok(ExecCmd::Argv(argv))
        }
        (None, Some(other)) => Err(fields.invalid(
            "argv",
            format!("expected a list of strings, got {}", type_name(&other)),
        )),
    }
}

/// A shell line: not blank, no NUL byte (which no process argument can hold).
fn check_line(fields: &Fields, field: &str, line: &str) -> Result<(), GraphError> {
    if line.trim().is_empty() {
        return Err(fields.invalid(field, "must not be empty"));
    }
    if line.contains('\0') {
        return Err(fields.invalid(field, "holds a NUL byte"));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_name_every_shell_field_and_never_argv() {
        let mut spec = ExecSpec::argv("exec:a", vec!["echo".into(), "$(x)".into()]);
        assert!(spec.shell_lines().is_empty());
        spec.watchcmd = Some("tail -f /x".into());
        assert_eq!(spec.shell_lines(), [("watchcmd", "tail -f /x")]);
        let mut spec = ExecSpec::command("exec:b", "true");
        spec.ifcmd = Some("test -e /y".into());
        assert_eq!(
            spec.shell_lines(),
            [("cmd", "true"), ("ifcmd", "test -e /y")]
        );
    }
}
