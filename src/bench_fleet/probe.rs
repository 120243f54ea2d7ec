//! What `reflex bench fleet` reads of the daemons and the kernel: open-file limits, CPU per
//! thread, TCP counters per door (`ss -ti`), listen-queue overflows.

use super::*;

/// Hold the process `pid` to `n` open files, soft and hard (prlimit(2); lowering needs no
/// privilege). Its fds already open stay open.
pub(super) fn limit_nofile(pid: u32, n: u64) -> anyhow::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit on our own child, with a struct we own and no old value asked.
    if unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    } != 0
    {
        return Err(anyhow::anyhow!(
            "cannot limit process {pid} to {n} open files: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

pub(super) fn limit_daemons(stack: &BenchStack, n: Option<u64>) -> anyhow::Result<()> {
    let Some(n) = n else {
        return Ok(());
    };
    for p in ["manager", "publisher"] {
        let pid = stack
            .pid(p)
            .ok_or_else(|| anyhow::anyhow!("no {p} process"))?;
        limit_nofile(pid, n)?;
    }
    Ok(())
}

/// CPU seconds of a process: in all, and per thread (`main` for the main thread, else the
/// thread's name and id: libzmq's I/O threads may carry the process's name).
pub(super) fn cpu(pid: u32) -> anyhow::Result<(f64, HashMap<String, f64>)> {
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |stat: &str| -> Option<(String, f64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((name, t as f64 / hz))
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, total) = ticks(&stat).ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let mut threads = HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let tid = t.file_name().to_string_lossy().to_string();
        if let Some((name, secs)) = ticks(&s) {
            let key = if tid == pid.to_string() {
                "main".to_string()
            } else {
                format!("{name}#{tid}")
            };
            threads.insert(key, secs);
        }
    }
    Ok((total, threads))
}

/// TCP payload bytes and segments on the server side of one door, from the kernel's
/// per-socket counters (`ss -ti`): what the door received and sent.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Wire {
    pub(super) rx_bytes: u64,
    pub(super) tx_bytes: u64,
    pub(super) rx_segs: u64,
    pub(super) tx_segs: u64,
    pub(super) conns: u64,
}

/// [`Wire`] per local port among `ports`, from `ss`; `None` when `ss` is missing or fails.
pub(super) fn wire(ports: &[u16]) -> Option<HashMap<u16, Wire>> {
    let filter = ports
        .iter()
        .map(|p| format!("sport = :{p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", &format!("( {filter} )")])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut by_port: HashMap<u16, Wire> = HashMap::new();
    let mut current: Option<u16> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // "Recv-Q Send-Q Local:Port Peer:Port"
            current = line
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok());
            if let Some(p) = current {
                by_port.entry(p).or_default().conns += 1;
            }
            continue;
        }
        let Some(w) = current.and_then(|p| by_port.get_mut(&p)) else {
            continue;
        };
        for tok in line.split_whitespace() {
            let Some((k, v)) = tok.split_once(':') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else {
                continue;
            };
            match k {
                "bytes_sent" => w.tx_bytes += v,
                "bytes_received" => w.rx_bytes += v,
                "segs_out" => w.tx_segs += v,
                "segs_in" => w.rx_segs += v,
                _ => {}
            }
        }
    }
    Some(by_port)
}

/// The kernel's count of connections dropped at a full listen queue (ListenOverflows,
/// ListenDrops), this network namespace in all.
pub(super) fn listen_drops() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return (0, 0);
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return (0, 0);
    };
    let mut got = (0, 0);
    for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
        match n {
            "ListenOverflows" => got.0 = v.parse().unwrap_or(0),
            "ListenDrops" => got.1 = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    got
}
