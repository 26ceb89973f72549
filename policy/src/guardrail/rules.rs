//! The guardrail rules: which [`Guardrail`]s hold a step on an instance, or a whole ASG, given
//! the configuration, the fleet snapshot, the book and the clock value.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::{BrakeScope, Guardrail};
use crate::assess::{Assessment, Assessments};
use crate::config::{Config, GuardrailConfig};
use crate::fleet::{AsgHealth, AsgName, Fleet, InstanceView, Lifecycle, TargetState};
use crate::remediation::{Remediation, RemediationBook, Step};
use crate::time::Timestamp;

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
        // The group's own conditions, as its members carry them.
        if let Some(inst) = self.fleet.in_asg(asg).find(|i| i.asg_instance.is_some()) {
            held.extend(
                self.asg_conditions(inst, Step::Deregister)
                    .into_iter()
                    .filter(|g| !matches!(g, Guardrail::AlreadyUnhealthy)),
            );
        }
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
        if step != Step::Ssm {
            held.extend(self.asg_conditions(inst, step));
            if !g.replace_protected && inst.asg_instance.as_ref().is_some_and(|a| a.protected) {
                held.push(Guardrail::ScaleInProtected);
            }
        }
        if !continuing {
            let age = now.since(inst.launched_at);
            // The ASG's own health check grace counts too: inside it the ASG itself doesn't judge
            // the instance, and neither does autoheal.
            let grace = inst.asg_instance.as_ref().map_or(g.startup_grace, |a| {
                g.startup_grace.max(a.group.health_check_grace)
            });
            if age < grace {
                held.push(Guardrail::StartupGrace { age, grace });
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

    /// What the ASG's own state holds: a refresh under way, processes that make a replacement
    /// impossible, an instance it already holds unhealthy. Destructive steps only.
    fn asg_conditions(&self, inst: &InstanceView, step: Step) -> Vec<Guardrail> {
        let mut held = Vec::new();
        let Some(a) = &inst.asg_instance else {
            return held;
        };
        if let Some(status) = &a.group.refresh {
            held.push(Guardrail::InstanceRefresh {
                asg: inst.asg.clone(),
                status: status.clone(),
            });
        }
        if !a.group.can_replace() {
            held.push(Guardrail::ProcessesSuspended {
                asg: inst.asg.clone(),
                suspended: a.group.suspended.iter().cloned().collect(),
            });
        }
        // Marking it again changes nothing; where the ASG won't replace unhealthy instances,
        // terminate mode still can.
        if step == Step::Replace && a.health == AsgHealth::Unhealthy && a.group.replaces_unhealthy()
        {
            held.push(Guardrail::AlreadyUnhealthy);
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
