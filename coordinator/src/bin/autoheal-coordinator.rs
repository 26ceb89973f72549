//! `autoheal-coordinator`: wires config, logging and signals to `autoheal_coordinator::edges::server`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use autoheal_coordinator::edges::config::Config;
use autoheal_coordinator::edges::server;
use clap::{Parser, Subcommand, ValueEnum};

/// sysexits EX_USAGE: the configuration is wrong, retrying won't help.
const EXIT_CONFIG: u8 = 64;
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// `--version`; a build with the crash-test hooks says so, so nobody ships one by mistake (and
/// the tests that need them can tell).
#[cfg(feature = "fault-injection")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (fault-injection)");
#[cfg(not(feature = "fault-injection"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser, Debug)]
#[command(
    version = VERSION,
    about = "autoheal coordinator: fleet view, guardrails and operator API"
)]
struct Args {
    /// Path to coordinator.toml.
    #[arg(long, env = "AUTOHEAL_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "AUTOHEAL_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lists every problem in a config file (and its certificate files), then exits.
    CheckConfig { file: PathBuf },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match args.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        None => {
            let Some(path) = args.config else {
                eprintln!("error: --config FILE is required (see examples/coordinator.toml)");
                return ExitCode::from(EXIT_CONFIG);
            };
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Ok(config) => {
            let errors = config.check_files();
            if errors.is_empty() {
                println!(
                    "{}: ok (listen {}, trust domain {}, {})",
                    file.display(),
                    config.listen,
                    config.trust_domain,
                    if config.dry_run { "dry-run" } else { "live" }
                );
                ExitCode::SUCCESS
            } else {
                eprintln!("{} has errors:\n{errors}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUTOHEAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    let running = server::start(config)
        .await
        .context("coordinator failed to start")?;
    // One stable line on stdout for scripts and tests to learn the address.
    println!("autoheal-coordinator listening on {}", running.addr);
    wait_for_signal().await?;
    tracing::info!("shutting down");
    if !running.stop(DRAIN_DEADLINE).await {
        tracing::warn!(deadline = ?DRAIN_DEADLINE, "some tasks did not stop before the deadline");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
