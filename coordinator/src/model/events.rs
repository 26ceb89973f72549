//! Fleet events: what the coordinator records and operators watch (`WatchEvents`), resume from a
//! cursor, and are notified of. One [`EventKind`] enum names every kind; its string form is what
//! the wire, the store, the notifications and `notify.kinds` use.

use std::{fmt, str::FromStr, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::model::report;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEvent {
    pub cursor: u64,
    pub at: SystemTime,
    pub instance_id: String,
    pub asg: String,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseState {
    pub paused: bool,
    pub reason: String,
    pub by: String,
    pub since: Option<SystemTime>,
}

macro_rules! event_kinds {
    ($($variant:ident = $name:literal, notified: $notified:literal;)*) => {
        /// Every kind of fleet event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventKind {
            $($variant,)*
        }

        impl EventKind {
            /// Every kind, in the order declared.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The kind's name on the wire, in the store and in `notify.kinds`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }

            /// Whether notifications carry it unless `notify.kinds` says otherwise: what a
            /// person may need to act on or know about. Heartbeats, connects and check flaps are
            /// left out: they are noise at scale.
            pub fn notified_by_default(self) -> bool {
                match self {
                    $(EventKind::$variant => $notified,)*
                }
            }
        }
    };
}

event_kinds! {
    ActionFailed = "action-failed", notified: true;
    ActionReconciled = "action-reconciled", notified: false;
    ActionStarted = "action", notified: false;
    ActionSucceeded = "action-succeeded", notified: true;
    AgentConnected = "agent-connected", notified: false;
    AgentDisconnected = "agent-disconnected", notified: false;
    Alert = "alert", notified: true;
    CheckChanged = "check-changed", notified: false;
    Decision = "decision", notified: true;
    DependencyChanged = "dependency-changed", notified: true;
    DryRun = "dry-run", notified: true;
    Enrolled = "enrolled", notified: false;
    EnrollmentDenied = "enrollment-denied", notified: true;
    Escalated = "escalated", notified: true;
    EventsDropped = "events-dropped", notified: false;
    EventsMissing = "events-missing", notified: false;
    Guardrail = "guardrail", notified: true;
    InstanceDiscovered = "instance-discovered", notified: false;
    InventoryFailed = "inventory-failed", notified: true;
    Leadership = "leadership", notified: false;
    Paused = "paused", notified: true;
    RemediationFinished = "remediation-finished", notified: false;
    RestartAttempted = "restart-attempted", notified: false;
    Resumed = "resumed", notified: true;
    ServiceStateChanged = "service-state-changed", notified: false;
    Skipped = "skipped", notified: false;
    SsmFinished = "ssm-finished", notified: false;
    UnknownInstance = "unknown-instance", notified: true;
    Unskipped = "unskipped", notified: false;
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no fleet event kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fleet event kind")]
pub struct UnknownKind;

impl FromStr for EventKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or(UnknownKind)
    }
}

impl From<&report::EventKind> for EventKind {
    fn from(kind: &report::EventKind) -> Self {
        match kind {
            report::EventKind::CheckChanged { .. } => EventKind::CheckChanged,
            report::EventKind::ServiceStateChanged { .. } => EventKind::ServiceStateChanged,
            report::EventKind::RestartAttempted(_) => EventKind::RestartAttempted,
            report::EventKind::Escalated { .. } => EventKind::Escalated,
            report::EventKind::DependencyChanged { .. } => EventKind::DependencyChanged,
            report::EventKind::EventsDropped { .. } => EventKind::EventsDropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(*kind));
        }
        assert_eq!("no-such-kind".parse::<EventKind>(), Err(UnknownKind));
    }

    #[test]
    fn agent_event_kinds_keep_their_names() {
        let e = report::EventKind::EventsDropped {
            count: 1,
            first_seq: 1,
            last_seq: 1,
        };
        assert_eq!(EventKind::from(&e).as_str(), e.name());
    }
}
