//! Guardrails: each one a reason to hold a destructive step, carrying the numbers that make its
//! reason readable; and the rules that decide which of them hold a step or a whole ASG
//! ([`Rules`]). The ladder asks; this module answers, reading the fleet, the book and the clock
//! value it is given.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::assess::{Assessment, Assessments};
use crate::config::{Config, GuardrailConfig};
use crate::fleet::{AsgName, Az, Fleet, InstanceView, Lifecycle, TargetGroup, TargetState};
use crate::remediation::{Remediation, RemediationBook, Step};
use crate::time::{HumanDuration, Timestamp};

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

/// The guardrail rules at one moment: the configuration, the fleet snapshot and the clock value
/// they are checked against. The book is passed to each check, because a pass checks against the
/// book as it writes it (or against a dry-run's scratch copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) config: &'a Config,
    pub(crate) fleet: &'a Fleet,
    pub(crate) now: Timestamp,
}

impl Rules<'_> {
    /// The guardrails holding a whole ASG (pause, dry-run, brakes, cooldown, concurrency).
    pub(crate) fn for_asg(
        &self,
        book: &RemediationBook,
        asg: &AsgName,
        assessments: &Assessments,
    ) -> Vec<Guardrail> {
        let g = self.config.for_asg(asg);
        let mut held = Vec::new();
        if let Some(p) = &self.fleet.pause {
            held.push(Guardrail::Paused {
                by: p.by.clone(),
                reason: p.reason.clone(),
            });
        }
        if g.dry_run {
            held.push(Guardrail::DryRun { asg: asg.clone() });
        }
        held.extend(self.brakes(asg, assessments));
        held.extend(self.asg_cooldown(book, asg, g));
        held.extend(self.max_concurrent(book, asg, g));
        held
    }

    /// The anomaly and dependency brakes engaged for `asg`, from the readings in `assessments`.
    pub(crate) fn brakes(&self, asg: &AsgName, assessments: &Assessments) -> Vec<Guardrail> {
        let (g, now) = (self.config.for_asg(asg), self.now);
        // Instances still booting have no verdict worth counting, and non-InService ones are not
        // part of the serving group.
        let counted: Vec<(&InstanceView, Cow<'_, Assessment>)> = self
            .fleet
            .in_asg(asg)
            .filter(|i| in_service(i) && now.since(i.launched_at) >= g.startup_grace)
            .map(|i| (i, assessments.read(self.config.ladder(), i, now)))
            .collect();
        let bad = |(i, a): &&(&InstanceView, Cow<'_, Assessment>)| {
            a.is_bad()
                || i.health_changes
                    .iter()
                    .any(|t| now.since(*t) <= g.anomaly_window)
        };
        let anomalous = |bad: u32, total: u32| {
            bad >= g.brake_min_instances
                && u64::from(bad) * 100 > u64::from(g.anomaly_percent) * u64::from(total)
        };
        let mut held = Vec::new();
        let total = count(counted.iter());
        let nbad = count(counted.iter().filter(bad));
        if anomalous(nbad, total) {
            held.push(Guardrail::AnomalyBrake {
                scope: BrakeScope::Asg(asg.clone()),
                bad: nbad,
                total,
                limit_percent: g.anomaly_percent,
                window: g.anomaly_window,
            });
        }
        let azs: BTreeSet<_> = counted.iter().map(|(i, _)| i.az.clone()).collect();
        for az in azs {
            let in_az = || counted.iter().filter(|(i, _)| i.az == az);
            let (total, nbad) = (count(in_az()), count(in_az().filter(bad)));
            if anomalous(nbad, total) {
                held.push(Guardrail::AnomalyBrake {
                    scope: BrakeScope::Az {
                        asg: asg.clone(),
                        az,
                    },
                    bad: nbad,
                    total,
                    limit_percent: g.anomaly_percent,
                    window: g.anomaly_window,
                });
            }
        }
        let mut naming: BTreeMap<&str, u32> = BTreeMap::new();
        for (_, a) in &counted {
            for dep in &a.failing_dependencies {
                *naming.entry(dep.as_str()).or_default() += 1;
            }
        }
        for (dep, n) in naming {
            if n >= g.brake_min_instances
                && u64::from(n) * 100 >= u64::from(g.dependency_percent) * u64::from(total)
            {
                held.push(Guardrail::DependencyBrake {
                    asg: asg.clone(),
                    dependency: dep.to_owned(),
                    naming: n,
                    total,
                    limit_percent: g.dependency_percent,
                });
            }
        }
        held
    }

    /// Every guardrail holding `step` on `inst`, given the `brakes` engaged in its ASG.
    /// `continuing`: the step belongs to a remediation already in flight, which already passed
    /// the start-only guardrails (grace, flap, cooldowns, concurrency) and holds its own
    /// concurrency slot.
    pub(crate) fn for_step(
        &self,
        book: &RemediationBook,
        inst: &InstanceView,
        step: Step,
        continuing: bool,
        brakes: &[Guardrail],
    ) -> Vec<Guardrail> {
        let (g, now) = (self.config.for_asg(&inst.asg), self.now);
        let mut held = Vec::new();
        if let Some(p) = &self.fleet.pause {
            held.push(Guardrail::Paused {
                by: p.by.clone(),
                reason: p.reason.clone(),
            });
        }
        if inst.skipped {
            held.push(Guardrail::Skipped);
        }
        if !in_service(inst) {
            held.push(Guardrail::Lifecycle {
                state: inst.asg_instance.as_ref().map(|a| a.lifecycle.clone()),
            });
        }
        let deps = inst
            .agent
            .as_ref()
            .map(|a| a.failing_dependencies.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        if !deps.is_empty() {
            held.push(Guardrail::SharedDependency { dependencies: deps });
        }
        held.extend(brakes.iter().cloned());
        if !continuing {
            let age = now.since(inst.launched_at);
            if age < g.startup_grace {
                held.push(Guardrail::StartupGrace {
                    age,
                    grace: g.startup_grace,
                });
            }
            let flips = count(
                inst.health_changes
                    .iter()
                    .filter(|t| now.since(**t) <= g.flap_window),
            );
            if flips >= g.flap_transitions {
                held.push(Guardrail::FlapQuarantine {
                    transitions: flips,
                    window: g.flap_window,
                    limit: g.flap_transitions,
                });
            }
            if let Some(ended) = book.get(&inst.id).and_then(Remediation::finished_at) {
                let elapsed = now.since(ended);
                if elapsed < g.instance_cooldown {
                    held.push(Guardrail::InstanceCooldown {
                        elapsed,
                        cooldown: g.instance_cooldown,
                    });
                }
            }
            held.extend(self.asg_cooldown(book, &inst.asg, g));
            held.extend(self.max_concurrent(book, &inst.asg, g));
        }
        if step != Step::Ssm {
            held.extend(self.min_healthy(book, inst, g));
        }
        held
    }

    fn asg_cooldown(
        &self,
        book: &RemediationBook,
        asg: &AsgName,
        g: &GuardrailConfig,
    ) -> Option<Guardrail> {
        let elapsed = self.now.since(book.last_activity_in(asg)?);
        (elapsed < g.asg_cooldown).then(|| Guardrail::AsgCooldown {
            asg: asg.clone(),
            elapsed,
            cooldown: g.asg_cooldown,
        })
    }

    fn max_concurrent(
        &self,
        book: &RemediationBook,
        asg: &AsgName,
        g: &GuardrailConfig,
    ) -> Option<Guardrail> {
        let limit = self.concurrency_limit(asg);
        let in_flight = count(book.in_flight_in(asg));
        (in_flight >= limit).then(|| Guardrail::MaxConcurrent {
            asg: asg.clone(),
            in_flight,
            limit,
            count: g.max_concurrent,
            percent: g.max_concurrent_percent,
            group_size: count(self.fleet.in_asg(asg).filter(|i| in_service(i))),
        })
    }

    /// Remediations allowed in flight at once in `asg`.
    pub(crate) fn concurrency_limit(&self, asg: &AsgName) -> u32 {
        let g = self.config.for_asg(asg);
        let size = u64::from(count(self.fleet.in_asg(asg).filter(|i| in_service(i))));
        let by_percent = u32::try_from(size * u64::from(g.max_concurrent_percent) / 100)
            .unwrap_or(u32::MAX)
            .max(1);
        g.max_concurrent.min(by_percent)
    }

    fn min_healthy(
        &self,
        book: &RemediationBook,
        inst: &InstanceView,
        g: &GuardrailConfig,
    ) -> Vec<Guardrail> {
        let mut held = Vec::new();
        for own in inst
            .targets
            .iter()
            .filter(|t| t.state.is_registered() && t.state != TargetState::Draining)
        {
            let tg = &own.target_group;
            let mut total = 0u32;
            let mut healthy_others = 0u32;
            for other in &self.fleet.instances {
                let Some(t) = other.targets.iter().find(|t| &t.target_group == tg) else {
                    continue;
                };
                if !t.state.is_registered() {
                    continue;
                }
                total += 1;
                // An instance whose deregistration was decided is no longer capacity, even if the
                // inventory has not caught up yet.
                let leaving = book
                    .in_flight_for(&other.id)
                    .is_some_and(Remediation::past_deregistration);
                if other.id != inst.id && t.state == TargetState::Healthy && !leaving {
                    healthy_others += 1;
                }
            }
            let removes_healthy = own.state == TargetState::Healthy;
            let below_floor = u64::from(healthy_others) * 100
                < u64::from(g.min_healthy_percent) * u64::from(total);
            // Removing a healthy target must not cross the floor; removing a failing one costs no
            // capacity, unless nothing is healthy and the ALB is failing open.
            if (removes_healthy && below_floor) || healthy_others == 0 {
                held.push(Guardrail::MinHealthy {
                    target_group: tg.clone(),
                    healthy_after: healthy_others,
                    total,
                    min_percent: g.min_healthy_percent,
                });
            }
        }
        held
    }
}

fn in_service(inst: &InstanceView) -> bool {
    inst.asg_instance
        .as_ref()
        .is_some_and(|a| a.lifecycle == Lifecycle::InService)
}

fn count<T>(iter: impl Iterator<Item = T>) -> u32 {
    u32::try_from(iter.count()).unwrap_or(u32::MAX)
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
