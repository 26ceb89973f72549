//! The decision engine: walks every instance up the ladder, checks every guardrail, and says what
//! to do and why.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::config::{Config, GuardrailConfig};
use crate::fleet::{AsgName, Fleet, InstanceId, InstanceView, Lifecycle, TargetGroup, TargetState};
use crate::guardrail::{BrakeScope, Guardrail};
use crate::remediation::{Cause, Ending, Remediation, RemediationBook, Stage, Step};
use crate::time::{HumanDuration, Timestamp};

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

/// How the load balancer sees an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlbHealth {
    /// Groups where it is healthy.
    pub healthy: Vec<TargetGroup>,
    /// Groups where it is unhealthy or unavailable.
    pub failing: Vec<TargetGroup>,
    /// The earliest time one of the failing states was first seen.
    pub failing_since: Option<Timestamp>,
}

impl AlbHealth {
    /// Failing somewhere and healthy nowhere.
    pub fn all_failing(&self) -> bool {
        !self.failing.is_empty() && self.healthy.is_empty()
    }
}

/// The engine's reading of one instance at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// `Some(how long)` if the agent has been quiet longer than the silence grace.
    pub silent_for: Option<Duration>,
    /// The agent's escalation, if any.
    pub escalation: Option<crate::fleet::Escalation>,
    /// Services the agent is healing locally.
    pub unhealthy_services: BTreeSet<String>,
    /// Shared dependencies the agent reports failing.
    pub failing_dependencies: BTreeSet<String>,
    /// The load balancer's view.
    pub alb: AlbHealth,
}

impl Assessment {
    /// Unhealthy or silent by any source. The fleet view records when this flips, into
    /// [`InstanceView::health_changes`].
    pub fn is_bad(&self) -> bool {
        self.silent_for.is_some()
            || self.escalation.is_some()
            || !self.unhealthy_services.is_empty()
            || !self.failing_dependencies.is_empty()
            || !self.alb.failing.is_empty()
    }
}

/// What the ladder wants for an instance with no remediation in flight.
enum Want {
    Nothing,
    Alert(Alert, String),
    Start(Cause, Action, String),
}

/// The decision engine. Pure: same inputs, same decisions.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    config: Config,
}

