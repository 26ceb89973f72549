//! A simulated fleet with a simulated clock, driven the way the coordinator drives the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use autoheal_policy::{
    Action, AgentView, AsgConditions, AsgHealth, AsgInstance, AsgName, Assessments, Az, Config,
    Decision, DecisionKind, Engine, Escalation, Fleet, Guardrail, InstanceId, InstanceView,
    Lifecycle, Outcome, Plan, RemediationBook, TargetGroup, TargetState, TargetView, Timestamp,
};

/// The simulated clock starts here; instances built by the helpers launched an hour earlier.
pub const T0: Timestamp = Timestamp::from_secs(1_000_000);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn id(s: &str) -> InstanceId {
    InstanceId::from(s)
}

/// A healthy, in-service instance with a fresh heartbeat, launched an hour before `now`.
pub fn healthy_instance(
    id: &str,
    asg: &str,
    az: &str,
    tgs: &[&str],
    now: Timestamp,
) -> InstanceView {
    InstanceView {
        id: InstanceId::from(id),
        asg: AsgName::from(asg),
        az: Az::from(az),
        launched_at: now - secs(3600),
        agent: Some(AgentView {
            connected: true,
            last_heartbeat: now,
            unhealthy_services: BTreeSet::new(),
            escalation: None,
            failing_dependencies: BTreeSet::new(),
        }),
        targets: tgs
            .iter()
            .map(|tg| TargetView {
                target_group: TargetGroup::from(*tg),
                state: TargetState::Healthy,
                reason: None,
                since: now - secs(3600),
            })
            .collect(),
        asg_instance: Some(AsgInstance {
            lifecycle: Lifecycle::InService,
            health: AsgHealth::Healthy,
            protected: false,
            group: AsgConditions::default(),
        }),
        skipped: false,
        health_changes: Vec::new(),
    }
}

/// How the simulated coordinator answers an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The AWS call works.
    Succeed,
    /// The AWS call fails.
    Fail,
    /// The coordinator dies mid-call: no outcome at all.
    Lose,
}

#[derive(Debug)]
pub struct Sim {
    pub engine: Engine,
    pub fleet: Fleet,
    pub book: RemediationBook,
    pub now: Timestamp,
    /// Agents that stopped talking: their heartbeats no longer advance.
    pub muted: BTreeSet<InstanceId>,
    verdicts: BTreeMap<InstanceId, bool>,
    /// Every decision ever made, with the time it was made.
    pub log: Vec<(Timestamp, Decision)>,
}

