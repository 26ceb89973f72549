//! The raw side of the agent's config: exactly what the TOML file says, in serde-shaped structs.
//!
//! No `deny_unknown_fields` attribute on purpose: `parse_toml` collects every unknown key
//! through serde_ignored (so `check-config` lists all of them at once), which a denying struct
//! would cut short after the first. Durations stay strings here and are parsed by
//! [`autoheal_common::config::parse_duration`] in validation, so a bad one is reported with its
//! path beside every other problem instead of aborting the whole parse.

use std::{collections::BTreeMap, fmt};

use autoheal_common::config::RawTls;
use serde::Deserialize;

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
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat_interval: Option<String>,
    pub event_buffer: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub reconnect_initial: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub reconnect_max: Option<String>,
    pub enroll_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawIdentity {
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub imds_endpoint: Option<String>,
    #[serde(default, deserialize_with = "duration")]
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
    #[serde(default, deserialize_with = "duration")]
    pub stop_timeout: Option<String>,
    pub depends_on: Option<Vec<String>>,
    pub restart: Option<RawRestart>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRestart {
    pub max_attempts: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub window: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub backoff_initial: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub backoff_max: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub verify_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub action_timeout: Option<String>,
    pub flap_transitions: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub flap_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCheck {
    pub name: Option<String>,
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub initial_delay: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub startup_grace: Option<String>,
    pub success_threshold: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub dependency: Option<String>,
    // http
    pub url: Option<String>,
    pub method: Option<String>,
    pub expect_status: Option<String>,
    pub body_contains: Option<String>,
    /// https: a PEM CA file to trust instead of the system's roots.
    pub ca: Option<String>,
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

/// A duration stays text until validation parses it (so a bad one is reported beside every other
/// problem); this only says what was expected when it isn't text at all.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"5s\"")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    d.deserialize_str(Text).map(Some)
}
