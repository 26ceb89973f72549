//! The typed side of the agent's config: validated values (`Duration`, `SocketAddr`,
//! `NonZeroUsize`, resolved paths) that the rest of the agent uses; never built from TOML
//! directly, only by validation (`check`).

use std::{fmt, net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use autoheal_common::tls::TlsFiles;

pub const DEFAULT_SOCKET: &str = "/run/autoheal/agent.sock";
pub const DEFAULT_IMDS: &str = "169.254.169.254:80";

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
    /// The coordinator's enrollment listener (`host:port`): when set, the agent enrolls and
    /// renews its own certificate into the `[tls]` files (see `enroll`).
    pub enroll_endpoint: Option<String>,
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
            // Losses of health (see the machine): four crashes healed within ten minutes are a
            // service with a problem, not yet one that flaps; a fifth is.
            flap_transitions: 5,
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
    /// `https://` URLs: how the server is verified.
    pub tls: Option<HttpsTrust>,
}

/// Who an https check trusts: the system's roots, or the CA file the check names. The rustls
/// config is built once, at load, so a bad CA is a config error and a probe reads no file.
#[derive(Clone)]
pub struct HttpsTrust {
    pub ca: Option<PathBuf>,
    pub config: std::sync::Arc<rustls::ClientConfig>,
}

impl fmt::Debug for HttpsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsTrust").field("ca", &self.ca).finish()
    }
}

impl PartialEq for HttpsTrust {
    fn eq(&self, other: &Self) -> bool {
        self.ca == other.ca
    }
}

impl Eq for HttpsTrust {}

/// What a check probes; its name is the `kind` of a check in the config and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Http,
    Tcp,
    Grpc,
    Exec,
    Process,
    Systemd,
    Disk,
    Memory,
    Load,
}

impl CheckKind {
    pub const ALL: [CheckKind; 9] = [
        CheckKind::Http,
        CheckKind::Tcp,
        CheckKind::Grpc,
        CheckKind::Exec,
        CheckKind::Process,
        CheckKind::Systemd,
        CheckKind::Disk,
        CheckKind::Memory,
        CheckKind::Load,
    ];

    /// The kind's one name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Grpc => "grpc",
            CheckKind::Exec => "exec",
            CheckKind::Process => "process",
            CheckKind::Systemd => "systemd",
            CheckKind::Disk => "disk",
            CheckKind::Memory => "memory",
            CheckKind::Load => "load",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Probe {
    pub fn check_kind(&self) -> CheckKind {
        match self {
            Probe::Http(_) => CheckKind::Http,
            Probe::Tcp { .. } => CheckKind::Tcp,
            Probe::Grpc { .. } => CheckKind::Grpc,
            Probe::Exec { .. } => CheckKind::Exec,
            Probe::Process(_) => CheckKind::Process,
            Probe::Systemd { .. } => CheckKind::Systemd,
            Probe::Disk { .. } => CheckKind::Disk,
            Probe::Memory { .. } => CheckKind::Memory,
            Probe::Load { .. } => CheckKind::Load,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.check_kind().as_str()
    }
}
