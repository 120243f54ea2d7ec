// Expand the deck's markers into dist/deck.md, then render it with Marp into one
// self-contained HTML file, dist/reflex.html. Markers (HTML comments, one per line):
//
//   <!-- include: PATH [lines=A-B] [block=N] -->  a repo file (path from the repo root) as a
//        code block, whole, lines A to B, or its Nth fenced code block (Markdown files)
//   <!-- transcript: NAME [lines=A-B] [match=REGEX] [json=PATH] [width=N] -->
//        slides/transcripts/NAME.txt; match=REGEX keeps the commands and the lines it matches;
//        json=PATH shows that part of the JSON a command printed (a.0.b); ids are shortened
//        to their first 8 and last 4 characters (json=: of the last command's output) and lines longer than width (default 96) end in "…"
//   <!-- figures: e2e|bus|faults|peers -->  a table from slides/data/bench-*.txt
//   <!-- chart: peers -->  an SVG bar chart from the same data, inline (base64)
//   <!-- img: PATH [alt=WORDS_WITH_UNDERSCORES] [class=C] -->  an SVG or PNG from slides/, inline
//        (base64), with its path under it
//   <!-- measured: bench|record -->  when, on what, under what load
//
// Every other HTML comment is a speaker note (Marp's rule). A marker whose file or field is
// missing stops the build: nothing on a slide is typed in place of a measurement.
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join, resolve, extname } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";

const slides = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(slides, "..");
const outDir = resolve(process.argv[2] || join(slides, "dist"));

function die(msg) {
  console.error(`render: ${msg}`);
  process.exit(1);
}
function read(path) {
  if (!existsSync(path)) die(`missing ${path}`);
  return readFileSync(path, "utf8");
}
function args(rest) {
  const o = {};
  for (const a of rest) {
    const m = /^(\w+)=(.*)$/.exec(a);
    if (!m) die(`bad marker argument ${a}`);
    o[m[1]] = m[2];
  }
  return o;
}
function range(text, spec) {
  const m = /^(\d+)-(\d+)$/.exec(spec);
  if (!m) die(`bad lines=${spec}`);
  const lines = text.split("\n");
  const [a, b] = [Number(m[1]), Number(m[2])];
  if (b > lines.length) die(`lines=${spec} past the end (${lines.length} lines)`);
  return lines.slice(a - 1, b).join("\n");
}
const langs = { ".rhai": "rust", ".rs": "rust", ".yaml": "yaml", ".toml": "toml", ".md": "text" };
function fence(lang, body) {
  const ticks = body.includes("```") ? "````" : "```";
  return `${ticks}${lang}\n${body.replace(/\n+$/, "")}\n${ticks}`;
}
function esc(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
function source(label) {
  return `<div class="src">${esc(label)}</div>`;
}

// include: a repo file.
function include(path, o) {
  let text = read(join(repo, path));
  let label = path;
  if (o.block) {
    const blocks = [...text.matchAll(/^```[^\n]*\n([\s\S]*?)^```/gm)].map((m) => m[1]);
    const n = Number(o.block);
    if (!blocks[n - 1]) die(`${path} has no code block ${n}`);
    text = blocks[n - 1];
    label += ` (its code block ${n})`;
  }
  if (o.fn) {
    // A Rhai function, from its `fn NAME(` line to the first `}` at the start of a line.
    const lines = text.split("\n");
    const a = lines.findIndex((l) => l.startsWith(`fn ${o.fn}(`));
    const b = lines.findIndex((l, i) => i > a && l.startsWith("}"));
    if (a < 0 || b < 0) die(`${path} has no function ${o.fn}`);
    text = lines.slice(a, b + 1).join("\n");
    label += `, fn ${o.fn} (lines ${a + 1}–${b + 1})`;
  }
  if (o.lines) {
    text = range(text, o.lines);
    label += `, lines ${o.lines.replace("-", "–")}`;
  }
  return `${fence(langs[extname(path)] || "text", text)}\n${source(label)}`;
}

// transcript: a recorded scene.
const UUID = /\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{8}([0-9a-f]{4})\b/g;
function transcript(name, o) {
  let text = read(join(slides, "transcripts", `${name}.txt`)).replace(/\n$/, "");
  let label = `slides/transcripts/${name}.txt`;
  if (o.json) {
    // The JSON the last command printed.
    const lines = text.split("\n");
    const last = lines.findLastIndex((l) => l.startsWith("$ "));
    let json;
    try {
      json = JSON.parse(lines.slice(last + 1).join("\n"));
    } catch (e) {
      die(`${name}: the last command's output is not JSON: ${e.message}`);
    }
    let v = json;
    for (const k of o.json.split(".")) {
      if (v === undefined || v === null || !(k in Object(v))) die(`${name}: no ${o.json}`);
      v = v[k];
    }
    text = `${lines[last]}\n…\n${JSON.stringify(v, null, 2)}`;
    label += ` (the command's output: its ${o.json})`;
  }
  if (o.lines) {
    text = range(text, o.lines);
    label += `, lines ${o.lines.replace("-", "–")}`;
  }
  if (o.match) {
    // The command lines and the lines a regular expression matches (a tail's lines on one thing).
    const re = new RegExp(o.match);
    const kept = text.split("\n").filter((l) => l.startsWith("$ ") || re.test(l));
    if (kept.length < 2) die(`${name}: no line matches ${o.match}`);
    text = kept.join("\n");
    label += `, the lines matching ${o.match}`;
  }
  const width = Number(o.width || 96);
  if (UUID.test(text)) label += ", ids shortened";
  UUID.lastIndex = 0;
  text = text
    .replace(UUID, "$1…$2")
    .split("\n")
    .map((l) => ([...l].length > width ? [...l].slice(0, width - 1).join("") + "…" : l))
    .join("\n");
  return `${fence("console", text)}\n${source(label)}`;
}

// The bench files: "measure  value [value]" tables, columns two or more spaces apart.
function bench(name) {
  const text = read(join(slides, "data", `bench-${name}.txt`));
  const rows = new Map();
  for (const line of text.split("\n").slice(1)) {
    if (!line.trim() || line.startsWith("summary:")) continue;
    const cols = line.trim().split(/\s{2,}/);
    rows.set(cols[0], cols.slice(1));
  }
  return {
    get(label, col = 0) {
      const r = rows.get(label);
      if (!r || r[col] === undefined) die(`bench-${name}.txt has no "${label}" (column ${col})`);
      return r[col];
    },
    rows,
    head: text.split("\n")[0],
  };
}
const fmt = (v) => {
  const n = Number(v);
  if (Number.isNaN(n)) die(`not a number: ${v}`);
  return Number.isInteger(n) ? n.toLocaleString("en-US") : String(n);
};
const ms = (v) => `${Number(v).toFixed(1)} ms`;
function meta(kind) {
  const file = kind === "bench" ? join(slides, "data", "bench-meta.txt") : join(slides, "transcripts", "meta.txt");
  const m = Object.fromEntries(
    read(file)
      .split("\n")
      .filter(Boolean)
      .map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trim()]),
  );
  return m;
}

