//! The live page: a read-only web page the manager serves beside its `/metrics`, showing the
//! hosts (up or down, converged, their graphs in force drawn as pictures), the live event
//! stream (filtered by a tag glob), each rule's hits and errors, and the trace of any event
//! clicked. Its model ([`view`]) follows the history, so serving it costs the manager's own
//! thread nothing. The assets are compiled in: nothing is fetched from anywhere.
//!
//! The page and its API show what actions hold (file contents included), so they ask for the
//! token the manager writes to `<state>/http.token` (owner-only): `?token=...` on the page's
//! address, which the page passes on to its API calls. `/metrics` holds counts only and asks
//! for nothing.

pub mod view;

use crate::glob::Glob;
use crate::history::{self, Reader};
use serde_json::{json, Value};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use view::View;

const INDEX: &str = include_str!("page/index.html");
/// Graphviz's `dot` gets this long to draw a graph.
const DOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Graphs with more resources than this are not drawn (the picture would be unreadable and
/// `dot` slow); their DOT is offered instead.
const MAX_DRAWN: usize = 500;

pub use telemetry::Reply;

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: v.to_string().into_bytes(),
    }
}

fn error_reply(status: u16, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

/// The page's state: its view of the history and the token it asks for.
pub struct Page {
    history: PathBuf,
    token: String,
    view: Mutex<View>,
}

/// Where the page's token is kept.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("http.token")
}

/// Make (or read) the page's token in `state_dir`: 32 random bytes as hex, owner-only.
pub fn token(state_dir: &Path) -> io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = token_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    let t = hex::encode(bytes);
    let tmp = state_dir.join("http.token.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(t.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(t)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of `key` in a query string, percent-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Page {
    /// The page of the manager whose state dir is `state_dir`.
    pub fn new(state_dir: &Path) -> io::Result<Page> {
        let dir = history::dir(state_dir);
        Ok(Page {
            token: token(state_dir)?,
            view: Mutex::new(View::new(&dir)),
            history: dir,
        })
    }

    /// The token the page asks for.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The answer to `GET url` (path and query), or `None` for a path that is not the page's.
    pub fn answer(&self, url: &str) -> Option<Reply> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        if path != "/" && !path.starts_with("/api/") {
            return None;
        }
        let given = param(query, "token").unwrap_or_default();
        if !same(&given, &self.token) {
            return Some(Reply {
                status: 401,
                content_type: "text/plain; charset=utf-8",
                body:
                    b"the live page needs its token: ?token=<the manager's state dir/http.token>\n"
                        .to_vec(),
            });
        }
        Some(match path {
            "/" => Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: INDEX.as_bytes().to_vec(),
            },
            "/api/overview" => self.overview(),
            "/api/events" => self.events(query),
            "/api/graph" => self.graph(query),
            p => match p.strip_prefix("/api/trace/") {
                Some(id) => self.trace(&decode(id)),
                None => error_reply(404, "no such page"),
            },
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        v.update();
        v
    }

    fn overview(&self) -> Reply {
        let v = self.view();
        let hosts: Vec<Value> = v
            .hosts
            .iter()
            .map(|(name, h)| {
                json!({"name": name, "up": h.up, "converged": h.converged, "seen": h.seen, "graphs": h.graphs})
            })
            .collect();
        let rules: Vec<Value> = v
            .rules
            .iter()
            .map(|(name, r)| json!({"rule": name, "hits": r.hits, "errors": r.errors, "last_error": r.last_error}))
            .collect();
        json_reply(
            200,
            &json!({"hosts": hosts, "rules": rules, "events": v.events}),
        )
    }

    fn events(&self, query: &str) -> Reply {
        let tag = param(query, "tag")
            .filter(|t| !t.is_empty())
            .map(|t| Glob::new(&t));
        let after: u64 = param(query, "after")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let limit: usize = param(query, "limit")
            .and_then(|a| a.parse().ok())
            .unwrap_or(200)
            .min(view::RECENT);
        let v = self.view();
        let mut out: Vec<&view::Recent> = v
            .recent
            .iter()
            .rev()
            .filter(|r| r.at > after && tag.as_ref().is_none_or(|g| g.matches(&r.event.tag)))
            .take(limit)
            .collect();
        out.reverse();
        json_reply(200, &json!(out))
    }

    fn trace(&self, id: &str) -> Reply {
        let traced = Reader::open(&self.history).and_then(|r| history::trace(&r, id));
        match traced {
            Ok(t) => json_reply(200, &json!(t)),
            Err(e) => error_reply(500, &format!("reading the history: {e}")),
        }
    }

    /// A host's graph in force, drawn as SVG by Graphviz; its DOT when Graphviz is not
    /// installed or the graph is too large to draw.
    fn graph(&self, query: &str) -> Reply {
        let (Some(host), Some(name)) = (param(query, "host"), param(query, "name")) else {
            return error_reply(400, "graph needs host and name");
        };
        let graph = {
            let v = self.view();
            match v.hosts.get(&host).and_then(|h| h.graphs.get(&name)) {
                Some(g) => g.graph.clone(),
                None => return error_reply(404, "no such graph in force on that host"),
            }
        };
        let dot = match graph::Graph::from_value(&graph) {
            Ok(g) => g.to_dot(&name),
            Err(e) => return error_reply(422, &format!("the graph does not parse: {e}")),
        };
        let n = graph
            .as_array()
            .or_else(|| graph.get("resources").and_then(Value::as_array))
            .map_or(0, Vec::len);
        if n <= MAX_DRAWN {
            if let Some(svg) = draw(&dot) {
                return Reply {
                    status: 200,
                    content_type: "image/svg+xml",
                    body: svg,
                };
            }
        }
        Reply {
            status: 200,
            content_type: "text/vnd.graphviz; charset=utf-8",
            body: dot.into_bytes(),
        }
    }
}

/// `dot -Tsvg`, killed past [`DOT_TIMEOUT`]; `None` when Graphviz is missing or fails.
fn draw(dot: &str) -> Option<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let text = dot.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let deadline = std::time::Instant::now() + DOT_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let _ = writer.join();
                let out = reader.join().ok()?.ok()?;
                return (status.success() && !out.is_empty()).then_some(out);
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
