//! The host's own policy: the last word on what this actor accepts, whoever signed the action.
//!
//! A TOML file; whatever it does not list is refused:
//!
//! ```toml
//! kinds = ["file", "exec", "svc", "pkg", "noop", "msg", "timer"]
//! [file]
//! paths = ["/etc/motd", "/tmp/"]   # prefixes, component by component; `/` at the end: below only
//! [exec]
//! commands = ["systemctl restart -- *", ["sh", "-c", "exit 0"]]
//! users = ["root"]
//! [svc]
//! units = ["*.service"]
//! [pkg]
//! packages = ["nginx", "openssl"]
//! ```
//!
//! Globs know one wildcard, `*`, any run of characters within one word; a last command word
//! `**` matches any number of remaining arguments. A shell line is admitted only by an exact
//! command without `*`: no glob can tell `x` from `x; rm -rf /` in a shell line.

use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml_edit::{ImDocument, Item, Table, Value};

use graph::kinds::{ExecCmd, Spec};

/// The built-in policy of a bare `reflex actor`.
pub const STRICT: &str = include_str!("../../dist/policy/strict.toml");
/// What `reflex up` starts its actor with: what the shipped rules need.
pub const UP: &str = include_str!("../../dist/policy/up.toml");

/// A mistake in a policy file, located.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{source_name}:{line}: {}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct PolicyError {
    /// The file (or what the text came from).
    pub source_name: String,
    /// The line of the mistake (0: the file could not be read).
    pub line: usize,
    /// The field, e.g. `exec.commands`, when the mistake is in one.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// What the policy refused in a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule: `kinds`, `file.paths`, `exec.commands`, `exec.users`, `svc.units` or
    /// `pkg.packages`.
    pub rule: String,
    /// The resource as `kind:name` and what of it is refused.
    pub detail: String,
}

/// One allowed command: argument globs, and the text as written (a shell line must equal it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    words: Vec<String>,
    /// The string as written; `None` for the array form, which never admits a shell line.
    exact: Option<String>,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    kinds: Vec<String>,
    paths: Vec<PathBuf>,
    commands: Vec<Command>,
    users: Vec<String>,
    units: Vec<String>,
    packages: Vec<String>,
    /// Whom an exec without `user` runs as: the actor's own user.
    own_user: String,
    source_name: String,
    text: String,
}

impl Policy {
    /// The built-in strict policy ([`STRICT`]).
    pub fn strict() -> Policy {
        // Shipped text, parsed in the tests: it cannot fail.
        Policy::parse(STRICT, "built-in strict policy").expect("the shipped strict policy parses")
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            source_name: name.clone(),
            line: 0,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        Policy::parse(&text, &name)
    }

