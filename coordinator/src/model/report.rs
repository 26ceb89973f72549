//! What agents report, as domain types. Built from the wire types in `grpc::convert`, which is
//! the only place that knows both; everything past the gRPC edge works with these.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub instance_id: String,
    pub availability_zone: String,
    pub agent_version: String,
    pub epoch: u64,
    pub last_seq: u64,
    pub services: Vec<ServiceSpec>,
    pub healing_paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub unit: Option<String>,
    pub depends_on: Vec<String>,
    pub checks: Vec<CheckSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub name: String,
    pub kind: String,
    pub dependency: Option<String>,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Healthy => "healthy",
            ServiceState::Unhealthy => "unhealthy",
            ServiceState::Restarting => "restarting",
            ServiceState::Flapping => "flapping",
            ServiceState::WaitingOnDependency => "waiting-on-dependency",
            ServiceState::Escalated => "escalated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub last_seq: u64,
    pub dropped_events: u64,
    pub services: Vec<(String, ServiceState)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub at: SystemTime,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub check: String,
    pub status: CheckStatus,
    pub detail: String,
    pub at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartAttempt {
    pub service: String,
    pub attempt: u32,
    pub succeeded: bool,
    pub detail: String,
    pub took: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    CheckChanged {
        service: String,
        check: String,
        status: CheckStatus,
        detail: String,
    },
    ServiceStateChanged {
        service: String,
        from: Option<ServiceState>,
        to: ServiceState,
        reason: String,
    },
    RestartAttempted(RestartAttempt),
    Escalated {
        service: String,
        reason: String,
        last_results: Vec<CheckResult>,
        attempts: Vec<RestartAttempt>,
    },
    DependencyChanged {
        dependency: String,
        check: String,
        failing: bool,
        detail: String,
    },
    EventsDropped {
        count: u64,
        first_seq: u64,
        last_seq: u64,
    },
}

impl EventKind {
    /// Short machine-friendly name used in fleet events.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::CheckChanged { .. } => "check-changed",
            EventKind::ServiceStateChanged { .. } => "service-state-changed",
            EventKind::RestartAttempted(_) => "restart-attempted",
            EventKind::Escalated { .. } => "escalated",
            EventKind::DependencyChanged { .. } => "dependency-changed",
            EventKind::EventsDropped { .. } => "events-dropped",
        }
    }

    /// One line a person can read.
    pub fn describe(&self) -> String {
        match self {
            EventKind::CheckChanged {
                service,
                check,
                status,
                detail,
            } => {
                let status = match status {
                    CheckStatus::Healthy => "healthy",
                    CheckStatus::Unhealthy => "unhealthy",
                };
                format!("{service}/{check} is {status}: {detail}")
            }
            EventKind::ServiceStateChanged {
                service,
                from,
                to,
                reason,
            } => format!(
                "{service}: {} -> {}: {reason}",
                from.map_or("unknown", ServiceState::as_str),
                to.as_str()
            ),
            EventKind::RestartAttempted(a) => format!(
                "{}: restart attempt {} {} in {} ms: {}",
                a.service,
                a.attempt,
                if a.succeeded { "succeeded" } else { "failed" },
                a.took.as_millis(),
                a.detail
            ),
            EventKind::Escalated {
                service, reason, ..
            } => format!("{service}: local healing exhausted: {reason}"),
            EventKind::DependencyChanged {
                dependency,
                check,
                failing,
                detail,
            } => format!(
                "dependency {dependency} {} (check {check}): {detail}",
                if *failing { "failing" } else { "recovered" }
            ),
            EventKind::EventsDropped {
                count,
                first_seq,
                last_seq,
            } => {
                format!("agent dropped {count} events (seq {first_seq}..={last_seq}): buffer full")
            }
        }
    }
}
