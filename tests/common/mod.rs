//! Shared helpers for the integration tests: free ports, temp dirs, child processes that are
//! always cleaned up, and a subscriber on the manager's monitor stream.
#![allow(dead_code)]

pub mod sign;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const REFLEX: &str = env!("CARGO_BIN_EXE_reflex");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port base with all its ports free right now. Tests run in parallel threads and
/// processes, so each call starts from a different spot and checks every port. Below the
/// kernel's ephemeral range (32768 up): a port there can be taken, between the check and the
/// bind, as the source port of any outgoing connection (a reconnecting socket makes many).
pub fn free_port_base() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 500) as u16 * 40;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + (seed + n * bus::endpoints::TCP_PORTS) % 12_700;
        if (0..bus::endpoints::TCP_PORTS)
            .all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Start `reflex ARGS...`, capturing stdout lines; stderr goes to the test's stderr.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::spawn(name, args, false)
    }

    /// [`Proc::start`] inside the network namespace `ns` (`ip netns exec`, which execs reflex:
    /// the pid is reflex's own).
    pub fn start_in(ns: &str, name: &str, args: &[&str]) -> Proc {
        let mut all = vec!["netns", "exec", ns, REFLEX];
        all.extend_from_slice(args);
        Proc::spawn_cmd(Command::new("ip").args(&all), name, true)
    }

    /// Start `reflex ARGS...`, capturing its log (stderr) lines as well as stdout; the log is
    /// still copied to the test's stderr.
    pub fn start_logged(name: &str, args: &[&str]) -> Proc {
        Proc::spawn(name, args, true)
    }

    fn spawn(name: &str, args: &[&str], logs: bool) -> Proc {
        Proc::spawn_cmd(Command::new(REFLEX).args(args), name, logs)
    }

    fn spawn_cmd(cmd: &mut Command, name: &str, logs: bool) -> Proc {
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(if logs {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start reflex {name}: {e}"));
        let mut p = Proc {
            child,
            name: name.to_string(),
            lines: None,
        };
        let (tx, rx) = mpsc::channel();
        let out = p.child.stdout.take().expect("piped stdout");
        let tx_out = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx_out.send(line).is_err() {
                    break;
                }
            }
        });
        if let Some(err) = p.child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    // Kept reading after the test stopped listening, so the child never
                    // blocks on a full pipe.
                    let _ = tx.send(line);
                }
            });
        }
        p.lines = Some(rx);
        p
    }

    /// Wait for a stdout line containing `needle`; returns every line read so far.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let rx = self.lines.as_ref().expect("stdout captured");
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "{}: no line with {needle:?} within {timeout:?}; saw {seen:#?}",
                    self.name
                ),
            }
        }
    }

    /// Every stdout line that arrives within `window`.
    pub fn drain_lines(&self, window: Duration) -> Vec<String> {
        let rx = self.lines.as_ref().expect("stdout captured");
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            out.push(l);
        }
        out
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM and wait; the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate(Duration::from_secs(5));
        }
    }
}

/// Run `reflex ARGS...` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(REFLEX)
        .args(args)
        .output()
        .expect("run reflex");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The admin key of the stack whose state dir is `state`, pinning its manager key: what
/// `reflex send`, `tail` and `status` use there. Waits for the manager key (a stack started
/// just now makes it first thing).
pub fn admin_security(state: &Path) -> bus::secure::Security {
    use bus::keys::{key_dir, load_or_create, public_path, Role};
    let dir = key_dir(state);
    let server = wait_for("the stack's manager key", Duration::from_secs(20), || {
        bus::PublicKey::from_file(&public_path(&dir, Role::Manager)).ok()
    });
    let pair = load_or_create(&dir, Role::Admin).expect("admin key");
    bus::secure::Security::Curve { pair, server }
}

/// A PUSH socket into the ingest of the stack at `state`/`port_base`, with its admin key.
pub fn admin_push(state: &Path, port_base: u16) -> zmq::Socket {
    bus::secure::connect(
        zmq::PUSH,
        &format!("tcp://127.0.0.1:{port_base}"),
        &admin_security(state),
    )
    .expect("push")
}