    /// Parse `text`; `source_name` prefixes every error.
    pub fn parse(text: &str, source_name: &str) -> Result<Policy, PolicyError> {
        let at = |line, field: Option<&str>, message: String| PolicyError {
            source_name: source_name.to_string(),
            line,
            field: field.map(str::to_string),
            message,
        };
        let doc = ImDocument::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            at(line, None, e.message().trim().to_string())
        })?;
        let p = Parser { text, at: &at };
        let root = doc.as_table();
        p.only(root, "", &["kinds", "file", "exec", "svc", "pkg"])?;
        let known = graph::kinds::kind_names();
        let kinds = p.words(root, "", "kinds", |k| {
            (!known.contains(&k))
                .then(|| format!("unknown kind {k:?}; known: {}", known.join(", ")))
        })?;
        let empty = Table::new();
        let section = |name: &str, fields: &[&str]| -> Result<&Table, PolicyError> {
            match root.get(name) {
                None => Ok(&empty),
                Some(Item::Table(t)) => p.only(t, name, fields).map(|_| t),
                Some(item) => Err(at(p.line(item), Some(name), "must be a table".into())),
            }
        };
        let file = section("file", &["paths"])?;
        let paths = p.words(file, "file", "paths", |s| path_problem(Path::new(s)))?;
        let exec = section("exec", &["commands", "users"])?;
        let commands = p.commands(exec)?;
        let users = p.words(exec, "exec", "users", |_| None)?;
        let units = p.words(section("svc", &["units"])?, "svc", "units", |_| None)?;
        let packages = p.words(section("pkg", &["packages"])?, "pkg", "packages", |_| None)?;
        Ok(Policy {
            kinds,
            paths: paths.into_iter().map(PathBuf::from).collect(),
            commands,
            users,
            units,
            packages,
            own_user: own_user(),
            source_name: source_name.to_string(),
            text: text.to_string(),
        })
    }

    /// Where it came from: a file name, or `built-in strict policy`.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The text it was parsed from (what `reflex actor --print-policy` shows).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether every resource of `g` is admitted; the first refusal otherwise.
    pub fn check(&self, g: &graph::Graph) -> Result<(), Refusal> {
        g.vertices()
            .iter()
            .try_for_each(|v| self.check_spec(&v.resource))
    }

    fn check_spec(&self, spec: &Spec) -> Result<(), Refusal> {
        let id = spec.id();
        let kind = id.split_once(':').map_or(id, |(k, _)| k);
        if !self.kinds.iter().any(|k| k == kind) {
            return Err(refuse("kinds", format!("{id}: kind {kind} is not allowed")));
        }
        match spec {
            Spec::File(s) => {
                self.check_path(id, "path", &s.path)?;
                match &s.source {
                    Some(src) => self.check_path(id, "source", src),
                    None => Ok(()),
                }
            }
            Spec::Exec(s) => {
                if let ExecCmd::Argv(argv) = &s.cmd {
                    if !self.commands.iter().any(|c| argv_matches(&c.words, argv)) {
                        let shown = serde_json::to_string(argv).unwrap_or_default();
                        return Err(refuse(
                            "exec.commands",
                            format!("{id}: argv {shown} matches no allowed command"),
                        ));
                    }
                }
                for (field, line) in s.shell_lines() {
                    if !self
                        .commands
                        .iter()
                        .any(|c| c.exact.as_deref() == Some(line))
                    {
                        return Err(refuse(
                            "exec.commands",
                            format!("{id}: {field} {line:?} is no allowed command written out exactly (a shell line is never matched by a glob)"),
                        ));
                    }
                }
                let user = s.user.as_deref().unwrap_or(&self.own_user);
                if !self.users.iter().any(|u| glob(u, user)) {
                    return Err(refuse(
                        "exec.users",
                        format!("{id}: running as user {user} is not allowed"),
                    ));
                }
                Ok(())
            }
            Spec::Svc(s) if !self.units.iter().any(|u| glob(u, &s.unit)) => Err(refuse(
                "svc.units",
                format!("{id}: unit {} is not allowed", s.unit),
            )),
            Spec::Pkg(s) if !self.packages.iter().any(|p| glob(p, &s.name)) => Err(refuse(
                "pkg.packages",
                format!("{id}: package {} is not allowed", s.name),
            )),
            _ => Ok(()),
        }
    }

    fn check_path(&self, id: &str, field: &str, path: &Path) -> Result<(), Refusal> {
        if let Some(problem) = path_problem(path) {
            return Err(refuse("file.paths", format!("{id}: {field} {problem}")));
        }
        if self.paths.iter().any(|prefix| under(path, prefix)) {
            return Ok(());
        }
        Err(refuse(
            "file.paths",
            format!(
                "{id}: {field} {} is under no allowed prefix",
                path.display()
            ),
        ))
    }
}

fn refuse(rule: &str, detail: String) -> Refusal {
    Refusal {
        rule: rule.to_string(),
        detail,
    }
}

/// Why a path cannot be judged by prefix: relative, or with `.` / `..` (looked for in the
/// bytes: `Path::components` would quietly drop a `.`).
fn path_problem(path: &Path) -> Option<String> {
    let bytes = path.as_os_str().as_bytes();
    if !path.is_absolute() {
        return Some(format!("{} is not absolute", path.display()));
    }
    if bytes.split(|b| *b == b'/').any(|c| c == b"." || c == b"..") {
        return Some(format!("{} has a `.` or `..` component", path.display()));
    }
    None
}

/// Whether `path` is at or below `prefix`, component by component; a prefix written with a
/// trailing `/` admits only what is strictly below it.
fn under(path: &Path, prefix: &Path) -> bool {
    let below_only = prefix.as_os_str().as_bytes().ends_with(b"/");
    path.starts_with(prefix) && !(below_only && path.components().eq(prefix.components()))
}

