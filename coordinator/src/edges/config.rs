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
}

#[derive(Debug, Deserialize, Default)]
struct RawStore {
    backend: Option<String>,
    table: Option<String>,
    lease_ttl: Option<String>,
    lease_renew_interval: Option<String>,
    event_ttl: Option<String>,
}

/// Where state lives and how leadership is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// One file in `state_dir`: one coordinator.
    Embedded,
    /// A DynamoDB table shared by every replica (needs `[aws]`).
    Dynamo { table: String },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub lease_ttl: Duration,
    pub lease_renew_interval: Duration,
    pub event_ttl: Duration,
}

#[derive(Debug, Deserialize, Default)]
struct RawAws {
    region: Option<String>,
    endpoint: Option<String>,
    asg_names: Option<Vec<String>>,
    asg_tag: Option<String>,
    interval: Option<String>,
    replace_with: Option<String>,
    respect_grace_period: Option<bool>,
    call_timeout: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
struct RawLadder {
    agent_silence_grace: Option<String>,
    ssm_timeout: Option<String>,
    drain_timeout: Option<String>,
    action_timeout: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct RawGuard {
    max_concurrent: Option<u32>,
    max_concurrent_percent: Option<u8>,
    min_healthy_percent: Option<u8>,
    anomaly_percent: Option<u8>,
    anomaly_window: Option<String>,
    dependency_percent: Option<u8>,
    brake_min_instances: Option<u32>,
    instance_cooldown: Option<String>,
    asg_cooldown: Option<String>,
    startup_grace: Option<String>,
    flap_transitions: Option<u32>,
    flap_window: Option<String>,
    act_on_alb_unhealthy: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
struct RawGuardrails {
    #[serde(flatten)]
    defaults: RawGuard,
    asg: Option<std::collections::BTreeMap<String, RawGuard>>,
}

/// How the coordinator reaches AWS and which groups it looks after.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub settings: crate::adapters::aws::AwsSettings,
    pub selector: crate::model::inventory::Selector,
    pub interval: Duration,
    pub replace_with: crate::services::control::ReplaceWith,
    pub respect_grace_period: bool,
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
        errors
    }
}

fn aws_config(raw: RawAws, errors: &mut ConfigErrors) -> AwsConfig {
    use crate::model::inventory::Selector;
    use crate::services::control::ReplaceWith;
    let defaults = crate::adapters::aws::AwsSettings::default();
    let region = raw
        .region
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or(defaults.region.clone());
    let selector = match (raw.asg_names, raw.asg_tag) {
        (Some(_), Some(_)) => {
            errors.push(
                "aws.asg_names",
                "give either asg_names or asg_tag, not both",
            );
            Selector::Names(Vec::new())
        }
        (Some(names), None) => {
            if names.is_empty() {
                errors.push("aws.asg_names", "must name at least one group");
            }
            Selector::Names(names)
        }
        (None, tag) => {
            let tag = tag.unwrap_or_else(|| "autoheal:enabled=true".to_owned());
            match tag.split_once('=') {
                Some((k, v)) if !k.is_empty() => Selector::Tag {
                    key: k.to_owned(),
                    value: v.to_owned(),
                },
                _ => {
                    errors.push(
                        "aws.asg_tag",
                        format!("{tag:?}: use KEY=VALUE, e.g. autoheal:enabled=true"),
                    );
                    Selector::Names(Vec::new())
                }
            }
        }
    };
    let replace_with = match raw.replace_with.as_deref() {
        None | Some("set-instance-health") => ReplaceWith::SetInstanceHealth,
        Some("terminate") => ReplaceWith::Terminate,
        Some(other) => {
            errors.push(
                "aws.replace_with",
                format!("{other:?}: use \"set-instance-health\" or \"terminate\""),
            );
            ReplaceWith::SetInstanceHealth
        }
    };
    let max_attempts = raw.max_attempts.unwrap_or(defaults.max_attempts);
    if max_attempts == 0 {
        errors.push("aws.max_attempts", "must be at least 1");
    }
    let interval = errors.duration(
        "aws.interval",
        raw.interval.as_deref(),
        Duration::from_secs(15),
    );
    if interval < Duration::from_millis(100) {
        errors.push("aws.interval", "must be at least 100ms");
    }
    AwsConfig {
        settings: crate::adapters::aws::AwsSettings {
            region,
            endpoint: raw
                .endpoint
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()),
            call_timeout: errors.duration(
                "aws.call_timeout",
                raw.call_timeout.as_deref(),
                defaults.call_timeout,
            ),
            max_attempts: max_attempts.max(1),
            ..defaults
        },
        selector,
        interval,
        replace_with,
        respect_grace_period: raw.respect_grace_period.unwrap_or(true),
    }
}

