use super::*;
use serde_json::json;

fn policy(text: &str) -> Policy {
    Policy::parse(text, "test.toml").expect("policy parses")
}

fn graph(v: serde_json::Value) -> graph::Graph {
    graph::Graph::from_value(&v).expect("graph parses")
}

fn rule(p: &Policy, v: serde_json::Value) -> Option<String> {
    p.check(&graph(v)).err().map(|r| r.rule)
}

const FULL: &str = r#"
kinds = ["file", "exec", "svc", "pkg", "noop"]
[file]
paths = ["/etc/motd", "/tmp/"]
[exec]
commands = ["systemctl restart -- *", "/usr/local/bin/renew-cert *", "echo hi", "tar c **", ["sh", "-c", "exit 0"]]
users = ["root", "app*"]
[svc]
units = ["*.service"]
[pkg]
packages = ["nginx", "openssl"]
"#;

fn exec(fields: serde_json::Value) -> serde_json::Value {
    let mut e = json!({"kind": "exec", "name": "x", "user": "root"});
    for (k, v) in fields.as_object().unwrap() {
        e[k] = v.clone();
    }
    json!([e])
}

#[test]
fn the_shipped_policies_parse() {
    let strict = Policy::strict();
    assert_eq!(rule(&strict, json!([{"kind": "noop", "name": "a"}])), None);
    assert_eq!(
        rule(&strict, exec(json!({"argv": ["true"]}))).as_deref(),
        Some("kinds")
    );
    policy(UP);
}

#[test]
fn kinds_not_listed_are_refused() {
    let p = policy(FULL);
    assert_eq!(rule(&p, json!([{"kind": "noop", "name": "a"}])), None);
    let r = p
        .check(&graph(json!([{"kind": "msg", "name": "m", "body": "hi"}])))
        .unwrap_err();
    assert_eq!(r.rule, "kinds");
    assert!(r.detail.contains("msg:m"), "{}", r.detail);
}

#[test]
fn paths_match_component_by_component_and_refuse_dots() {
    let p = policy(FULL);
    // Built by hand: the graph parser refuses some of these itself; the policy must not
    // rely on that.
    let file = |path: &str| {
        let spec = Spec::File(std::sync::Arc::new(graph::kinds::FileSpec::at(Path::new(
            path,
        ))));
        p.check_spec(&spec).err().map(|r| r.rule)
    };
    assert_eq!(file("/etc/motd"), None);
    assert_eq!(file("/tmp/a/b"), None);
    for bad in [
        "/tmp/../etc/shadow",
        "/tmp/./x",
        "/tmpx/y",
        "/etc/motd.d",
        "/etc/shadow",
        "/tmp",
        "tmp/x",
        "/tmp/a/../../etc",
    ] {
        assert_eq!(file(bad).as_deref(), Some("file.paths"), "{bad}");
    }
    let r = p
        .check(&graph(
            json!([{"kind": "file", "name": "/etc/shadow", "content": "x"}]),
        ))
        .unwrap_err();
    assert_eq!(
        r.detail,
        "file:/etc/shadow: path /etc/shadow is under no allowed prefix"
    );
    // A source is a path it reads: governed too.
    assert_eq!(
        rule(
            &p,
            json!([{"kind": "file", "name": "/tmp/copy", "source": "/etc/shadow"}])
        )
        .as_deref(),
        Some("file.paths")
    );
    assert_eq!(
        rule(
            &p,
            json!([{"kind": "file", "name": "/tmp/copy", "source": "/tmp/orig"}])
        ),
        None
    );
}

#[test]
fn argv_matches_word_for_word_one_argument_per_glob() {
    let p = policy(FULL);
    let argv = |a: serde_json::Value| rule(&p, exec(json!({ "argv": a })));
    assert_eq!(argv(json!(["systemctl", "restart", "--", "nginx"])), None);
    assert_eq!(
        argv(json!(["systemctl", "restart", "--", "a b; rm -rf /"])),
        None,
        "one argument, no shell"
    );
    assert_eq!(argv(json!(["sh", "-c", "exit 0"])), None);
    assert_eq!(argv(json!(["tar", "c"])), None);
    assert_eq!(argv(json!(["tar", "c", "a", "b"])), None);
    for bad in [
        json!(["systemctl", "restart", "--", "a", "b"]),
        json!(["systemctl", "stop", "--", "nginx"]),
        json!(["systemctl", "restart", "nginx"]),
        json!(["sh", "-c", "exit 1"]),
        json!(["tar", "x"]),
    ] {
        assert_eq!(argv(bad.clone()).as_deref(), Some("exec.commands"), "{bad}");
    }
}

