//! The AWS inventory as the coordinator sees it: Auto Scaling groups, their members and the load
//! balancer's view of each target — typed where they enter (in the SDK adapter), so nothing
//! downstream parses an AWS string again.

use std::collections::BTreeSet;
use std::time::Duration;

/// The lifecycle, health and target states are the policy engine's own types: one of each.
pub use autoheal_policy::{AsgConditions, AsgHealth, Lifecycle, ScalingProcess, TargetState};

/// An Auto Scaling group as the inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub target_groups: Vec<String>,
    pub instances: Vec<Member>,
    pub health_check_grace: Duration,
    /// `SuspendedProcesses`, typed.
    pub suspended: BTreeSet<ScalingProcess>,
    /// The status of an instance refresh under way (`Pending`, `InProgress`, …), if any.
    pub refresh: Option<String>,
}

impl Group {
    /// The group's conditions as the policy engine reads them with each member.
    pub fn conditions(&self) -> AsgConditions {
        AsgConditions {
            suspended: self.suspended.clone(),
            refresh: self.refresh.clone(),
            health_check_grace: self.health_check_grace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance_id: String,
    pub availability_zone: String,
    pub lifecycle: Lifecycle,
    pub health: AsgHealth,
    pub protected: bool,
    /// Its group's conditions at the same listing (the fleet view keeps members, not groups).
    pub group: AsgConditions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub instance_id: String,
    pub state: TargetState,
    pub reason: String,
}

/// Which groups autoheal looks after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Names(Vec<String>),
    /// Groups carrying this tag key with this value, e.g. `autoheal:enabled` = `true`.
    Tag {
        key: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandStatus {
    Pending,
    Succeeded { output: String },
    Failed { status: String, output: String },
}