impl Sim {
    pub fn new(config: Config) -> Self {
        Sim {
            engine: Engine::new(config),
            fleet: Fleet::default(),
            book: RemediationBook::new(),
            now: T0,
            muted: BTreeSet::new(),
            verdicts: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    /// Adds `n` healthy instances named `{asg}-{k}`, spread round-robin over `azs`.
    pub fn add_group(&mut self, asg: &str, n: usize, azs: &[&str], tgs: &[&str]) {
        for k in 0..n {
            let az = azs[k % azs.len()];
            let inst = healthy_instance(&format!("{asg}-{k}"), asg, az, tgs, self.now);
            self.fleet.instances.push(inst);
        }
    }

    pub fn inst_mut(&mut self, id: &str) -> &mut InstanceView {
        self.fleet
            .instances
            .iter_mut()
            .find(|i| i.id.as_str() == id)
            .expect("instance in the simulated fleet")
    }

    fn agent_mut(&mut self, id: &str) -> &mut AgentView {
        self.inst_mut(id)
            .agent
            .as_mut()
            .expect("instance has an agent")
    }

    pub fn escalate(&mut self, id: &str, service: &str) {
        let now = self.now;
        self.agent_mut(id).escalation = Some(Escalation {
            service: service.into(),
            reason: "restart policy exhausted".into(),
            at: now,
        });
    }

    pub fn fail_dependency(&mut self, id: &str, dependency: &str) {
        self.agent_mut(id)
            .failing_dependencies
            .insert(dependency.into());
    }

    pub fn silence(&mut self, id: &str) {
        self.muted.insert(InstanceId::from(id));
        self.agent_mut(id).connected = false;
    }

    pub fn unsilence(&mut self, id: &str) {
        self.muted.remove(&InstanceId::from(id));
        let now = self.now;
        let agent = self.agent_mut(id);
        agent.connected = true;
        agent.last_heartbeat = now;
    }

    /// Sets the instance's state in every target group it is registered in.
    pub fn set_alb(&mut self, id: &str, state: TargetState) {
        let now = self.now;
        for t in &mut self.inst_mut(id).targets {
            if t.state.is_registered() && t.state != state {
                t.state = state;
                t.since = now;
            }
        }
    }

    /// Draining targets finish draining.
    pub fn drain(&mut self, id: &str) {
        let now = self.now;
        for t in &mut self.inst_mut(id).targets {
            if t.state == TargetState::Draining {
                t.state = TargetState::Unused;
                t.since = now;
            }
        }
    }

    /// Moves the clock; agents not muted keep heartbeating.
    pub fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        let now = self.now;
        for inst in &mut self.fleet.instances {
            if self.muted.contains(&inst.id) {
                continue;
            }
            if let Some(agent) = inst.agent.as_mut() {
                agent.last_heartbeat = now;
            }
        }
    }

    /// Records verdict flips the way the coordinator's fleet view does, then decides.
    pub fn decide(&mut self) -> Plan {
        // One reading per instance per pass, as the coordinator does: the verdicts and the
        // decisions both use it.
        let assessments = self.engine.assess_fleet(&self.fleet, self.now);
        self.track_verdicts(&assessments);
        let plan = self
            .engine
            .decide_assessed(&self.fleet, &assessments, &mut self.book, self.now);
        self.log
            .extend(plan.decisions.iter().map(|d| (self.now, d.clone())));
        plan
    }

    pub fn track_verdicts(&mut self, assessments: &Assessments) {
        for inst in &mut self.fleet.instances {
            let bad = match assessments.get(&inst.id) {
                Some(a) => a.is_bad(),
                None => self.engine.assess(inst, self.now).is_bad(),
            };
            let previous = self.verdicts.insert(inst.id.clone(), bad);
            if previous.is_some_and(|p| p != bad) {
                inst.health_changes.push(self.now);
            }
        }
    }

    pub fn record(&mut self, id: &str, outcome: Outcome) {
        self.book
            .record(&InstanceId::from(id), outcome, self.now)
            .expect("outcome fits the remediation");
    }

    /// Carries out every executable decision the way a coordinator does.
    pub fn execute(&mut self, plan: &Plan, answer: Answer) {
        for (d, action) in plan.executable() {
            let instance = d.instance.clone();
            match answer {
                Answer::Lose => continue,
                Answer::Fail => {
                    self.book
                        .record(
                            &instance,
                            Outcome::Failed {
                                error: "ThrottlingException".into(),
                            },
                            self.now,
                        )
                        .expect("failure fits");
                    continue;
                }
                Answer::Succeed => {}
            }
            let outcome = match action {
                Action::SsmRemediate => Outcome::SsmSent,
                Action::Deregister { target_groups } => {
                    let now = self.now;
                    if let Some(inst) = self.fleet.instances.iter_mut().find(|i| i.id == instance) {
                        for t in &mut inst.targets {
                            if target_groups.contains(&t.target_group) {
                                t.state = TargetState::Draining;
                                t.since = now;
                            }
                        }
                    }
                    Outcome::Deregistered {
                        target_groups: target_groups.clone(),
                    }
                }
                Action::Replace => {
                    if let Some(inst) = self.fleet.instances.iter_mut().find(|i| i.id == instance)
                        && let Some(a) = inst.asg_instance.as_mut()
                    {
                        a.lifecycle = Lifecycle::Terminating;
                        a.health = AsgHealth::Unhealthy;
                    }
                    Outcome::ReplaceRequested
                }
            };
            self.book
                .record(&instance, outcome, self.now)
                .expect("outcome fits");
        }
    }

    /// Runs the loop every `tick` for `total`: decide, carry out, let drains finish.
    pub fn run(&mut self, total: Duration, tick: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.advance(tick);
            let plan = self.decide();
            self.execute(&plan, Answer::Succeed);
            let draining: Vec<String> = self
                .fleet
                .instances
                .iter()
                .filter(|i| i.targets.iter().any(|t| t.state == TargetState::Draining))
                .map(|i| i.id.to_string())
                .collect();
            for i in draining {
                self.drain(&i);
            }
        }
    }

    /// Every action ever decided as executable.
    pub fn acted(&self) -> Vec<(InstanceId, Action)> {
        self.log
            .iter()
            .filter_map(|(_, d)| d.executable().map(|a| (d.instance.clone(), a.clone())))
            .collect()
    }
}

/// The decisions about one instance in a plan.
pub fn about<'a>(plan: &'a Plan, instance: &str) -> Vec<&'a DecisionKind> {
    plan.decisions
        .iter()
        .filter(|d| d.instance.as_str() == instance)
        .map(|d| &d.kind)
        .collect()
}

/// The only decision about one instance in a plan.
pub fn only<'a>(plan: &'a Plan, instance: &str) -> &'a Decision {
    let mut ds = plan
        .decisions
        .iter()
        .filter(|d| d.instance.as_str() == instance);
    let d = ds.next().expect("a decision about the instance");
    assert!(
        ds.next().is_none(),
        "one decision about {instance}: {plan:#?}"
    );
    d
}

/// The guardrails holding a decision, by name.
pub fn held_by(d: &Decision) -> Vec<&'static str> {
    match &d.kind {
        DecisionKind::Hold { held_by, .. } => held_by.iter().map(Guardrail::name).collect(),
        other => panic!("expected a hold, got {other:?} ({})", d.reason),
    }
}