#[test]
fn a_shell_line_is_matched_exactly_and_never_by_a_glob() {
    let p = policy(FULL);
    let shell = |f: serde_json::Value| rule(&p, exec(f));
    assert_eq!(shell(json!({"cmd": "echo hi"})), None);
    for bad in [
        json!({"cmd": "systemctl restart -- x; rm -rf /"}),
        json!({"cmd": "systemctl restart -- x"}),
        json!({"cmd": "echo hi; rm -rf /"}),
        json!({"cmd": "sh -c exit 0"}),
        json!({"argv": ["true"], "ifcmd": "rm -rf /"}),
        json!({"cmd": "echo hi", "watchcmd": "tail -f /var/log/x"}),
    ] {
        assert_eq!(
            shell(bad.clone()).as_deref(),
            Some("exec.commands"),
            "{bad}"
        );
    }
    assert_eq!(shell(json!({"cmd": "echo hi", "ifcmd": "echo hi"})), None);
}

#[test]
fn users_are_checked_even_when_none_is_named() {
    let p = policy(FULL);
    assert_eq!(
        rule(
            &p,
            exec(json!({"argv": ["sh", "-c", "exit 0"], "user": "app1"}))
        ),
        None
    );
    assert_eq!(
        rule(
            &p,
            exec(json!({"argv": ["sh", "-c", "exit 0"], "user": "nobody"}))
        )
        .as_deref(),
        Some("exec.users")
    );
    let none = json!([{"kind": "exec", "name": "x", "argv": ["sh", "-c", "exit 0"]}]);
    let mut mine = policy(FULL);
    mine.own_user = "root".into();
    assert_eq!(rule(&mine, none.clone()), None);
    mine.own_user = "mallory".into();
    assert_eq!(rule(&mine, none).as_deref(), Some("exec.users"));
}

#[test]
fn units_and_packages() {
    let p = policy(FULL);
    let svc = |u: &str| rule(&p, json!([{"kind": "svc", "name": u, "state": "running"}]));
    assert_eq!(svc("nginx.service"), None);
    assert_eq!(svc("nginx.socket").as_deref(), Some("svc.units"));
    let pkg = |n: &str| rule(&p, json!([{"kind": "pkg", "name": n}]));
    assert_eq!(pkg("nginx"), None);
    assert_eq!(pkg("nginx-extras").as_deref(), Some("pkg.packages"));
}

#[test]
fn the_glob_is_small_and_exact() {
    assert!(glob("a*c", "abc") && glob("a*c", "ac") && glob("*", "") && glob("x", "x"));
    assert!(glob("*.service", "a.service") && glob("a*b*c", "axxbyyc"));
    assert!(!glob("a*c", "ab") && !glob("x", "xy") && !glob("*.service", "a.socket"));
    assert!(!glob("a*a", "a"), "the two ends do not overlap");
}

#[test]
fn a_bad_file_names_its_line_and_field() {
    let err = |text: &str| Policy::parse(text, "p.toml").unwrap_err();
    let e = err("kinds = [\"noop\"]\n[file]\npaths = [\"/tmp/\", \"relative\"]\n");
    assert_eq!((e.line, e.field.as_deref()), (3, Some("file.paths")));
    assert!(
        e.to_string().starts_with("p.toml:3: field `file.paths`: "),
        "{e}"
    );
    let e = err("kinds = [\"noop\", \"frobnicate\"]\n");
    assert_eq!((e.line, e.field.as_deref()), (1, Some("kinds")));
    let e = err("kinds = []\n\n[exec]\nuser = [\"root\"]\n");
    assert_eq!((e.line, e.field.as_deref()), (4, Some("exec.user")));
    let e = err("kinds = []\n[exec]\ncommands = [\"a ** b\"]\n");
    assert_eq!((e.line, e.field.as_deref()), (3, Some("exec.commands")));
    let e = err("kinds = [\n");
    assert_eq!(e.field, None);
    let e = err("[file]\npaths = \"/tmp/\"\n");
    assert_eq!((e.line, e.field.as_deref()), (2, Some("file.paths")));
    let e = err("[file]\npaths = [\"/tmp/../etc/\"]\n");
    assert_eq!((e.line, e.field.as_deref()), (2, Some("file.paths")));
}
