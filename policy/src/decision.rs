//! What a decision pass returns: the actions the coordinator carries out, the alerts, holds and
//! waits it reports, each decision with a reason a person can read; and the what-if answer.

use std::fmt;
use std::time::Duration;

use crate::fleet::{AsgName, InstanceId, TargetGroup};
use crate::guardrail::Guardrail;
use crate::remediation::{Ending, Step};
use crate::time::Timestamp;

/// A step the coordinator carries out against AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the fixed SSM command that restarts the agent and services.
    SsmRemediate,
    /// Deregister from these target groups (every group the instance is registered in).
    Deregister {
        /// The groups.
        target_groups: Vec<TargetGroup>,
    },
    /// `SetInstanceHealth Unhealthy`, so the ASG replaces the instance.
    Replace,
}

impl Action {
    /// The ladder step this action carries out.
    pub fn step(&self) -> Step {
        match self {
            Action::SsmRemediate => Step::Ssm,
            Action::Deregister { .. } => Step::Deregister,
            Action::Replace => Step::Replace,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::SsmRemediate => f.write_str("SSM remediation"),
            Action::Deregister { target_groups } => {
                write!(f, "deregister from {} target group(s)", target_groups.len())
            }
            Action::Replace => f.write_str("replace via the ASG"),
        }
    }
}

/// Something a person should know; never destructive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// The agent is silent but the ALB still passes the instance: the agent, not the instance, is
    /// likely broken (or the coordinator cannot reach the fleet).
    AgentLost {
        /// How long since the last heartbeat.
        silent_for: Duration,
    },
    /// The ALB fails the instance while its agent reports it healthy.
    AlbFailing {
        /// The failing groups.
        target_groups: Vec<TargetGroup>,
    },
    /// The agent reports shared dependencies failing.
    DependencyFailing {
        /// The dependencies.
        dependencies: Vec<String>,
    },
    /// A remediation was abandoned after repeated failures; a person must look.
    GaveUp {
        /// The step that kept failing.
        step: Step,
        /// The last error.
        error: String,
    },
}

/// What a remediation in flight is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The outcome of a step the coordinator is carrying out.
    Outcome(Step),
    /// The agent to come back after the SSM command.
    AgentAfterSsm,
    /// Connections to drain.
    Drain,
}

/// What the engine decided for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionKind {
    /// Do this now. Already written to the book as requested; report its [`crate::Outcome`].
    Act(Action),
    /// Dry-run: this is what would have been done. Not executable and not in the book.
    WouldAct(Action),
    /// The ladder wants this action but guardrails hold it.
    Hold {
        /// The held action.
        action: Action,
        /// Every guardrail that holds it.
        held_by: Vec<Guardrail>,
    },
    /// A remediation in flight is waiting, at most until `until`.
    Wait {
        /// For what.
        waiting: Waiting,
        /// When the wait times out and the ladder moves on.
        until: Timestamp,
    },
    /// Tell a person; no action.
    Alert(Alert),
    /// A remediation ended in this pass.
    Finished(Ending),
}

/// One decision about one instance, with a reason a person can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The instance.
    pub instance: InstanceId,
    /// Its ASG.
    pub asg: AsgName,
    /// What.
    pub kind: DecisionKind,
    /// Why.
    pub reason: String,
    /// Made in dry-run mode.
    pub dry_run: bool,
}

impl Decision {
    /// The action to carry out, if this decision is executable. Never `Some` in dry-run.
    pub fn executable(&self) -> Option<&Action> {
        match &self.kind {
            DecisionKind::Act(action) => Some(action),
            _ => None,
        }
    }
}

/// A brake holding a whole ASG; alert on it once, not per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetAlert {
    /// The ASG.
    pub asg: AsgName,
    /// The brake.
    pub guardrail: Guardrail,
}

/// The result of one decision pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per-instance decisions, ASG by ASG, in-flight remediations first.
    pub decisions: Vec<Decision>,
    /// Brakes engaged, per ASG.
    pub fleet_alerts: Vec<FleetAlert>,
}

impl Plan {
    /// The decisions to carry out, with their actions.
    pub fn executable(&self) -> impl Iterator<Item = (&Decision, &Action)> {
        self.decisions
            .iter()
            .filter_map(|d| d.executable().map(|a| (d, a)))
    }
}

/// The answer to "would this step be allowed now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhatIf {
    /// No guardrail holds it.
    pub allowed: bool,
    /// Every guardrail that holds it.
    pub held_by: Vec<Guardrail>,
}

/// Errors from the engine's queries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The instance is not in the fleet snapshot.
    #[error("instance {0} is not in the fleet")]
    UnknownInstance(InstanceId),
}
