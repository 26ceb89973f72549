//! What every benchmark shares: release binaries, process sampling from `/proc`, percentiles,
//! a development PKI, a coordinator child process, loopback HTTP probes.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use autoheal_proto::identity::TrustDomain;
use autohealctl::pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Instance ids of the real agents the footprint and healing benchmarks run.
pub const AGENT_INSTANCES: [&str; 2] = ["i-0000000000000001", "i-0000000000000002"];

/// The folder of release binaries: the one this driver was built into (`target/release`).
pub fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current exe")?;
    let dir = exe.parent().context("exe has a folder")?.to_owned();
    Ok(dir)
}

/// Path of a workspace binary next to the driver; fails with the command that builds it.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = release_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --workspace --bins` (scripts/bench.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// The agent builds to measure, shipped first: `target/release-agent/autoheal-agent` (the
/// `release-agent` profile the SSM package ships: opt-level s, fat LTO) when built, and the
/// plain `release` build next to this driver.
pub fn agent_builds() -> Result<Vec<(&'static str, PathBuf)>> {
    let mut out = Vec::new();
    let shipped = release_dir()?
        .parent()
        .map(|t| t.join("release-agent/autoheal-agent"));
    if let Some(p) = shipped.filter(|p| p.exists()) {
        out.push(("autoheal-agent (release-agent)", p));
    }
    out.push(("autoheal-agent (release)", bin("autoheal-agent")?));
    Ok(out)
}

/// The real python interpreter (not a pyenv shim script), so every supervisor starts the same
/// service the same way, without a shell wrapper's start-up cost.
pub fn python() -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Memory and CPU of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// utime + stime, in clock ticks (includes exited threads).
    pub cpu_ticks: u64,
    /// Time on CPU of the live threads, in ns (`/proc/<pid>/task/*/schedstat`): finer than
    /// ticks, which matters for processes that use a few ticks a minute.
    pub cpu_ns: u64,
    pub at: Option<Instant>,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_ticks: utime + stime,
        cpu_ns: schedstat_ns(pid),
        at: Some(Instant::now()),
    })
}

fn schedstat_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// `RssAnon`, `RssFile` and thread count from `/proc/<pid>/status`: what the RSS is made of.
pub fn rss_breakdown(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "anon {}, file {}, threads {}",
        get("RssAnon:"),
        get("RssFile:"),
        get("Threads:")
    )
}

/// Clock ticks per second for `/proc/<pid>/stat` (almost always 100).
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Samples a process once a second while it runs; summarises a window.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub samples: Vec<ProcSample>,
}

impl Samples {
    pub fn push(&mut self, pid: u32) {
        if let Some(s) = sample(pid) {
            self.samples.push(s);
        }
    }

    pub fn mean_rss_kib(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / self.samples.len() as f64
    }

    pub fn max_rss_kib(&self) -> u64 {
        self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)
    }

    pub fn hwm_kib(&self) -> u64 {
        self.samples.last().map_or(0, |s| s.hwm_kib)
    }

    /// CPU seconds used between the first and last sample, and the wall time between them.
    pub fn cpu(&self) -> (f64, f64) {
        let (Some(a), Some(b)) = (self.samples.first(), self.samples.last()) else {
            return (0.0, 0.0);
        };
        let ticks = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64;
        let wall = match (a.at, b.at) {
            (Some(x), Some(y)) => (y - x).as_secs_f64(),
            _ => 0.0,
        };
        (ticks / clk_tck() as f64, wall)
    }

    /// CPU seconds of the live threads between the first and last sample (schedstat).
    pub fn cpu_precise(&self) -> f64 {
        let (Some(a), Some(b)) = (self.samples.first(), self.samples.last()) else {
            return 0.0;
        };
        b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e9
    }
}

/// Percentile (nearest rank) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::INFINITY } else { a / b }
}

