//! The talk (`slides/`): its default build (`slides/build`: the committed transcripts and bench
//! files, Marp from `slides/package-lock.json`) renders one self-contained HTML deck, and the
//! deck holds up: 20 to 30 slides, each with a title and speaker notes; nothing it would fetch
//! from a network; every `reflex ...` command it shows is one the real binary has; its code is
//! included from the repo's files and its figures parsed from the bench files; and three of its
//! slides, opened in headless Chromium at their `#N` anchor, show that slide and are not blank.
//!
//! Needs node, npm and chromium (`.ci/run` installs them): without them the test fails, saying
//! what is missing, instead of passing silently.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const REFLEX: &str = env!("CARGO_BIN_EXE_reflex");
const CHROMIUM: &str = "/usr/bin/chromium";

fn slides() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("slides")
}

fn need(program: &str, install: &str) {
    let found = Command::new(program).arg("--version").output();
    assert!(
        matches!(&found, Ok(o) if o.status.success()),
        "{program} is missing or broken ({found:?}): the deck's test needs it; install it \
         ({install}) or run .ci/run, which does"
    );
}

struct Built {
    dir: PathBuf,
    html: String,
    md: String,
}

/// The default build, once for every test here, into this test target's temp dir.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        need("node", "Debian: apt-get install nodejs npm");
        need("npm", "Debian: apt-get install npm");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("slides");
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(slides().join("build"))
            .arg("--out")
            .arg(&dir)
            .output()
            .expect("run slides/build");
        assert!(
            out.status.success(),
            "slides/build failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("slides/build made no {f}: {e}"))
        };
        Built {
            html: read("reflex.html"),
            md: read("deck.md"),
            dir,
        }
    })
}

/// The text between each `open` (from its start) and the next `close`.
fn spans<'a>(s: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(a) = rest.find(open) {
        let from = &rest[a..];
        let Some(b) = from.find(close) else { break };
        out.push(&from[..b + close.len()]);
        rest = &from[b + close.len()..];
    }
    out
}

