//! Benchmark 5: reconnect storm. N agents connected and sending events (one with every 5 s
//! heartbeat); the coordinator is restarted (SIGTERM, drain, start again on the same port).
//! Time until every agent has been welcomed again, events lost, and the heartbeat ack latency
//! of the streams already re-established while the rest of the storm is still handshaking.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    footprint::verdict,
    ingest::make_identities,
    load::{Load, LoadConfig, Mode},
    util::{self, CoordinatorProc, Pki, percentile, ratio},
};

pub struct Report {
    pub agents: usize,
    pub down: Duration,
    pub all_back_from_sigterm: Duration,
    pub all_back_from_listen: Duration,
    pub lost: i64,
    pub missing_reported: usize,
    pub steady_p99: f64,
    pub storm_p99: f64,
}

pub async fn run(agents: usize) -> Result<Report> {
    println!("\n== storm: restart the coordinator under {agents} connected agents ==");
    let pki = Pki::new()?;
    let idents = make_identities(&pki, agents)?;
    let work = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", util::free_port()?);
    let mut coordinator = CoordinatorProc::start(&pki, work.path(), &listen, "5s", "", "", &[])?;
    let load = Load::start(
        &idents,
        &LoadConfig {
            endpoint: listen.clone(),
            heartbeat: Duration::from_secs(5),
            flooders: 0,
            window: 1,
            ramp_parallel: 64,
        },
    );
    let n = agents as u64;
    let Some(ramp) = load
        .wait_connected(n, Duration::from_secs(60 + n / 50))
        .await
    else {
        bail!("only {} of {n} agents connected", load.connected());
    };
    println!("{n} agents connected in {:.1}s", ramp.as_secs_f64());
    load.set_mode(Mode::Trickle);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Steady-state heartbeat latency, for comparison with the storm's.
    load.stats.take_heartbeats();
    load.stats.recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady = load.stats.take_heartbeats();

    let log_before = std::fs::read_to_string(&coordinator.log)
        .unwrap_or_default()
        .len();
    load.stats.generation.fetch_add(1, Ordering::Relaxed);
    let t_term = Instant::now();
    let down = coordinator.restart()?;
    let t_listen = Instant::now();
    println!(
        "coordinator drained and exited {:.2}s after SIGTERM; new one listening {:.2}s after SIGTERM",
        down.as_secs_f64(),
        (t_listen - t_term).as_secs_f64()
    );
    let deadline = t_listen + Duration::from_secs(120);
    let mut last_print = Instant::now();
    while load.stats.welcomed_in_generation.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} agents welcomed again within 120s",
                load.stats.welcomed_in_generation.load(Ordering::Relaxed)
            );
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            println!(
                "  +{:.1}s: {} welcomed again",
                t_term.elapsed().as_secs_f64(),
                load.stats.welcomed_in_generation.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_back = Instant::now();
    let storm = load.stats.take_heartbeats();
    load.stats.recording.store(false, Ordering::Relaxed);
    // Let replays finish, then stop generating and let the last events be acked.
    tokio::time::sleep(Duration::from_secs(6)).await;
    load.set_mode(Mode::Idle);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let generated = load.stats.generated.load(Ordering::Relaxed);
    let confirmed = load.stats.confirmed.load(Ordering::Relaxed);
    let dropped = load.stats.dropped.load(Ordering::Relaxed);
    let lost = generated as i64 - confirmed as i64;
    let log = std::fs::read_to_string(&coordinator.log).unwrap_or_default();
    let missing = log
        .get(log_before..)
        .unwrap_or_default()
        .matches("kind=\"events-missing\"")
        .count()
        + log
            .get(log_before..)
            .unwrap_or_default()
            .matches("kind=events-missing")
            .count();
    let (sp99, stp99) = (percentile(&steady, 99.0), percentile(&storm, 99.0));
    let from_term = all_back - t_term;
    let from_listen = all_back - t_listen;
    println!(
        "all {n} welcomed again {:.2}s after SIGTERM ({:.2}s after the new coordinator listened); goal <= 10s: {}",
        from_term.as_secs_f64(),
        from_listen.as_secs_f64(),
        verdict(from_listen.as_secs_f64() <= 10.0)
    );
    println!(
        "events: generated {generated}, acknowledged {confirmed}, dropped from agent buffers {dropped}, lost {lost} (goal 0: {}); coordinator 'events-missing' reports after restart: {missing}",
        verdict(lost == 0 && dropped == 0)
    );
    println!(
        "heartbeat ack p99: steady {sp99:.2} ms ({} acks), during the storm {stp99:.2} ms ({} acks, streams already back), ratio {:.1}",
        steady.len(),
        storm.len(),
        ratio(stp99, sp99)
    );
    drop(load);
    Ok(Report {
        agents,
        down,
        all_back_from_sigterm: from_term,
        all_back_from_listen: from_listen,
        lost,
        missing_reported: missing,
        steady_p99: sp99,
        storm_p99: stp99,
    })
}
