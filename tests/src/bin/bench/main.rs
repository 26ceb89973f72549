//! `bench`: autoheal's benchmarks (issue 9). Each prints its figures as ratios against a peer or
//! baseline run in the same invocation on the same machine; `BENCHMARKS.md` records them.
//!
//! ```text
//! bench footprint [--secs 60]              agent vs monit: RSS and CPU, same 10 endpoints
//! bench heal [--kills 25]                  kill -9 → answering again: agent, monit, supervisord
//! bench escalation [--reps 24] [--interval-ms 250]   Escalated → DeregisterTargets returned (moto)
//! bench ingest [--agents 10000] [--secs 60] [--flooders 500] [--window 8] [--flood-secs 15]
//! bench storm [--agents 10000]             restart the coordinator under N agents
//! bench all [--agents 10000]               everything, at sizes that fit a 2-core machine
//! ```
//!
//! Uses the release binaries next to it (`cargo build --release --workspace --bins`); run it
//! through `scripts/bench.sh`, which also installs monit and supervisord and raises `ulimit -n`.

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
        "all" => {
            footprint::run(60).await?;
            heal::run(25).await?;
            escalation::run(24, 250).await?;
            ingest::run(ingest_params).await?;
            storm::run(agents).await?;
        }
        other => {
            bail!("unknown benchmark {other:?}: footprint, heal, escalation, ingest, storm, all")
        }
    }
    println!("\nload at the end: {}", util::loadavg());
    Ok(())
}
