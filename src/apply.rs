//! `reflex apply`: converge a YAML graph on this machine without any daemon, then keep it
//! converged (watching and repairing) until Ctrl-C, or until nothing has changed for
//! `--converged-timeout` seconds. One line per resource as it first settles; `--graphviz`
//! writes the graph with each resource's state; `--noop` checks without changing anything.

use crate::cli::Exit;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The graph file (YAML: `resources:` and `edges:`).
    pub graph: PathBuf,
    /// Exit 0 once nothing has changed for this many seconds.
    #[arg(long, allow_negative_numbers = true)]
    pub converged_timeout: Option<f64>,
    /// Check only: report what would change, change nothing (`meta.noop` for every resource).
    #[arg(long)]
    pub noop: bool,
    /// Write the graph in DOT (graphviz) to this file once every resource settled.
    #[arg(long, value_name = "FILE.dot")]
    pub graphviz: Option<PathBuf>,
}

pub fn run(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.graph)
        .map_err(|e| Exit::usage(format!("cannot read {}: {e}", a.graph.display())))?;
    let graph = graph::Graph::from_yaml(&text)
        .map_err(|e| Exit::usage(format!("{}: {e}", a.graph.display())))?;
    let idle = match a.converged_timeout {
        Some(s) if !(s.is_finite() && s >= 0.0) => {
            return Err(Exit::usage(
                "--converged-timeout must be a number of seconds >= 0",
            ))
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let engine = engine::Engine::new()?;
        let n = graph.len();
        // Signals are caught from here on, so Ctrl-C during the first run still stops the
        // resources (and kills their commands) instead of leaving them behind.
        let stop = crate::cli::stop_flag()?;
        let mut running = engine.run(
            graph,
            engine::RunOptions {
                noop: a.noop,
                ..Default::default()
            },
        );
        let changed_word = if a.noop { "would change" } else { "changed" };
        // On a terminal, every resource gets its line; piped, only what matters.
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let progress = |id: &str, r: &Result<engine::Outcome, String>| match r {
            Ok(engine::Outcome::Converged) if tty => eprintln!("converged {id}"),
            Ok(engine::Outcome::Converged) => {}
            Ok(_) => eprintln!("{changed_word} {id}"),
            Err(e) => eprintln!("error: {id}: {e}"),
        };
        let report = tokio::select! {
            r = running.first_report_progress(progress) => r,
            _ = wait_flag(&stop) => {
                running.stop().await;
                eprintln!("interrupted before the first run completed");
                return anyhow::Ok(ExitCode::from(130));
            }
        };
        eprintln!(
            "{n} resources: {} {changed_word}, {} errors in {:.1} ms",
            report.changed.len(),
            report.errors.len(),
            report.elapsed.as_secs_f64() * 1e3
        );
        if let Some(file) = &a.graphviz {
            let name = a
                .graph
                .file_stem()
                .map_or_else(|| "graph".into(), |s| s.to_string_lossy());
            std::fs::write(file, running.to_dot(&name))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
        }
        let mut failed = !report.ok;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(100), running.next_event()).await {
                Ok(Some(engine::EngineEvent::Changed { id })) if a.noop => {
                    eprintln!("drifted (would repair) {id}")
                }
                Ok(Some(engine::EngineEvent::Changed { id })) => eprintln!("repaired {id}"),
                Ok(Some(engine::EngineEvent::Message { id, text })) => {
                    eprintln!("msg {id}: {text}")
                }
                Ok(Some(engine::EngineEvent::Failed { id, error })) => {
                    failed = true;
                    eprintln!("error: {id}: {error}");
                }
                Ok(None) => break,
                Err(_) => {}
            }
            // `converged` resolves at once when the graph has been quiet for `d` already.
            if let Some(d) = idle {
                if tokio::time::timeout(Duration::ZERO, running.converged(d))
                    .await
                    .is_ok()
                {
                    eprintln!("converged: nothing changed for {:.1}s", d.as_secs_f64());
                    break;
                }
            }
        }
        running.stop().await;
        anyhow::Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

async fn wait_flag(flag: &std::sync::atomic::AtomicBool) {
    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