/// Enroll the host key of the state dir `host_state`, accepted, as `name` with `groups` in
/// the store of the manager whose state dir is `state` (what `reflex keys accept` does; the
/// manager picks it up within a fraction of a second).
pub fn enroll_host(state: &Path, host_state: &Path, name: &str, groups: &[&str]) {
    use bus::keys::{key_dir, load_or_create, Role};
    let host = load_or_create(&key_dir(host_state), Role::Host).expect("host key");
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    bus::enroll::Enrollment::open(&bus::enroll::store_dir(state))
        .expect("enrollment store")
        .enroll(name, host.public(), Role::Host, &groups)
        .expect("enroll");
}

/// A subscriber on a manager's monitor stream, collecting events.
pub struct Monitor {
    sub: zmq::Socket,
    /// Kept (and drained) for the socket's lifetime: see `HandshakeWatch`.
    watch: bus::sockets::HandshakeWatch,
    pub seen: Vec<bus::Event>,
}

impl Monitor {
    /// Subscribe with the admin key of the stack's state dir `state`.
    pub fn connect(state: &Path, port_base: u16) -> Monitor {
        let (sub, watch) = bus::secure::connect_watched(
            zmq::SUB,
            &format!("tcp://127.0.0.1:{}", port_base + 3),
            &admin_security(state),
        )
        .unwrap();
        sub.set_subscribe(b"event/").unwrap();
        assert!(
            watch.wait(Duration::from_secs(10)),
            "monitor did not connect"
        );
        std::thread::sleep(Duration::from_millis(100));
        Monitor {
            sub,
            watch,
            seen: Vec::new(),
        }
    }

    fn pump(&mut self, wait_ms: i64) {
        let mut items = [self.sub.as_poll_item(zmq::POLLIN)];
        let _ = bus::sockets::poll(&mut items, wait_ms);
        self.watch.drain();
        while let Ok(parts) = self.sub.recv_multipart(zmq::DONTWAIT) {
            if let Some(ev) = parts.get(1).and_then(|p| bus::decode::<bus::Event>(p).ok()) {
                self.seen.push(ev);
            }
        }
    }

    /// The first event (already seen or arriving within `timeout`) matching `pred`.
    pub fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&bus::Event) -> bool,
    ) -> bus::Event {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.seen.iter().find(|e| pred(e)) {
                return e.clone();
            }
            if Instant::now() > deadline {
                let tags: Vec<String> = self
                    .seen
                    .iter()
                    .map(|e| format!("{} from {}: {}", e.tag, e.host, e.data))
                    .collect();
                panic!("timed out waiting for {what}; saw {tags:#?}");
            }
            self.pump(50);
        }
    }

    /// Collect for `window` more, then return every event matching `pred`.
    pub fn all_within(
        &mut self,
        window: Duration,
        pred: impl Fn(&bus::Event) -> bool,
    ) -> Vec<bus::Event> {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            self.pump(50);
        }
        self.seen.iter().filter(|e| pred(e)).cloned().collect()
    }
}

/// A result event for the action an event caused, matched on the action's origin through the
/// monitor is awkward, so tests match on the graph's resource names instead.
pub fn is_result(e: &bus::Event) -> bool {
    e.tag == "actor/result"
}

pub fn write_rule(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

/// The stack's common arguments.
pub fn stack_args(state: &Path, port_base: u16) -> Vec<String> {
    vec![
        "--state".into(),
        state.display().to_string(),
        "--port-base".into(),
        port_base.to_string(),
    ]
}

pub fn args_ref(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The pids whose parent is `parent`.
pub fn children(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The pid of `parent`'s child whose command line contains `needle`.
pub fn child_pid(parent: i32, needle: &str) -> Option<i32> {
    children(parent).into_iter().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|a| a == needle)
    })
}

