//! No event value becomes shell syntax: [`shell_quote`] for rules, and the check the rule
//! engine runs on every exec shell line a rule builds ([`find_splice`]).
//!
//! Event data is untrusted input. A value made only of [safe](is_safe) characters cannot
//! change what a shell parses, so `systemctl restart nginx` built from `data.name = "nginx"`
//! passes. Any other value (a quote, `;`, `$(`, a space, a newline...) may appear in a shell
//! line only in its `shell_quote` form, as a word of its own: quoted inside another quote
//! (`"'x'"`) or in a here-document it would be read again, so that is refused too.
//!
//! A program that runs its argument as shell again (`sh -c`, `su -c`, `ssh`, `eval`) reads
//! the quoted value as code: that is the rule author's explicit choice, beyond this check.

use bus::Event;
use serde_json::Value;

/// The name rules call [`shell_quote`] by.
pub const QUOTE_FN: &str = "shell_quote";

/// Characters that never change shell syntax (letters, digits and `._/:=@%+,-`).
pub fn is_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/:=@%+,-".contains(&b))
}

/// POSIX single-quote quoting: `'` + `s` with each `'` written `'\''` + `'`. A shell reads
/// the result as one word whose value is exactly `s`.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// One event value a shell line holds unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// Where the value came from in the event: `tag`, `host`, `data.name`, `data.list[2]`.
    pub source: String,
    /// The value.
    pub value: String,
}

/// The event's values that could change shell syntax (not [`is_safe`]): its tag, its host,
/// and every string in its data (map keys and leaves, at any depth), with where each is.
pub fn unsafe_values(event: &Event) -> Vec<Splice> {
    let mut out = Vec::new();
    let mut push = |source: String, value: &str| {
        if !value.is_empty() && !is_safe(value) {
            out.push(Splice {
                source,
                value: value.to_string(),
            });
        }
    };
    push("tag".into(), &event.tag);
    push("host".into(), &event.host);
    walk(&event.data, "data".into(), &mut push);
    out
}

fn walk(v: &Value, at: String, push: &mut impl FnMut(String, &str)) {
    match v {
        Value::String(s) => push(at, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{at}[{i}]"), push);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let here = format!("{at}.{k}");
                push(format!("{here} (key)"), k);
                walk(item, here, push);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The first of `values` that `line` holds outside its `shell_quote` form, if any.
pub fn find_splice<'a>(line: &str, values: &'a [Splice]) -> Option<&'a Splice> {
    if values.is_empty() {
        return None;
    }
    let opens = word_starts(line);
    // In a here-document quotes are literal and `$(...)` runs: no quoted form counts there.
    let heredoc = line.contains("<<");
    values.iter().filter(|v| !v.value.is_empty()).find(|v| {
        let quoted = shell_quote(&v.value);
        let covered: Vec<(usize, usize)> = if heredoc {
            Vec::new()
        } else {
            line.match_indices(&quoted)
                .filter(|(at, _)| opens[*at])
                .map(|(at, q)| (at, at + q.len()))
                .collect()
        };
        occurrences(line, &v.value)
            .any(|(s, e)| !covered.iter().any(|&(cs, ce)| cs <= s && e <= ce))
    })
}

/// Every occurrence of `needle` in `hay`, overlapping ones included, as byte ranges.
fn occurrences<'a>(hay: &'a str, needle: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = from + hay.get(from..)?.find(needle)?;
        // Step one char on, so overlapping occurrences are found too.
        from = at + hay[at..].chars().next().map_or(1, char::len_utf8);
        Some((at, at + needle.len()))
    })
}