// The peers, as measured on the same workload (issue 13 of this project).
const PEERS = {
  salt: "Salt 3008.5 reactor",
  ansible: "ansible-rulebook 1.3.2",
  cite: "Salt and ansible-rulebook: measured on the same workload (an event → a rule → a file touched on the sending host), 2-core machine, 2026; figures from issue 13 of this project",
};

function figures(which) {
  if (which === "e2e") {
    const d = bench("e2e");
    const t = bench("e2e-tmpfs");
    const row = (label, key, show) => `| ${label} | ${show(d.get(key))} | ${show(t.get(key))} |`;
    const bold = (v) => `**${fmt(v)}**`;
    const plain = (unit) => (v) => `${v} ${unit}`;
    return [
      "| one event → rule → file | disk (ext4) | tmpfs |",
      "| --- | ---: | ---: |",
      row("burst of 20,000: files per second", "burst applied (files on disk per s)", bold),
      row("lost in the burst", "lost in the burst", bold),
      row("one at a time: send → file p50", "one at a time: send -> file p50 (ms)", ms),
      row("one at a time: send → file p99", "one at a time: send -> file p99 (ms)", ms),
      row("actor CPU per applied action", "actor CPU per applied action (ms)", plain("ms")),
      row("one bare atomic write alone (floor)", "floor: one atomic file write, CPU (ms)", plain("ms")),
      row("actor memory per kept graph", "actor private RSS per kept graph (KB)", plain("KB")),
      "",
      source(`reflex bench e2e → slides/data/bench-e2e.txt; reflex bench e2e --dir /dev/shm → slides/data/bench-e2e-tmpfs.txt`),
    ].join("\n");
  }
  if (which === "bus") {
    const b = bench("bus");
    return [
      "| 1,000,000 events through the manager | CURVE | insecure |",
      "| --- | ---: | ---: |",
      `| acknowledged per second (durable) | **${fmt(b.get("acknowledged through the manager (ev/s)", 0))}** | ${fmt(b.get("acknowledged through the manager (ev/s)", 1))} |`,
      `| raw ZeroMQ floor, same run | ${fmt(b.get("raw zmq push->pull floor (events/s)", 0))} | ${fmt(b.get("raw zmq push->pull floor (events/s)", 1))} |`,
      `| send → actor/result p50 | ${ms(b.get("send -> actor/result p50 (ms)", 0))} | ${ms(b.get("send -> actor/result p50 (ms)", 1))} |`,
      `| send → actor/result p99 | ${ms(b.get("send -> actor/result p99 (ms)", 0))} | ${ms(b.get("send -> actor/result p99 (ms)", 1))} |`,
      `| rule errors / forged | ${b.get("rule errors", 0)} / ${b.get("forged (refused)", 0)} | ${b.get("rule errors", 1)} / ${b.get("forged (refused)", 1)} |`,
      "",
      source(`reflex bench bus → slides/data/bench-bus.txt`),
    ].join("\n");
  }
  if (which === "faults") {
    const f = bench("faults");
    const out = ["| SIGKILL halfway through 2,000 events | lost | applied twice | all on disk after |", "| --- | ---: | ---: | ---: |"];
    if (f.rows.size === 0) die("bench-faults.txt has no rows");
    for (const [fault, cols] of f.rows) {
      if (fault === "fault") continue;
      if (cols.length !== 3) die(`bench-faults.txt: row "${fault}" has ${cols.length} values`);
      out.push(`| ${fault} | **${cols[0]}** | **${cols[1]}** | ${cols[2]} s |`);
    }
    out.push("", source("reflex bench faults → slides/data/bench-faults.txt"));
    return out.join("\n");
  }
  if (which === "peers") {
    const e = bench("e2e");
    const mem = memory();
    const mb = (...parts) => {
      const kb = parts.reduce((sum, p) => {
        if (mem[p] === undefined) die(`data/memory-idle.txt has no ${p}`);
        return sum + mem[p];
      }, 0);
      return `${Math.round(kb / 1024)} MB`;
    };
    return [
      "| same workload | one at a time | burst | lost in bursts | memory |",
      "| --- | --- | --- | --- | --- |",
      `| **reflex** (this run) | p50 ${ms(e.get("one at a time: send -> file p50 (ms)"))}, p99 ${ms(e.get("one at a time: send -> file p99 (ms)"))} | ${fmt(e.get("burst applied (files on disk per s)"))} files/s | ${fmt(e.get("lost in the burst"))} of 20,000 | control node ${mb("manager", "publisher")}, host ${mb("actor", "beacon")} (PSS idle) |`,
      `| ${PEERS.ansible} | p99 7–32 ms (a debug action) | 630–770 events/s | – | 145–169 MB RSS |`,
      `| ${PEERS.salt} | p50 106 ms, p99 129 ms | 2.2–2.9 reactions/s | 501 of 1,000; 4,501 of 5,000 | master 282 MB, minion 78 MB PSS idle |`,
      "",
      source(`reflex: slides/data/bench-e2e.txt; memory of the recorded reflex up before any event, slides/data/memory-idle.txt. ${PEERS.cite}`),
    ].join("\n");
  }
  die(`unknown figures: ${which}`);
}