/// The slides: Marp writes each as one `<section id="N" ...>...</section>`.
fn sections(html: &str) -> Vec<&str> {
    spans(html, "<section id=\"", "</section>")
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

#[test]
fn twenty_to_thirty_slides_each_with_a_title_and_notes() {
    let b = built();
    let slides = sections(&b.html);
    assert!(
        (20..=30).contains(&slides.len()),
        "the deck has {} slides, not 20 to 30",
        slides.len()
    );
    for (i, s) in slides.iter().enumerate() {
        assert!(
            s.contains("<h1") || s.contains("<h2"),
            "slide {} has no title (h1 or h2): {}",
            i + 1,
            strip_tags(s)
                .split_whitespace()
                .take(30)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // Marp turns each slide's HTML comments into its notes: one note block per slide index.
    let notes: BTreeMap<usize, String> =
        spans(&b.html, "<div class=\"bespoke-marp-note\"", "</div>")
            .iter()
            .map(|n| {
                let idx = n
                    .split("data-index=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("a note without its slide index: {n}"));
                (idx, strip_tags(n))
            })
            .collect();
    for i in 0..slides.len() {
        let words = notes
            .get(&i)
            .map(|n| n.split_whitespace().count())
            .unwrap_or(0);
        assert!(
            words >= 15,
            "slide {} has {words} words of speaker notes",
            i + 1
        );
    }
}

/// Every `data:` URI's content (base64 or percent-encoded), to be checked like the page.
fn data_uris(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in html.split("data:").skip(1) {
        let end = part
            .find(|c: char| c == '"' || c == '\'' || c == ')' || c.is_whitespace())
            .unwrap_or(part.len());
        let uri = &part[..end];
        let Some((head, body)) = uri.split_once(',') else {
            continue;
        };
        if head.ends_with(";base64") {
            out.push(String::from_utf8_lossy(&base64(body)).into_owned());
        } else {
            out.push(percent_decode(body));
        }
    }
    out
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What in `doc` would be fetched from elsewhere: an attribute that loads something (src, href,
/// poster, srcset...) or a CSS `url(...)` / `@import` naming anything but a `data:` URI or a
/// `#fragment` of the page itself.
fn fetched(doc: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let lower = doc.to_ascii_lowercase();
    let attrs = [
        " src=",
        " href=",
        " xlink:href=",
        " poster=",
        " srcset=",
        " action=",
        " data=",
    ];
    for attr in attrs {
        for (at, _) in lower.match_indices(attr) {
            let v = lower[at + attr.len()..].trim_start_matches(['"', '\'']);
            if !(v.starts_with("data:")
                || v.starts_with('#')
                || v.starts_with('"')
                || v.starts_with('\''))
            {
                bad.push(snippet(doc, at));
            }
        }
    }
    for (at, _) in lower.match_indices("url(") {
        let v = lower[at + 4..].trim_start_matches(['"', '\'', ' ']);
        if !(v.starts_with("data:") || v.starts_with('#')) {
            bad.push(snippet(doc, at));
        }
    }
    if let Some(at) = lower.find("@import") {
        bad.push(snippet(doc, at));
    }
    bad
}

/// Up to 80 characters of `doc` from byte `at` (a match of ASCII text, so a char boundary).
fn snippet(doc: &str, at: usize) -> String {
    doc[at..].chars().take(80).collect()
}

/// Every `http://` or `https://` in `doc` but XML namespace names (`http://www.w3.org/...`,
/// which name a vocabulary and are never fetched: an SVG's `xmlns`, a DTD's public id) and the
/// licence pointer Marp's bundled script carries in its opening comment (`<script>/*!! License:
/// https://unpkg.com/@marp-team/marp-cli@VERSION/lib/bespoke.js.LICENSE.txt */`), text only.
fn urls(doc: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for scheme in ["http://", "https://"] {
        for (at, _) in doc.match_indices(scheme) {
            let rest = &doc[at..];
            let before: String = doc[..at]
                .chars()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let ok = rest.starts_with("http://www.w3.org/")
                || (rest.starts_with("https://unpkg.com/@marp-team/marp-cli@")
                    && before.ends_with("<script>/*!! License: "));
            if !ok {
                bad.push(rest.chars().take(80).collect());
            }
        }
    }
    bad
}

#[test]
fn the_deck_needs_no_network() {
    let b = built();
    let mut bad: Vec<String> = fetched(&b.html).into_iter().chain(urls(&b.html)).collect();
    for inner in data_uris(&b.html) {
        bad.extend(fetched(&inner));
        bad.extend(urls(&inner));
    }
    assert!(bad.is_empty(), "the deck would fetch or names: {bad:#?}");
    // The checks themselves: they catch what they are for.
    assert!(!fetched(r#"<img src="https://x.example/a.png">"#).is_empty());
    assert!(!fetched("<style>a{background:url(//x.example/a.png)}</style>").is_empty());
    assert!(!fetched(r#"<link href="theme.css">"#).is_empty());
    assert!(!urls("see http://x.example/").is_empty());
    let svg = "PHN2Zz48aW1hZ2UgaHJlZj0iaHR0cHM6Ly94LmV4YW1wbGUvYS5wbmciLz48L3N2Zz4=";
    let inner = data_uris(&format!("<img src=\"data:image/svg+xml;base64,{svg}\">"));
    assert!(!fetched(&inner[0]).is_empty(), "{inner:?}");
}

/// What `reflex [WORDS] --help` prints.
fn help(words: &[&str]) -> String {
    let out = Command::new(REFLEX)
        .args(words)
        .arg("--help")
        .output()
        .expect("run reflex --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands a help text lists, if it lists any.
fn subcommands(help: &str) -> Option<Vec<String>> {
    let list = help.split("Commands:\n").nth(1)?;
    Some(
        list.lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
    )
}

/// Whether a help text documents `flag` (`--name`, whole).
fn documents(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        !help[at + flag.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Each command line the deck shows: in code blocks, the lines after a `$ ` prompt (a
/// transcript's other lines are output) or every line where there is no prompt; inline code
/// too. Split on `;`, `|` and `&&`.
fn shown_commands(html: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = html.to_string();
    for pre in spans(html, "<pre", "</pre>") {
        let text = strip_tags(pre);
        let prompted: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("$ ")).collect();
        if prompted.is_empty() {
            lines.extend(text.lines().map(str::to_string));
        } else {
            lines.extend(prompted.into_iter().map(str::to_string));
        }
        rest = rest.replacen(pre, "", 1);
    }
    lines.extend(spans(&rest, "<code", "</code>").into_iter().map(strip_tags));
    lines
        .iter()
        .flat_map(|l| l.split([';', '|']).flat_map(|p| p.split("&&")))
        .map(|c| c.trim().to_string())
        .filter(|c| {
            c.split_whitespace()
                .next()
                .is_some_and(|w| w == "reflex" || w.ends_with("/reflex"))
        })
        .collect()
}

#[test]
fn every_reflex_command_shown_exists() {
    let b = built();
    let commands = shown_commands(&b.html);
    assert!(
        commands.len() >= 15,
        "only {} reflex commands found on the slides: {commands:#?}",
        commands.len()
    );
    let top = subcommands(&help(&[])).expect("reflex --help lists its commands");
    let mut helps: HashMap<Vec<String>, String> = HashMap::new();
    let mut checked = 0;
    for c in &commands {
        let words: Vec<&str> = c.split_whitespace().collect();
        let Some(sub) = words.get(1).filter(|w| !w.starts_with('-')) else {
            continue;
        };
        assert!(
            top.iter().any(|t| t == sub),
            "the slides show `{c}`, but `reflex --help` has no `{sub}` (it has {top:?})"
        );
        let mut path = vec![sub.to_string()];
        let sub_help = helps
            .entry(path.clone())
            .or_insert_with(|| help(&[sub]))
            .clone();
        // `reflex bench` alone names the group; with a next word, that is one of its commands.
        let next = words.get(2).copied().filter(|w| !w.starts_with('-'));
        if let (Some(subs), Some(next)) = (subcommands(&sub_help), next) {
            assert!(
                subs.iter().any(|t| t == next),
                "the slides show `{c}`, but `reflex {sub} --help` has no `{next}` (it has {subs:?})"
            );
            path.push(next.to_string());
        }
        let text = helps
            .entry(path.clone())
            .or_insert_with(|| help(&path.iter().map(String::as_str).collect::<Vec<_>>()));
        // Each flag it shows is one that command documents (a line cut short on the slide
        // ends in "…": its last word is not checked).
        for flag in words
            .iter()
            .filter(|w| w.starts_with("--") && !w.contains('…'))
        {
            let flag = flag.split('=').next().unwrap_or(flag);
            assert!(
                documents(text, flag),
                "the slides show `{c}`, but `reflex {} --help` has no `{flag}`",
                path.join(" ")
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "{checked} commands checked: {commands:#?}");
    // The check itself: a command that does not exist is caught.
    let fake = shown_commands("<pre><code>$ reflex frobnicate now\n</code></pre>");
    assert_eq!(fake, ["reflex frobnicate now"]);
    assert!(!top.iter().any(|t| t == "frobnicate"));
    let send = help(&["send"]);
    assert!(
        documents(&send, "--data") && !documents(&send, "--dat") && !documents(&send, "--frob")
    );
}

#[test]
fn code_is_included_and_figures_are_parsed_not_typed() {
    let b = built();
    let template = std::fs::read_to_string(slides().join("deck.md")).expect("slides/deck.md");
    assert!(
        !template.contains("```"),
        "slides/deck.md holds a code block of its own: code comes from the repo by include"
    );
    // Each file the template includes is on the built slides, whole or in part, as it is now.
    let mut included = 0;
    for line in template.lines() {
        let Some(rest) = line.strip_prefix("<!-- include: ") else {
            continue;
        };
        let path = rest.split_whitespace().next().expect("a path");
        let text = std::fs::read_to_string(slides().join("..").join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let probe = text
            .lines()
            .filter(|l| l.trim().len() > 12 && !l.contains('`'))
            .find(|l| b.md.contains(l.trim()))
            .unwrap_or_else(|| panic!("nothing of {path} is on the slides"));
        assert!(b.md.contains(probe.trim()));
        included += 1;
    }
    assert!(included >= 8, "{included} files included");
    // The figures are the bench files' own, from their summary lines.
    for (file, keys) in [
        ("bench-e2e.txt", &["applied_per_s"][..]),
        ("bench-e2e-tmpfs.txt", &["applied_per_s"][..]),
        (
            "bench-bus.txt",
            &["events_per_s", "insecure_events_per_s", "floor_per_s"][..],
        ),
    ] {
        let text = std::fs::read_to_string(slides().join("data").join(file)).expect(file);
        let summary = text
            .lines()
            .find_map(|l| l.strip_prefix("summary: "))
            .unwrap_or_else(|| panic!("{file} has no summary line"));
        let fields: HashMap<&str, &str> = summary
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        for k in keys {
            let v: u64 = fields[k].parse().unwrap_or_else(|_| panic!("{file}: {k}"));
            let shown = group_thousands(v);
            assert!(
                b.html.contains(&shown),
                "{file}'s {k} = {v} is not on the slides as {shown}"
            );
        }
    }
    let faults = std::fs::read_to_string(slides().join("data/bench-faults.txt")).unwrap();
    assert!(faults.contains("summary: lost=") && b.html.contains("SIGKILL halfway"));
    // And the transcripts: the id `reflex send` printed in the recording is the one traced.
    let hello = std::fs::read_to_string(slides().join("transcripts/02-hello.txt")).unwrap();
    let trace = std::fs::read_to_string(slides().join("transcripts/04-trace-hello.txt")).unwrap();
    let id = hello.lines().nth(1).expect("send printed an id").trim();
    assert!(trace.starts_with(&format!("$ reflex trace {id}\nevent {id} demo/hello")));
    assert!(
        trace.contains("actor/repaired"),
        "the recorded trace shows no repair"
    );
}

fn group_thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn chromium(profile: &Path, args: &[&str], url: &str) -> std::process::Output {
    Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,720",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn three_slides_render_at_their_anchor_and_are_not_blank() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the deck's test renders slides in it; install it (Debian: \
         apt-get install chromium) or run .ci/run, which does"
    );
    let b = built();
    let n = sections(&b.html).len();
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("profile");
    let page = format!("file://{}", b.dir.join("reflex.html").display());
    let picks = [1, n / 2, n - 1];
    let mut shots = Vec::new();
    for &i in &picks {
        let url = format!("{page}#{i}");
        // The anchor shows slide i: the bespoke template marks it active, and only it.
        let dom = chromium(
            &profile,
            &["--virtual-time-budget=3000", "--dump-dom"],
            &url,
        );
        assert!(dom.status.success(), "chromium --dump-dom {url} failed");
        let dom = String::from_utf8_lossy(&dom.stdout);
        let slides: Vec<&str> = spans(&dom, "<svg data-marpit-svg", ">");
        assert_eq!(slides.len(), n, "{url}: {} slides in the DOM", slides.len());
        let active: Vec<usize> = (0..n)
            .filter(|&k| slides[k].contains("bespoke-marp-active"))
            .map(|k| k + 1)
            .collect();
        assert_eq!(active, [i], "{url} shows slide(s) {active:?}");
        let png = tmp.path().join(format!("slide{i}.png"));
        let out = chromium(
            &profile,
            &[
                "--virtual-time-budget=3000",
                &format!("--screenshot={}", png.display()),
            ],
            &url,
        );
        assert!(
            out.status.success() && png.exists(),
            "chromium made no screenshot of {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        shots.push(png);
    }
    let out = Command::new("node")
        .arg(slides().join("scripts/pngstats.mjs"))
        .args(&shots)
        .output()
        .expect("run node scripts/pngstats.mjs");
    assert!(
        out.status.success(),
        "pngstats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(stats.len(), 3, "{stats:?}");
    for (s, i) in stats.iter().zip(picks) {
        assert_eq!(
            (s["width"].as_u64(), s["height"].as_u64()),
            (Some(1280), Some(720))
        );
        let colours = s["colours"].as_u64().unwrap();
        let ink = s["ink"].as_f64().unwrap();
        // Text is anti-aliased: a slide with words on it has hundreds of colours; a blank page
        // has one, and a page with only the progress bar a handful.
        assert!(
            colours > 64 && ink > 0.02,
            "slide {i} looks blank: {colours} colours, {:.1} % ink ({})",
            ink * 100.0,
            s["file"]
        );
    }
    let hashes: Vec<&str> = stats
        .iter()
        .map(|s| s["sha256"].as_str().unwrap())
        .collect();
    assert!(
        hashes[0] != hashes[1] && hashes[1] != hashes[2] && hashes[0] != hashes[2],
        "two of slides {picks:?} look the same: {hashes:?}"
    );
}

/// The deck laid out by Chromium: for each slide, how far down and across its content reaches
/// and how far its code blocks would scroll sideways, reported by a script added to a copy of
/// the page (every slide is laid out, shown or not).
#[test]
fn nothing_runs_off_a_slide() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the deck's test lays the slides out in it; install it (Debian: \
         apt-get install chromium) or run .ci/run, which does"
    );
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let probe = r#"<script>addEventListener("load", () => setTimeout(() => {
  const r = [...document.querySelectorAll("section[id]")].map((s) => {
    let bottom = 0, right = 0, scroll = 0;
    for (const c of s.children) {
      bottom = Math.max(bottom, c.offsetTop + c.offsetHeight);
      right = Math.max(right, c.offsetLeft + c.offsetWidth);
    }
    for (const p of s.querySelectorAll("pre")) scroll = Math.max(scroll, p.scrollWidth - p.clientWidth);
    return [Number(s.id), bottom, right, scroll, s.clientHeight, s.clientWidth];
  });
  const out = document.createElement("pre");
  out.id = "layout-report";
  out.textContent = JSON.stringify(r);
  document.body.appendChild(out);
}, 300));</script></body>"#;
    assert!(b.html.contains("</body>"));
    let page = tmp.path().join("probe.html");
    std::fs::write(&page, b.html.replacen("</body>", probe, 1)).unwrap();
    let out = chromium(
        &tmp.path().join("profile"),
        &["--virtual-time-budget=3000", "--dump-dom"],
        &format!("file://{}", page.display()),
    );
    assert!(out.status.success(), "chromium --dump-dom failed");
    let dom = String::from_utf8_lossy(&out.stdout);
    let report = dom
        .split("<pre id=\"layout-report\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .expect("the layout report in the DOM");
    let rows: Vec<[f64; 6]> = serde_json::from_str(&strip_tags(report)).expect("the report");
    assert_eq!(rows.len(), sections(&b.html).len());
    for [n, bottom, right, scroll, height, width] in rows {
        assert_eq!((height, width), (720.0, 1280.0), "slide {n}'s size");
        // The page number sits in the bottom padding: content may reach 20 px above the edge.
        assert!(
            bottom <= height - 20.0,
            "slide {n} runs off its page: its content ends at {bottom} px of {height}"
        );
        assert!(right <= width - 48.0, "slide {n} is {right} px wide");
        assert!(
            scroll <= 1.0,
            "a code block on slide {n} scrolls {scroll} px sideways"
        );
    }
}