fn guard_override(
    raw: &RawGuard,
    prefix: &str,
    errors: &mut ConfigErrors,
) -> autoheal_policy::GuardrailOverride {
    let mut d = |name: &str, v: &Option<String>| {
        v.as_deref()
            .and_then(|v| match autoheal_common::config::parse_duration(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(format!("{prefix}{name}"), e);
                    None
                }
            })
    };
    autoheal_policy::GuardrailOverride {
        max_concurrent: raw.max_concurrent,
        max_concurrent_percent: raw.max_concurrent_percent,
        min_healthy_percent: raw.min_healthy_percent,
        anomaly_percent: raw.anomaly_percent,
        anomaly_window: d("anomaly_window", &raw.anomaly_window),
        dependency_percent: raw.dependency_percent,
        brake_min_instances: raw.brake_min_instances,
        instance_cooldown: d("instance_cooldown", &raw.instance_cooldown),
        asg_cooldown: d("asg_cooldown", &raw.asg_cooldown),
        startup_grace: d("startup_grace", &raw.startup_grace),
        flap_transitions: raw.flap_transitions,
        flap_window: d("flap_window", &raw.flap_window),
        dry_run: None,
        act_on_alb_unhealthy: raw.act_on_alb_unhealthy,
    }
}

fn policy_config(
    ladder: RawLadder,
    guardrails: RawGuardrails,
    dry_run: bool,
    errors: &mut ConfigErrors,
) -> autoheal_policy::Config {
    let mut raw = autoheal_policy::RawConfig::default();
    let l = &mut raw.ladder;
    l.agent_silence_grace = errors.duration(
        "ladder.agent_silence_grace",
        ladder.agent_silence_grace.as_deref(),
        l.agent_silence_grace,
    );
    l.ssm_timeout = errors.duration(
        "ladder.ssm_timeout",
        ladder.ssm_timeout.as_deref(),
        l.ssm_timeout,
    );
    l.drain_timeout = errors.duration(
        "ladder.drain_timeout",
        ladder.drain_timeout.as_deref(),
        l.drain_timeout,
    );
    l.action_timeout = errors.duration(
        "ladder.action_timeout",
        ladder.action_timeout.as_deref(),
        l.action_timeout,
    );
    if let Some(n) = ladder.max_attempts {
        l.max_attempts = n;
    }
    let global = guard_override(&guardrails.defaults, "guardrails.", errors);
    raw.guardrails = global.apply(&raw.guardrails);
    // The coordinator-wide dry-run switch wins: acting is opted into in one place.
    raw.guardrails.dry_run = dry_run;
    for (asg, g) in guardrails.asg.unwrap_or_default() {
        let o = guard_override(&g, &format!("guardrails.asg.{asg}."), errors);
        raw.asg.insert(asg, o);
    }
    match autoheal_policy::Config::try_new(raw) {
        Ok(c) => c,
        Err(e) => {
            for p in e.problems {
                let path = if p.path.starts_with("ladder") || p.path.starts_with("asg.") {
                    p.path.replacen("asg.", "guardrails.asg.", 1)
                } else {
                    format!("guardrails.{}", p.path.trim_start_matches("guardrails."))
                };
                errors.push(path, p.message);
            }
            autoheal_policy::Config::default()
        }
    }
}

