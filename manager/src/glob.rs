//! Tag globs and the index that picks the rules an event's tag wakes.
//!
//! Tags are slash-separated. In a glob, `*` inside a segment matches any run of characters
//! except `/`, `?` one character, and a whole segment `**` matches any number of segments
//! (including none). The index answers "which rules match this tag" with one hash look-up for a
//! tag it has seen before, so rules that do not match cost nothing per event.

use std::collections::HashMap;
use std::sync::Arc;

/// A compiled tag glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    segments: Vec<String>,
}

impl Glob {
    /// The glob `text`: `*` and `?` within a segment, `**` for any number of segments.
    pub fn new(text: &str) -> Glob {
        Glob {
            text: text.to_string(),
            segments: text.split('/').map(str::to_string).collect(),
        }
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn is_literal(&self) -> bool {
        !self.text.contains(['*', '?'])
    }

    fn first_literal(&self) -> Option<&str> {
        self.segments
            .first()
            .map(String::as_str)
            .filter(|s| !s.contains(['*', '?']))
    }

    /// True when `tag` matches.
    pub fn matches(&self, tag: &str) -> bool {
        let parts: Vec<&str> = tag.split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pat: &[String], tag: &[&str]) -> bool {
    match pat.split_first() {
        None => tag.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=tag.len()).any(|skip| match_segments(rest, &tag[skip..]))
        }
        Some((p, rest)) => match tag.split_first() {
            Some((t, trest)) => {
                match_segment(p.as_bytes(), t.as_bytes()) && match_segments(rest, trest)
            }
            None => false,
        },
    }
}

/// Wildcard match inside one segment (`*` any run, `?` one byte).
fn match_segment(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Most distinct tags remembered before the memo is cleared (bounds memory under tag floods).
const MEMO_LIMIT: usize = 8_192;

/// Which rules (by position) want which tags.
#[derive(Debug, Default)]
pub struct TagIndex {
    exact: HashMap<String, Vec<usize>>,
    by_first: HashMap<String, Vec<(usize, Glob)>>,
    wild: Vec<(usize, Glob)>,
    memo: HashMap<String, Arc<[usize]>>,
}

impl TagIndex {
    /// Register rule `rule` for `glob`.
    pub fn add(&mut self, rule: usize, glob: Glob) {
        self.memo.clear();
        if glob.is_literal() {
            self.exact.entry(glob.text).or_default().push(rule);
        } else if let Some(first) = glob.first_literal() {
            let first = first.to_string();
            self.by_first.entry(first).or_default().push((rule, glob));
        } else {
            self.wild.push((rule, glob));
        }
    }

    /// The rules matching `tag`, in rule order, each once.
    pub fn lookup(&mut self, tag: &str) -> Arc<[usize]> {
        if let Some(hit) = self.memo.get(tag) {
            return hit.clone();
        }
        let mut hits: Vec<usize> = self.exact.get(tag).cloned().unwrap_or_default();
        let first = tag.split('/').next().unwrap_or("");
        let candidates = self
            .by_first
            .get(first)
            .into_iter()
            .flatten()
            .chain(self.wild.iter());
        hits.extend(candidates.filter(|(_, g)| g.matches(tag)).map(|(r, _)| *r));
        hits.sort_unstable();
        hits.dedup();
        let hits: Arc<[usize]> = hits.into();
        if self.memo.len() >= MEMO_LIMIT {
            self.memo.clear();
        }
        self.memo.insert(tag.to_string(), hits.clone());
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_by_segment() {
        let g = |p: &str, t: &str| Glob::new(p).matches(t);
        assert!(g("demo/hello", "demo/hello"));
        assert!(!g("demo/hello", "demo/hello/x"));
        assert!(g("beacon/*", "beacon/load"));
        assert!(!g("beacon/*", "beacon/load/extra"));
        assert!(!g("beacon/*", "beacons/load"));
        assert!(g("beacon/**", "beacon/a/b/c"));
        assert!(g("beacon/**", "beacon"));
        assert!(g("**", "anything/at/all"));
        assert!(g("host/web?/down", "host/web1/down"));
        assert!(!g("host/web?/down", "host/web10/down"));
        assert!(g("host/web*/down", "host/web10/down"));
        assert!(g("*/result", "actor/result"));
        assert!(g("a*b*c", "axxbyyc"));
        assert!(!g("a*b*c", "axxbyy"));
    }

    #[test]
    fn index_returns_rules_in_order_once() {
        let mut ix = TagIndex::default();
        ix.add(2, Glob::new("beacon/load"));
        ix.add(0, Glob::new("beacon/*"));
        ix.add(1, Glob::new("**"));
        ix.add(0, Glob::new("beacon/lo*"));
        ix.add(3, Glob::new("demo/hello"));
        assert_eq!(&*ix.lookup("beacon/load"), &[0, 1, 2]);
        assert_eq!(&*ix.lookup("beacon/load"), &[0, 1, 2]);
        assert_eq!(&*ix.lookup("demo/hello"), &[1, 3]);
        assert_eq!(&*ix.lookup("other"), &[1]);
    }
}