/// For each byte of `line`: whether a shell reading the line reaches it outside any quote
/// and not escaped, so that a `'` there opens a single-quoted word.
fn word_starts(line: &str) -> Vec<bool> {
    enum In {
        Plain,
        Single,
        Double,
    }
    let b = line.as_bytes();
    let mut out = vec![false; b.len()];
    let mut state = In::Plain;
    let mut i = 0;
    while i < b.len() {
        match state {
            In::Plain => {
                out[i] = true;
                match b[i] {
                    b'\\' => i += 1,
                    b'\'' => state = In::Single,
                    b'"' => state = In::Double,
                    _ => {}
                }
            }
            In::Single if b[i] == b'\'' => state = In::Plain,
            In::Single => {}
            In::Double => match b[i] {
                b'\\' => i += 1,
                b'"' => state = In::Plain,
                _ => {}
            },
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOSTILE: &[&str] = &[
        "x'; id > /tmp/p; echo '",
        "'",
        "''",
        "\\'",
        "$(touch /tmp/reflex-pwned)",
        "`touch /tmp/reflex-pwned`",
        "a\nb; c",
        "; rm -rf /",
        "\"$HOME\" 'it''s'",
        "tab\there & | > < * ? [ ] { } ~ #",
        "",
        "ünïcødé ✓",
    ];

    #[test]
    fn quote_examples() {
        assert_eq!(shell_quote("nginx"), "'nginx'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn a_shell_reads_the_quoted_form_back_as_the_original() {
        for s in HOSTILE {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .expect("run sh");
            assert!(out.status.success(), "{s:?}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), *s, "{s:?}");
        }
    }

    #[test]
    fn safe_values_are_those_that_cannot_change_syntax() {
        for s in [
            "nginx",
            "cron.service",
            "/var/cache/app",
            "a-b_c:d=e@f%g+h,i",
            "1.2.3",
        ] {
            assert!(is_safe(s), "{s}");
        }
        for s in [
            "a b", "x;y", "$x", "`x`", "a'b", "a\"b", "a\nb", "~root", "*", "é",
        ] {
            assert!(!is_safe(s), "{s:?}");
        }
    }

    fn event(data: Value) -> Event {
        Event::new("beacon/proc", "web1", data)
    }

    #[test]
    fn unsafe_values_are_found_at_any_depth_with_their_place() {
        let ev = event(
            json!({"name": "nginx", "n": 3, "list": ["ok", "a b"], "m": {"x y": {"z": "$(id)"}}}),
        );
        let found: Vec<(String, String)> = unsafe_values(&ev)
            .into_iter()
            .map(|s| (s.source, s.value))
            .collect();
        assert_eq!(
            found,
            [
                ("data.list[1]".to_string(), "a b".to_string()),
                ("data.m.x y (key)".into(), "x y".into()),
                ("data.m.x y.z".into(), "$(id)".into()),
            ]
        );
    }

    fn spliced(line: &str, value: &str) -> bool {
        let v = [Splice {
            source: "data.name".into(),
            value: value.into(),
        }];
        find_splice(line, &v).is_some()
    }

    #[test]
    fn a_value_is_allowed_only_in_its_quoted_form_as_a_word() {
        let attack = "x'; id > /tmp/p; echo '";
        // The shipped rule's old manual quoting is exactly the attack.
        assert!(spliced(&format!("systemctl restart '{attack}'"), attack));
        assert!(spliced(&format!("systemctl restart {attack}"), attack));
        assert!(!spliced(
            &format!("systemctl restart {}", shell_quote(attack)),
            attack
        ));
        // Quoted, but also spliced raw once more.
        let q = shell_quote(attack);
        assert!(spliced(&format!("echo {q} {attack}"), attack));
        for v in ["$(id)", "a b", "`id`"] {
            let q = shell_quote(v);
            assert!(!spliced(&format!("echo {q} > /tmp/x"), v), "{v}");
            assert!(!spliced(&format!("echo pre{q}post"), v), "{v}");
            // Inside double quotes the single quotes are literal and `$(...)` runs.
            assert!(spliced(&format!("echo \"{q}\""), v), "{v}");
            // Escaped, the first quote does not open a word.
            assert!(spliced(&format!("echo \\{q}"), v), "{v}");
            assert!(spliced(&format!("cat <<EOF\n{q}\nEOF"), v), "{v}");
            assert!(spliced(&format!("echo \"{v}\""), v), "{v}");
        }
        assert!(!spliced("systemctl restart nginx", "other value"));
    }

    #[test]
    fn the_tag_and_host_count_too() {
        let mut ev = event(json!({}));
        ev.tag = "demo/$(id)".into();
        ev.host = "web1;reboot".into();
        let values = unsafe_values(&ev);
        assert_eq!(
            find_splice("echo demo/$(id)", &values).map(|s| s.source.as_str()),
            Some("tag")
        );
        assert_eq!(
            find_splice("ssh web1;reboot", &values).map(|s| s.source.as_str()),
            Some("host")
        );
    }
}
