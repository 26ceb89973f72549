//! The typed side of the agent's config: validated values (`Duration`, `SocketAddr`,
//! `NonZeroUsize`, resolved paths) that the rest of the agent uses; never built from TOML
//! directly, only by validation (`check`).

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

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
