//! Benchmark 4: coordinator ingest. N simulated agents (own certificate, own mTLS session, own
//! Connect stream) heartbeat every 5 s: the coordinator's RSS per agent, CPU and heartbeat ack
//! latency. Then a subset floods events (a window of events in flight each): the sustained
//! events/s. Everything is repeated against the echo baseline (a bare tonic + rustls server with
//! the same TLS config and an AgentService that only answers), driven by the same generator.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    footprint::verdict,
    load::{self, Ident, Load, LoadConfig, Mode},
    util::{self, CoordinatorProc, Pki, Samples, percentile, ratio},
};

#[derive(Debug, Clone)]
pub struct Params {
    /// `AUTOHEAL_LOG` for the coordinator; `None` keeps its default (`info`).
    pub log: Option<String>,
    pub agents: usize,
    /// Steady-state window, seconds.
    pub secs: u64,
    pub flooders: usize,
    pub window: usize,
    pub flood_secs: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Side {
    pub ramp: Duration,
    pub rss0_kib: u64,
    pub rss_kib: f64,
    pub per_agent_kib: f64,
    pub cpu_pct: f64,
    pub hb_p50: f64,
    pub hb_p99: f64,
    pub hb_n: usize,
    pub events_per_s: f64,
    pub ev_p50: f64,
    pub ev_p99: f64,
    pub connected: u64,
}

pub struct Report {
    pub params: Params,
    pub coordinator: Side,
    pub echo: Side,
}

struct EchoProc(Child);

impl Drop for EchoProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_echo(pki: &Pki) -> Result<(EchoProc, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("echo-server")
        .arg("--pki")
        .arg(pki.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("echo listening on ")
        .with_context(|| format!("echo server did not start: {line:?}"))?
        .to_owned();
    Ok((EchoProc(child), addr))
}

pub fn make_identities(pki: &Pki, n: usize) -> Result<Vec<Ident>> {
    let t = Instant::now();
    let ids = load::instance_ids(n);
    let idents = load::identities(pki.path(), &pki.trust_domain, &ids)?;
    println!(
        "issued {n} agent certificates in memory in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(idents)
}

/// Drives one server (coordinator or echo) at `pid`/`endpoint` through the steady window and
/// the flood.
async fn drive(
    name: &str,
    pid: u32,
    endpoint: String,
    idents: &[Ident],
    p: &Params,
) -> Result<Side> {
    let mut side = Side::default();
    tokio::time::sleep(Duration::from_secs(1)).await;
    side.rss0_kib = util::sample(pid).map_or(0, |s| s.rss_kib);
    let load = Load::start(
        idents,
        &LoadConfig {
            endpoint,
            heartbeat: Duration::from_secs(5),
            flooders: p.flooders,
            window: p.window,
            ramp_parallel: 64,
        },
    );
    let n = idents.len() as u64;
    let limit = Duration::from_secs(60 + n / 50);
    let Some(ramp) = load.wait_connected(n, limit).await else {
        bail!(
            "{name}: only {} of {n} agents connected within {limit:?} (connect failures {})",
            load.connected(),
            load.stats.connect_failures.load(Ordering::Relaxed)
        );
    };
    side.ramp = ramp;
    println!(
        "{name}: {n} agents connected in {:.1}s ({:.0} handshakes+Hello/s); load {}",
        ramp.as_secs_f64(),
        n as f64 / ramp.as_secs_f64().max(1e-9),
        util::loadavg()
    );
    // One full heartbeat round before the window, so every stream is in its steady state.
    tokio::time::sleep(Duration::from_secs(6)).await;
    load.stats.take_heartbeats();
    load.stats.recording.store(true, Ordering::Relaxed);
    let mut s = Samples::default();
    for _ in 0..=p.secs {
        s.push(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    load.stats.recording.store(false, Ordering::Relaxed);
    let hb = load.stats.take_heartbeats();
    let (cpu, wall) = s.cpu();
    side.rss_kib = s.mean_rss_kib();
    side.per_agent_kib = (side.rss_kib - side.rss0_kib as f64) / n as f64;
    side.cpu_pct = 100.0 * cpu / wall.max(1e-9);
    side.hb_p50 = percentile(&hb, 50.0);
    side.hb_p99 = percentile(&hb, 99.0);
    side.hb_n = hb.len();
    side.connected = load.connected();

    // Flood: measure the last part of the window, after the queues have filled.
    let warm = Duration::from_secs(3);
    load.set_mode(Mode::Flood);
    tokio::time::sleep(warm).await;
    load.stats.take_events();
    load.stats.recording.store(true, Ordering::Relaxed);
    let (a0, t0) = (
        load.stats.events_acked.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(p.flood_secs)).await;
    let (a1, t1) = (
        load.stats.events_acked.load(Ordering::Relaxed),
        Instant::now(),
    );
    load.stats.recording.store(false, Ordering::Relaxed);
    load.set_mode(Mode::Idle);
    let ev = load.stats.take_events();
    side.events_per_s = (a1 - a0) as f64 / (t1 - t0).as_secs_f64();
    side.ev_p50 = percentile(&ev, 50.0);
    side.ev_p99 = percentile(&ev, 99.0);
    println!(
        "{name}: RSS {:.0} MiB ({:.1} KiB/agent over an idle {:.1} MiB), CPU {:.1}%, heartbeat ack p50 {:.2} ms p99 {:.2} ms ({} acks); flood {:.0} events/s (ack p50 {:.1} ms, p99 {:.1} ms); still connected {}",
        side.rss_kib / 1024.0,
        side.per_agent_kib,
        side.rss0_kib as f64 / 1024.0,
        side.cpu_pct,
        side.hb_p50,
        side.hb_p99,
        side.hb_n,
        side.events_per_s,
        side.ev_p50,
        side.ev_p99,
        side.connected,
    );
    drop(load);
    // Let the server see the streams close before the next phase.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(side)
}

pub async fn run(p: Params) -> Result<Report> {
    println!(
        "\n== ingest: {} agents x 5s heartbeat, {}s window; flood: {} agents x {} events in flight, {}s ==",
        p.agents, p.secs, p.flooders, p.window, p.flood_secs
    );
    let pki = Pki::new()?;
    let idents = make_identities(&pki, p.agents)?;

    let work = tempfile::tempdir()?;
    let env: Vec<(&str, &str)> = p
        .log
        .as_deref()
        .map(|l| vec![("AUTOHEAL_LOG", l)])
        .unwrap_or_default();
    let coordinator = CoordinatorProc::start(&pki, work.path(), "127.0.0.1:0", "5s", "", "", &env)?;
    let c = drive(
        "coordinator",
        coordinator.pid(),
        coordinator.addr.to_string(),
        &idents,
        &p,
    )
    .await?;
    let log_bytes = std::fs::metadata(&coordinator.log).map_or(0, |m| m.len());
    drop(coordinator);
    println!(
        "coordinator log (AUTOHEAL_LOG={}): {:.1} MiB written",
        p.log.as_deref().unwrap_or("unset, i.e. info"),
        log_bytes as f64 / 1048576.0
    );

    let (echo, endpoint) = start_echo(&pki)?;
    let e = drive("echo baseline", echo.0.id(), endpoint, &idents, &p).await?;
    drop(echo);

    println!(
        "{:<26} {:>14} {:>14} {:>8}",
        "", "coordinator", "echo baseline", "ratio"
    );
    let row = |name: &str, a: f64, b: f64| {
        println!("{name:<26} {a:>14.2} {b:>14.2} {:>8.2}", ratio(a, b));
    };
    row(
        "connect ramp (s)",
        c.ramp.as_secs_f64(),
        e.ramp.as_secs_f64(),
    );
    row("RSS per agent (KiB)", c.per_agent_kib, e.per_agent_kib);
    row("CPU at 5s heartbeat (%)", c.cpu_pct, e.cpu_pct);
    row("heartbeat ack p50 (ms)", c.hb_p50, e.hb_p50);
    row("heartbeat ack p99 (ms)", c.hb_p99, e.hb_p99);
    row("events/s sustained", c.events_per_s, e.events_per_s);
    row("event ack p99 (ms)", c.ev_p99, e.ev_p99);
    let ev_ratio = ratio(c.events_per_s, e.events_per_s);
    println!(
        "goals: {} agents held ({}: goal 20000); {:.1} KiB/agent (goal <= 60: {}); events/s {:.2} x echo (goal >= 0.70: {})",
        c.connected,
        verdict(c.connected >= 20_000),
        c.per_agent_kib,
        verdict(c.per_agent_kib <= 60.0),
        ev_ratio,
        verdict(ev_ratio >= 0.7)
    );
    Ok(Report {
        params: p,
        coordinator: c,
        echo: e,
    })
}
