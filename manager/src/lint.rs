//! `reflex rules check`'s warnings: a textual taint pass over a rule's source that finds exec
//! shell lines (`cmd`, `ifcmd`, `watchcmd`) built from event values without `shell_quote`.
//!
//! It is deliberately simple and errs on the side of warning: a variable is tainted when it
//! is assigned (or looped over) from an expression that mentions `event.` (the name
//! `react`'s parameter has) or a tainted variable; `shell_quote(...)` cleans what it wraps.
//! A register's value is not followed (`registers::get(...)` is opaque): what an operator
//! stored is not event data. The run-time check in the rule engine is the backstop.

use crate::shell::QUOTE_FN;
use graph::kinds::exec::SHELL_FIELDS;
use std::collections::BTreeSet;

/// One place where a shell line is built from event values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line of the shell field.
    pub line: usize,
    /// `cmd`, `ifcmd` or `watchcmd`.
    pub field: &'static str,
    /// The event values or tainted variables it uses.
    pub from: Vec<String>,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exec `{}` is built from {} without shell_quote(): pass values in `argv`, or shell_quote() each one",
            self.field,
            self.from.join(", ")
        )
    }
}

/// The warnings for one rule's source, in line order.
pub fn shell_warnings(source: &str) -> Vec<Warning> {
    let code: Vec<String> = strip_comments(source);
    let param = react_param(&code.join("\n")).unwrap_or_else(|| "event".to_string());
    let mut tainted: BTreeSet<String> = BTreeSet::new();
    // Assignments later in the file can taint variables used earlier (loops): repeat until
    // nothing new is tainted.
    loop {
        let before = tainted.len();
        for line in &code {
            for (var, expr) in assignments(line) {
                if !uses(&expr, &param, &tainted).is_empty() {
                    tainted.insert(var);
                }
            }
        }
        if tainted.len() == before {
            break;
        }
    }
    let mut out = Vec::new();
    for (i, line) in code.iter().enumerate() {
        for (field, expr) in shell_fields(line) {
            let from = uses(&expr, &param, &tainted);
            if !from.is_empty() {
                out.push(Warning {
                    line: i + 1,
                    field,
                    from,
                });
            }
        }
    }
    out
}

/// The source, line by line, with `//` comments blanked (strings are kept: backtick strings
/// hold `${...}` code).
fn strip_comments(source: &str) -> Vec<String> {
    source
        .lines()
        .map(|line| {
            let mut quote = None;
            let b = line.as_bytes();
            for i in 0..b.len() {
                match (quote, b[i]) {
                    (None, b'"' | b'`' | b'\'') => quote = Some(b[i]),
                    (Some(q), c) if c == q && (i == 0 || b[i - 1] != b'\\') => quote = None,
                    (None, b'/') if b.get(i + 1) == Some(&b'/') => return line[..i].to_string(),
                    _ => {}
                }
            }
            line.to_string()
        })
        .collect()
}

/// The name of `react`'s parameter.
fn react_param(code: &str) -> Option<String> {
    let rest = &code[code.find("fn react")? + "fn react".len()..];
    let inner = rest.trim_start().strip_prefix('(')?;
    let name = inner[..inner.find(')')?].trim();
    is_ident(name).then(|| name.to_string())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The pieces of a line between top-level `;`, `{` and `}` (those inside a string or a
/// `${...}` are kept).
fn pieces(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    // Depth of `${` inside a backtick string.
    let mut interp = 0usize;
    let mut prev = '\0';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some('`'), '{') if prev == '$' => interp += 1,
            (Some('`'), '}') if interp > 0 => interp -= 1,
            (Some(q), c) if c == q && prev != '\\' && interp == 0 => quote = None,
            (None, '"' | '`') => quote = Some(c),
            (None, ';' | '{' | '}') => {
                out.push(&line[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
        prev = c;
    }
    out.push(&line[start..]);
    out
}

/// `let x = expr`, `x = expr`, `x += expr` and `for x in expr` in one line.
fn assignments(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for piece in pieces(line) {
        let p = piece.trim();
        let p = p.strip_prefix("let ").unwrap_or(p).trim_start();
        if let Some(rest) = p.strip_prefix("for ") {
            if let Some((var, expr)) = rest.split_once(" in ") {
                out.push((var.trim().to_string(), expr.to_string()));
            }
            continue;
        }
        let Some(eq) = assignment_eq(p) else { continue };
        let var = p[..eq].trim_end_matches(['+', '-', '*', '/']).trim();
        if is_ident(var) {
            out.push((var.to_string(), p[eq + 1..].to_string()));
        }
    }
    out
}

/// The byte index of the first `=` that assigns (not `==`, `!=`, `<=`, `>=`, `=>`).
fn assignment_eq(p: &str) -> Option<usize> {
    let b = p.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b'='
            && b.get(i + 1) != Some(&b'=')
            && b.get(i + 1) != Some(&b'>')
            && !(i > 0 && matches!(b[i - 1], b'=' | b'!' | b'<' | b'>'))
    })
}

/// `cmd: expr` (a map entry) and `.cmd = expr` for each shell field, the expression running
/// to the next top-level `,` (or the end of the piece).
fn shell_fields(line: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for piece in pieces(line) {
        for field in SHELL_FIELDS {
            for (at, _) in piece.match_indices(field) {
                let before = piece[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let after = piece[at + field.len()..].trim_start();
                let expr = if let Some(e) = after.strip_prefix(':') {
                    e
                } else if before == Some('.') && after.starts_with('=') && !after.starts_with("==")
                {
                    &after[1..]
                } else {
                    continue;
                };
                out.push((*field, up_to_comma(expr).to_string()));
            }
        }
    }
    out
}

/// `expr` up to its first `,` outside brackets and strings.
fn up_to_comma(expr: &str) -> &str {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for (i, c) in expr.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '`') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, ',') if depth <= 0 => return &expr[..i],
            _ => {}
        }
    }
    expr
}

