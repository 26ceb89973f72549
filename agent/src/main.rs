//! `autoheal-agent`: runs the agent, checks a config, or shows the running agent's status.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use autoheal_agent::{
    Agent, Config,
    config::{IdentitySource, LoadError},
    status,
};
use autoheal_common::error::DisplayChain;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration the agent cannot use (EX_CONFIG-style, as sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "autoheal-agent", version = autoheal_proto::VERSION, about = "autoheal's on-instance agent: health checks, local healing, reporting")]
struct Cli {
    /// Config file (TOML) to run with.
    #[arg(long, short = 'c', global = false)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file: lists every error with its path; exit 64 if any.
    CheckConfig { file: PathBuf },
    /// Show the running agent's services and checks.
    Status {
        /// The agent's status socket.
        #[arg(long, conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Read the socket path from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Status {
            socket,
            config,
            output,
        }) => report(status_cmd(socket, config, output)),
        None => match cli.config {
            None => {
                eprintln!(
                    "autoheal-agent: --config FILE is required (or use check-config / status)"
                );
                ExitCode::from(EXIT_CONFIG)
            }
            Some(path) => {
                init_logs(cli.log_format);
                run(&path)
            }
        },
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autoheal-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    // RUST_LOG as `level` or `target=level,...` directives; bad ones fall back to info.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        match e {
            LoadError::Invalid { path, errors } => {
                for e in &errors.errors {
                    println!("{}: {}", e.path, e.message);
                }
                eprintln!("{}: {} error(s)", path.display(), errors.errors.len());
            }
            e @ LoadError::Read { .. } => eprintln!("autoheal-agent: {}", DisplayChain(&e)),
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Beyond the file itself: can the TLS files be used, and do they name this instance?
    let mut problems = Vec::new();
    // With enroll_endpoint the agent writes its certificate and key itself: none yet is fine.
    let enrolls_first = config
        .coordinator
        .as_ref()
        .is_some_and(|c| c.enroll_endpoint.is_some() && !c.tls.cert.exists());
    if let Some(c) = &config.coordinator {
        for (name, file) in [
            ("ca", &c.tls.ca),
            ("cert", &c.tls.cert),
            ("key", &c.tls.key),
        ] {
            if enrolls_first && name != "ca" {
                continue;
            }
            if let Err(e) = std::fs::File::open(file) {
                problems.push((
                    format!("tls.{name}"),
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
    }
    if let (Some(c), true) = (&config.coordinator, problems.is_empty() && !enrolls_first) {
        match c.tls.load() {
            Err(e) => problems.push(("tls".to_owned(), DisplayChain(&e).to_string())),
            Ok(material) => match c.tls.identity(&material) {
                Err(e) => problems.push(("tls.cert".to_owned(), DisplayChain(&e).to_string())),
                Ok(id) => {
                    let in_cert = id.instance_id().unwrap_or_default().to_owned();
                    if in_cert.is_empty() {
                        problems.push((
                            "tls.cert".to_owned(),
                            format!("{} is not an instance certificate (expected spiffe://<trust-domain>/instance/<id>)", id.uri()),
                        ));
                    } else if let IdentitySource::Static { instance_id, .. } = &config.identity
                        && *instance_id != in_cert
                    {
                        {
                            problems.push((
                                "identity.instance_id".to_owned(),
                                format!("{instance_id:?} differs from the certificate's instance {in_cert:?}; the coordinator would refuse it"),
                            ));
                        }
                    }
                    if let Err(e) = autoheal_common::tls::client_config(material) {
                        problems.push(("tls.key".to_owned(), DisplayChain(&e).to_string()));
                    }
                }
            },
        }
    }
    if !problems.is_empty() {
        for (p, m) in &problems {
            println!("{p}: {m}");
        }
        eprintln!("{}: {} error(s)", path.display(), problems.len());
        return ExitCode::from(EXIT_CONFIG);
    }
    let checks: usize = config.services.iter().map(|s| s.checks.len()).sum();
    println!(
        "{}: ok: {} service(s), {} check(s), {}",
        path.display(),
        config.services.len(),
        checks,
        match &config.coordinator {
            Some(c) => format!("reporting to {}", c.endpoints.join(", ")),
            None => "no coordinator (local healing only)".to_owned(),
        }
    );
    ExitCode::SUCCESS
}

fn status_cmd(
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    output: Output,
) -> anyhow::Result<()> {
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => {
            Config::load(&c)
                .with_context(|| format!("reading {}", c.display()))?
                .status_socket
        }
        (None, None) => PathBuf::from(autoheal_agent::config::DEFAULT_SOCKET),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(status::query(&socket))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", status::render(&report)),
    }
    Ok(())
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = (|| -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        rt.block_on(serve(config))
    })();
    report(result)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let services = config.services.len();
    let agent = Agent::start(config, autoheal_agent::clock::system(), shutdown.clone())
        .context("starting the agent")?;
    tracing::info!(version = autoheal_proto::VERSION, services, "agent running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for SIGINT")?;
            tracing::info!("SIGINT: shutting down");
        }
    }
    let deadline = Duration::from_secs(20);
    if !agent.stop(deadline).await {
        tracing::warn!(?deadline, "some tasks did not stop in time; exiting anyway");
    }
    Ok(())
}
