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
    pub agent_rss_kib: f64,
    pub monit_rss_kib: f64,
    pub agent_cpu_s: f64,
    pub monit_cpu_s: f64,
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
    let agent_toml = work.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        util::agent_config(
            &pki,
            coordinator.addr,
            &work.path().join("agent.sock"),
            &services,
        ),
    )?;
    util::check_agent_config(&agent_toml)?;

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

    let mut agent = Command::new(util::bin("autoheal-agent")?)
        .arg("--config")
        .arg(&agent_toml)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("agent.log"))?)
        .spawn()
        .context("spawn autoheal-agent")?;
    let mut monit = Command::new("monit")
        .arg("-I")
        .arg("-c")
        .arg(&monitrc_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("monit.stderr"))?)
        .spawn()
        .context("spawn monit (apt-get install -y monit; scripts/bench.sh does)")?;

    // Let both start and settle (TLS handshake, first check round) before the window opens.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let hits_before = hits.load(Ordering::Relaxed);
    let (mut a, mut m) = (Samples::default(), Samples::default());
    for _ in 0..=secs {
        a.push(agent.id());
        m.push(monit.id());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let served = hits.load(Ordering::Relaxed) - hits_before;
    let breakdown = (
        util::rss_breakdown(agent.id()),
        util::rss_breakdown(monit.id()),
    );
    let alive = (agent.try_wait()?.is_none(), monit.try_wait()?.is_none());
    let _ = agent.kill();
    let _ = monit.kill();
    let _ = agent.wait();
    let _ = monit.wait();
    drop(coordinator);
    anyhow::ensure!(
        alive.0 && alive.1,
        "a watcher died during the run (agent alive: {}, monit alive: {})",
        alive.0,
        alive.1
    );

    let (acpu_ticks, wall) = a.cpu();
    let (mcpu_ticks, _) = m.cpu();
    let (acpu, mcpu) = (a.cpu_precise(), m.cpu_precise());
    let expected = 2 * ENDPOINTS as u64 * secs / 5;
    println!(
        "probes served by the endpoints in the window: {served} (both watchers at 5s: ~{expected})"
    );
    println!(
        "{:<16} {:>12} {:>12} {:>12} {:>22} {:>14}",
        "", "RSS mean", "RSS max", "VmHWM", "CPU (schedstat)", "CPU (ticks)"
    );
    for (name, s, cpu, ticks) in [
        ("autoheal-agent", &a, acpu, acpu_ticks),
        ("monit 5.33", &m, mcpu, mcpu_ticks),
    ] {
        println!(
            "{:<16} {:>8.0} KiB {:>8} KiB {:>8} KiB {:>9.3}s ({:.3}%) {:>13.2}s",
            name,
            s.mean_rss_kib(),
            s.max_rss_kib(),
            s.hwm_kib(),
            cpu,
            100.0 * cpu / wall.max(1e-9),
            ticks,
        );
    }
    println!("RSS made of: agent {}; monit {}", breakdown.0, breakdown.1);
    let rss_ratio = ratio(a.mean_rss_kib(), m.mean_rss_kib());
    let cpu_ratio = ratio(acpu, mcpu);
    println!(
        "ratio agent/monit: RSS {rss_ratio:.2} (goal <= 0.80: {}), agent RSS {:.2} MiB (goal <= 6 MiB: {}), CPU {cpu_ratio:.2} (goal <= 1.00: {})",
        verdict(rss_ratio <= 0.8),
        a.mean_rss_kib() / 1024.0,
        verdict(a.mean_rss_kib() <= 6.0 * 1024.0),
        verdict(acpu <= mcpu),
    );
    Ok(Report {
        agent_rss_kib: a.mean_rss_kib(),
        monit_rss_kib: m.mean_rss_kib(),
        agent_cpu_s: acpu,
        monit_cpu_s: mcpu,
    })
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
