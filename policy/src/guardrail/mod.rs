//! Guardrails: each one a reason to hold a destructive step, carrying the numbers that make its
//! reason readable; and the rules (`rules`) that decide which of them hold a step or a whole
//! ASG. The ladder asks; this module answers, reading the fleet, the book and the clock value it
//! is given, and never looks back at the ladder.

use std::fmt;
use std::time::Duration;

use crate::fleet::{AsgName, Az, Lifecycle, ScalingProcess, TargetGroup};
use crate::time::HumanDuration;

mod rules;

pub(crate) use rules::Rules;

/// Where an anomaly brake was measured.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BrakeScope {
    /// The whole ASG.
    Asg(AsgName),
    /// One AZ of the ASG.
    Az {
        /// The ASG.
        asg: AsgName,
        /// The AZ.
        az: Az,
    },
}

impl fmt::Display for BrakeScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrakeScope::Asg(asg) => write!(f, "asg {asg}"),
            BrakeScope::Az { asg, az } => write!(f, "{az} of asg {asg}"),
        }
    }
}

/// A guardrail that holds a destructive step, with what made it hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guardrail {
    /// The global pause is on.
    Paused {
        /// Who paused.
        by: String,
        /// Why.
        reason: String,
    },
    /// The ASG is in dry-run (shadow) mode.
    DryRun {
        /// The ASG.
        asg: AsgName,
    },
    /// An operator asked autoheal to leave the instance alone.
    Skipped,
    /// The instance is not `InService` in its ASG (`None`: the ASG has not reported it yet).
    Lifecycle {
        /// Its lifecycle state, if known.
        state: Option<Lifecycle>,
    },
    /// The instance's agent reports shared dependencies failing; replacing it cannot fix them.
    SharedDependency {
        /// The dependencies.
        dependencies: Vec<String>,
    },
    /// The instance launched less than `grace` ago.
    StartupGrace {
        /// Time since launch.
        age: Duration,
        /// The grace period.
        grace: Duration,
    },
    /// The instance's verdict flipped too often; it is quarantined to alerts only.
    FlapQuarantine {
        /// Flips within `window`.
        transitions: u32,
        /// The window.
        window: Duration,
        /// Flips that quarantine.
        limit: u32,
    },
    /// The instance's last remediation ended too recently.
    InstanceCooldown {
        /// Time since it ended.
        elapsed: Duration,
        /// The cooldown.
        cooldown: Duration,
    },
    /// A remediation started or ended in the ASG too recently.
    AsgCooldown {
        /// The ASG.
        asg: AsgName,
        /// Time since.
        elapsed: Duration,
        /// The cooldown.
        cooldown: Duration,
    },
    /// The ASG already has as many remediations in flight as allowed.
    MaxConcurrent {
        /// The ASG.
        asg: AsgName,
        /// Remediations in flight.
        in_flight: u32,
        /// The effective limit: the smaller of `count` and `percent` of `group_size`, at least 1.
        limit: u32,
        /// The configured count.
        count: u32,
        /// The configured share.
        percent: u8,
        /// In-service instances in the ASG.
        group_size: u32,
    },
    /// The step would leave a target group with too few healthy targets, or the group has no
    /// healthy target at all (the ALB then fails open and sends traffic to every target, so an
    /// "unhealthy" one may be the only one serving).
    MinHealthy {
        /// The target group.
        target_group: TargetGroup,
        /// Healthy targets left after the step.
        healthy_after: u32,
        /// Registered targets.
        total: u32,
        /// The minimum share.
        min_percent: u8,
    },
    /// Too many instances of the ASG, or of one AZ in it, are or were recently bad.
    AnomalyBrake {
        /// Where it was measured.
        scope: BrakeScope,
        /// Bad instances (now or within `window`).
        bad: u32,
        /// Instances counted (in service, past startup grace).
        total: u32,
        /// The share above which the brake engages.
        limit_percent: u8,
        /// The window.
        window: Duration,
    },
    /// The ASG cannot replace an instance: `Launch` or `Terminate` is suspended, so neither
    /// `SetInstanceHealth` nor terminate-without-decrement would bring a new one; taking this one
    /// out of traffic would only lose capacity.
    ProcessesSuspended {
        /// The ASG.
        asg: AsgName,
        /// Every process suspended on it.
        suspended: Vec<ScalingProcess>,
    },
    /// An instance refresh is under way in the ASG: it is replacing instances itself.
    InstanceRefresh {
        /// The ASG.
        asg: AsgName,
        /// The refresh's status (`InProgress`, `Pending`, …).
        status: String,
    },
    /// The instance is protected from scale-in and the ASG's `replace_protected` is off.
    ScaleInProtected,
    /// The ASG already holds the instance `Unhealthy` and will replace it on its own; it is not
    /// set again.
    AlreadyUnhealthy,
    /// Too many instances of the ASG name the same failing dependency.
    DependencyBrake {
        /// The ASG.
        asg: AsgName,
        /// The dependency.
        dependency: String,
        /// Instances naming it.
        naming: u32,
        /// Instances counted.
        total: u32,
        /// The share at which the brake engages.
        limit_percent: u8,
    },
}

