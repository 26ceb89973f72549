//! What the agent publishes: service and check state (for heartbeats and `status`) and the
//! events it emits (for the coordinator and local observers).

use std::time::SystemTime;

use autoheal_proto::v1;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::policy::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Starting,
    Healthy,
    Unhealthy,
    Restarting,
    Flapping,
    WaitingOnDependency,
    Escalated,
}

impl ServiceState {
    pub fn wire(self) -> v1::ServiceState {
        match self {
            ServiceState::Starting => v1::ServiceState::Starting,
            ServiceState::Healthy => v1::ServiceState::Healthy,
            ServiceState::Unhealthy => v1::ServiceState::Unhealthy,
            ServiceState::Restarting => v1::ServiceState::Restarting,
            ServiceState::Flapping => v1::ServiceState::Flapping,
            ServiceState::WaitingOnDependency => v1::ServiceState::WaitingOnDependency,
            ServiceState::Escalated => v1::ServiceState::Escalated,
        }
    }
}

impl Verdict {
    pub fn wire(self) -> v1::CheckStatus {
        match self {
            Verdict::Unknown => v1::CheckStatus::Unspecified,
            Verdict::Healthy => v1::CheckStatus::Healthy,
            Verdict::Unhealthy => v1::CheckStatus::Unhealthy,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSnapshot {
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency: Option<String>,
    pub status: Verdict,
    /// What the last probe saw.
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    pub name: String,
    pub state: ServiceState,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Restart attempts within the policy's window.
    pub restarts: u32,
    pub checks: Vec<CheckSnapshot>,
}

impl ServiceSnapshot {
    pub fn wire(&self) -> v1::ServiceStatus {
        v1::ServiceStatus {
            name: self.name.clone(),
            state: self.state.wire() as i32,
        }
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "healthy" => Verdict::Healthy,
            "unhealthy" => Verdict::Unhealthy,
            _ => Verdict::Unknown,
        })
    }
}

/// An event before the reporter numbers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    pub at: SystemTime,
    pub kind: v1::event::Kind,
}

/// Where supervisors send events: the reporter (which numbers, buffers and sends them) and a
/// broadcast tap for local observers (tests, `status`). Sending never blocks healing.
#[derive(Debug, Clone)]
pub struct EventSink {
    reporter: Option<mpsc::UnboundedSender<Emitted>>,
    tap: broadcast::Sender<Emitted>,
}

impl EventSink {
    pub fn new(reporter: Option<mpsc::UnboundedSender<Emitted>>) -> Self {
        let (tap, _) = broadcast::channel(256);
        Self { reporter, tap }
    }

    pub fn emit(&self, at: SystemTime, kind: v1::event::Kind) {
        tracing::info!(event = ?kind, "event");
        let e = Emitted { at, kind };
        let _ = self.tap.send(e.clone());
        if let Some(r) = &self.reporter {
            let _ = r.send(e);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Emitted> {
        self.tap.subscribe()
    }
}
