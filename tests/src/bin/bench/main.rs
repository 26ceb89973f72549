//! `bench`: autoheal's benchmarks (issue 9). Each prints its figures as ratios against a peer or
//! baseline run in the same invocation on the same machine; `BENCHMARKS.md` records them.
//!
//! ```text
//! bench footprint [--secs 60]              agent vs monit: RSS and CPU, same 10 endpoints
//! bench heal [--kills 25]                  kill -9 → answering again: agent, monit, supervisord
//! bench escalation [--reps 24] [--interval-ms 250]   Escalated → DeregisterTargets returned (moto)
//! bench ingest [--agents 10000] [--secs 60] [--flooders 500] [--window 8] [--flood-secs 15]
//!              [--coordinator-log FILTER]   AUTOHEAL_LOG for the coordinator (default: its own, info)
//! bench storm [--agents 10000]             restart the coordinator under N agents
//! bench enroll [--instances 1000]          N instances enrolling at once (moto, IMDS documents)
//! bench all [--agents 10000]               everything, at sizes that fit a 2-core machine
//! ```
//!
//! Uses the release binaries next to it (`cargo build --release --workspace --bins`); run it
//! through `scripts/bench.sh`, which also installs monit and supervisord and raises `ulimit -n`.

mod enroll;
mod escalation;
mod footprint;
mod heal;
mod ingest;
mod load;
mod storm;
mod util;

use std::{path::PathBuf, process::ExitCode, str::FromStr};

use anyhow::{Context, Result, bail};

struct Args(Vec<String>);

impl Args {
    fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.0.iter().position(|a| a == name) {
            Some(i) => {
                let v = self
                    .0
                    .get(i + 1)
                    .with_context(|| format!("{name} needs a value"))?;
                v.parse()
                    .map_err(|_| anyhow::anyhow!("{name} {v:?}: not a valid value"))
            }
            None => Ok(default),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!(
            "usage: bench footprint|heal|escalation|ingest|storm|all [options] (see the source's header)"
        );
        return ExitCode::from(64);
    };
    let args = Args(args[1..].to_vec());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cmd, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench {cmd}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: &str, args: &Args) -> Result<()> {
    if cmd == "echo-server" {
        let pki: PathBuf = args.get("--pki", PathBuf::new())?;
        return load::echo_server(&pki).await;
    }
    println!("{}", util::machine());
    println!("binaries: {}", util::release_dir()?.display());
    let agents: usize = args.get("--agents", 10_000)?;
    let ingest_params = ingest::Params {
        log: args
            .get("--coordinator-log", String::new())
            .map(|l| (!l.is_empty()).then_some(l))?,
        agents,
        secs: args.get("--secs", 60)?,
        flooders: args.get("--flooders", 500.min(agents))?,
        window: args.get("--window", 8)?,
        flood_secs: args.get("--flood-secs", 15)?,
    };
    match cmd {
        "footprint" => {
            footprint::run(args.get("--secs", 60)?).await?;
        }
        "heal" => {
            heal::run(args.get("--kills", 25)?).await?;
        }
        "escalation" => {
            escalation::run(args.get("--reps", 24)?, args.get("--interval-ms", 250)?).await?;
        }
        "ingest" => {
            ingest::run(ingest_params).await?;
        }
        "storm" => {
            storm::run(agents).await?;
        }
        "enroll" => {
            enroll::run(args.get("--instances", 1000)?).await?;
        }
        "all" => {
            let f = footprint::run(60).await?;
            let h = heal::run(25).await?;
            let e = escalation::run(24, 250).await?;
            let i = ingest::run(ingest_params).await?;
            let s = storm::run(agents).await?;
            summary(&f, &h, &e, &i, &s);
        }
        other => {
            bail!("unknown benchmark {other:?}: footprint, heal, escalation, ingest, storm, all")
        }
    }
    println!("\nload at the end: {}", util::loadavg());
    Ok(())
}

/// One line per figure, for BENCHMARKS.md.
fn summary(
    f: &footprint::Report,
    h: &heal::Report,
    e: &escalation::Report,
    i: &ingest::Report,
    s: &storm::Report,
) {
    let r = util::ratio;
    println!("\n== summary ==");
    println!(
        "footprint: {} RSS {:.1} MiB vs monit {:.1} MiB = {:.2}x; CPU {:.3}s vs {:.3}s = {:.2}x",
        f.agent,
        f.agent_rss_kib / 1024.0,
        f.monit_rss_kib / 1024.0,
        r(f.agent_rss_kib, f.monit_rss_kib),
        f.agent_cpu_s,
        f.monit_cpu_s,
        r(f.agent_cpu_s, f.monit_cpu_s)
    );
    for (name, p50, p99) in &h.rows {
        println!("heal: {name}: p50 {p50:.0} ms, p99 {p99:.0} ms");
    }
    println!(
        "escalation: p50 {:.0} ms, p99 {:.0} ms at a {} ms control loop",
        e.p50, e.p99, e.interval_ms
    );
    let (c, b) = (&i.coordinator, &i.echo);
    println!(
        "ingest ({} agents): {:.1} KiB/agent ({:.2}x echo), CPU {:.1}% ({:.2}x echo), heartbeat ack p50 {:.2} / p99 {:.2} ms ({:.1}x / {:.1}x echo), {:.0} events/s = {:.2}x echo ({:.0})",
        i.params.agents,
        c.per_agent_kib,
        r(c.per_agent_kib, b.per_agent_kib),
        c.cpu_pct,
        r(c.cpu_pct, b.cpu_pct),
        c.hb_p50,
        c.hb_p99,
        r(c.hb_p50, b.hb_p50),
        r(c.hb_p99, b.hb_p99),
        c.events_per_s,
        r(c.events_per_s, b.events_per_s),
        b.events_per_s
    );
    println!(
        "storm ({} agents): all back {:.2}s after the new coordinator listened ({:.2}s after SIGTERM, drain {:.2}s); lost {}, 'events-missing' {}; heartbeat p99 {:.1} ms during vs {:.1} ms steady",
        s.agents,
        s.all_back_from_listen.as_secs_f64(),
        s.all_back_from_sigterm.as_secs_f64(),
        s.down.as_secs_f64(),
        s.lost,
        s.missing_reported,
        s.storm_p99,
        s.steady_p99
    );
}