impl Engine {
    /// An engine with a validated configuration.
    pub fn new(config: Config) -> Self {
        Engine { config }
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reads one instance: silent, escalated, failing where.
    pub fn assess(&self, inst: &InstanceView, now: Timestamp) -> Assessment {
        let grace = self.config.ladder().agent_silence_grace;
        // An agent that never connected is silent from launch; startup grace covers boot.
        let heard = inst
            .agent
            .as_ref()
            .map_or(inst.launched_at, |a| a.last_heartbeat);
        let quiet = now.since(heard);
        let mut alb = AlbHealth::default();
        for t in &inst.targets {
            if t.state == TargetState::Healthy {
                alb.healthy.push(t.target_group.clone());
            } else if t.state.is_failing() {
                alb.failing.push(t.target_group.clone());
                alb.failing_since = Some(alb.failing_since.map_or(t.since, |s| s.min(t.since)));
            }
        }
        let agent = inst.agent.as_ref();
        Assessment {
            silent_for: (quiet > grace).then_some(quiet),
            escalation: agent.and_then(|a| a.escalation.clone()),
            unhealthy_services: agent
                .map(|a| a.unhealthy_services.clone())
                .unwrap_or_default(),
            failing_dependencies: agent
                .map(|a| a.failing_dependencies.clone())
                .unwrap_or_default(),
            alb,
        }
    }

    /// One decision pass. Actions decided here are written into `book` as requested (except in
    /// dry-run ASGs, whose book entries are never touched); carry them out and feed back outcomes
    /// with [`RemediationBook::record`].
    pub fn decide(&self, fleet: &Fleet, book: &mut RemediationBook, now: Timestamp) -> Plan {
        book.prune(|r| {
            let g = self.config.for_asg(&r.asg);
            let keep_for = g.instance_cooldown.max(g.asg_cooldown);
            // Dry-run leaves the book exactly as it was, pruning included.
            g.dry_run || r.finished_at().is_some_and(|t| now.since(t) < keep_for)
        });
        let mut asgs = fleet.asgs();
        asgs.extend(book.in_flight().map(|r| r.asg.clone()));
        let mut plan = Plan::default();
        for asg in &asgs {
            if self.config.for_asg(asg).dry_run {
                // Dry-run decides against a scratch copy so its own would-be steps still count
                // toward concurrency and cooldowns within the pass, then throws it away.
                let mut scratch = book.clone();
                self.decide_asg(fleet, &mut scratch, asg, now, true, &mut plan);
            } else {
                self.decide_asg(fleet, book, asg, now, false, &mut plan);
            }
        }
        plan
    }

    /// Would `step` on `instance` be allowed now, and if not, which guardrails hold it. Asks about
    /// the guardrails only, not whether the ladder wants the step.
    pub fn what_if(
        &self,
        fleet: &Fleet,
        book: &RemediationBook,
        instance: &InstanceId,
        step: Step,
        now: Timestamp,
    ) -> Result<WhatIf, PolicyError> {
        let inst = fleet
            .instance(instance)
            .ok_or_else(|| PolicyError::UnknownInstance(instance.clone()))?;
        let continuing = book.in_flight_for(instance).is_some();
        let brakes = self.brakes(fleet, &inst.asg, now);
        let mut held_by = self.guardrails(fleet, book, inst, step, continuing, &brakes, now);
        if self.config.for_asg(&inst.asg).dry_run {
            held_by.push(Guardrail::DryRun {
                asg: inst.asg.clone(),
            });
        }
        Ok(WhatIf {
            allowed: held_by.is_empty(),
            held_by,
        })
    }

    /// The guardrails holding a whole ASG now (pause, dry-run, brakes, cooldown, concurrency).
    pub fn fleet_guardrails(
        &self,
        fleet: &Fleet,
        book: &RemediationBook,
        asg: &AsgName,
        now: Timestamp,
    ) -> Vec<Guardrail> {
        let g = self.config.for_asg(asg);
        let mut held = Vec::new();
        if let Some(p) = &fleet.pause {
            held.push(Guardrail::Paused {
                by: p.by.clone(),
                reason: p.reason.clone(),
            });
        }
        if g.dry_run {
            held.push(Guardrail::DryRun { asg: asg.clone() });
        }
        held.extend(self.brakes(fleet, asg, now));
        held.extend(self.asg_cooldown(book, asg, g, now));
        held.extend(self.max_concurrent(fleet, book, asg, g));
        held
    }

    /// The anomaly and dependency brakes engaged for `asg`.
    pub fn brakes(&self, fleet: &Fleet, asg: &AsgName, now: Timestamp) -> Vec<Guardrail> {
        let g = self.config.for_asg(asg);
        // Instances still booting have no verdict worth counting, and non-InService ones are not
        // part of the serving group.
        let counted: Vec<(&InstanceView, Assessment)> = fleet
            .in_asg(asg)
            .filter(|i| in_service(i) && now.since(i.launched_at) >= g.startup_grace)
            .map(|i| (i, self.assess(i, now)))
            .collect();
        let bad = |(i, a): &&(&InstanceView, Assessment)| {
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

    /// Every guardrail holding `step` on `inst`. `continuing`: the step belongs to a remediation
    /// already in flight, which already passed the start-only guardrails (grace, flap, cooldowns,
    /// concurrency) and holds its own concurrency slot.
    #[allow(clippy::too_many_arguments)]
    fn guardrails(
        &self,
        fleet: &Fleet,
        book: &RemediationBook,
        inst: &InstanceView,
        step: Step,
        continuing: bool,
        brakes: &[Guardrail],
        now: Timestamp,
    ) -> Vec<Guardrail> {
        let g = self.config.for_asg(&inst.asg);
        let mut held = Vec::new();
        if let Some(p) = &fleet.pause {
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
            held.extend(self.asg_cooldown(book, &inst.asg, g, now));
            held.extend(self.max_concurrent(fleet, book, &inst.asg, g));
        }
        if step != Step::Ssm {
            held.extend(self.min_healthy(fleet, book, inst, g));
        }
        held
    }

    fn asg_cooldown(
        &self,
        book: &RemediationBook,
        asg: &AsgName,
        g: &GuardrailConfig,
        now: Timestamp,
    ) -> Option<Guardrail> {
        let elapsed = now.since(book.last_activity_in(asg)?);
        (elapsed < g.asg_cooldown).then(|| Guardrail::AsgCooldown {
            asg: asg.clone(),
            elapsed,
            cooldown: g.asg_cooldown,
        })
    }

    fn max_concurrent(
        &self,
        fleet: &Fleet,
        book: &RemediationBook,
        asg: &AsgName,
        g: &GuardrailConfig,
    ) -> Option<Guardrail> {
        let limit = self.concurrency_limit(fleet, asg);
        let in_flight = count(book.in_flight_in(asg));
        (in_flight >= limit).then(|| Guardrail::MaxConcurrent {
            asg: asg.clone(),
            in_flight,
            limit,
            count: g.max_concurrent,
            percent: g.max_concurrent_percent,
            group_size: count(fleet.in_asg(asg).filter(|i| in_service(i))),
        })
    }

    /// Remediations allowed in flight at once in `asg`.
    pub fn concurrency_limit(&self, fleet: &Fleet, asg: &AsgName) -> u32 {
        let g = self.config.for_asg(asg);
        let size = u64::from(count(fleet.in_asg(asg).filter(|i| in_service(i))));
        let by_percent = u32::try_from(size * u64::from(g.max_concurrent_percent) / 100)
            .unwrap_or(u32::MAX)
            .max(1);
        g.max_concurrent.min(by_percent)
    }

    fn min_healthy(
        &self,
        fleet: &Fleet,
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
            for other in &fleet.instances {
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

    fn decide_asg(
        &self,
        fleet: &Fleet,
        book: &mut RemediationBook,
        asg: &AsgName,
        now: Timestamp,
        dry_run: bool,
        plan: &mut Plan,
    ) {
        let brakes = self.brakes(fleet, asg, now);
        plan.fleet_alerts.extend(brakes.iter().map(|b| FleetAlert {
            asg: asg.clone(),
            guardrail: b.clone(),
        }));
        let mut pass = Pass {
            engine: self,
            fleet,
            asg,
            now,
            dry_run,
            brakes: &brakes,
            plan,
        };

        // Remediations in flight first: they already hold their slots.
        let in_flight: Vec<Remediation> = book.in_flight_in(asg).cloned().collect();
        for r in &in_flight {
            match fleet.instance(&r.instance) {
                Some(inst) => pass.continue_remediation(book, inst, r),
                None if !dry_run => {
                    book.enter(&r.instance, Stage::Finished(Ending::Gone), now);
                    pass.push(
                        &r.instance,
                        DecisionKind::Finished(Ending::Gone),
                        format!("{}: instance left the fleet", r.cause),
                    );
                }
                None => {}
            }
        }

        let mut candidates: Vec<(u8, &InstanceView, Want)> = fleet
            .in_asg(asg)
            .filter(|i| book.in_flight_for(&i.id).is_none())
            .map(|i| {
                let want = self.want(i, now);
                let rank = match &want {
                    Want::Start(Cause::Escalated { .. }, ..) => 0,
                    Want::Start(Cause::Silent, ..) => 1,
                    Want::Start(Cause::AlbUnhealthy, ..) => 2,
                    Want::Alert(..) | Want::Nothing => 3,
                };
                (rank, i, want)
            })
            .collect();
        candidates.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        for (_, inst, want) in candidates {
            match want {
                Want::Nothing => {}
                Want::Alert(alert, reason) => {
                    pass.push(&inst.id, DecisionKind::Alert(alert), reason)
                }
                Want::Start(cause, action, reason) => {
                    pass.attempt(book, inst, Some(cause), action, 1, reason);
                }
            }
        }
    }

    /// What the ladder wants for an instance with no remediation in flight.
    fn want(&self, inst: &InstanceView, now: Timestamp) -> Want {
        let a = self.assess(inst, now);
        let g = self.config.for_asg(&inst.asg);
        if let Some(esc) = &a.escalation {
            // No timestamp here: `Timestamp` is relative to the caller's epoch and means nothing
            // to a reader; the event and journal entry carry wall-clock time.
            let reason = format!("agent escalated {}: {}", esc.service, esc.reason);
            let cause = Cause::Escalated {
                service: esc.service.clone(),
            };
            return Want::Start(cause, take_out_of_traffic(inst), reason);
        }
        if let Some(quiet) = a.silent_for {
            if a.alb.all_failing() {
                let reason = format!(
                    "agent silent for {} and ALB failing in {}",
                    HumanDuration(quiet),
                    names(&a.alb.failing)
                );
                return Want::Start(Cause::Silent, Action::SsmRemediate, reason);
            }
            let alb = if a.alb.healthy.is_empty() {
                "the ALB has no verdict on it".to_owned()
            } else {
                format!("ALB still healthy in {}", names(&a.alb.healthy))
            };
            return Want::Alert(
                Alert::AgentLost { silent_for: quiet },
                format!(
                    "agent lost: silent for {} but {alb}; no destructive action",
                    HumanDuration(quiet)
                ),
            );
        }
        if !a.failing_dependencies.is_empty() {
            let deps: Vec<String> = a.failing_dependencies.iter().cloned().collect();
            let reason = format!(
                "agent reports shared dependencies failing: {}; not this instance's fault",
                deps.join(", ")
            );
            return Want::Alert(Alert::DependencyFailing { dependencies: deps }, reason);
        }
        if !a.alb.failing.is_empty() {
            let failing_for = a
                .alb
                .failing_since
                .map(|s| now.since(s))
                .unwrap_or_default();
            if g.act_on_alb_unhealthy
                && a.alb.all_failing()
                && failing_for >= self.config.ladder().alb_unhealthy_grace
            {
                let reason = format!(
                    "ALB failing in {} for {} with a healthy agent; asg configured to act",
                    names(&a.alb.failing),
                    HumanDuration(failing_for)
                );
                return Want::Start(Cause::AlbUnhealthy, take_out_of_traffic(inst), reason);
            }
            return Want::Alert(
                Alert::AlbFailing {
                    target_groups: a.alb.failing.clone(),
                },
                format!(
                    "ALB failing in {} for {} while the agent reports healthy; alert only",
                    names(&a.alb.failing),
                    HumanDuration(failing_for)
                ),
            );
        }
        Want::Nothing
    }
}

/// The first step that takes an instance out of traffic: deregistration, or straight to
/// replacement when it is in no target group.
fn take_out_of_traffic(inst: &InstanceView) -> Action {
    let target_groups: Vec<TargetGroup> = inst
        .targets
        .iter()
        .filter(|t| t.state.is_registered() && t.state != TargetState::Draining)
        .map(|t| t.target_group.clone())
        .collect();
    if target_groups.is_empty() {
        Action::Replace
    } else {
        Action::Deregister { target_groups }
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

fn names(tgs: &[TargetGroup]) -> String {
    tgs.iter()
        .map(TargetGroup::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One ASG's share of a decision pass.
struct Pass<'a> {
    engine: &'a Engine,
    fleet: &'a Fleet,
    asg: &'a AsgName,
    now: Timestamp,
    dry_run: bool,
    brakes: &'a [Guardrail],
    plan: &'a mut Plan,
}

impl Pass<'_> {
    fn push(&mut self, instance: &InstanceId, kind: DecisionKind, reason: String) {
        self.plan.decisions.push(Decision {
            instance: instance.clone(),
            asg: self.asg.clone(),
            kind,
            reason,
            dry_run: self.dry_run,
        });
    }

    /// Takes a step if no guardrail holds it: starts a remediation (`cause` is `Some`) or moves
    /// the one in flight on.
    fn attempt(
        &mut self,
        book: &mut RemediationBook,
        inst: &InstanceView,
        cause: Option<Cause>,
        action: Action,
        attempt: u32,
        reason: String,
    ) {
        let step = action.step();
        let held_by = self.engine.guardrails(
            self.fleet,
            book,
            inst,
            step,
            cause.is_none(),
            self.brakes,
            self.now,
        );
        if !held_by.is_empty() {
            let why: Vec<String> = held_by.iter().map(Guardrail::reason).collect();
            let reason = format!("{reason}; {action} held: {}", why.join("; "));
            self.push(&inst.id, DecisionKind::Hold { action, held_by }, reason);
            return;
        }
        let stage = Stage::Requested { step, attempt };
        match cause {
            Some(cause) => book.start(&inst.id, &inst.asg, cause, step, self.now),
            None => book.enter(&inst.id, stage, self.now),
        }
        let kind = if self.dry_run {
            DecisionKind::WouldAct(action.clone())
        } else {
            DecisionKind::Act(action.clone())
        };
        let reason = if self.dry_run {
            format!("{reason}; dry-run: would {action}")
        } else {
            format!("{reason}; {action}")
        };
        self.push(&inst.id, kind, reason);
    }

    fn finish(
        &mut self,
        book: &mut RemediationBook,
        r: &Remediation,
        ending: Ending,
        reason: String,
    ) {
        if self.dry_run {
            return;
        }
        book.enter(&r.instance, Stage::Finished(ending.clone()), self.now);
        if let Ending::GaveUp { step, error } = &ending {
            self.push(
                &r.instance,
                DecisionKind::Alert(Alert::GaveUp {
                    step: *step,
                    error: error.clone(),
                }),
                reason.clone(),
            );
        }
        self.push(&r.instance, DecisionKind::Finished(ending), reason);
    }

    fn wait(&mut self, r: &Remediation, waiting: Waiting, timeout: Duration, reason: String) {
        let until = r.stage_since + timeout;
        self.push(
            &r.instance,
            DecisionKind::Wait { waiting, until },
            format!("{}: {reason} until {until}", r.cause),
        );
    }

    fn continue_remediation(
        &mut self,
        book: &mut RemediationBook,
        inst: &InstanceView,
        r: &Remediation,
    ) {
        let ladder = self.engine.config.ladder();
        let a = self.engine.assess(inst, self.now);
        let in_stage = self.now.since(r.stage_since);
        let cause = &r.cause;
        match &r.stage {
            Stage::Requested { step, attempt } => {
                if in_stage < ladder.action_timeout {
                    self.wait(
                        r,
                        Waiting::Outcome(*step),
                        ladder.action_timeout,
                        format!("waiting for the outcome of {step}"),
                    );
                } else if *attempt >= ladder.max_attempts {
                    let error = format!("no outcome after {} attempts", attempt);
                    let reason = format!("{cause}: gave up on {step}: {error}");
                    self.finish(book, r, Ending::GaveUp { step: *step, error }, reason);
                } else {
                    let reason = format!(
                        "{cause}: no outcome for {step} within {}; deciding it again",
                        HumanDuration(ladder.action_timeout)
                    );
                    self.attempt(
                        book,
                        inst,
                        None,
                        self.redo(inst, *step),
                        attempt + 1,
                        reason,
                    );
                }
            }
            Stage::Failed {
                step,
                attempt,
                error,
            } => {
                if *step == Step::Ssm && a.silent_for.is_none() {
                    let reason = format!("{cause}: agent is back");
                    self.finish(book, r, Ending::Recovered, reason);
                } else if *attempt >= ladder.max_attempts {
                    let reason = format!("{cause}: {step} failed {attempt} times, last: {error}");
                    let ending = Ending::GaveUp {
                        step: *step,
                        error: error.clone(),
                    };
                    self.finish(book, r, ending, reason);
                } else {
                    let reason =
                        format!("{cause}: {step} attempt {attempt} failed ({error}); retrying");
                    self.attempt(
                        book,
                        inst,
                        None,
                        self.redo(inst, *step),
                        attempt + 1,
                        reason,
                    );
                }
            }
            Stage::SsmSent { result } => {
                if a.silent_for.is_none() {
                    let reason = format!("{cause}: agent came back after SSM remediation");
                    self.finish(book, r, Ending::Recovered, reason);
                } else if *result == Some(false) {
                    let reason =
                        format!("{cause}: SSM command failed and the agent is still silent");
                    self.attempt(book, inst, None, take_out_of_traffic(inst), 1, reason);
                } else if in_stage >= ladder.ssm_timeout {
                    let reason = format!(
                        "{cause}: agent still silent {} after SSM remediation",
                        HumanDuration(in_stage)
                    );
                    self.attempt(book, inst, None, take_out_of_traffic(inst), 1, reason);
                } else {
                    self.wait(
                        r,
                        Waiting::AgentAfterSsm,
                        ladder.ssm_timeout,
                        "waiting for the agent to come back".into(),
                    );
                }
            }
            Stage::Draining { target_groups } => {
                let drained = target_groups.iter().all(|tg| {
                    inst.targets
                        .iter()
                        .find(|t| &t.target_group == tg)
                        .is_none_or(|t| !t.state.is_registered())
                });
                if drained {
                    let reason = format!("{cause}: drained from {}", names(target_groups));
                    self.attempt(book, inst, None, Action::Replace, 1, reason);
                } else if in_stage >= ladder.drain_timeout {
                    let reason = format!(
                        "{cause}: still draining after {}; replacing anyway",
                        HumanDuration(in_stage)
                    );
                    self.attempt(book, inst, None, Action::Replace, 1, reason);
                } else {
                    self.wait(
                        r,
                        Waiting::Drain,
                        ladder.drain_timeout,
                        "waiting for connections to drain".into(),
                    );
                }
            }
            Stage::Drained => {
                let reason = format!("{cause}: drained");
                self.attempt(book, inst, None, Action::Replace, 1, reason);
            }
            Stage::Finished(_) => {}
        }
    }

    /// The action that carries out `step` again, on the instance as it is now.
    fn redo(&self, inst: &InstanceView, step: Step) -> Action {
        match step {
            Step::Ssm => Action::SsmRemediate,
            Step::Deregister => match take_out_of_traffic(inst) {
                // Already out of every group: a retry has nothing left to deregister.
                Action::Replace => Action::Deregister {
                    target_groups: Vec::new(),
                },
                other => other,
            },
            Step::Replace => Action::Replace,
        }
    }
}