fn percent(part: u32, whole: u32) -> u64 {
    if whole == 0 {
        0
    } else {
        u64::from(part) * 100 / u64::from(whole)
    }
}

impl Guardrail {
    /// A short stable name for metrics and the API (`anomaly_brake`, `min_healthy`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Guardrail::Paused { .. } => "paused",
            Guardrail::DryRun { .. } => "dry_run",
            Guardrail::Skipped => "skipped",
            Guardrail::Lifecycle { .. } => "lifecycle",
            Guardrail::SharedDependency { .. } => "shared_dependency",
            Guardrail::StartupGrace { .. } => "startup_grace",
            Guardrail::FlapQuarantine { .. } => "flap_quarantine",
            Guardrail::InstanceCooldown { .. } => "instance_cooldown",
            Guardrail::AsgCooldown { .. } => "asg_cooldown",
            Guardrail::MaxConcurrent { .. } => "max_concurrent",
            Guardrail::MinHealthy { .. } => "min_healthy",
            Guardrail::AnomalyBrake { .. } => "anomaly_brake",
            Guardrail::DependencyBrake { .. } => "dependency_brake",
            Guardrail::ProcessesSuspended { .. } => "processes_suspended",
            Guardrail::InstanceRefresh { .. } => "instance_refresh",
            Guardrail::AlreadyUnhealthy => "already_unhealthy",
            Guardrail::ScaleInProtected => "scale_in_protected",
        }
    }

    /// Whether this is one of the fleet brakes that freeze a whole ASG and deserve an alert.
    pub fn is_brake(&self) -> bool {
        matches!(
            self,
            Guardrail::AnomalyBrake { .. } | Guardrail::DependencyBrake { .. }
        )
    }

    /// Why it holds, for a person.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Guardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guardrail::Paused { by, reason } => write!(f, "paused by {by}: {reason}"),
            Guardrail::DryRun { asg } => {
                write!(f, "dry-run: asg {asg} is in shadow mode; recorded, not done")
            }
            Guardrail::Skipped => {
                f.write_str("skipped: an operator asked autoheal to leave this instance alone")
            }
            Guardrail::Lifecycle { state: Some(state) } => write!(
                f,
                "lifecycle: instance is {state} in its ASG; only InService instances are acted on"
            ),
            Guardrail::Lifecycle { state: None } => f.write_str(
                "lifecycle: the ASG has not reported this instance yet; only InService instances are acted on",
            ),
            Guardrail::SharedDependency { dependencies } => write!(
                f,
                "shared dependency: agent reports {} failing; replacing this instance cannot fix that",
                dependencies.join(", ")
            ),
            Guardrail::StartupGrace { age, grace } => write!(
                f,
                "startup grace: launched {} ago; grace {}",
                HumanDuration(*age),
                HumanDuration(*grace)
            ),
            Guardrail::FlapQuarantine {
                transitions,
                window,
                limit,
            } => write!(
                f,
                "flap quarantine: health flipped {transitions} times within {}; limit {limit}",
                HumanDuration(*window)
            ),
            Guardrail::InstanceCooldown { elapsed, cooldown } => write!(
                f,
                "instance cooldown: last remediation ended {} ago; cooldown {}",
                HumanDuration(*elapsed),
                HumanDuration(*cooldown)
            ),
            Guardrail::AsgCooldown {
                asg,
                elapsed,
                cooldown,
            } => write!(
                f,
                "asg cooldown: last remediation in asg {asg} started or ended {} ago; cooldown {}",
                HumanDuration(*elapsed),
                HumanDuration(*cooldown)
            ),
            Guardrail::MaxConcurrent {
                asg,
                in_flight,
                limit,
                count,
                percent,
                group_size,
            } => write!(
                f,
                "max concurrent: {in_flight} remediation(s) in flight in asg {asg}; limit {limit} \
                 (lesser of {count} and {percent}% of {group_size} in-service instances, at least 1)"
            ),
            Guardrail::MinHealthy {
                target_group,
                healthy_after,
                total,
                min_percent,
            } if *healthy_after == 0 => write!(
                f,
                "min healthy: target group {target_group} would have no healthy target of {total} \
                 (the ALB fails open then, so every target may be serving); minimum {min_percent}%"
            ),
            Guardrail::MinHealthy {
                target_group,
                healthy_after,
                total,
                min_percent,
            } => write!(
                f,
                "min healthy: target group {target_group} would have {healthy_after} of {total} \
                 targets healthy ({}%); minimum {min_percent}%",
                percent(*healthy_after, *total)
            ),
            Guardrail::AnomalyBrake {
                scope,
                bad,
                total,
                limit_percent,
                window,
            } => write!(
                f,
                "anomaly brake: {bad} of {total} instances in {scope} ({}%) unhealthy or silent \
                 within {}; limit {limit_percent}%",
                percent(*bad, *total),
                HumanDuration(*window)
            ),
            Guardrail::ProcessesSuspended { asg, suspended } => write!(
                f,
                "processes suspended: asg {asg} has {} suspended; it cannot launch and terminate, \
                 so nothing would replace this instance (resume the processes to let autoheal act)",
                suspended
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Guardrail::InstanceRefresh { asg, status } => write!(
                f,
                "instance refresh: asg {asg} has an instance refresh {status}; it is replacing \
                 instances itself"
            ),
            Guardrail::ScaleInProtected => f.write_str(
                "scale-in protected: someone protected this instance on purpose; set \
                 replace_protected for its ASG to let autoheal replace it",
            ),
            Guardrail::AlreadyUnhealthy => f.write_str(
                "already unhealthy: the ASG holds this instance Unhealthy and replaces it on its own",
            ),
            Guardrail::DependencyBrake {
                asg,
                dependency,
                naming,
                total,
                limit_percent,
            } => write!(
                f,
                "dependency brake: {naming} of {total} instances in asg {asg} ({}%) report \
                 dependency {dependency} failing; limit {limit_percent}%; replacing instances \
                 cannot fix a shared dependency",
                percent(*naming, *total)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomaly_reason_names_scope_numbers_and_limit() {
        let g = Guardrail::AnomalyBrake {
            scope: BrakeScope::Asg(AsgName::from("web")),
            bad: 8,
            total: 10,
            limit_percent: 30,
            window: Duration::from_secs(300),
        };
        assert_eq!(
            g.reason(),
            "anomaly brake: 8 of 10 instances in asg web (80%) unhealthy or silent within 5m; limit 30%"
        );
        assert_eq!(g.name(), "anomaly_brake");
        assert!(g.is_brake());
    }

    #[test]
    fn min_healthy_reason_explains_fail_open() {
        let g = Guardrail::MinHealthy {
            target_group: TargetGroup::from("tg-web"),
            healthy_after: 0,
            total: 3,
            min_percent: 66,
        };
        assert!(g.reason().contains("fails open"), "{g}");
    }
}
