//! `autohealctl`: watch and steer the fleet, and make a development PKI.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use autoheal_common::tls::TlsFiles;
use autoheal_proto::{
    identity::{Role, TrustDomain},
    v1,
};
use autohealctl::{client, pki, tables};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(version, about = "Watch and steer an autoheal fleet")]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true, env = "AUTOHEAL_OUTPUT")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Conn {
    /// A TOML file with `endpoint`, `pki` or `ca`/`cert`/`key` (relative paths resolve against
    /// the file's folder). Flags and AUTOHEAL_* variables override it. Default:
    /// ~/.config/autoheal/autohealctl.toml when it exists.
    #[arg(long, global = true, env = "AUTOHEAL_CTL_CONFIG")]
    config: Option<PathBuf>,
    /// Coordinator address, host:port [default: 127.0.0.1:7443].
    #[arg(long, global = true, env = "AUTOHEAL_ENDPOINT")]
    endpoint: Option<String>,
    /// A folder made by `certs init`: uses its ca.pem and operator-admin certificate, unless
    /// --ca/--cert/--key say otherwise.
    #[arg(long, global = true, env = "AUTOHEAL_PKI")]
    pki: Option<PathBuf>,
    /// CA bundle (PEM) that signed the coordinator's certificate.
    #[arg(long, global = true, env = "AUTOHEAL_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) with an /operator/ or /viewer/ SPIFFE ID.
    #[arg(long, global = true, env = "AUTOHEAL_CERT")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "AUTOHEAL_KEY")]
    key: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fleet summary: instances per ASG, guardrails holding, dry-run or live, paused or not.
    Status,
    /// Lists instances.
    Instances {
        #[arg(long)]
        asg: Option<String>,
        #[arg(long)]
        az: Option<String>,
    },
    /// One instance: services, checks, recent events.
    Instance { id: String },
    /// Fleet events; --follow keeps watching.
    Events {
        #[arg(long, short)]
        follow: bool,
        /// Start after this cursor.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long)]
        instance: Option<String>,
    },
    /// The action journal.
    Actions {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Holds every destructive action fleet-wide (persisted) until `resume`.
    Pause {
        #[arg(long)]
        reason: String,
    },
    /// Lifts a pause.
    Resume {
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deregisters an instance from all its target groups.
    Drain {
        id: String,
        #[arg(long, default_value = "operator drain")]
        reason: String,
    },
    /// Excludes an instance from automatic remediation (persisted), e.g. while someone debugs it.
    Skip {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Returns a skipped instance to automatic remediation.
    Unskip {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Would ACTION on instance ID be allowed now, and if not, which guardrail holds it?
    Whatif { id: String, action: WhatIfAction },
    /// A live, read-only fleet web page on this machine (like `kubectl proxy`): this process
    /// calls the fleet API with your certificate; the browser needs none.
    Ui {
        /// Where the page is served. Loopback only, unless --allow-remote.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Allow a non-loopback --listen: anyone who reaches it sees the fleet with your rights.
        #[arg(long)]
        allow_remote: bool,
    },
    /// Instances that enrolled themselves: status, when, certificate expiry.
    Enrollments,
    /// Resets (lets enroll again) or denies (for good) an instance's enrollment. Operators only.
    #[command(subcommand)]
    Enroll(Enroll),
    /// Development PKI.
    #[command(subcommand)]
    Certs(Certs),
    /// Prints shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum WhatIfAction {
    Deregister,
    Replace,
    RemoteRestart,
}

#[derive(Subcommand, Debug)]
enum Enroll {
    /// Forgets ID's enrollment: its next valid identity document may enroll again.
    Reset {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Refuses ID for good, as for a terminated instance.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum Certs {
    /// Writes a CA, a coordinator server certificate, an operator, a viewer and instance certs.
    Init {
        dir: PathBuf,
        #[arg(long, default_value = "autoheal.local")]
        trust_domain: String,
        /// Extra DNS names or IPs for the coordinator's certificate.
        #[arg(long)]
        san: Vec<String>,
        /// Instance ids to issue agent certificates for.
        #[arg(long, default_values_t = [pki::DEFAULT_INSTANCE.to_owned()])]
        instance: Vec<String>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issues one more certificate from DIR's CA.
    Issue {
        dir: PathBuf,
        #[arg(long, group = "who")]
        instance: Option<String>,
        #[arg(long, group = "who")]
        operator: Option<String>,
        #[arg(long, group = "who")]
        viewer: Option<String>,
        /// A new coordinator server certificate, with these extra SANs.
        #[arg(long, group = "who")]
        server: bool,
        #[arg(long)]
        san: Vec<String>,
    },
}

/// `enrollments` and `enroll reset|deny`: the coordinator's `EnrollmentAdmin` on the same port.
async fn enrollments(
    endpoint: &str,
    files: &TlsFiles,
    command: Command,
    output: Output,
) -> Result<ExitCode, tonic::Status> {
    use v1::enrollment_admin_client::EnrollmentAdminClient;
    let channel = files
        .load()
        .ok()
        .and_then(|m| autoheal_common::tls::client_config(m).ok())
        .and_then(|c| {
            autoheal_common::tls::channel(
                endpoint,
                std::sync::Arc::new(c),
                std::time::Duration::from_secs(5),
            )
            .ok()
        })
        .ok_or_else(|| tonic::Status::invalid_argument("cannot load the client certificate"))?;
    let mut admin = EnrollmentAdminClient::new(channel);
    let when = |ts: Option<&prost_types::Timestamp>| {
        ts.filter(|t| t.seconds > 0)
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    let records = match command {
        Command::Enroll(Enroll::Reset { id, reason }) => vec![
            admin
                .reset_enrollment(v1::EnrollmentRequest {
                    instance_id: id,
                    reason,
                })
                .await?
                .into_inner(),
        ],
        Command::Enroll(Enroll::Deny { id, reason }) => vec![
            admin
                .deny_enrollment(v1::EnrollmentRequest {
                    instance_id: id,
                    reason,
                })
                .await?
                .into_inner(),
        ],
        _ => {
            admin
                .list_enrollments(v1::ListEnrollmentsRequest {})
                .await?
                .into_inner()
                .enrollments
        }
    };
    if output == Output::Json {
        print_json(&serde_json::Value::Array(
            records
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "instance_id": e.instance_id,
                        "status": e.status,
                        "enrolled_at": when(e.enrolled_at.as_ref()),
                        "certificate_expires_at": when(e.certificate_expires_at.as_ref()),
                        "pending_time": e.pending_time,
                        "account_id": e.account_id,
                        "region": e.region,
                        "reason": e.reason,
                    })
                })
                .collect(),
        ));
    } else {
        println!(
            "{:<22} {:<11} {:<21} {:<21} REASON",
            "INSTANCE", "STATUS", "ENROLLED", "CERT EXPIRES"
        );
        for e in &records {
            println!(
                "{:<22} {:<11} {:<21} {:<21} {}",
                e.instance_id,
                e.status,
                when(e.enrolled_at.as_ref()),
                when(e.certificate_expires_at.as_ref()),
                e.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("autohealctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `autohealctl.toml`: the same settings as the flags.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConn {
    endpoint: Option<String>,
    pki: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Flags and environment first, then the config file.
fn resolve(mut conn: Conn) -> anyhow::Result<(String, TlsFiles)> {
    let default_file = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config/autoheal/autohealctl.toml"))
        .filter(|p| p.exists());
    if let Some(path) = conn.config.clone().or(default_file) {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: FileConn =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: Option<PathBuf>| p.map(|p| base.join(p));
        conn.endpoint = conn.endpoint.or(file.endpoint);
        conn.pki = conn.pki.or(rel(file.pki));
        conn.ca = conn.ca.or(rel(file.ca));
        conn.cert = conn.cert.or(rel(file.cert));
        conn.key = conn.key.or(rel(file.key));
    }
    let from_pki = |name: &str| conn.pki.as_ref().map(|d| d.join(name));
    let pick = |explicit: &Option<PathBuf>, default: &str, flag: &str| {
        explicit
            .clone()
            .or_else(|| from_pki(default))
            .with_context(|| {
                format!("{flag} is required (or --pki DIR / AUTOHEAL_PKI, or a config file)")
            })
    };
    let files = TlsFiles {
        ca: pick(&conn.ca, "ca.pem", "--ca")?,
        cert: pick(&conn.cert, "operator-admin.pem", "--cert")?,
        key: pick(&conn.key, "operator-admin-key.pem", "--key")?,
    };
    let endpoint = conn.endpoint.unwrap_or_else(|| "127.0.0.1:7443".to_owned());
    Ok((endpoint, files))
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Certs(certs) => return run_certs(certs),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "autohealctl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let (endpoint, files) = resolve(cli.conn)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let mut api = client::connect(&endpoint, &files)?;
        if let Command::Ui {
            listen,
            allow_remote,
        } = cli.command
        {
            let options = autohealctl::ui::Options {
                listen,
                allow_remote,
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            autohealctl::ui::stop_on_signal(shutdown.clone());
            autohealctl::ui::serve(options, endpoint, files, api, shutdown).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let outcome = match cli.command {
            command @ (Command::Enrollments | Command::Enroll(_)) => {
                enrollments(&endpoint, &files, command, cli.output).await
            }
            command => call(&mut api, command, cli.output).await,
        };
        match outcome {
            Ok(code) => Ok(code),
            Err(status) => {
                let tls = if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                ) {
                    client::diagnose_tls(&endpoint, &files).await
                } else {
                    None
                };
                eprintln!(
                    "autohealctl: {}",
                    client::explain(&status, &endpoint, tls.as_deref())
                );
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

async fn call(
    client: &mut client::Client,
    command: Command,
    output: Output,
) -> Result<ExitCode, tonic::Status> {
    let json = output == Output::Json;
    match command {
        Command::Status => {
            let s = client
                .get_fleet_status(v1::GetFleetStatusRequest {})
                .await
                .map(client::noted)?
                .into_inner();
            if json {
                print_json(&tables::status_json(&s));
            } else {
                print!("{}", tables::status_table(&s));
            }
        }
        Command::Instances { asg, az } => {
            let list = client
                .list_instances(v1::ListInstancesRequest {
                    asg: asg.unwrap_or_default(),
                    availability_zone: az.unwrap_or_default(),
                    state: 0,
                })
                .await
                .map(client::noted)?
                .into_inner()
                .instances;
            if json {
                print_json(&tables::instances_json(&list));
            } else {
                print!("{}", tables::instances_table(&list));
            }
        }
        Command::Instance { id } => {
            let i = client
                .get_instance(v1::GetInstanceRequest { instance_id: id })
                .await
                .map(client::noted)?
                .into_inner();
            if json {
                print_json(&tables::instance_json(&i));
            } else {
                print!("{}", tables::instance_text(&i));
            }
        }
        Command::Events {
            follow,
            after,
            instance,
        } => {
            let mut stream = client
                .watch_events(v1::WatchEventsRequest {
                    after,
                    instance_id: instance.unwrap_or_default(),
                })
                .await
                .map(client::noted)?
                .into_inner();
            loop {
                // Without --follow, print what's in the log and stop once nothing new arrives.
                let next = if follow {
                    stream.message().await?
                } else {
                    match tokio::time::timeout(
                        std::time::Duration::from_millis(300),
                        stream.message(),
                    )
                    .await
                    {
                        Ok(m) => m?,
                        Err(_) => None,
                    }
                };
                let Some(e) = next else { break };
                if json {
                    println!("{}", tables::event_json(&e));
                } else {
                    println!("{}", tables::event_line(&e));
                }
            }
        }
        Command::Actions { instance } => {
            let actions = client
                .list_actions(v1::ListActionsRequest {
                    instance_id: instance.unwrap_or_default(),
                    limit: 0,
                })
                .await
                .map(client::noted)?
                .into_inner()
                .actions;
            if json {
                print_json(&serde_json::Value::Array(
                    actions.iter().map(tables::action_json).collect(),
                ));
            } else if actions.is_empty() {
                println!("no actions recorded");
            } else {
                print!("{}", tables::actions_table(&actions));
            }
        }
        Command::Pause { reason } => {
            let p = client
                .pause(v1::PauseRequest { reason })
                .await?
                .into_inner();
            if json {
                print_json(&tables::pause_json(Some(&p)));
            } else {
                println!("paused: {}", p.reason);
            }
        }
        Command::Resume { reason } => {
            let p = client
                .resume(v1::ResumeRequest { reason })
                .await?
                .into_inner();
            if json {
                print_json(&tables::pause_json(Some(&p)));
            } else {
                println!("resumed");
            }
        }
        Command::Drain { id, reason } => {
            let a = client
                .drain(v1::DrainRequest {
                    instance_id: id,
                    reason,
                })
                .await?
                .into_inner();
            if json {
                print_json(&tables::action_json(&a));
            } else {
                println!(
                    "{} {}: {}",
                    a.instance_id,
                    tables::action_status(a.status),
                    if a.detail.is_empty() {
                        &a.reason
                    } else {
                        &a.detail
                    }
                );
            }
        }
        command @ (Command::Skip { .. } | Command::Unskip { .. }) => {
            let (id, reason, skip) = match command {
                Command::Skip { id, reason } => (id, reason, true),
                Command::Unskip { id, reason } => (id, reason, false),
                _ => unreachable!("matched above"),
            };
            let i = client
                .set_skip(v1::SetSkipRequest {
                    instance_id: id,
                    skip,
                    reason,
                })
                .await?
                .into_inner();
            if json {
                print_json(&tables::summary_json(&i));
            } else if skip {
                println!(
                    "{} is skipped: no automatic remediation until `autohealctl unskip`",
                    i.instance_id
                );
            } else {
                println!("{} is back under automatic remediation", i.instance_id);
            }
        }
        Command::Whatif { id, action } => {
            let action = match action {
                WhatIfAction::Deregister => v1::ActionKind::Deregister,
                WhatIfAction::Replace => v1::ActionKind::Replace,
                WhatIfAction::RemoteRestart => v1::ActionKind::RemoteRestart,
            };
            let w = client
                .what_if(v1::WhatIfRequest {
                    instance_id: id,
                    action: action.into(),
                })
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "allowed": w.allowed,
                    "explanation": w.explanation,
                    "held_by": w.held_by.iter().map(|g| serde_json::json!({"name": g.name, "reason": g.reason})).collect::<Vec<_>>(),
                }));
            } else {
                println!("{}", w.explanation);
                for g in &w.held_by {
                    println!("  {}: {}", g.name, g.reason);
                }
            }
            if !w.allowed {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Certs(_)
        | Command::Completions { .. }
        | Command::Ui { .. }
        | Command::Enrollments
        | Command::Enroll(_) => {
            unreachable!("handled before connecting")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_certs(certs: Certs) -> anyhow::Result<ExitCode> {
    let issued = match certs {
        Certs::Init {
            dir,
            trust_domain,
            san,
            instance,
            force,
        } => {
            let td = TrustDomain::new(&trust_domain).context("--trust-domain")?;
            pki::init(&dir, &td, &san, &instance, force)?
        }
        Certs::Issue {
            dir,
            instance,
            operator,
            viewer,
            server,
            san,
        } => {
            let role = match (instance, operator, viewer) {
                (Some(id), _, _) => Some(Role::Instance(id)),
                (_, Some(n), _) => Some(Role::Operator(n)),
                (_, _, Some(n)) => Some(Role::Viewer(n)),
                _ => None,
            };
            match (role, server) {
                (Some(role), _) => vec![pki::issue(&dir, role, pki::Validity::default())?],
                (None, true) => vec![pki::issue_server(&dir, &san)?],
                (None, false) => anyhow::bail!(
                    "say what to issue: --instance ID, --operator NAME, --viewer NAME or --server"
                ),
            }
        }
    };
    for i in issued {
        println!("wrote {} and {}", show(&i.cert), show(&i.key));
    }
    Ok(ExitCode::SUCCESS)
}

fn show(p: &Path) -> String {
    p.display().to_string()
}
