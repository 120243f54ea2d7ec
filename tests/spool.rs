//! A manager down while beacons keep sampling: a real `reflex beacon` (a heartbeat every
//! 100 ms, its default spool under its own state dir) feeds a rule that counts every sample in
//! a register, keyed by the beacon run (its label) and the heartbeat's own sample number. The
//! manager is killed with SIGKILL, the beacon samples on into its spool, is itself killed with
//! SIGKILL and started again (a second run, resuming the same spool and stream) while the
//! manager is still down; then the manager comes back. Every sample either run took must
//! arrive exactly once: per run, the numbers counted are 1..=N without a gap, each counted once
//! (a kill -9 may only lose the last samples not yet synced, which no later sample follows),
//! and both runs have samples taken while the manager was down (by the time each carries).
//! Counts only, never timings (the pauses only place the kills).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const RULE: &str = "const MATCH = \"beacon/heartbeat\";\n\
fn react(event) {\n\
  let run = event.data.label;\n\
  registers::incr(`hb/${run}/total`, 1);\n\
  registers::incr(`hb/${run}/seq/${event.data.seq}`, 1);\n\
  registers::set(`hb/${run}/time/${event.data.seq}`, event.time);\n\
}\n";

fn registers(stack: &Stack, prefix: &str) -> BTreeMap<String, Value> {
    let mut a = vec!["registers".to_string(), "list".into(), prefix.into()];
    a.extend(stack_args(&stack.state, stack.base));
    let (code, out, err) = run(&args_ref(&a));
    assert_eq!(code, 0, "registers list: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("registers list {out:?}: {e}"))
}

fn total(stack: &Stack, run: &str) -> u64 {
    registers(stack, &format!("hb/{run}/total"))
        .get(&format!("hb/{run}/total"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A beacon on host `b1` with its own state dir (so its own key and its default spool there),
/// sampling a heartbeat labelled `run` every 100 ms.
fn beacon(stack: &Stack, host_state: &Path, run: &str) -> Proc {
    let cfg = host_state.with_file_name(format!("{run}.toml"));
    std::fs::write(
        &cfg,
        format!("[[beacon]]\nkind = \"heartbeat\"\ninterval = \"100ms\"\nlabel = \"{run}\"\n"),
    )
    .expect("beacon config");
    let manager_key =
        bus::keys::public_path(&bus::keys::key_dir(&stack.state), bus::keys::Role::Manager);
    let mut a = vec![
        "beacon".to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--host".into(),
        "b1".into(),
    ];
    a.extend(stack_args(host_state, stack.base));
    a.extend(["--manager-key".into(), manager_key.display().to_string()]);
    Proc::start(run, &args_ref(&a))
}

/// The samples of `run` taken within `from..to` (ms since the epoch).
fn taken_within(regs: &BTreeMap<String, Value>, run: &str, from: u64, to: u64) -> usize {
    let prefix = format!("hb/{run}/time/");
    regs.iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(_, v)| v.as_u64())
        .filter(|t| (from..to).contains(t))
        .count()
}

/// The sample numbers counted for `run`: each must be counted once, 1..=N without a gap, and
/// the total must say N.
fn check_run(regs: &BTreeMap<String, Value>, run: &str) -> u64 {
    let prefix = format!("hb/{run}/seq/");
    let mut counted: Vec<(u64, u64)> = regs
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((n, v.as_u64().unwrap_or(0)))
        })
        .collect();
    counted.sort();
    let n = counted.len() as u64;
    let twice: Vec<u64> = counted.iter().filter(|c| c.1 != 1).map(|c| c.0).collect();
    assert!(
        twice.is_empty(),
        "{run}: samples not counted once: {twice:?}"
    );
    let numbers: Vec<u64> = counted.iter().map(|c| c.0).collect();
    assert_eq!(
        numbers,
        (1..=n).collect::<Vec<_>>(),
        "{run}: a sample lost in the middle"
    );
    let total = regs
        .get(&format!("hb/{run}/total"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    assert_eq!(total, n, "{run}: the total counts each sample once");
    n
}

#[test]
fn a_manager_down_while_a_beacon_samples_and_restarts_gets_every_sample_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut stack = Stack::start(tmp.path(), &[("10-count.rhai", RULE)]);
    let host_state: PathBuf = stack.state.with_file_name("host-b1");
    enroll_host(&stack.state, &host_state, "b1", &[]);
    let mut b = beacon(&stack, &host_state, "run1");
    let t = Duration::from_secs(60);
    wait_for("the first samples counted", t, || {
        (total(&stack, "run1") >= 5).then_some(())
    });
    assert!(
        host_state.join("spool/beacon-b1").is_dir(),
        "the beacon spools under its state dir by default"
    );

    // The manager dies; the beacon samples on into its spool.
    stack.manager.as_mut().expect("manager").kill9();
    let down = bus::now_ms();
    // Read offline from the store now that the manager is gone.
    let before = total(&stack, "run1");
    std::thread::sleep(Duration::from_secs(2));
    // The beacon dies too, and a second run starts while the manager is still down.
    b.kill9();
    let mut b = beacon(&stack, &host_state, "run2");
    std::thread::sleep(Duration::from_secs(3));
    let up = bus::now_ms();
    stack.start_manager();

    // One stream, in order: once run2's samples are counted, run1's backlog was before them.
    wait_for("run2's samples counted", t, || {
        (total(&stack, "run2") >= 30).then_some(())
    });
    assert_eq!(b.terminate(Duration::from_secs(10)), Some(0));
    let regs = registers(&stack, "hb/");
    let run1 = check_run(&regs, "run1");
    let run2 = check_run(&regs, "run2");
    assert!(
        run1 > before,
        "run1's samples during the outage arrived ({run1} counted, {before} before it)"
    );
    assert!(run2 >= 30, "{run2}");
    assert!(
        taken_within(&regs, "run1", down, up) > 0,
        "run1 sampled during the outage"
    );
    assert!(
        taken_within(&regs, "run2", down, up) > 0,
        "run2 sampled during the outage, before the manager came back"
    );
}
