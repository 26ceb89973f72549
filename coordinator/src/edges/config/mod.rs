//! The coordinator's TOML config: parsed into raw structs, then validated into typed values with
//! every problem collected and named by its path.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use autoheal_common::{
    config::{ConfigErrors, RawTls, parse_toml_collecting},
    tls::TlsFiles,
};
use autoheal_proto::identity::TrustDomain;
use serde::Deserialize;

mod aws;
pub mod ecs;
pub mod enroll;
mod policy;
mod store;

pub use aws::AwsConfig;
use aws::{RawAws, aws_config};
use policy::{RawGuardrails, RawLadder, policy_config};
use store::{RawStore, store_config};
pub use store::{StoreBackend, StoreConfig};

#[derive(Debug, Deserialize, Default)]
struct RawConfig {
    coordinator_id: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    metrics_listen: Option<String>,
    trust_domain: Option<String>,
    dry_run: Option<bool>,
    state_dir: Option<String>,
    tls: Option<RawTls>,
    tls_reload_interval: Option<String>,
    agents: Option<RawAgents>,
    aws: Option<RawAws>,
    ladder: Option<RawLadder>,
    guardrails: Option<RawGuardrails>,
    notify: Option<crate::services::notify::RawNotify>,
    store: Option<RawStore>,
    enroll: Option<enroll::RawEnroll>,
}

#[derive(Debug, Deserialize, Default)]
struct RawAgents {
    heartbeat_interval: Option<String>,
    max_concurrent_handshakes: Option<usize>,
    handshake_timeout: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Names this replica in logs, events and the Welcome message.
    pub coordinator_id: String,
    pub listen: SocketAddr,
    /// The address other replicas redirect agents to (defaults to the address bound).
    pub advertise: Option<String>,
    /// Plain-HTTP Prometheus `/metrics`; `None` (the default): not served.
    pub metrics_listen: Option<SocketAddr>,
    pub trust_domain: TrustDomain,
    /// Shadow mode: decide and record, never act. On by default: acting is opted into.
    pub dry_run: bool,
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    pub tls_reload_interval: Duration,
    pub heartbeat_interval: Duration,
    pub max_concurrent_handshakes: NonZeroUsize,
    pub handshake_timeout: Duration,
    /// `None`: no `[aws]` section, the coordinator only watches (no inventory, no actions).
    pub aws: Option<AwsConfig>,
    pub policy: autoheal_policy::Config,
    pub notify: crate::services::notify::NotifyConfig,
    pub store: StoreConfig,
    /// `None`: no `[enroll]` section, instances need certificates made out of band.
    pub enroll: Option<enroll::EnrollConfig>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
pub const DEFAULT_TRUST_DOMAIN: &str = "autoheal.local";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has errors:\n{errors}")]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|errors| LoadError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    /// Relative paths resolve against `base`, the config file's folder.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        let (raw, mut errors): (RawConfig, _) = parse_toml_collecting(text)?;