/// The event values (`event.…`) and tainted variables `expr` uses outside `shell_quote(...)`
/// and `registers::get(...)`.
fn uses(expr: &str, param: &str, tainted: &BTreeSet<String>) -> Vec<String> {
    let expr = code_only(&without_calls(expr, &[QUOTE_FN, "registers::get"]));
    let mut out = Vec::new();
    for word in words(&expr) {
        let (head, _) = word.split_once('.').unwrap_or((word, ""));
        let hit = (head == param && word.len() > param.len()) || tainted.contains(word);
        if hit && !out.iter().any(|w| w == word) {
            out.push(word.to_string());
        }
    }
    out
}

/// `expr` with every call to one of `names` (its parenthesised arguments included) removed.
fn without_calls(expr: &str, names: &[&str]) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    'scan: while !rest.is_empty() {
        for name in names {
            if let Some(after) = rest.strip_prefix(name) {
                let boundary = !out.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
                if let (true, Some(args)) = (boundary, after.trim_start().strip_prefix('(')) {
                    let mut depth = 1;
                    for (i, c) in args.char_indices() {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        if depth == 0 {
                            out.push_str("()");
                            rest = &args[i + 1..];
                            continue 'scan;
                        }
                    }
                    return out; // unbalanced: the rest is the call's
                }
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `expr` with the text of its string literals blanked: only code is left, including the
/// `${...}` of backtick strings.
fn code_only(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut interp = 0usize;
    let mut prev = '\0';
    for c in expr.chars() {
        match (quote, c) {
            (Some('`'), '{') if prev == '$' => {
                interp += 1;
                out.push(' ');
            }
            (Some('`'), '}') if interp > 0 => {
                interp -= 1;
                out.push(' ');
            }
            (Some(_), c) if interp > 0 => out.push(c),
            (Some(q), c) if c == q && prev != '\\' => {
                quote = None;
                out.push(' ');
            }
            (Some(_), _) => out.push(' '),
            (None, '"' | '`') => {
                quote = Some(c);
                out.push(' ');
            }
            (None, c) => out.push(c),
        }
        prev = c;
    }
    out
}

/// Identifiers with their `.field` paths: `event.data.name`, `cmd`.
fn words(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .map(|w| w.trim_matches('.'))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"// cmd: event.data.name in a comment is not code
const MATCH = "beacon/proc";
fn react(ev) {
    let name = ev.data.name;
    let unit = `${name}.service`;
    let safe = shell_quote(ev.data.name);
    let cmd = registers::get(`config/restart/${name}`);
    act("all", [#{ kind: "exec", name: "a", cmd: `systemctl restart ${unit}`, timeout: 3 }]);
    act("all", [#{ kind: "exec", name: "b", cmd: `systemctl restart ${safe}` }]);
    act("all", [#{ kind: "exec", name: "c", cmd: "echo " + shell_quote(name) }]);
    act("all", [#{ kind: "exec", name: "d", argv: ["systemctl", "restart", name] }]);
    act("all", [#{ kind: "exec", name: "e", cmd: cmd }]);
    let r = #{ kind: "exec", name: "f", ifcmd: `test -e ${ev.data.path}`, cmd: "unit name" };
    r.watchcmd = "tail -f " + unit;
    if name == "x" { r.cmd = "true"; }
}
"#;

    #[test]
    fn finds_event_values_and_tainted_variables_without_shell_quote() {
        let w = shell_warnings(SAMPLE);
        let got: Vec<(usize, &str, Vec<String>)> =
            w.into_iter().map(|w| (w.line, w.field, w.from)).collect();
        assert_eq!(
            got,
            [
                (8, "cmd", vec!["unit".to_string()]),
                (13, "ifcmd", vec!["ev.data.path".to_string()]),
                (14, "watchcmd", vec!["unit".to_string()]),
            ]
        );
    }

    #[test]
    fn the_message_says_what_to_do() {
        let w = &shell_warnings(SAMPLE)[0];
        assert_eq!(
            w.to_string(),
            "exec `cmd` is built from unit without shell_quote(): pass values in `argv`, or shell_quote() each one"
        );
    }

    #[test]
    fn a_loop_variable_over_event_data_is_tainted() {
        let src = "fn react(event) {\n for m in event.data.mounts {\n  act(\"all\", [#{kind: \"exec\", name: m, cmd: \"umount \" + m}]);\n }\n}\n";
        let w = shell_warnings(src);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!((w[0].line, w[0].field), (3, "cmd"));
    }

    #[test]
    fn a_clean_rule_has_no_warnings() {
        let src = "fn react(event) {\n act(\"all\", [#{kind: \"exec\", name: \"n\", cmd: \"certbot renew\"}]);\n}\n";
        assert!(shell_warnings(src).is_empty());
    }
}
