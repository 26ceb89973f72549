//! The AWS inventory as the coordinator sees it: Auto Scaling groups, their members and the load
//! balancer's view of each target — typed where they enter (in the SDK adapter), so nothing
//! downstream parses an AWS string again.

use std::time::Duration;

/// The lifecycle, health and target states are the policy engine's own types: one of each.
pub use autoheal_policy::{AsgHealth, Lifecycle, TargetState};

/// An Auto Scaling group as the inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub target_groups: Vec<String>,
    pub instances: Vec<Member>,
    pub health_check_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance_id: String,
    pub availability_zone: String,
    pub lifecycle: Lifecycle,
    pub health: AsgHealth,
    pub protected: bool,
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
