//! Benchmark 1: the agent's memory and CPU next to monit's, both watching the same 10 loopback
//! endpoints (5 HTTP, 5 TCP) every 5 s, over the same window.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{self, CoordinatorProc, Pki, Samples, ratio};

const ENDPOINTS: usize = 10;

/// Ten tiny HTTP/1.0 servers on loopback; counts requests (and bare TCP connects).
async fn endpoints() -> Result<(Vec<u16>, Arc<AtomicU64>)> {
    let hits = Arc::new(AtomicU64::new(0));
    let mut ports = Vec::new();
    for _ in 0..ENDPOINTS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        let hits = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let mut seen = Vec::new();
                    loop {
                        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => {
                                seen.extend_from_slice(&buf[..n]);
                                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                    let _ = s
                                        .write_all(
                                            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                                        )
                                        .await;
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                });
            }
        });
    }
    Ok((ports, hits))
}

pub struct Report {
    /// The shipped build (`release-agent` profile) when present, else `release`.
    pub agent: &'static str,
    pub agent_rss_kib: f64,
    pub monit_rss_kib: f64,
    pub agent_cpu_s: f64,
    pub monit_cpu_s: f64,
}

struct Watcher {
    name: &'static str,
    child: std::process::Child,
    samples: Samples,
    breakdown: String,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(secs: u64) -> Result<Report> {
    println!(
        "\n== footprint: autoheal-agent vs monit, {ENDPOINTS} endpoints every 5s, {secs}s window =="
    );
    let (ports, hits) = endpoints().await?;
    let pki = Pki::new()?;
    let work = tempfile::tempdir()?;
    let coordinator = CoordinatorProc::start(&pki, work.path(), "127.0.0.1:0", "5s", "", "", &[])?;

    let mut services = String::new();
    for (i, port) in ports.iter().enumerate() {
        if i < ENDPOINTS / 2 {
            services.push_str(&format!(
                "[services.ep{i}]\n[[services.ep{i}.checks]]\nname = \"http\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/\"\ninterval = \"5s\"\ntimeout = \"1s\"\n\n"
            ));
        } else {
            services.push_str(&format!(
                "[services.ep{i}]\n[[services.ep{i}.checks]]\nname = \"tcp\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ninterval = \"5s\"\ntimeout = \"1s\"\n\n"
            ));
        }
    }

    let mut monitrc = format!(
        "set daemon 5\nset logfile {d}/monit.log\nset idfile {d}/monit.id\nset statefile {d}/monit.state\nset pidfile {d}/monit.pid\n\n",
        d = work.path().display()
    );
    for (i, port) in ports.iter().enumerate() {
        if i < ENDPOINTS / 2 {
            monitrc.push_str(&format!(
                "check host ep{i} with address 127.0.0.1\n  if failed port {port} protocol http request \"/\" with timeout 1 seconds then alert\n\n"
            ));
        } else {
            monitrc.push_str(&format!(
                "check host ep{i} with address 127.0.0.1\n  if failed port {port} type tcp with timeout 1 seconds then alert\n\n"
            ));
        }
    }
    let monitrc_path = work.path().join("monitrc");
    std::fs::write(&monitrc_path, monitrc)?;
    std::fs::set_permissions(&monitrc_path, std::fs::Permissions::from_mode(0o600))?;

    // Both agent builds, each with its own instance identity, and monit, over the same window.
    let mut watchers = Vec::new();
    for (k, (name, path)) in util::agent_builds()?.into_iter().enumerate() {
        let instance = util::AGENT_INSTANCES[k];
        let toml = work.path().join(format!("agent-{k}.toml"));
        std::fs::write(
            &toml,
            util::agent_config(
                &pki,
                instance,
                coordinator.addr,
                &work.path().join(format!("agent-{k}.sock")),
                &services,
            ),
        )?;
        util::check_agent_config(&toml)?;
        watchers.push(Watcher {
            name,
            child: Command::new(path)
                .arg("--config")
                .arg(&toml)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    work.path().join(format!("agent-{k}.log")),
                )?)
                .spawn()
                .context("spawn autoheal-agent")?,
            samples: Samples::default(),
            breakdown: String::new(),
        });
    }
    watchers.push(Watcher {
        name: "monit 5.33",
        child: Command::new("monit")
            .arg("-I")
            .arg("-c")
            .arg(&monitrc_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("monit.stderr"))?)
            .spawn()
            .context("spawn monit (apt-get install -y monit; scripts/bench.sh does)")?,
        samples: Samples::default(),
        breakdown: String::new(),
    });

    // Let all start and settle (TLS handshake, first check round) before the window opens.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let hits_before = hits.load(Ordering::Relaxed);
    for _ in 0..=secs {
        for w in &mut watchers {
            let pid = w.child.id();
            w.samples.push(pid);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let served = hits.load(Ordering::Relaxed) - hits_before;
    for w in &mut watchers {
        w.breakdown = util::rss_breakdown(w.child.id());
        anyhow::ensure!(
            w.child.try_wait()?.is_none(),
            "{} died during the run",
            w.name
        );
    }
    drop(coordinator);

    let expected = watchers.len() as u64 * ENDPOINTS as u64 * secs / 5;
    println!(
        "probes served by the endpoints in the window: {served} ({} watchers at 5s: ~{expected})",
        watchers.len()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>22} {:>12}",
        "", "RSS mean", "RSS max", "VmHWM", "CPU (schedstat)", "CPU (ticks)"
    );
    for w in &watchers {
        let s = &w.samples;
        let (ticks, wall) = s.cpu();
        let cpu = s.cpu_precise();
        println!(
            "{:<34} {:>8.0} KiB {:>8} KiB {:>8} KiB {:>9.3}s ({:.3}%) {:>11.2}s",
            w.name,
            s.mean_rss_kib(),
            s.max_rss_kib(),
            s.hwm_kib(),
            cpu,
            100.0 * cpu / wall.max(1e-9),
            ticks,
        );
    }
    for w in &watchers {
        println!("  {:<32} RSS made of {}", w.name, w.breakdown);
    }
    let monit = watchers.last().context("monit")?;
    let (m_rss, m_cpu) = (monit.samples.mean_rss_kib(), monit.samples.cpu_precise());
    for w in &watchers[..watchers.len() - 1] {
        let (a_rss, a_cpu) = (w.samples.mean_rss_kib(), w.samples.cpu_precise());
        println!(
            "{}: RSS {:.2} x monit (goal <= 0.80: {}), {:.2} MiB (goal <= 6 MiB: {}), CPU {:.2} x monit (goal <= 1.00: {})",
            w.name,
            ratio(a_rss, m_rss),
            verdict(a_rss <= 0.8 * m_rss),
            a_rss / 1024.0,
            verdict(a_rss <= 6.0 * 1024.0),
            ratio(a_cpu, m_cpu),
            verdict(a_cpu <= m_cpu),
        );
    }
    let shipped = &watchers[0];
    Ok(Report {
        agent: shipped.name,
        agent_rss_kib: shipped.samples.mean_rss_kib(),
        monit_rss_kib: m_rss,
        agent_cpu_s: shipped.samples.cpu_precise(),
        monit_cpu_s: m_cpu,
    })
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
