//! The loop `reflex bench e2e` and `reflex bench faults` drive: a CURVE stack whose one rule
//! counts each event `<tag>` in the register `<tag>/count` and makes it a distinct one-file
//! action (`<out>/f-<i>`, kept, named `<tag>-<i>`, holding the event's `n`, else `i`) on a real
//! actor whose policy allows file resources under that directory only, and a sender of such
//! events.

use crate::bench_util::BenchStack;
use crate::cli::Exit;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The number of the first event, which wakes everything up.
pub const WARM_UP: u64 = 999_999_999_999;

pub struct FileLoop {
    pub stack: BenchStack,
    pub sender: bus::sender::Sender,
    tag: String,
    actor: String,
    // Last: the files go after the stack that writes them has stopped.
    out: tempfile::TempDir,
}

impl FileLoop {
    /// Start the stack, its actor `actor` and the sender; returns once the warm-up event's
    /// file is on disk.
    pub fn start(tag: &str, actor: &str) -> anyhow::Result<FileLoop> {
        FileLoop::start_in(tag, actor, std::path::Path::new("/tmp"))
    }

    /// [`FileLoop::start`], the files written in a new directory under `dir`.
    pub fn start_in(tag: &str, actor: &str, dir: &std::path::Path) -> anyhow::Result<FileLoop> {
        let out = tempfile::Builder::new()
            .prefix("reflex-bench-files")
            .tempdir_in(dir)?;
        let rule = format!(
            "const MATCH = \"{tag}\";\nfn react(event) {{\n  registers::incr(\"{tag}/count\", 1);\n  let i = event.data.i;\n  let c = event.data.n;\n  if c == () {{ c = i; }}\n  act(`host/${{event.host}}`, [#{{ kind: \"file\", name: `{}/f-${{i}}`, content: `${{c}}` }}], #{{ name: `{tag}-${{i}}` }});\n}}\n",
            out.path().display()
        );
        let mut stack = BenchStack::start_as(
            |d| {
                std::fs::create_dir_all(d)?;
                Ok(std::fs::write(d.join("20-files.rhai"), &rule)?)
            },
            true,
        )?;
        stack.enroll_host(actor)?;
        let policy = stack.state().join("policy.toml");
        // Files under the bench's own directory, nothing else: it may be outside /tmp/, which
        // is all the `reflex up` policy allows.
        let prefix = toml_edit::Value::from(format!("{}/", out.path().display()));
        std::fs::write(
            &policy,
            format!("kinds = [\"file\"]\n\n[file]\npaths = [{prefix}]\n"),
        )?;
        stack.spawn(
            "actor",
            &[
                "--name".into(),
                actor.into(),
                "--policy".into(),
                policy.display().to_string(),
            ],
        )?;
        let sender = bus::sender::Sender::start(bus::sender::SenderConfig::new(
            &stack.endpoints.ingest,
            &stack.security,
        ))?;
        let l = FileLoop {
            stack,
            sender,
            tag: tag.to_string(),
            actor: actor.to_string(),
            out,
        };
        l.send(WARM_UP);
        l.wait_file(WARM_UP, Duration::from_secs(60))?;
        Ok(l)
    }

    /// Send event `i` (waiting while the sender holds its limit).
    pub fn send(&self, i: u64) -> bool {
        let ev = bus::Event::new(self.tag.clone(), self.actor.clone(), json!({ "i": i }));
        self.sender.send_frame_waiting(bus::encode(&ev))
    }

    /// Send an event for file `i` holding `n` (the same file written again with new content:
    /// the actor replaces that graph).
    pub fn send_as(&self, i: u64, n: u64) -> bool {
        let ev = bus::Event::new(
            self.tag.clone(),
            self.actor.clone(),
            json!({ "i": i, "n": n }),
        );
        self.sender.send_frame_waiting(bus::encode(&ev))
    }

    /// The file event `i` makes.
    pub fn file(&self, i: u64) -> PathBuf {
        self.out.path().join(format!("f-{i}"))
    }

    /// Files written so far (the warm-up's included).
    pub fn files(&self) -> u64 {
        // Not the file resource's temporary files: one left by an actor killed mid-write, or
        // one in flight, is not a file written.
        std::fs::read_dir(self.out.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        !e.file_name()
                            .to_string_lossy()
                            .contains(engine::os::TEMP_MARK)
                    })
                    .count() as u64
            })
            .unwrap_or(0)
    }

    /// Wait until event `i`'s file is on disk.
    pub fn wait_file(&self, i: u64, limit: Duration) -> anyhow::Result<()> {
        let f = self.file(i);
        let deadline = Instant::now() + limit;
        while !f.exists() {
            if Instant::now() > deadline {
                return Err(Exit::unreachable(format!("{} never written", f.display())));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    /// Wait (up to `limit`) until `n` files are on disk; how many are.
    pub fn wait_files(&self, n: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        while self.files() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.files()
    }

    /// The register counting the events the rule ran on.
    pub fn counted(&self) -> anyhow::Result<u64> {
        let reply = crate::send::control_request(
            &self.stack.endpoints.control,
            &json!({"cmd": "registers", "op": "get", "key": format!("{}/count", self.tag)}),
            Duration::from_secs(5),
            &self.stack.security,
        )?;
        Ok(reply["ok"].as_u64().unwrap_or(0))
    }

    /// The name of every action the publisher logged for the actor, from its replay door.
    pub fn logged_names(&self) -> anyhow::Result<Vec<String>> {
        let s = &self.stack;
        let replay = bus::secure::connect(zmq::REQ, &s.endpoints.replay, &s.security)?;
        replay.set_rcvtimeo(30_000)?;
        let topic = format!("host/{}/", self.actor);
        let req = json!({"since": 0, "topics": [topic], "limit": 1_000_000});
        replay.send(req.to_string().as_bytes(), 0)?;
        let parts = replay.recv_multipart(0)?;
        Ok(parts
            .iter()
            .skip(1)
            .filter_map(|f| bus::envelope::peek(f, usize::MAX).ok())
            .map(|h| h.name)
            .collect())
    }
}
