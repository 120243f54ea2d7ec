//! `reflex bench engine`: the resource-graph engine alone, in process, on real files.
//!
//! - 100,000 `noop` resources, wide (no edges) and deep (one chain): run -> first report.
//! - 10,000 `file` resources in a temp dir: run -> first report (every file written).
//! - a 10,000-file graph swapped for one with a single changed file: `swap()` (diff, stop the
//!   removed resource, start the new one), then until its first report.
//! - drift repair: an external write to a managed file until the file is restored, 1,000
//!   times; p50 and p99.
//!
//! Graph parsing is timed separately; the figures are measurements, never assertions.

use clap::Args;
use engine::{Engine, RunOptions};
use graph::Graph;
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct EngineArgs {
    /// `noop` resources in the wide and the deep graph.
    #[arg(long, default_value_t = 100_000)]
    pub noops: usize,
    /// `file` resources in the file and swap runs.
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Drift repairs timed.
    #[arg(long, default_value_t = 1_000)]
    pub repairs: usize,
}

struct Row {
    measure: String,
    value: f64,
}

fn row(rows: &mut Vec<Row>, measure: impl Into<String>, value: f64) {
    rows.push(Row {
        measure: measure.into(),
        value,
    });
}

pub fn run(a: EngineArgs) -> anyhow::Result<ExitCode> {
    if a.noops == 0 || a.files < 2 || a.repairs == 0 {
        return Err(crate::cli::Exit::usage(
            "--noops and --repairs must be at least 1, --files at least 2",
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let summary = rt.block_on(async {
        let engine = Engine::new()?;
        let wide = noop_run(&engine, a.noops, false, &mut rows).await?;
        let deep = noop_run(&engine, a.noops, true, &mut rows).await?;
        let (file_s, swap_ms) = file_and_swap(&engine, tmp.path(), a.files, &mut rows).await?;
        let (p50, p99) = drift(&engine, tmp.path(), a.repairs, &mut rows).await?;
        anyhow::Ok(format!(
            "summary: noop100k_wide_s={wide:.3} noop100k_deep_s={deep:.3} file10k_s={file_s:.3} swap10k_ms={swap_ms:.3} drift_p50_ms={p50:.3} drift_p99_ms={p99:.3}"
        ))
    })?;
    println!(
        "reflex bench engine: {} noop (wide, deep), {} files, {} drift repairs",
        a.noops, a.files, a.repairs
    );
    println!("{:<52} {:>12}", "measure", "value");
    for r in rows {
        println!("{:<52} {:>12.3}", r.measure, r.value);
    }
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

fn parse(v: &Value) -> anyhow::Result<Graph> {
    Graph::from_value(v).map_err(|e| anyhow::anyhow!("bench graph: {e}"))
}

/// Seconds from `run()` to the first report of `n` noops, wide or chained.
async fn noop_run(
    engine: &Engine,
    n: usize,
    deep: bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<f64> {
    let shape = if deep { "deep" } else { "wide" };
    let resources: Vec<Value> = (0..n)
        .map(|i| json!({"kind": "noop", "name": format!("n{i}")}))
        .collect();
    let edges: Vec<Value> = if deep {
        (1..n)
            .map(|i| json!({"from": format!("noop:n{}", i - 1), "to": format!("noop:n{i}")}))
            .collect()
    } else {
        Vec::new()
    };
    let t = Instant::now();
    let g = parse(&json!({"resources": resources, "edges": edges}))?;
    let parse_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(report.ok, "noop run failed: {:?}", report.errors.first());
    running.stop().await;
    row(
        rows,
        format!("{n} noop {shape}: parse + validate (s)"),
        parse_s,
    );
    row(
        rows,
        format!("{n} noop {shape}: run -> converged (s)"),
        secs,
    );
    Ok(secs)
}

fn file_graph(dir: &Path, n: usize, changed: std::ops::Range<usize>) -> Value {
    let resources: Vec<Value> = (0..n)
        .map(|i| {
            let content = if changed.contains(&i) { "changed\n".to_string() } else { format!("file {i}\n") };
            json!({"kind": "file", "name": dir.join(format!("f{i}")).display().to_string(), "content": content})
        })
        .collect();
    json!({ "resources": resources })
}

/// (seconds to converge `n` files, milliseconds for a one-change swap).
async fn file_and_swap(
    engine: &Engine,
    tmp: &Path,
    n: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<(f64, f64)> {
    let dir = tmp.join("files");
    std::fs::create_dir_all(&dir)?;
    let g = parse(&file_graph(&dir, n, 0..0))?;
    let t = Instant::now();
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    let file_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.ok && report.changed.len() == n,
        "file run failed: {:?}",
        report.errors.first()
    );
    row(
        rows,
        format!("{n} files: run -> all written, converged (s)"),
        file_s,
    );
    running.converged(Duration::from_millis(200)).await;

    // Several swaps, each changing a different file; the median is the figure.
    const SWAPS: usize = 5;
    let mut swaps = Vec::with_capacity(SWAPS);
    let mut convs = Vec::with_capacity(SWAPS);
    for k in 0..SWAPS {
        // Cumulative: each graph changes exactly one more file than the one before.
        let g = parse(&file_graph(&dir, n, n / 2..n / 2 + k + 1))?;
        let watches = running.watch_starts();
        let t = Instant::now();
        let stats = running.swap(g).await;
        swaps.push(t.elapsed().as_secs_f64() * 1e3);
        let report = running.first_report().await;
        convs.push(t.elapsed().as_secs_f64() * 1e3);
        let expect = 1;
        anyhow::ensure!(
            report.ok && report.changed.len() == expect && stats.kept == n - expect,
            "swap went wrong: {stats:?} {report:?}"
        );
        anyhow::ensure!(
            running.watch_starts() == watches + expect as u64,
            "kept watches were restarted"
        );
        running.converged(Duration::from_millis(100)).await;
    }
    let (swap_ms, _) = percentiles(swaps.clone());
    let (conv_ms, _) = percentiles(convs);
    let min = swaps.iter().copied().fold(f64::INFINITY, f64::min);
    row(
        rows,
        format!("{n} files, 1 changed: swap() median of {SWAPS} (ms)"),
        swap_ms,
    );
    row(
        rows,
        format!("{n} files, 1 changed: swap() best of {SWAPS} (ms)"),
        min,
    );
    row(
        rows,
        format!("{n} files, 1 changed: swap -> converged, median (ms)"),
        conv_ms,
    );
    running.stop().await;
    Ok((file_s, swap_ms))
}

/// (p50, p99) milliseconds from an external write to the file restored.
async fn drift(
    engine: &Engine,
    tmp: &Path,
    repairs: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<(f64, f64)> {
    let f = tmp.join("drift");
    let want = "managed\n";
    let g = parse(&json!([{"kind": "file", "name": f.display().to_string(), "content": want}]))?;
    let mut running = engine.run(g, RunOptions::default());
    anyhow::ensure!(running.first_report().await.ok, "drift graph failed");
    let path = f.clone();
    // Timed on a plain thread so the engine's runtime is not disturbed by the spinning reader.
    let samples = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(repairs);
        for i in 0..repairs {
            // Let the engine's own echo settle so each drift is seen on its own.
            std::thread::sleep(Duration::from_millis(3));
            let t = Instant::now();
            std::fs::write(&path, format!("drift {i}\n"))?;
            loop {
                if std::fs::read(&path).is_ok_and(|b| b == want.as_bytes()) {
                    break;
                }
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(10),
                    "drift {i} never repaired"
                );
                std::thread::sleep(Duration::from_micros(50));
            }
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(samples)
    })
    .await??;
    running.stop().await;
    let (p50, p99) = percentiles(samples);
    row(
        rows,
        format!("drift repair p50, {repairs} repairs (ms)"),
        p50,
    );
    row(
        rows,
        format!("drift repair p99, {repairs} repairs (ms)"),
        p99,
    );
    Ok((p50, p99))
}

/// (p50, p99) of `samples` (nearest rank).
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1]
    };
    (at(0.50), at(0.99))
}