// Each part's idle memory, recorded with the demo: {part: PSS in KB}.
function memory() {
  const rows = read(join(slides, "data", "memory-idle.txt")).split("\n").slice(1).filter(Boolean);
  const out = {};
  for (const r of rows) {
    const [part, pss] = r.trim().split(/\s+/);
    if (!/^\d+$/.test(pss)) die(`data/memory-idle.txt: bad row ${r}`);
    out[part] = Number(pss);
  }
  return out;
}

// A horizontal bar chart on a log scale: burst throughput, reflex against the peers.
function chart(which) {
  if (which !== "peers") die(`unknown chart: ${which}`);
  const e = bench("e2e");
  const bars = [
    { name: "reflex (this run)", lo: Number(e.get("burst applied (files on disk per s)")), hi: null, us: true },
    { name: PEERS.ansible, lo: 630, hi: 770 },
    { name: PEERS.salt, lo: 2.2, hi: 2.9 },
  ];
  const W = 1000, rowH = 64, left = 250, right = 150, top = 16, H = top + bars.length * rowH + 40;
  const max = 5; // 10^5
  const x = (v) => left + (Math.log10(Math.max(v, 1)) / max) * (W - left - right);
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="20">`;
  s += `<rect width="${W}" height="${H}" fill="white"/>`;
  for (let p = 0; p <= max; p++) {
    const gx = x(10 ** p);
    s += `<line x1="${gx}" y1="${top - 6}" x2="${gx}" y2="${H - 36}" stroke="#ddd"/>`;
    s += `<text x="${gx}" y="${H - 12}" text-anchor="middle" fill="#555">${(10 ** p).toLocaleString("en-US")}</text>`;
  }
  bars.forEach((b, i) => {
    const y = top + i * rowH + 10;
    const end = x(b.hi ?? b.lo);
    s += `<text x="${left - 12}" y="${y + 28}" text-anchor="end" fill="#222">${esc(b.name)}</text>`;
    s += `<rect x="${left}" y="${y}" width="${Math.max(end - left, 2)}" height="40" fill="${b.us ? "#0b6bcb" : "#9aa5b1"}"/>`;
    const label = b.hi ? `${b.lo}–${b.hi}/s` : `${b.lo.toLocaleString("en-US")}/s`;
    s += `<text x="${end + 10}" y="${y + 28}" fill="#222">${label}</text>`;
  });
  s += `</svg>`;
  return img(Buffer.from(s), "burst: events applied per second, log scale");
}