fn store_config(raw: RawStore, has_aws: bool, errors: &mut ConfigErrors) -> StoreConfig {
    let backend = match raw.backend.as_deref() {
        None | Some("embedded") => StoreBackend::Embedded,
        Some("dynamodb") => {
            if !has_aws {
                errors.push(
                    "store.backend",
                    "dynamodb needs an [aws] section (region, endpoint, credentials)",
                );
            }
            StoreBackend::Dynamo {
                table: raw
                    .table
                    .clone()
                    .unwrap_or_else(|| "autoheal-state".to_owned()),
            }
        }
        Some(other) => {
            errors.push(
                "store.backend",
                format!("{other:?}: use \"embedded\" or \"dynamodb\""),
            );
            StoreBackend::Embedded
        }
    };
    if raw.table.is_some() && backend == StoreBackend::Embedded {
        errors.push("store.table", "only used with backend = \"dynamodb\"");
    }
    let lease_ttl = errors.duration(
        "store.lease_ttl",
        raw.lease_ttl.as_deref(),
        Duration::from_secs(15),
    );
    let lease_renew_interval = errors.duration(
        "store.lease_renew_interval",
        raw.lease_renew_interval.as_deref(),
        lease_ttl / 4,
    );
    if lease_renew_interval * 3 >= lease_ttl {
        errors.push(
            "store.lease_renew_interval",
            "must be shorter than a third of store.lease_ttl, so two renewals can fail before the lease lapses",
        );
    }
    let event_ttl = errors.duration(
        "store.event_ttl",
        raw.event_ttl.as_deref(),
        Duration::from_secs(7 * 24 * 3600),
    );
    StoreConfig {
        backend,
        lease_ttl,
        lease_renew_interval,
        event_ttl,
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
mod tests {
    use super::*;

    const GOOD: &str = r#"
        listen = "127.0.0.1:0"
        [tls]
        ca = "pki/ca.pem"
        cert = "pki/coordinator.pem"
        key = "pki/coordinator-key.pem"
    "#;

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = Config::from_toml(GOOD, Path::new("/etc/autoheal")).expect("valid");
        assert!(c.dry_run, "acting on AWS must be opted into");
        assert_eq!(c.tls.ca, Path::new("/etc/autoheal/pki/ca.pem"));
        assert_eq!(c.state_dir, Path::new("/etc/autoheal/state"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.trust_domain.as_str(), "autoheal.local");
        assert_eq!(c.metrics_listen, None, "metrics are opted into");
    }

    #[test]
    fn metrics_listen_is_an_address_apart_from_listen() {
        let ok = format!("metrics_listen = \"127.0.0.1:9464\"\n{GOOD}");
        let c = Config::from_toml(&ok, Path::new(".")).expect("valid");
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        for bad in ["localhost", "127.0.0.1:7443"] {
            let text = format!(
                "metrics_listen = {bad:?}\nlisten = \"127.0.0.1:7443\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
            );
            let errors = Config::from_toml(&text, Path::new(".")).expect_err(bad);
            assert_eq!(errors.errors[0].path, "metrics_listen", "{bad}: {errors}");
        }
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let text = r#"
            listen = "nowhere"
            trust_domain = "Not Valid"
            tls_reload_interval = "soon"
            typo = 1
            [tls]
            ca = "ca.pem"
            [agents]
            heartbeat_interval = "1ms"
            max_concurrent_handshakes = 0
        "#;
        let errors = Config::from_toml(text, Path::new(".")).expect_err("invalid");
        let mut paths: Vec<_> = errors.errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "agents.heartbeat_interval",
                "agents.max_concurrent_handshakes",
                "listen",
                "tls.cert",
                "tls.key",
                "tls_reload_interval",
                "trust_domain",
                "typo",
            ],
            "{errors}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{GOOD}\n[agents]\nheartbeat = \"5s\"\n");
        let errors = Config::from_toml(&text, Path::new(".")).expect_err("unknown key");
        assert_eq!(errors.errors[0].path, "agents.heartbeat");
    }
}

/// Stand-in for a fuzz target: no input makes the config parser panic, and every rejection says
/// where.
#[cfg(test)]
mod robustness {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text_is_parsed_or_rejected_with_paths(text in "(\\\\PC|\\n|=|\\[|\\]|\"){0,300}") {
            if let Err(errors) = Config::from_toml(&text, Path::new(".")) {
                prop_assert!(!errors.errors.is_empty());
                prop_assert!(errors.errors.iter().all(|e| !e.path.is_empty() && !e.message.is_empty()));
            }
        }

        #[test]
        fn mutated_configs_never_panic(
            listen in ".{0,30}", td in ".{0,30}", hb in ".{0,12}", n in any::<i64>(),
        ) {
            let text = format!(
                "listen = {listen:?}\ntrust_domain = {td:?}\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[agents]\nheartbeat_interval = {hb:?}\nmax_concurrent_handshakes = {n}\n"
            );
            let _ = Config::from_toml(&text, Path::new("."));
        }
    }
}
