//! The fleet view the engine decides on: one snapshot per decision pass, built by the coordinator
//! from agent streams (agent state) and the inventory loop (ALB and ASG views).

use std::collections::BTreeSet;
use std::fmt;

use crate::time::Timestamp;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        pub struct $name(String);

        impl $name {
            /// Wraps a name as given by AWS or the agent.
            pub fn new(name: impl Into<String>) -> Self {
                $name(name.into())
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
    };
}

name_type!(
    /// An EC2 instance id, e.g. `i-0abc…`.
    InstanceId
);
name_type!(
    /// An Auto Scaling group name.
    AsgName
);
name_type!(
    /// An availability zone, e.g. `eu-west-1a`.
    Az
);
name_type!(
    /// A target group, by ARN (or any name unique in the fleet).
    TargetGroup
);

/// Everything the engine knows about the fleet at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// Every instance the coordinator knows of, in any lifecycle state.
    pub instances: Vec<InstanceView>,
    /// The global pause, persisted by the coordinator and set through the API.
    pub pause: Option<Pause>,
}

impl Fleet {
    /// The instance with this id, if the fleet has it.
    pub fn instance(&self, id: &InstanceId) -> Option<&InstanceView> {
        self.instances.iter().find(|i| &i.id == id)
    }

    /// The instances of one ASG.
    pub fn in_asg<'a>(&'a self, asg: &'a AsgName) -> impl Iterator<Item = &'a InstanceView> + 'a {
        self.instances.iter().filter(move |i| &i.asg == asg)
    }

    /// Every ASG named by an instance, each once, sorted.
    pub fn asgs(&self) -> BTreeSet<AsgName> {
        self.instances.iter().map(|i| i.asg.clone()).collect()
    }
}

/// Who paused the fleet and why; shown in every hold it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// The operator (or process) that paused.
    pub by: String,
    /// Why, as they wrote it.
    pub reason: String,
    /// When.
    pub since: Timestamp,
}

/// One instance as the coordinator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    /// EC2 instance id.
    pub id: InstanceId,
    /// The ASG it belongs to.
    pub asg: AsgName,
    /// Its availability zone.
    pub az: Az,
    /// EC2 launch time; startup grace counts from here.
    pub launched_at: Timestamp,
    /// What its agent last said; `None` if no agent ever connected.
    pub agent: Option<AgentView>,
    /// Its registration in each target group, from `DescribeTargetHealth`.
    pub targets: Vec<TargetView>,
    /// Its state in the ASG; `None` until the inventory loop has seen it there.
    pub asg_instance: Option<AsgInstance>,
    /// An operator asked autoheal to leave this instance alone.
    pub skipped: bool,
    /// When the coordinator's verdict on this instance flipped between good and bad (see
    /// [`crate::Engine::assess`]), oldest first. The fleet view keeps at least the longest of the
    /// anomaly and flap windows. Feeds the flap quarantine and the anomaly brake's window.
    pub health_changes: Vec<Timestamp>,
}

/// The agent's last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// The stream is open now.
    pub connected: bool,
    /// Last heartbeat or event received; silence counts from here.
    pub last_heartbeat: Timestamp,
    /// Services the agent reports unhealthy and is still healing locally.
    pub unhealthy_services: BTreeSet<String>,
    /// The agent gave up healing locally.
    pub escalation: Option<Escalation>,
    /// Shared dependencies its checks report failing (e.g. `postgres-main`). These are never this
    /// instance's fault.
    pub failing_dependencies: BTreeSet<String>,
}

/// The agent's statement that local healing is exhausted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    /// The service it could not heal.
    pub service: String,
    /// The agent's own words.
    pub reason: String,
    /// When it escalated.
    pub at: Timestamp,
}

/// Registration of an instance in one target group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    /// The target group.
    pub target_group: TargetGroup,
    /// ELBv2 target health state.
    pub state: TargetState,
    /// ELBv2's reason code or description, if any (e.g. `Target.ResponseCodeMismatch`).
    pub reason: Option<String>,
    /// When the inventory loop first saw the current state.
    pub since: Timestamp,
}

/// ELBv2 target health states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetState {
    /// Registering; health checks not yet passed.
    Initial,
    /// Passing health checks and receiving traffic.
    Healthy,
    /// Failing health checks.
    Unhealthy,
    /// Not registered, or the target group is not used by the load balancer or the AZ.
    Unused,
    /// Being deregistered; connections draining.
    Draining,
    /// Health checks disabled or the load balancer cannot tell.
    Unavailable,
}

impl TargetState {
    /// The instance is registered (or still leaving) in this group.
    pub fn is_registered(self) -> bool {
        self != TargetState::Unused
    }

    /// The load balancer reports this target as failing.
    pub fn is_failing(self) -> bool {
        matches!(self, TargetState::Unhealthy | TargetState::Unavailable)
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Unused => "unused",
            TargetState::Draining => "draining",
            TargetState::Unavailable => "unavailable",
        })
    }
}

/// The instance as its Auto Scaling group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsgInstance {
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// Health status the ASG holds for it.
    pub health: AsgHealth,
    /// Scale-in protection. It does not stop a health replacement in AWS, but autoheal holds
    /// (and alerts) unless the ASG's `replace_protected` is set: someone protected it on purpose.
    pub protected: bool,
    /// Its group's conditions, read in the same listing.
    pub group: AsgConditions,
}

/// What an Auto Scaling group is doing or not doing, as its listing says: the processes
/// suspended, an instance refresh under way, the health check grace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AsgConditions {
    /// Scaling processes suspended on the group (`SuspendedProcesses`).
    pub suspended: BTreeSet<ScalingProcess>,
    /// An instance refresh is `Pending`, `InProgress`, `Cancelling`, `RollbackInProgress` or
    /// `Baking` (`DescribeInstanceRefreshes`): the ASG is replacing instances itself.
    pub refresh: Option<String>,
    /// The group's `HealthCheckGracePeriod`: a new instance is not judged before it ends.
    pub health_check_grace: std::time::Duration,
}

