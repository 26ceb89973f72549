//! What the agent publishes, as plain data: service and check state (for heartbeats, `status`
//! and metrics), the reporter's status, and the events it emits (for the coordinator and local
//! observers). It imports nothing of ours: every other module may depend on it.
//!
//! Each state has one name, given here ([`ServiceState::as_str`], [`Verdict::as_str`]) and used
//! by serde, `status` and the metrics labels alike; the mapping to the wire is [`ServiceState::wire`].

use std::time::SystemTime;

use autoheal_proto::v1;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub const ALL: [ServiceState; 7] = [
        ServiceState::Starting,
        ServiceState::Healthy,
        ServiceState::Unhealthy,
        ServiceState::Restarting,
        ServiceState::Flapping,
        ServiceState::WaitingOnDependency,
        ServiceState::Escalated,
    ];

    /// The state's one name (JSON, `status`, metrics labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Healthy => "healthy",
            ServiceState::Unhealthy => "unhealthy",
            ServiceState::Restarting => "restarting",
            ServiceState::Flapping => "flapping",
            ServiceState::WaitingOnDependency => "waiting_on_dependency",
            ServiceState::Escalated => "escalated",
        }
    }

    /// The one mapping to the wire.
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

impl Serialize for ServiceState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ServiceState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ServiceState::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown service state {name:?}")))
    }
}

/// What a check's thresholds say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unknown,
    Healthy,
    Unhealthy,
}

impl Verdict {
    /// The verdict's one name (JSON, `status`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Healthy => "healthy",
            Verdict::Unhealthy => "unhealthy",
        }
    }

    pub fn wire(self) -> v1::CheckStatus {
        match self {
            Verdict::Unknown => v1::CheckStatus::Unspecified,
            Verdict::Healthy => v1::CheckStatus::Healthy,
            Verdict::Unhealthy => v1::CheckStatus::Unhealthy,
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Anything but a known name reads as unknown (a newer agent's verdict, say).
impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok([Verdict::Healthy, Verdict::Unhealthy]
            .into_iter()
            .find(|v| v.as_str() == name)
            .unwrap_or(Verdict::Unknown))
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

/// What the reporter publishes about its stream to the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReporterStatus {
    pub connected: bool,
    pub endpoint: Option<String>,
    pub coordinator_id: Option<String>,
    pub epoch: u64,
    pub last_seq: u64,
    pub unacked: usize,
    pub dropped_events: u64,
    pub healing_paused: bool,
    pub last_error: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_through_serde() {
        for state in ServiceState::ALL {
            let json = serde_json::to_value(state).expect("serialize");
            assert_eq!(json, state.as_str());
            assert_eq!(
                serde_json::from_value::<ServiceState>(json).expect("deserialize"),
                state
            );
        }
        assert!(serde_json::from_str::<ServiceState>("\"dozing\"").is_err());
        for v in [Verdict::Unknown, Verdict::Healthy, Verdict::Unhealthy] {
            let json = serde_json::to_value(v).expect("serialize");
            assert_eq!(
                serde_json::from_value::<Verdict>(json).expect("deserialize"),
                v
            );
        }
        assert_eq!(
            serde_json::from_str::<Verdict>("\"dozing\"").expect("lenient"),
            Verdict::Unknown
        );
    }
}