function img(bytes, alt, type = "image/svg+xml", cls = "figure") {
  return `<img class="${esc(cls || "figure")}" alt="${esc(alt)}" src="data:${type};base64,${bytes.toString("base64")}">`;
}

function measured(kind) {
  const m = meta(kind);
  if (kind === "bench") {
    const tree = m.tree ? ` (${m.tree.replace(" in the work tree", "")})` : "";
    return source(`measured ${m.date.replace("T", " ").replace("Z", " UTC")}: ${m.binary}; work tree at commit ${m.commit}${tree}; ${m.cpus} CPUs, load average ${m["load before"]} before, ${m["load after"]} after`);
  }
  const tree = m.tree ? ` (${m.tree})` : "";
  return source(`recorded ${m.date.replace("T", " ").replace("Z", " UTC")} by slides/scripts/record.sh: ${m.binary}; work tree at commit ${m.commit}${tree}`);
}

const template = read(join(slides, "deck.md"));
const marker = /^<!--[ \t]*(include|transcript|figures|chart|img|measured):[ \t]*(\S+)((?:[ \t]+\w+=\S+)*)[ \t]*-->[ \t]*$/gm;
const deck = template.replace(marker, (_, kind, what, rest) => {
  const o = args(rest.trim() ? rest.trim().split(/\s+/) : []);
  switch (kind) {
    case "include":
      return include(what, o);
    case "transcript":
      return transcript(what, o);
    case "figures":
      return figures(what);
    case "chart":
      return chart(what);
    case "img": {
      const path = join(slides, what);
      if (!existsSync(path)) die(`missing ${path}`);
      const type = { ".svg": "image/svg+xml", ".png": "image/png" }[extname(what)];
      if (!type) die(`img: ${what} is neither .svg nor .png`);
      const alt = o.alt ? o.alt.replace(/_/g, " ") : what;
      return `${img(readFileSync(path), alt, type, o.class)}\n${source(`slides/${what}`)}`;
    }
    case "measured":
      return measured(what);
  }
  die(`unknown marker ${kind}`);
});
if (/<!--\s*(include|transcript|figures|chart|img|measured):/.test(deck)) die("a marker was left unexpanded (check its syntax)");

mkdirSync(outDir, { recursive: true });
const md = join(outDir, "deck.md");
writeFileSync(md, deck);
const html = join(outDir, "reflex.html");
execFileSync(join(slides, "node_modules", ".bin", "marp"), ["--config-file", join(slides, "marp.config.mjs"), "--no-stdin", md, "-o", html], {
  stdio: ["ignore", "inherit", "inherit"],
});
console.error(`render: ${html}`);