/// Machine, date and load, printed at the top of every run (and copied into BENCHMARKS.md).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "date: {}\nnproc: {}\ncpu: {cpu}\nmem: {}\nkernel: {}\nload: {}",
        sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        sh("nproc"),
        sh("free -h | awk '/Mem:/ {print $2\" total, \"$7\" available\"}'"),
        sh("uname -r"),
        loadavg(),
    )
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A development PKI (CA, coordinator certificate, one agent certificate) in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub trust_domain: TrustDomain,
}

impl Pki {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let trust_domain = TrustDomain::new("autoheal.bench")?;
        pki::init(
            dir.path(),
            &trust_domain,
            &[],
            &AGENT_INSTANCES.map(str::to_owned),
            false,
        )?;
        Ok(Self { dir, trust_domain })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A release `autoheal-coordinator` child process; killed when dropped.
pub struct CoordinatorProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl CoordinatorProc {
    /// Writes a config in `workdir` and starts the coordinator. `extra_top` goes before any
    /// table, `extra_tables` after `[agents]`.
    pub fn start(
        pki: &Pki,
        workdir: &Path,
        listen: &str,
        heartbeat: &str,
        extra_top: &str,
        extra_tables: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let config = format!(
            r#"coordinator_id = "bench"
listen = "{listen}"
trust_domain = "{td}"
state_dir = "{state}"
{extra_top}

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/coordinator.pem"
key = "{pki}/coordinator-key.pem"

[agents]
heartbeat_interval = "{heartbeat}"
max_concurrent_handshakes = 256
handshake_timeout = "10s"
{extra_tables}
"#,
            td = pki.trust_domain,
            state = workdir.join("state").display(),
            pki = pki.path().display(),
        );
        let path = workdir.join("coordinator.toml");
        std::fs::write(&path, config)?;
        let log = workdir.join("coordinator.log");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (child, addr) = spawn_coordinator(&path, &log, &env)?;
        Ok(Self {
            child,
            addr,
            config: path,
            log,
            env,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (the coordinator drains its streams), wait, start again with the same config.
    pub fn restart(&mut self) -> Result<Duration> {
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let down = t.elapsed();
        let (child, addr) = spawn_coordinator(&self.config, &self.log, &self.env)?;
        self.child = child;
        self.addr = addr;
        Ok(down)
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_coordinator(
    config: &Path,
    log: &Path,
    env: &[(String, String)],
) -> Result<(Child, SocketAddr)> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(bin("autoheal-coordinator")?)
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("spawn autoheal-coordinator")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("autoheal-coordinator listening on ")
        .with_context(|| {
            format!(
                "coordinator did not start: {line:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })?
        .parse()?;
    Ok((child, addr))
}

/// A real agent's config: coordinator, TLS and identity from `pki`, then `services`.
pub fn agent_config(
    pki: &Pki,
    instance: &str,
    coordinator: SocketAddr,
    socket: &Path,
    services: &str,
) -> String {
    format!(
        r#"[coordinator]
endpoints = ["{coordinator}"]
heartbeat_interval = "5s"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/instance-{id}.pem"
key = "{pki}/instance-{id}-key.pem"

[identity]
instance_id = "{id}"
availability_zone = "bench-1a"

[status]
socket = "{socket}"

{services}
"#,
        pki = pki.path().display(),
        id = instance,
        socket = socket.display(),
    )
}

/// Fails with the tool's own words if `agent check-config` rejects `path`.
pub fn check_agent_config(path: &Path) -> Result<()> {
    let out = Command::new(bin("autoheal-agent")?)
        .arg("check-config")
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "agent config rejected:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `GET /` on a loopback port answered with 200, within `timeout`.
pub async fn http_ok(port: u16, timeout: Duration) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        Ok::<bool, std::io::Error>(
            buf[..n].starts_with(b"HTTP/1.0 200") || buf[..n].starts_with(b"HTTP/1.1 200"),
        )
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)))
}

/// Pids of running processes whose argv contains every one of `needles`.
pub fn find_pids(needles: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                needles.iter().all(|n| args.contains(&n.as_bytes()))
            })
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*): jitter and phases, no extra dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Self::new(u64::from(nanos) ^ u64::from(std::process::id()))
    }

    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}