        let listen_raw = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_raw.parse().unwrap_or_else(|_| {
            errors.push(
                "listen",
                format!(
                    "{listen_raw:?} is not an address: use e.g. \"0.0.0.0:7443\" or \"[::]:7443\""
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 7443))
        });
        let metrics_listen = raw.metrics_listen.as_deref().and_then(|m| {
            match m.parse::<SocketAddr>() {
                Ok(addr) if addr == listen && addr.port() != 0 => {
                    errors.push("metrics_listen", "must differ from listen");
                    None
                }
                Ok(addr) => Some(addr),
                Err(_) => {
                    errors.push(
                        "metrics_listen",
                        format!("{m:?} is not an address: use e.g. \"127.0.0.1:9464\" (plain HTTP: keep it on loopback or a private interface)"),
                    );
                    None
                }
            }
        });
        let trust_domain =
            TrustDomain::new(raw.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN))
                .unwrap_or_else(|e| {
                    errors.push("trust_domain", e.to_string());
                    TrustDomain::new(DEFAULT_TRUST_DOMAIN).expect("default trust domain is valid")
                });
        let coordinator_id = match raw.coordinator_id {
            Some(id) if id.trim().is_empty() => {
                errors.push("coordinator_id", "must not be empty");
                id
            }
            Some(id) => id,
            None => default_id(),
        };
        let tls = match &raw.tls {
            Some(tls) => tls.resolve(base, "tls", &mut errors),
            None => {
                errors.push("tls", "required: [tls] with ca, cert and key (PEM files)");
                RawTls::default().resolve(base, "tls", &mut ConfigErrors::default())
            }
        };
        let tls_reload_interval = errors.duration(
            "tls_reload_interval",
            raw.tls_reload_interval.as_deref(),
            Duration::from_secs(5),
        );
        if tls_reload_interval.is_zero() {
            errors.push("tls_reload_interval", "must be greater than zero");
        }
        let agents = raw.agents.unwrap_or_default();
        let heartbeat_interval = errors.duration(
            "agents.heartbeat_interval",
            agents.heartbeat_interval.as_deref(),
            Duration::from_secs(5),
        );
        if heartbeat_interval < Duration::from_millis(100) {
            errors.push("agents.heartbeat_interval", "must be at least 100ms");
        }
        let handshake_timeout = errors.duration(
            "agents.handshake_timeout",
            agents.handshake_timeout.as_deref(),
            Duration::from_secs(10),
        );
        if handshake_timeout.is_zero() {
            errors.push("agents.handshake_timeout", "must be greater than zero");
        }
        let max_concurrent_handshakes = NonZeroUsize::new(
            agents.max_concurrent_handshakes.unwrap_or(256),
        )
        .unwrap_or_else(|| {
            errors.push("agents.max_concurrent_handshakes", "must be at least 1");
            NonZeroUsize::MIN
        });
        let state_dir = base.join(raw.state_dir.as_deref().unwrap_or("state"));
        let advertise = raw.advertise;

        let has_aws = raw.aws.is_some();
        let store = store_config(raw.store.unwrap_or_default(), has_aws, &mut errors);
        let aws = raw.aws.map(|a| aws_config(a, &mut errors));
        let enroll = raw
            .enroll
            .map(|e| enroll::enroll_config(e, base, &tls.ca, listen, has_aws, &mut errors));
        // Always built: the webhook environment variable alone can turn Slack on.
        let notify = crate::services::notify::NotifyConfig::from_raw(
            raw.notify.unwrap_or_default(),
            base,
            |k| std::env::var(k).ok(),
            has_aws,
            &mut errors,
        );
        let policy = policy_config(
            raw.ladder.unwrap_or_default(),
            raw.guardrails.unwrap_or_default(),
            raw.dry_run.unwrap_or(true),
            &mut errors,
        );

        errors.finish(Config {
            coordinator_id,
            listen,
            advertise,
            metrics_listen,
            trust_domain,
            dry_run: raw.dry_run.unwrap_or(true),
            state_dir,
            tls,
            tls_reload_interval,
            heartbeat_interval,
            max_concurrent_handshakes,
            handshake_timeout,
            aws,
            policy,
            notify,
            store,
            enroll,
        })
    }

    /// Problems that need the filesystem: unreadable or unusable certificate files.
    pub fn check_files(&self) -> ConfigErrors {
        let mut errors = ConfigErrors::default();
        match self.tls.load() {
            Err(e) => errors.push("tls", autoheal_common::error::DisplayChain(&e).to_string()),
            Ok(material) => {
                if let Err(e) = autoheal_common::tls::server_config(material, &self.trust_domain) {
                    errors.push("tls", autoheal_common::error::DisplayChain(&e).to_string());
                }
            }
        }
        if let Some(enroll) = &self.enroll {
            enroll.check_files(&self.trust_domain, &mut errors);
        }
        errors
    }
}

fn default_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".to_owned())
}

#[cfg(test)]
mod tests;
