//! The agent's TOML configuration: a raw, serde-shaped document, then a typed [`Config`] with
//! every problem collected (with its path) instead of stopping at the first.
//!
//! Unknown keys are errors (the `deny_unknown_fields` contract), but they are collected by
//! [`autoheal_common::config::parse_toml`] so that `check-config` lists all of them at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use autoheal_common::{
    config::{ConfigErrors, RawTls, parse_toml},
    tls::{TlsFiles, split_endpoint},
};
use autoheal_proto::v1;
use serde::Deserialize;

pub const DEFAULT_SOCKET: &str = "/run/autoheal/agent.sock";
pub const DEFAULT_IMDS: &str = "169.254.169.254:80";

// ---------------------------------------------------------------------------------------------
// Raw: exactly what the file says. No `deny_unknown_fields` attribute on purpose: `parse_toml`
// collects every unknown key through serde_ignored, which a denying struct would cut short.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub coordinator: Option<RawCoordinator>,
    pub tls: Option<RawTls>,
    pub identity: Option<RawIdentity>,
    pub status: Option<RawStatus>,
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCoordinator {
    pub endpoints: Option<Vec<String>>,
    pub connect_timeout: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub event_buffer: Option<i64>,
    pub reconnect_initial: Option<String>,
    pub reconnect_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawIdentity {
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub imds_endpoint: Option<String>,
    pub imds_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawStatus {
    pub socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawService {
    /// Long-running command the agent starts and owns; restart = stop + start.
    pub run: Option<Vec<String>>,
    /// systemd unit; restart = `systemctl restart UNIT`.
    pub unit: Option<String>,
    /// One-shot command that restarts the service; exit 0 = done.
    pub restart_command: Option<Vec<String>>,
    /// With `restart_command`: the service's pidfile, watched so an exit is seen at once.
    pub pidfile: Option<String>,
    pub working_dir: Option<String>,
    pub stop_timeout: Option<String>,
    pub depends_on: Option<Vec<String>>,
    pub restart: Option<RawRestart>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRestart {
    pub max_attempts: Option<i64>,
    pub window: Option<String>,
    pub backoff_initial: Option<String>,
    pub backoff_max: Option<String>,
    pub verify_timeout: Option<String>,
    pub action_timeout: Option<String>,
    pub flap_transitions: Option<i64>,
    pub flap_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCheck {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub initial_delay: Option<String>,
    pub startup_grace: Option<String>,
    pub success_threshold: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub dependency: Option<String>,
    // http
    pub url: Option<String>,
    pub method: Option<String>,
    pub expect_status: Option<String>,
    pub body_contains: Option<String>,
    // tcp, grpc
    pub address: Option<String>,
    pub grpc_service: Option<String>,
    // exec
    pub command: Option<Vec<String>>,
    pub output_cap: Option<i64>,
    // process
    pub process_name: Option<String>,
    pub pidfile: Option<String>,
    // systemd
    pub unit: Option<String>,
    // disk, memory
    pub path: Option<String>,
    pub max_used_percent: Option<f64>,
    // load
    pub max_load_per_cpu: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Typed
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// The folder of the config file: relative paths were resolved against it.
    pub base: PathBuf,
    pub coordinator: Option<CoordinatorConfig>,
    pub identity: IdentitySource,
    pub status_socket: PathBuf,
    /// Plain-HTTP Prometheus `/metrics`; `None` (no `[metrics]`): not served.
    pub metrics_listen: Option<SocketAddr>,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub endpoints: Vec<String>,
    pub tls: TlsFiles,
    pub connect_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub event_buffer: NonZeroUsize,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Static {
        instance_id: String,
        availability_zone: String,
    },
    Imds {
        endpoint: String,
        timeout: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub action: Action,
    pub depends_on: Vec<String>,
    pub policy: RestartPolicyConfig,
    pub checks: Vec<CheckConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Monitor only: failures escalate directly.
    None,
    Run {
        argv: Vec<String>,
        dir: PathBuf,
        stop_timeout: Duration,
    },
    Unit(String),
    Command {
        argv: Vec<String>,
        dir: PathBuf,
        pidfile: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicyConfig {
    pub max_attempts: u32,
    pub window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub verify_timeout: Duration,
    pub action_timeout: Duration,
    pub flap_transitions: u32,
    pub flap_window: Duration,
}

impl Default for RestartPolicyConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            window: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            verify_timeout: Duration::from_secs(30),
            action_timeout: Duration::from_secs(60),
            flap_transitions: 6,
            flap_window: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub initial_delay: Duration,
    pub startup_grace: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub dependency: Option<String>,
    pub probe: Probe,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Http(HttpProbe),
    Tcp {
        address: String,
    },
    Grpc {
        address: String,
        service: String,
    },
    Exec {
        argv: Vec<String>,
        dir: PathBuf,
        output_cap: usize,
    },
    Process(ProcessMatch),
    Systemd {
        unit: String,
    },
    Disk {
        path: PathBuf,
        max_used_percent: f64,
    },
    Memory {
        max_used_percent: f64,
    },
    Load {
        max_per_cpu: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessMatch {
    Name(String),
    Pidfile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub method: String,
    pub status: (u16, u16),
    pub body_contains: Option<String>,
}

impl Probe {
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Http(_) => "http",
            Probe::Tcp { .. } => "tcp",
            Probe::Grpc { .. } => "grpc",
            Probe::Exec { .. } => "exec",
            Probe::Process(_) => "process",
            Probe::Systemd { .. } => "systemd",
            Probe::Disk { .. } => "disk",
            Probe::Memory { .. } => "memory",
            Probe::Load { .. } => "load",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has {} error(s):\n{errors}", errors.errors.len())]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

impl Config {
    /// Reads and validates a config file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        Self::parse(&text, &base).map_err(|errors| LoadError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        // Unknown keys first (parse_toml lists them all), then, since unknown keys don't stop
        // typing, every typed problem too: one run of check-config shows everything.
        let (raw, mut errors) = match parse_toml::<RawConfig>(text) {
            Ok(raw) => (raw, ConfigErrors::default()),
            Err(errors) => match toml::from_str::<RawConfig>(text) {
                Ok(raw) => (raw, errors),
                // Syntax or type error: parse_toml already said where.
                Err(_) => return Err(errors),
            },
        };
        match Self::from_raw(raw, base) {
            Ok(config) => errors.finish(config),
            Err(more) => {
                errors.errors.extend(more.errors);
                Err(errors)
            }
        }
    }

    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();

        let coordinator = raw
            .coordinator
            .as_ref()
            .map(|c| coordinator(c, raw.tls.as_ref(), base, &mut errors));
        if raw.coordinator.is_none() && raw.tls.is_some() {
            errors.push(
                "tls",
                "set but unused: add a [coordinator] section with endpoints, or remove [tls]",
            );
        }

        let identity = identity(raw.identity.unwrap_or_default(), &mut errors);

        let status_socket = raw
            .status
            .and_then(|s| s.socket)
            .map(|s| base.join(s))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));

        let metrics_listen = raw.metrics.and_then(|m| match m.listen.as_deref() {
            None => {
                errors.push(
                    "metrics.listen",
                    "required in [metrics]: e.g. \"127.0.0.1:9465\" (or remove [metrics])",
                );
                None
            }
            Some(l) => l.parse::<SocketAddr>().map_err(|_| {
                errors.push(
                    "metrics.listen",
                    format!("{l:?} is not an address: use e.g. \"127.0.0.1:9465\" (plain HTTP: keep it on loopback or a private interface)"),
                );
            }).ok(),
        });

        let mut services = Vec::new();
        for (name, raw) in &raw.services {
            services.push(service(name, raw, base, &mut errors));
        }
        dependency_graph(&services, &mut errors);

        errors.finish(Config {
            base: base.to_owned(),
            coordinator,
            identity,
            status_socket,
            metrics_listen,
            services,
        })
    }

    /// What the Hello declares.
    pub fn service_specs(&self) -> Vec<v1::ServiceSpec> {
        self.services
            .iter()
            .map(|s| v1::ServiceSpec {
                name: s.name.clone(),
                unit: match &s.action {
                    Action::Unit(u) => u.clone(),
                    _ => String::new(),
                },
                depends_on: s.depends_on.clone(),
                checks: s
                    .checks
                    .iter()
                    .map(|c| v1::CheckSpec {
                        name: c.name.clone(),
                        kind: c.probe.kind().to_owned(),
                        dependency: c.dependency.clone().unwrap_or_default(),
                        interval: prost_types::Duration::try_from(c.interval).ok(),
                    })
                    .collect(),
            })
            .collect()
    }
}

fn coordinator(
    raw: &RawCoordinator,
    tls: Option<&RawTls>,
    base: &Path,
    errors: &mut ConfigErrors,
) -> CoordinatorConfig {
    let endpoints = raw.endpoints.clone().unwrap_or_default();
    if endpoints.is_empty() {
        errors.push(
            "coordinator.endpoints",
            "required: at least one host:port, e.g. [\"coordinator.example.com:7443\"]",
        );
    }
    for (i, e) in endpoints.iter().enumerate() {
        if let Err(e) = split_endpoint(e) {
            errors.push(format!("coordinator.endpoints[{i}]"), e.to_string());
        }
    }
    let tls = match tls {
        Some(tls) => tls.resolve(base, "tls", errors),
        None => {
            errors.push(
                "tls",
                "required with [coordinator]: set ca, cert and key (PEM files)",
            );
            RawTls::default().resolve(base, "tls", &mut ConfigErrors::default())
        }
    };
    let connect_timeout = errors.duration(
        "coordinator.connect_timeout",
        raw.connect_timeout.as_deref(),
        Duration::from_secs(5),
    );
    let heartbeat_interval = positive(
        errors,
        "coordinator.heartbeat_interval",
        raw.heartbeat_interval.as_deref(),
        Duration::from_secs(5),
    );
    let reconnect_initial = positive(
        errors,
        "coordinator.reconnect_initial",
        raw.reconnect_initial.as_deref(),
        Duration::from_millis(500),
    );
    let reconnect_max = positive(
        errors,
        "coordinator.reconnect_max",
        raw.reconnect_max.as_deref(),
        Duration::from_secs(30),
    );
    if reconnect_initial > reconnect_max {
        errors.push(
            "coordinator.reconnect_initial",
            "must not be longer than reconnect_max",
        );
    }
    let event_buffer = int(
        errors,
        "coordinator.event_buffer",
        raw.event_buffer,
        1024,
        1,
        1_000_000,
    );
    CoordinatorConfig {
        endpoints,
        tls,
        connect_timeout,
        heartbeat_interval,
        event_buffer: NonZeroUsize::new(event_buffer as usize).unwrap_or(NonZeroUsize::MIN),
        reconnect_initial,
        reconnect_max,
    }
}

fn identity(raw: RawIdentity, errors: &mut ConfigErrors) -> IdentitySource {
    let imds_timeout = positive(
        errors,
        "identity.imds_timeout",
        raw.imds_timeout.as_deref(),
        Duration::from_secs(1),
    );
    match (raw.instance_id, raw.availability_zone) {
        (Some(instance_id), Some(availability_zone)) => {
            if let Err(e) = autoheal_proto::identity::validate_segment("instance id", &instance_id)
            {
                errors.push("identity.instance_id", e.to_string());
            }
            if availability_zone.trim().is_empty() {
                errors.push("identity.availability_zone", "must not be empty");
            }
            if raw.imds_endpoint.is_some() {
                errors.push(
                    "identity.imds_endpoint",
                    "unused when instance_id and availability_zone are set",
                );
            }
            IdentitySource::Static {
                instance_id,
                availability_zone,
            }
        }
        (Some(_), None) => {
            errors.push(
                "identity.availability_zone",
                "required with identity.instance_id (set both off EC2, or neither to use IMDSv2)",
            );
            IdentitySource::Imds {
                endpoint: DEFAULT_IMDS.to_owned(),
                timeout: imds_timeout,
            }
        }
        (None, Some(_)) => {
            errors.push(
                "identity.instance_id",
                "required with identity.availability_zone (set both off EC2, or neither to use IMDSv2)",
            );
            IdentitySource::Imds {
                endpoint: DEFAULT_IMDS.to_owned(),
                timeout: imds_timeout,
            }
        }
        (None, None) => {
            let endpoint = raw.imds_endpoint.unwrap_or_else(|| DEFAULT_IMDS.to_owned());
            if let Err(e) = parse_host_port(&endpoint) {
                errors.push("identity.imds_endpoint", e);
            }
            IdentitySource::Imds {
                endpoint,
                timeout: imds_timeout,
            }
        }
    }
}

fn service(name: &str, raw: &RawService, base: &Path, errors: &mut ConfigErrors) -> ServiceConfig {
    let p = format!("services.{name}");
    if let Err(e) = autoheal_proto::identity::validate_segment("service name", name) {
        errors.push(&p, e.to_string());
    }
    let dir = raw
        .working_dir
        .as_ref()
        .map(|d| base.join(d))
        .unwrap_or_else(|| base.to_owned());
    let stop_timeout = positive(
        errors,
        &format!("{p}.stop_timeout"),
        raw.stop_timeout.as_deref(),
        Duration::from_secs(10),
    );
    let set: Vec<&str> = [
        raw.run.as_ref().map(|_| "run"),
        raw.unit.as_ref().map(|_| "unit"),
        raw.restart_command.as_ref().map(|_| "restart_command"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if set.len() > 1 {
        errors.push(
            &p,
            format!(
                "{} are exclusive: a service has one restart action",
                set.join(" and ")
            ),
        );
    }
    let action = if let Some(argv) = &raw.run {
        argv_ok(errors, &format!("{p}.run"), argv);
        Action::Run {
            argv: argv.clone(),
            dir,
            stop_timeout,
        }
    } else if let Some(unit) = &raw.unit {
        if unit.trim().is_empty() || unit.contains(char::is_whitespace) {
            errors.push(
                format!("{p}.unit"),
                "must be a systemd unit name, e.g. \"nginx.service\"",
            );
        }
        Action::Unit(unit.clone())
    } else if let Some(argv) = &raw.restart_command {
        argv_ok(errors, &format!("{p}.restart_command"), argv);
        Action::Command {
            argv: argv.clone(),
            dir,
            pidfile: raw.pidfile.as_ref().map(|f| base.join(f)),
        }
    } else {
        Action::None
    };
    if raw.pidfile.is_some() && raw.restart_command.is_none() {
        errors.push(
            format!("{p}.pidfile"),
            "only used with restart_command (run and unit services are watched directly)",
        );
    }
    if raw.stop_timeout.is_some() && raw.run.is_none() {
        errors.push(format!("{p}.stop_timeout"), "only used with run");
    }

    let policy = restart_policy(&p, raw.restart.as_ref(), errors);

    let depends_on = raw.depends_on.clone().unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut checks: Vec<CheckConfig> = Vec::new();
    for (i, c) in raw.checks.iter().enumerate() {
        let cp = format!("{p}.checks[{i}]");
        let check = check(&cp, c, base, errors);
        if let Some(check) = check {
            if !seen.insert(check.name.clone()) {
                errors.push(
                    format!("{cp}.name"),
                    format!(
                        "{:?} is used by another check of this service: give each check a unique name",
                        check.name
                    ),
                );
            }
            checks.push(check);
        }
    }
    if raw.checks.is_empty() && !matches!(action, Action::Run { .. }) {
        errors.push(
            format!("{p}.checks"),
            "at least one check is required (only a `run` service is watched without checks)",
        );
    }
    ServiceConfig {
        name: name.to_owned(),
        action,
        depends_on,
        policy,
        checks,
    }
}

fn restart_policy(
    p: &str,
    raw: Option<&RawRestart>,
    errors: &mut ConfigErrors,
) -> RestartPolicyConfig {
    let d = RestartPolicyConfig::default();
    let Some(raw) = raw else { return d };
    let p = format!("{p}.restart");
    let max_attempts = int(
        errors,
        &format!("{p}.max_attempts"),
        raw.max_attempts,
        i64::from(d.max_attempts),
        1,
        1000,
    ) as u32;
    let window = positive(
        errors,
        &format!("{p}.window"),
        raw.window.as_deref(),
        d.window,
    );
    let backoff_initial = errors.duration(
        &format!("{p}.backoff_initial"),
        raw.backoff_initial.as_deref(),
        d.backoff_initial,
    );
    let backoff_max = errors.duration(
        &format!("{p}.backoff_max"),
        raw.backoff_max.as_deref(),
        d.backoff_max,
    );
    if backoff_initial > backoff_max {
        errors.push(
            format!("{p}.backoff_initial"),
            "must not be longer than backoff_max",
        );
    }
    let verify_timeout = positive(
        errors,
        &format!("{p}.verify_timeout"),
        raw.verify_timeout.as_deref(),
        d.verify_timeout,
    );
    let action_timeout = positive(
        errors,
        &format!("{p}.action_timeout"),
        raw.action_timeout.as_deref(),
        d.action_timeout,
    );
    let flap_transitions = int(
        errors,
        &format!("{p}.flap_transitions"),
        raw.flap_transitions,
        i64::from(d.flap_transitions),
        2,
        10_000,
    ) as u32;
    let flap_window = positive(
        errors,
        &format!("{p}.flap_window"),
        raw.flap_window.as_deref(),
        d.flap_window,
    );
    RestartPolicyConfig {
        max_attempts,
        window,
        backoff_initial,
        backoff_max,
        verify_timeout,
        action_timeout,
        flap_transitions,
        flap_window,
    }
}

const KINDS: &[&str] = &[
    "http", "tcp", "grpc", "exec", "process", "systemd", "disk", "memory", "load",
];

fn check(p: &str, raw: &RawCheck, base: &Path, errors: &mut ConfigErrors) -> Option<CheckConfig> {
    let Some(kind) = raw.kind.as_deref() else {
        errors.push(
            format!("{p}.kind"),
            format!("required: one of {}", KINDS.join(", ")),
        );
        return None;
    };
    if !KINDS.contains(&kind) {
        errors.push(
            format!("{p}.kind"),
            format!(
                "unknown check kind {kind:?}: use one of {}",
                KINDS.join(", ")
            ),
        );
        return None;
    }
    let name = raw.name.clone().unwrap_or_else(|| kind.to_owned());
    if let Err(e) = autoheal_proto::identity::validate_segment("check name", &name) {
        errors.push(format!("{p}.name"), e.to_string());
    }
    let interval = positive(
        errors,
        &format!("{p}.interval"),
        raw.interval.as_deref(),
        Duration::from_secs(5),
    );
    let default_timeout = Duration::from_secs(1).min(interval / 2);
    let timeout = positive(
        errors,
        &format!("{p}.timeout"),
        raw.timeout.as_deref(),
        default_timeout,
    );
    if raw.timeout.is_some() && timeout >= interval {
        errors.push(format!("{p}.timeout"), "must be shorter than interval");
    }
    let initial_delay = errors.duration(
        &format!("{p}.initial_delay"),
        raw.initial_delay.as_deref(),
        Duration::ZERO,
    );
    let startup_grace = errors.duration(
        &format!("{p}.startup_grace"),
        raw.startup_grace.as_deref(),
        Duration::ZERO,
    );
    let success_threshold = int(
        errors,
        &format!("{p}.success_threshold"),
        raw.success_threshold,
        1,
        1,
        100,
    ) as u32;
    let failure_threshold = int(
        errors,
        &format!("{p}.failure_threshold"),
        raw.failure_threshold,
        3,
        1,
        100,
    ) as u32;
    if let Some(Err(e)) = raw
        .dependency
        .as_ref()
        .map(|dep| autoheal_proto::identity::validate_segment("dependency name", dep))
    {
        errors.push(format!("{p}.dependency"), e.to_string());
    }

    // Which kind-specific fields are set, so a field meant for another kind is reported.
    let fields: [(&str, bool, &[&str]); 14] = [
        ("url", raw.url.is_some(), &["http"]),
        ("method", raw.method.is_some(), &["http"]),
        ("expect_status", raw.expect_status.is_some(), &["http"]),
        ("body_contains", raw.body_contains.is_some(), &["http"]),
        ("address", raw.address.is_some(), &["tcp", "grpc"]),
        ("grpc_service", raw.grpc_service.is_some(), &["grpc"]),
        ("command", raw.command.is_some(), &["exec"]),
        ("output_cap", raw.output_cap.is_some(), &["exec"]),
        ("process_name", raw.process_name.is_some(), &["process"]),
        ("pidfile", raw.pidfile.is_some(), &["process"]),
        ("unit", raw.unit.is_some(), &["systemd"]),
        ("path", raw.path.is_some(), &["disk"]),
        (
            "max_used_percent",
            raw.max_used_percent.is_some(),
            &["disk", "memory"],
        ),
        (
            "max_load_per_cpu",
            raw.max_load_per_cpu.is_some(),
            &["load"],
        ),
    ];
    for (field, set, kinds) in fields {
        if set && !kinds.contains(&kind) {
            errors.push(
                format!("{p}.{field}"),
                format!("not used by {kind} checks (only by {})", kinds.join(", ")),
            );
        }
    }
    let required = |errors: &mut ConfigErrors, field: &str, hint: &str| {
        errors.push(
            format!("{p}.{field}"),
            format!("required for {kind} checks: {hint}"),
        );
    };

    let probe = match kind {
        "http" => {
            let (host, port, path) = match raw.url.as_deref() {
                None => {
                    required(errors, "url", "e.g. \"http://127.0.0.1:8080/healthz\"");
                    (String::new(), 0, "/".to_owned())
                }
                Some(url) => parse_http_url(url).unwrap_or_else(|e| {
                    errors.push(format!("{p}.url"), e);
                    (String::new(), 0, "/".to_owned())
                }),
            };
            let method = raw.method.clone().unwrap_or_else(|| "GET".to_owned());
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(
                    format!("{p}.method"),
                    format!("{method:?} is not an HTTP method: use e.g. \"GET\" or \"HEAD\""),
                );
            }
            let status = match raw.expect_status.as_deref() {
                None => (200, 399),
                Some(s) => parse_status_range(s).unwrap_or_else(|e| {
                    errors.push(format!("{p}.expect_status"), e);
                    (200, 399)
                }),
            };
            Probe::Http(HttpProbe {
                host,
                port,
                path,
                method,
                status,
                body_contains: raw.body_contains.clone(),
            })
        }
        "tcp" | "grpc" => {
            let address = raw.address.clone().unwrap_or_default();
            if raw.address.is_none() {
                required(errors, "address", "host:port, e.g. \"127.0.0.1:5432\"");
            } else if let Err(e) = parse_host_port(&address) {
                errors.push(format!("{p}.address"), e);
            }
            if kind == "tcp" {
                Probe::Tcp { address }
            } else {
                Probe::Grpc {
                    address,
                    service: raw.grpc_service.clone().unwrap_or_default(),
                }
            }
        }
        "exec" => {
            let argv = raw.command.clone().unwrap_or_default();
            if raw.command.is_none() {
                required(
                    errors,
                    "command",
                    "argv, e.g. [\"/usr/local/bin/check\", \"--quick\"]",
                );
            } else {
                argv_ok(errors, &format!("{p}.command"), &argv);
            }
            let output_cap = int(
                errors,
                &format!("{p}.output_cap"),
                raw.output_cap,
                1024,
                1,
                65536,
            );
            Probe::Exec {
                argv,
                dir: base.to_owned(),
                output_cap: output_cap as usize,
            }
        }
        "process" => match (&raw.process_name, &raw.pidfile) {
            (Some(n), None) => {
                if n.is_empty() {
                    errors.push(format!("{p}.process_name"), "must not be empty");
                }
                Probe::Process(ProcessMatch::Name(n.clone()))
            }
            (None, Some(f)) => Probe::Process(ProcessMatch::Pidfile(base.join(f))),
            (Some(_), Some(_)) => {
                errors.push(p, "set process_name or pidfile, not both");
                Probe::Process(ProcessMatch::Name(String::new()))
            }
            (None, None) => {
                required(
                    errors,
                    "process_name",
                    "a process name (or set pidfile instead)",
                );
                Probe::Process(ProcessMatch::Name(String::new()))
            }
        },
        "systemd" => {
            let unit = raw.unit.clone().unwrap_or_default();
            if unit.trim().is_empty() {
                required(errors, "unit", "a unit name, e.g. \"nginx.service\"");
            }
            Probe::Systemd { unit }
        }
        "disk" => Probe::Disk {
            path: base.join(raw.path.as_deref().unwrap_or("/")),
            max_used_percent: percent(errors, p, raw.max_used_percent, 90.0),
        },
        "memory" => Probe::Memory {
            max_used_percent: percent(errors, p, raw.max_used_percent, 95.0),
        },
        "load" => {
            let max = raw.max_load_per_cpu.unwrap_or(4.0);
            if !(max > 0.0 && max.is_finite()) {
                errors.push(format!("{p}.max_load_per_cpu"), "must be a positive number");
            }
            Probe::Load { max_per_cpu: max }
        }
        _ => return None,
    };
    Some(CheckConfig {
        name,
        interval,
        timeout,
        initial_delay,
        startup_grace,
        success_threshold,
        failure_threshold,
        dependency: raw.dependency.clone(),
        probe,
    })
}

fn percent(errors: &mut ConfigErrors, p: &str, raw: Option<f64>, default: f64) -> f64 {
    let v = raw.unwrap_or(default);
    if !(v > 0.0 && v <= 100.0) {
        errors.push(
            format!("{p}.max_used_percent"),
            format!("{v} is not a percentage: use a number in (0, 100]"),
        );
    }
    v
}

fn dependency_graph(services: &[ServiceConfig], errors: &mut ConfigErrors) {
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for s in services {
        for (i, d) in s.depends_on.iter().enumerate() {
            let path = format!("services.{}.depends_on[{i}]", s.name);
            if d == &s.name {
                errors.push(path, "a service cannot depend on itself");
            } else if !names.contains(d.as_str()) {
                errors.push(path, format!("no service named {d:?} is configured"));
            }
        }
    }
    // Cycles: depth-first search from each service.
    let deps: BTreeMap<&str, Vec<&str>> = services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let mut reported = BTreeSet::new();
    for s in services {
        let mut stack = vec![(s.name.as_str(), vec![s.name.as_str()])];
        while let Some((at, trail)) = stack.pop() {
            for &next in deps.get(at).map(Vec::as_slice).unwrap_or_default() {
                if next == s.name && trail.len() > 1 {
                    let mut cycle = trail.clone();
                    cycle.sort_unstable();
                    if reported.insert(cycle) {
                        let mut shown = trail.clone();
                        shown.push(next);
                        errors.push(
                            format!("services.{}.depends_on", s.name),
                            format!("dependency cycle: {}", shown.join(" -> ")),
                        );
                    }
                } else if !trail.contains(&next) {
                    let mut t = trail.clone();
                    t.push(next);
                    stack.push((next, t));
                }
            }
        }
    }
}

fn argv_ok(errors: &mut ConfigErrors, path: &str, argv: &[String]) {
    if argv.first().is_none_or(|a| a.trim().is_empty()) {
        errors.push(
            path,
            "must be a non-empty argv list, e.g. [\"/usr/bin/myservice\", \"--port\", \"8080\"]",
        );
    }
}

fn positive(
    errors: &mut ConfigErrors,
    path: &str,
    raw: Option<&str>,
    default: Duration,
) -> Duration {
    let d = errors.duration(path, raw, default);
    if raw.is_some() && d.is_zero() {
        errors.push(path, "must be longer than zero");
        return default;
    }
    d
}

fn int(
    errors: &mut ConfigErrors,
    path: &str,
    raw: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> i64 {
    match raw {
        None => default,
        Some(v) if (min..=max).contains(&v) => v,
        Some(v) => {
            errors.push(path, format!("{v} is out of range: use {min}..={max}"));
            default
        }
    }
}

/// `host:port`; the host may be a name or an IP (`[::1]:80` for IPv6).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let bad = || format!("{s:?} is not host:port, e.g. \"127.0.0.1:8080\"");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// `http://host[:port][/path]` → host, port, path.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https is not supported by http checks; check the plain-HTTP health port, or use a tcp check"
        ));
    } else {
        return Err(format!(
            "{url:?} is not a URL: use e.g. \"http://127.0.0.1:8080/healthz\""
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let (host, port) =
        parse_host_port(&hostport).map_err(|_| format!("{url:?}: bad host or port"))?;
    Ok((host, port, path.to_owned()))
}

/// `200`, `200-399` or `2xx`.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a status range: use e.g. \"200\", \"200-399\" or \"2xx\"");
    let (lo, hi) = if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().map_err(|_| bad())?;
        (c * 100, c * 100 + 99)
    } else if let Some((a, b)) = s.split_once('-') {
        (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        )
    } else {
        let v = s.trim().parse().map_err(|_| bad())?;
        (v, v)
    };
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("/etc/autoheal")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    const GOOD: &str = r#"
        [coordinator]
        endpoints = ["127.0.0.1:7443"]
        [tls]
        ca = "pki/ca.pem"
        cert = "pki/cert.pem"
        key = "pki/key.pem"
        [identity]
        instance_id = "i-1"
        availability_zone = "local-1a"
        [services.db]
        run = ["sleep", "1000"]
        [services.web]
        run = ["python3", "-m", "http.server"]
        depends_on = ["db"]
        [services.web.restart]
        max_attempts = 2
        [[services.web.checks]]
        kind = "http"
        url = "http://127.0.0.1:8080/healthz"
        interval = "2s"
        timeout = "500ms"
        [[services.web.checks]]
        name = "pg"
        kind = "tcp"
        address = "127.0.0.1:5432"
        dependency = "postgres-main"
    "#;

    #[test]
    fn good_config_parses_with_relative_paths_resolved() {
        let c = Config::parse(GOOD, Path::new("/etc/autoheal")).expect("valid");
        let coord = c.coordinator.expect("coordinator");
        assert_eq!(coord.tls.ca, Path::new("/etc/autoheal/pki/ca.pem"));
        assert_eq!(coord.event_buffer.get(), 1024);
        assert_eq!(c.services.len(), 2);
        let web = &c.services[1];
        assert_eq!(web.name, "web");
        assert_eq!(web.policy.max_attempts, 2);
        assert_eq!(web.checks[0].name, "http");
        assert_eq!(web.checks[0].timeout, Duration::from_millis(500));
        assert_eq!(web.checks[1].dependency.as_deref(), Some("postgres-main"));
        assert!(
            matches!(&web.action, Action::Run { dir, .. } if dir == Path::new("/etc/autoheal"))
        );
        assert_eq!(
            c.identity,
            IdentitySource::Static {
                instance_id: "i-1".into(),
                availability_zone: "local-1a".into()
            }
        );
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let errs = errors_of(
            r#"
            [coordinator]
            endpoints = ["nope"]
            event_buffer = 0
            [identity]
            instance_id = "i-1"
            [services.web]
            run = ["x"]
            unit = "web.service"
            depends_on = ["ghost"]
            bogus = 1
            [[services.web.checks]]
            kind = "http"
            url = "https://x/"
            [[services.web.checks]]
            kind = "tcp"
            address = "127.0.0.1:1"
            interval = "1s"
            timeout = "2s"
            [[services.web.checks]]
            kind = "telepathy"
            [[services.web.checks]]
            kind = "exec"
            url = "http://a/"
            failure_threshold = 0
            interval = "soon"
        "#,
        );
        let expected = [
            "coordinator.endpoints[0]: ",
            "coordinator.event_buffer: 0 is out of range",
            "tls: required with [coordinator]",
            "identity.availability_zone: required",
            "services.web: run and unit are exclusive",
            "services.web.bogus: unknown key",
            "services.web.depends_on[0]: no service named \"ghost\"",
            "services.web.checks[0].url: \"https://x/\": https is not supported",
            "services.web.checks[1].timeout: must be shorter than interval",
            "services.web.checks[2].kind: unknown check kind \"telepathy\"",
            "services.web.checks[3].url: not used by exec checks",
            "services.web.checks[3].command: required for exec checks",
            "services.web.checks[3].failure_threshold: 0 is out of range",
            "services.web.checks[3].interval: \"soon\" is not a duration",
        ];
        let unknown = errors_of(
            "[services.web]\nbogus = 1\nrun = [\"x\"]\n[[services.web.checks]]\nkind=\"tcp\"\nadress=\"x\"\n",
        );
        assert_eq!(
            unknown,
            [
                "services.web.bogus: unknown key (check the spelling against the configuration reference)",
                "services.web.checks[0].adress: unknown key (check the spelling against the configuration reference)",
                "services.web.checks[0].address: required for tcp checks: host:port, e.g. \"127.0.0.1:5432\"",
            ]
        );
        for want in expected {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn dependency_cycles_are_reported_once() {
        let errs = errors_of(
            r#"
            [services.a]
            run = ["x"]
            depends_on = ["b"]
            [services.b]
            run = ["x"]
            depends_on = ["a"]
            [services.c]
            run = ["x"]
            depends_on = ["c"]
        "#,
        );
        assert_eq!(
            errs,
            [
                "services.c.depends_on[0]: a service cannot depend on itself",
                "services.a.depends_on: dependency cycle: a -> b -> a",
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errs = errors_of("[services.web\nrun = 1\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].contains("line 1") || errs[0].starts_with("<toml>"),
            "{errs:?}"
        );
    }

    #[test]
    fn urls_and_status_ranges() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/healthz?x=1"),
            Ok(("127.0.0.1".into(), 8080, "/healthz?x=1".into()))
        );
        assert_eq!(
            parse_http_url("http://localhost"),
            Ok(("localhost".into(), 80, "/".into()))
        );
        assert_eq!(
            parse_http_url("http://[::1]:81/"),
            Ok(("::1".into(), 81, "/".into()))
        );
        assert!(parse_http_url("ftp://x").is_err());
        assert_eq!(parse_status_range("2xx"), Ok((200, 299)));
        assert_eq!(parse_status_range("200-204"), Ok((200, 204)));
        assert_eq!(parse_status_range("204"), Ok((204, 204)));
        for bad in ["99", "300-200", "abc", "7xx"] {
            assert!(parse_status_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn imds_is_the_default_identity() {
        let c = Config::parse("", Path::new("/")).expect("empty config is valid");
        assert_eq!(
            c.identity,
            IdentitySource::Imds {
                endpoint: DEFAULT_IMDS.into(),
                timeout: Duration::from_secs(1)
            }
        );
        assert_eq!(c.status_socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.metrics_listen, None, "metrics are opted into");
    }

    #[test]
    fn metrics_listen_is_an_address() {
        let c = Config::parse("[metrics]\nlisten = \"127.0.0.1:9465\"\n", Path::new("/"))
            .expect("valid");
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9465)))
        );
        for bad in ["[metrics]\nlisten = \"localhost\"\n", "[metrics]\n"] {
            let errors = Config::parse(bad, Path::new("/")).expect_err(bad);
            assert_eq!(errors.errors[0].path, "metrics.listen", "{bad}: {errors}");
        }
    }
}