/// Whether `argv` matches the pattern words: one glob per argument, a last `**` for any rest.
fn argv_matches(words: &[String], argv: &[String]) -> bool {
    match words.split_last() {
        Some((last, head)) if last == "**" => {
            argv.len() >= head.len() && head.iter().zip(argv).all(|(w, a)| glob(w, a))
        }
        _ => words.len() == argv.len() && words.iter().zip(argv).all(|(w, a)| glob(w, a)),
    }
}

/// `*` matches any run of characters (none included); everything else only itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    // No `*`: the whole pattern is the first part.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        return rest.is_empty();
    };
    // Leftmost match for each middle part is always safe; the last part anchors the end.
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The name of the user this process runs as (its uid when it has no name).
fn own_user() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pwd's strings.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return uid.to_string();
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside buf.
    unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Field readers that locate every mistake.
struct Parser<'a, F: Fn(usize, Option<&str>, String) -> PolicyError> {
    text: &'a str,
    at: &'a F,
}

impl<F: Fn(usize, Option<&str>, String) -> PolicyError> Parser<'_, F> {
    fn line(&self, item: &Item) -> usize {
        item.span().map_or(1, |s| line_of(self.text, s.start))
    }

    fn value_line(&self, v: &Value) -> usize {
        v.span().map_or(1, |s| line_of(self.text, s.start))
    }

    /// Refuse any key of `table` not in `fields`.
    fn only(&self, table: &Table, section: &str, fields: &[&str]) -> Result<(), PolicyError> {
        match table.iter().find(|(k, _)| !fields.contains(k)) {
            None => Ok(()),
            Some((k, item)) => Err((self.at)(
                self.line(item),
                Some(&qualified(section, k)),
                format!("unknown field; known here: {}", fields.join(", ")),
            )),
        }
    }

    /// The array `table.key` of `section`: every element a non-empty string `check` finds
    /// nothing wrong with. Missing: empty.
    fn words(
        &self,
        table: &Table,
        section: &str,
        key: &str,
        check: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, PolicyError> {
        let field = qualified(section, key);
        let mut out = Vec::new();
        for v in self.array(table, &field, key)? {
            let line = self.value_line(v);
            let s = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                (self.at)(
                    line,
                    Some(&field),
                    "every element must be a non-empty string".into(),
                )
            })?;
            if let Some(problem) = check(s) {
                return Err((self.at)(line, Some(&field), problem));
            }
            out.push(s.to_string());
        }
        Ok(out)
    }

    /// `exec.commands`: each a string (split on whitespace) or an array of arguments.
    fn commands(&self, exec: &Table) -> Result<Vec<Command>, PolicyError> {
        let field = "exec.commands";
        let mut out = Vec::new();
        for v in self.array(exec, field, "commands")? {
            let bad = |why: &str| (self.at)(self.value_line(v), Some(field), why.to_string());
            let command = match v {
                Value::String(s) => Command {
                    words: s.value().split_whitespace().map(str::to_string).collect(),
                    exact: (!s.value().contains('*')).then(|| s.value().clone()),
                },
                Value::Array(a) => Command {
                    words: a
                        .iter()
                        .map(|w| w.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| bad("a command given as an array holds strings only"))?,
                    exact: None,
                },
                _ => return Err(bad("a command is a string or an array of arguments")),
            };
            if command.words.is_empty() {
                return Err(bad("a command needs at least a program"));
            }
            if command.words[..command.words.len() - 1]
                .iter()
                .any(|w| w == "**")
            {
                return Err(bad("`**` may only be the last word"));
            }
            out.push(command);
        }
        Ok(out)
    }

    fn array<'t>(
        &self,
        table: &'t Table,
        field: &str,
        key: &str,
    ) -> Result<Vec<&'t Value>, PolicyError> {
        match table.get(key) {
            None => Ok(Vec::new()),
            Some(item) => match item.as_array() {
                Some(a) => Ok(a.iter().collect()),
                None => Err((self.at)(
                    self.line(item),
                    Some(field),
                    "must be an array".into(),
                )),
            },
        }
    }
}

fn qualified(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

#[cfg(test)]
mod tests;
