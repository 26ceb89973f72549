//! The decision engine: the ladder and the flow of a pass. Walks every instance up the ladder,
//! asks the guardrails ([`crate::guardrail`]) whether each step may be taken, writes what it
//! decided into the book, and says what to do and why.

use std::time::Duration;

use crate::assess::{Assessment, Assessments, assess};
use crate::config::Config;
use crate::decision::{
    Action, Alert, Decision, DecisionKind, FleetAlert, Plan, PolicyError, Waiting, WhatIf,
};
use crate::fleet::{AsgName, Fleet, InstanceId, InstanceView, TargetGroup, TargetState};
use crate::guardrail::{Guardrail, Rules};
use crate::remediation::{Cause, Ending, Remediation, RemediationBook, Stage, Step};
use crate::time::{HumanDuration, Timestamp};

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
        assess(self.config.ladder(), inst, now)
    }

    /// Reads every instance of `fleet` once. A caller that needs the verdicts before deciding
    /// (to record flips into [`InstanceView::health_changes`]) passes the result on to
    /// [`Engine::decide_assessed`], so no instance is read twice in a pass. The readings do not
    /// depend on `health_changes`, so updating those afterwards keeps them valid.
    pub fn assess_fleet(&self, fleet: &Fleet, now: Timestamp) -> Assessments {
        Assessments::of_fleet(self.config.ladder(), fleet, now)
    }

    /// One decision pass. Actions decided here are written into `book` as requested (except in
    /// dry-run ASGs, whose book entries are never touched); carry them out and feed back outcomes
    /// with [`RemediationBook::record`].
    pub fn decide(&self, fleet: &Fleet, book: &mut RemediationBook, now: Timestamp) -> Plan {
        self.decide_assessed(fleet, &self.assess_fleet(fleet, now), book, now)
    }

    /// [`Engine::decide`] with the readings of [`Engine::assess_fleet`] for this `fleet` and
    /// `now`. An instance without a reading, or readings taken at another moment, are read afresh.
    pub fn decide_assessed(
        &self,
        fleet: &Fleet,
        assessments: &Assessments,
        book: &mut RemediationBook,
        now: Timestamp,
    ) -> Plan {
        book.prune(|r| {
            let g = self.config.for_asg(&r.asg);
            let keep_for = g.instance_cooldown.max(g.asg_cooldown);
            // Dry-run leaves the book exactly as it was, pruning included.
            g.dry_run || r.finished_at().is_some_and(|t| now.since(t) < keep_for)
        });
        let mut asgs = fleet.asgs();
        asgs.extend(book.in_flight().map(|r| r.asg.clone()));
        let mut plan = Plan::default();
        let rules = self.rules(fleet, now);
        for asg in &asgs {
            if self.config.for_asg(asg).dry_run {
                // Dry-run decides against a scratch copy so its own would-be steps still count
                // toward concurrency and cooldowns within the pass, then throws it away.
                let mut scratch = book.clone();
                self.decide_asg(rules, assessments, &mut scratch, asg, true, &mut plan);
            } else {
                self.decide_asg(rules, assessments, book, asg, false, &mut plan);
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
        let rules = self.rules(fleet, now);
        let mut held_by = rules.for_step(book, inst, step, continuing, &brakes);
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
        let assessments = self.assess_asg(fleet, asg, now);
        self.rules(fleet, now).for_asg(book, asg, &assessments)
    }

    /// The anomaly and dependency brakes engaged for `asg`.
    pub fn brakes(&self, fleet: &Fleet, asg: &AsgName, now: Timestamp) -> Vec<Guardrail> {
        let assessments = self.assess_asg(fleet, asg, now);
        self.rules(fleet, now).brakes(asg, &assessments)
    }

    /// Remediations allowed in flight at once in `asg`.
    pub fn concurrency_limit(&self, fleet: &Fleet, asg: &AsgName) -> u32 {
        // The limit depends on the group's size only, not on the time.
        self.rules(fleet, Timestamp::ZERO).concurrency_limit(asg)
    }

    fn rules<'a>(&'a self, fleet: &'a Fleet, now: Timestamp) -> Rules<'a> {
        Rules {
            config: &self.config,
            fleet,
            now,
        }
    }

    fn assess_asg(&self, fleet: &Fleet, asg: &AsgName, now: Timestamp) -> Assessments {
        Assessments::of(self.config.ladder(), fleet.in_asg(asg), now)
    }

    fn decide_asg(
        &self,
        rules: Rules<'_>,
        assessments: &Assessments,
        book: &mut RemediationBook,
        asg: &AsgName,
        dry_run: bool,
        plan: &mut Plan,
    ) {
        let (fleet, now) = (rules.fleet, rules.now);
        let brakes = rules.brakes(asg, assessments);
        plan.fleet_alerts.extend(brakes.iter().map(|b| FleetAlert {
            asg: asg.clone(),
            guardrail: b.clone(),
        }));
        let mut pass = Pass {
            engine: self,
            rules,
            assessments,
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
                let want = self.want(&assessments.read(self.config.ladder(), i, now), i, now);
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
                // A remediation that ended in this pass (given up on, above all) is what this
                // pass says about the instance; a new one is for the next pass to decide.
                Want::Start(..) if in_flight.iter().any(|r| r.instance == inst.id) => {}
                Want::Start(cause, action, reason) => {
                    pass.attempt(book, inst, Some(cause), action, 1, reason);
                }
            }
        }
    }

    /// What the ladder wants for an instance with no remediation in flight, read as `a`.
    fn want(&self, a: &Assessment, inst: &InstanceView, now: Timestamp) -> Want {
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

fn names(tgs: &[TargetGroup]) -> String {
    tgs.iter()
        .map(TargetGroup::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One ASG's share of a decision pass.
struct Pass<'a> {
    engine: &'a Engine,
    rules: Rules<'a>,
    assessments: &'a Assessments,
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
        let held_by = self
            .rules
            .for_step(book, inst, step, cause.is_none(), self.brakes);
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
        let a = self.assessments.read(ladder, inst, self.now);
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