/// `reflex send --stdin` through the stack at `state` and `port_base`, one JSON event per line
/// of `lines`; panics unless every event was acknowledged.
pub fn send_stdin(state: &Path, port_base: u16, lines: &str) {
    let mut a = vec!["--timeout".to_string(), "20".into()];
    a.extend(stack_args(state, port_base));
    let out = spawn_send_stdin(&a, lines.to_string())
        .wait_with_output()
        .expect("send");
    assert!(
        out.status.success(),
        "send via {port_base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `reflex send --stdin ARGS...`, fed `lines` (one JSON event each) from a thread of its own;
/// it exits 0 once each was acknowledged. Its stderr is piped, to show when it failed.
pub fn spawn_send_stdin(args: &[String], lines: String) -> Child {
    use std::io::Write;
    let mut child = Command::new(REFLEX)
        .args(["send", "--stdin"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reflex send --stdin");
    let mut stdin = child.stdin.take().expect("send's stdin");
    std::thread::spawn(move || {
        let _ = stdin.write_all(lines.as_bytes());
    });
    child
}

/// Publisher, manager and actors as separate processes, as on a fleet.
pub struct Stack {
    pub publisher: Proc,
    pub manager: Option<Proc>,
    pub base: u16,
    pub state: std::path::PathBuf,
    pub rules: std::path::PathBuf,
}

impl Stack {
    pub fn start(tmp: &std::path::Path, rules: &[(&str, &str)]) -> Stack {
        let base = free_port_base();
        let state = tmp.join("state");
        let rules_dir = tmp.join("rules");
        for (n, t) in rules {
            write_rule(&rules_dir, n, t);
        }
        // The manager key first, so hosts and tools can pin it from the start.
        bus::keys::load_or_create(&bus::keys::key_dir(&state), bus::keys::Role::Manager)
            .expect("manager key");
        let publisher = Proc::start(
            "publisher",
            &args_ref(&[vec!["publisher".to_string()], stack_args(&state, base)].concat()),
        );
        let mut s = Stack {
            publisher,
            manager: None,
            base,
            state,
            rules: rules_dir,
        };
        s.start_manager();
        s
    }

    pub fn start_manager(&mut self) {
        let mut a = vec!["manager".to_string()];
        a.extend(stack_args(&self.state, self.base));
        a.extend(["--rules".into(), self.rules.display().to_string()]);
        self.manager = Some(Proc::start("manager", &args_ref(&a)));
    }

    /// An actor as on a host of its own: its own state dir (so its own host key), enrolled
    /// with `groups`, pinning the stack's manager and signing keys, under the policy `reflex
    /// up` ships (files under /tmp, noop, the shipped rules' commands).
    pub fn actor(&self, name: &str, groups: &[&str]) -> Proc {
        Proc::start(name, &args_ref(&self.actor_args(name, groups)))
    }

    /// [`Stack::actor`], its log captured (see [`Proc::start_logged`]).
    pub fn actor_logged(&self, name: &str, groups: &[&str]) -> Proc {
        Proc::start_logged(name, &args_ref(&self.actor_args(name, groups)))
    }

    fn actor_args(&self, name: &str, groups: &[&str]) -> Vec<String> {
        let host_state = self.state.with_file_name(format!("host-{name}"));
        enroll_host(&self.state, &host_state, name, groups);
        let manager_key =
            bus::keys::public_path(&bus::keys::key_dir(&self.state), bus::keys::Role::Manager);
        // The control node's signing key, made now if the publisher has not yet.
        bus::envelope::SignKey::load_or_create(&self.state).expect("signing key");
        let sign_key = bus::envelope::key::public_path(&self.state);
        let policy = repo().join("dist/policy/up.toml").display().to_string();
        let mut a = vec!["actor".to_string(), "--name".into(), name.into()];
        a.extend(stack_args(&host_state, self.base));
        a.extend(["--manager-key".into(), manager_key.display().to_string()]);
        a.extend(["--sign-key".into(), sign_key.display().to_string()]);
        a.extend(["--policy".into(), policy]);
        for g in groups {
            a.extend(["--group".into(), g.to_string()]);
        }
        a
    }

    pub fn send(&self, tag: &str, fields: &[&str]) {
        let mut a = vec!["send".to_string(), tag.to_string()];
        a.extend(fields.iter().map(|s| s.to_string()));
        a.extend(stack_args(&self.state, self.base));
        let (code, _, err) = run(&args_ref(&a));
        assert_eq!(code, 0, "send {tag}: {err}");
    }
}