impl AsgConditions {
    /// Whether the ASG can replace an instance at all: it must both launch and terminate. With
    /// `ReplaceUnhealthy` suspended too, only terminate-without-decrement replaces.
    pub fn can_replace(&self) -> bool {
        !self.suspended.contains(&ScalingProcess::Launch)
            && !self.suspended.contains(&ScalingProcess::Terminate)
    }

    /// Whether `SetInstanceHealth Unhealthy` would make the ASG replace the instance.
    pub fn replaces_unhealthy(&self) -> bool {
        self.can_replace() && !self.suspended.contains(&ScalingProcess::ReplaceUnhealthy)
    }
}

/// An Auto Scaling process that can be suspended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScalingProcess {
    /// `Launch`.
    Launch,
    /// `Terminate`.
    Terminate,
    /// `ReplaceUnhealthy`: the ASG replaces instances marked unhealthy.
    ReplaceUnhealthy,
    /// `HealthCheck`.
    HealthCheck,
    /// `AZRebalance`.
    AzRebalance,
    /// `InstanceRefresh`.
    InstanceRefresh,
    /// Any other process (`AlarmNotification`, `ScheduledActions`, `AddToLoadBalancer`, …).
    Other(String),
}

impl ScalingProcess {
    /// Maps an AWS `ProcessName`.
    pub fn from_aws(name: &str) -> ScalingProcess {
        match name {
            "Launch" => ScalingProcess::Launch,
            "Terminate" => ScalingProcess::Terminate,
            "ReplaceUnhealthy" => ScalingProcess::ReplaceUnhealthy,
            "HealthCheck" => ScalingProcess::HealthCheck,
            "AZRebalance" => ScalingProcess::AzRebalance,
            "InstanceRefresh" => ScalingProcess::InstanceRefresh,
            other => ScalingProcess::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ScalingProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScalingProcess::Launch => "Launch",
            ScalingProcess::Terminate => "Terminate",
            ScalingProcess::ReplaceUnhealthy => "ReplaceUnhealthy",
            ScalingProcess::HealthCheck => "HealthCheck",
            ScalingProcess::AzRebalance => "AZRebalance",
            ScalingProcess::InstanceRefresh => "InstanceRefresh",
            ScalingProcess::Other(s) => s,
        })
    }
}

/// ASG lifecycle states. Anything but `InService` holds every destructive step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lifecycle {
    /// Launching, including `Pending:Wait` / `Pending:Proceed`.
    Pending,
    /// Serving.
    InService,
    /// Being terminated, including `Terminating:Wait` / `Terminating:Proceed` / `Terminated`.
    Terminating,
    /// Put aside by an operator (`Standby`, `EnteringStandby`).
    Standby,
    /// Leaving the group (`Detaching`, `Detached`).
    Detaching,
    /// Any other state AWS reports (warm pools, …), kept verbatim.
    Other(String),
}

impl Lifecycle {
    /// Maps an AWS `LifecycleState` string onto the states the engine distinguishes.
    pub fn from_aws(state: &str) -> Lifecycle {
        match state {
            "InService" => Lifecycle::InService,
            s if s.starts_with("Pending") => Lifecycle::Pending,
            s if s.starts_with("Terminat") => Lifecycle::Terminating,
            "Standby" | "EnteringStandby" => Lifecycle::Standby,
            "Detaching" | "Detached" => Lifecycle::Detaching,
            other => Lifecycle::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lifecycle::Pending => f.write_str("Pending"),
            Lifecycle::InService => f.write_str("InService"),
            Lifecycle::Terminating => f.write_str("Terminating"),
            Lifecycle::Standby => f.write_str("Standby"),
            Lifecycle::Detaching => f.write_str("Detaching"),
            Lifecycle::Other(s) => f.write_str(s),
        }
    }
}

/// ASG health status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsgHealth {
    /// `Healthy`.
    Healthy,
    /// `Unhealthy`: the ASG will replace it on its own.
    Unhealthy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_processes_map_aws_names_and_back() {
        for name in [
            "Launch",
            "Terminate",
            "ReplaceUnhealthy",
            "HealthCheck",
            "AZRebalance",
            "InstanceRefresh",
            "ScheduledActions",
        ] {
            assert_eq!(ScalingProcess::from_aws(name).to_string(), name);
        }
        let mut c = AsgConditions::default();
        assert!(c.can_replace() && c.replaces_unhealthy());
        c.suspended.insert(ScalingProcess::ReplaceUnhealthy);
        assert!(c.can_replace() && !c.replaces_unhealthy());
        c.suspended.insert(ScalingProcess::Launch);
        assert!(!c.can_replace());
    }

    #[test]
    fn lifecycle_maps_aws_sub_states() {
        assert_eq!(Lifecycle::from_aws("Pending:Wait"), Lifecycle::Pending);
        assert_eq!(
            Lifecycle::from_aws("Terminating:Proceed"),
            Lifecycle::Terminating
        );
        assert_eq!(Lifecycle::from_aws("Terminated"), Lifecycle::Terminating);
        assert_eq!(Lifecycle::from_aws("EnteringStandby"), Lifecycle::Standby);
        assert_eq!(Lifecycle::from_aws("InService"), Lifecycle::InService);
        assert_eq!(
            Lifecycle::from_aws("Warmed:Running"),
            Lifecycle::Other("Warmed:Running".into())
        );
    }
}
