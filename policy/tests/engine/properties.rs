//! Property tests: random fleets, random configurations and random event sequences, driven
//! through the engine like the coordinator drives it. Each guardrail invariant is its own test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use autoheal_policy::{
    Action, AsgConditions, AsgHealth, AsgName, BrakeScope, Config, DecisionKind, Engine, Fleet,
    Guardrail, GuardrailConfig, GuardrailOverride, InstanceId, Lifecycle, Plan, RawConfig,
    Remediation, RemediationBook, ScalingProcess, Stage, TargetGroup, TargetState, Timestamp,
};
use proptest::prelude::*;

use crate::support::{Answer, Sim, healthy_instance, secs};

const ASGS: [&str; 3] = ["web", "api", "batch"];
const AZS: [&str; 3] = ["a", "b", "c"];
const DEPS: [&str; 2] = ["postgres-main", "redis"];

#[derive(Debug, Clone)]
struct InstanceSpec {
    asg: usize,
    az: usize,
    shared_tg: bool,
    own_tg: bool,
    launched_ago: u64,
    /// Seconds since the last heartbeat; `None`: no agent ever connected.
    quiet_for: Option<u64>,
    escalated: bool,
    deps: u8,
    alb: TargetState,
    lifecycle: Lifecycle,
    skipped: bool,
}

#[derive(Debug, Clone)]
enum Event {
    Escalate(usize),
    Clear(usize),
    Silence(usize),
    Speak(usize),
    Alb(usize, TargetState),
    Deps(usize, u8),
    Lifecycle(usize, Lifecycle),
    Skip(usize, bool),
    Pause(bool),
    Drain(usize),
    ToggleDryRun(usize),
    /// The ASG's conditions change: suspended processes (a mask over `PROCESSES`), an instance
    /// refresh under way, its health check grace in seconds.
    Group(usize, u8, bool, u64),
    /// The ASG marks an instance unhealthy (or healthy again).
    AsgHealth(usize, bool),
    /// Scale-in protection on or off.
    Protect(usize, bool),
}

const PROCESSES: [ScalingProcess; 4] = [
    ScalingProcess::Launch,
    ScalingProcess::Terminate,
    ScalingProcess::ReplaceUnhealthy,
    ScalingProcess::AzRebalance,
];

#[derive(Debug, Clone)]
struct Tick {
    events: Vec<Event>,
    advance: u64,
    answer: Answer,
}

#[derive(Debug, Clone)]
struct Scenario {
    guardrails: GuardrailConfig,
    dry_run: [bool; 3],
    instances: Vec<InstanceSpec>,
    ticks: Vec<Tick>,
}

fn target_state() -> impl Strategy<Value = TargetState> {
    prop_oneof![
        6 => Just(TargetState::Healthy),
        2 => Just(TargetState::Unhealthy),
        1 => Just(TargetState::Unavailable),
        1 => Just(TargetState::Initial),
        1 => Just(TargetState::Draining),
        1 => Just(TargetState::Unused),
    ]
}

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    prop_oneof![
        12 => Just(Lifecycle::InService),
        1 => Just(Lifecycle::Pending),
        1 => Just(Lifecycle::Terminating),
        1 => Just(Lifecycle::Standby),
        1 => Just(Lifecycle::Detaching),
        1 => Just(Lifecycle::Other("Warmed:Running".into())),
    ]
}

fn guardrails() -> impl Strategy<Value = GuardrailConfig> {
    let limits = (1u32..4, 1u8..=100, 0u8..=100, 1u8..=100, 1u8..=100, 1u32..4);
    let times = (
        prop_oneof![Just(0u64), Just(120), Just(1800)],
        prop_oneof![2 => Just(0u64), 1 => Just(60), 1 => Just(300)],
        prop_oneof![Just(0u64), Just(300)],
        prop_oneof![Just(60u64), Just(300)],
        2u32..8,
        any::<bool>(),
    );
    (limits, times).prop_map(
        |(
            (max_concurrent, max_concurrent_percent, min_healthy, anomaly, dependency, brake_min),
            (instance_cooldown, asg_cooldown, startup_grace, anomaly_window, flaps, act_on_alb),
        )| GuardrailConfig {
            max_concurrent,
            max_concurrent_percent,
            min_healthy_percent: min_healthy,
            anomaly_percent: anomaly,
            anomaly_window: secs(anomaly_window),
            dependency_percent: dependency,
            brake_min_instances: brake_min,
            instance_cooldown: secs(instance_cooldown),
            asg_cooldown: secs(asg_cooldown),
            startup_grace: secs(startup_grace),
            flap_transitions: flaps,
            flap_window: secs(600),
            dry_run: false,
            act_on_alb_unhealthy: act_on_alb,
            replace_protected: false,
        },
    )
}

fn instance() -> impl Strategy<Value = InstanceSpec> {
    (
        (
            0usize..3,
            0usize..3,
            any::<bool>(),
            any::<bool>(),
            0u64..7200,
        ),
        (
            prop_oneof![1 => Just(None), 6 => (0u64..400).prop_map(Some)],
            prop::bool::weighted(0.2),
            prop_oneof![6 => Just(0u8), 1 => 1u8..4],
            target_state(),
            lifecycle(),
            prop::bool::weighted(0.05),
        ),
    )
        .prop_map(
            |(
                (asg, az, shared_tg, own_tg, launched_ago),
                (quiet_for, escalated, deps, alb, lifecycle, skipped),
            )| InstanceSpec {
                asg,
                az,
                shared_tg,
                own_tg,
                launched_ago,
                quiet_for,
                escalated,
                deps,
                alb,
                lifecycle,
                skipped,
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    let i = 0usize..64;
    prop_oneof![
        3 => i.clone().prop_map(Event::Escalate),
        1 => i.clone().prop_map(Event::Clear),
        3 => i.clone().prop_map(Event::Silence),
        3 => i.clone().prop_map(Event::Speak),
        3 => (i.clone(), target_state()).prop_map(|(i, s)| Event::Alb(i, s)),
        1 => (i.clone(), 0u8..4).prop_map(|(i, d)| Event::Deps(i, d)),
        1 => (i.clone(), lifecycle()).prop_map(|(i, l)| Event::Lifecycle(i, l)),
        1 => (i.clone(), prop::bool::weighted(0.2)).prop_map(|(i, s)| Event::Skip(i, s)),
        1 => prop::bool::weighted(0.3).prop_map(Event::Pause),
        3 => i.clone().prop_map(Event::Drain),
        1 => (0usize..3).prop_map(Event::ToggleDryRun),
        1 => (0usize..3, 0u8..16, prop::bool::weighted(0.3), prop_oneof![Just(0u64), 0u64..900])
            .prop_map(|(a, m, r, g)| Event::Group(a, m, r, g)),
        1 => (i.clone(), prop::bool::weighted(0.5)).prop_map(|(i, u)| Event::AsgHealth(i, u)),
        1 => (i, prop::bool::weighted(0.3)).prop_map(|(i, p)| Event::Protect(i, p)),
    ]
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        prop::collection::vec(event(), 0..4),
        prop_oneof![Just(0u64), 1u64..60, 60u64..400],
        prop_oneof![5 => Just(Answer::Succeed), 2 => Just(Answer::Fail), 1 => Just(Answer::Lose)],
    )
        .prop_map(|(events, advance, answer)| Tick {
            events,
            advance,
            answer,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        guardrails(),
        prop::array::uniform3(prop::bool::weighted(0.2)),
        prop::collection::vec(instance(), 1..24),
        prop::collection::vec(tick(), 1..25),
    )
        .prop_map(|(guardrails, dry_run, instances, ticks)| Scenario {
            guardrails,
            dry_run,
            instances,
            ticks,
        })
}

fn config(g: &GuardrailConfig, dry_run: [bool; 3]) -> Config {
    let mut raw = RawConfig {
        guardrails: g.clone(),
        ..RawConfig::default()
    };
    for (asg, dry) in ASGS.iter().zip(dry_run) {
        raw.asg.insert(
            (*asg).to_owned(),
            GuardrailOverride {
                dry_run: Some(dry),
                ..GuardrailOverride::default()
            },
        );
    }
    Config::try_new(raw).expect("generated configs are valid")
}

fn build(s: &Scenario) -> Sim {
    let mut sim = Sim::new(config(&s.guardrails, s.dry_run));
    for (k, spec) in s.instances.iter().enumerate() {
        let asg = ASGS[spec.asg];
        let mut tgs = Vec::new();
        let own = format!("tg-{asg}");
        if spec.own_tg {
            tgs.push(own.as_str());
        }
        if spec.shared_tg {
            tgs.push("tg-shared");
        }
        let id = format!("i-{k:02}");
        let mut inst = healthy_instance(&id, asg, AZS[spec.az], &tgs, sim.now);
        inst.launched_at = sim.now - secs(spec.launched_ago);
        for t in &mut inst.targets {
            t.state = spec.alb;
        }
        inst.asg_instance.as_mut().expect("asg view").lifecycle = spec.lifecycle.clone();
        inst.skipped = spec.skipped;
        match spec.quiet_for {
            None => inst.agent = None,
            Some(quiet) => {
                let agent = inst.agent.as_mut().expect("agent");
                agent.last_heartbeat = sim.now - secs(quiet);
                if spec.escalated {
                    agent.escalation = Some(autoheal_policy::Escalation {
                        service: "api".into(),
                        reason: "restarts exhausted".into(),
                        at: sim.now,
                    });
                }
                agent.failing_dependencies = deps(spec.deps);
            }
        }
        let muted = spec.quiet_for.is_none_or(|q| q > 60);
        sim.fleet.instances.push(inst);
        if muted {
            sim.muted.insert(InstanceId::from(id));
        }
    }
    sim
}

fn deps(mask: u8) -> BTreeSet<String> {
    DEPS.iter()
        .enumerate()
        .filter(|(k, _)| mask & (1 << k) != 0)
        .map(|(_, d)| (*d).to_owned())
        .collect()
}

fn apply(sim: &mut Sim, event: &Event, g: &GuardrailConfig, dry_run: &mut [bool; 3]) {
    let n = sim.fleet.instances.len();
    let name = |i: usize| format!("i-{:02}", i % n);
    let has_agent = |sim: &Sim, i: usize| sim.fleet.instances[i % n].agent.is_some();
    match event {
        Event::Escalate(i) if has_agent(sim, *i) => sim.escalate(&name(*i), "api"),
        Event::Clear(i) if has_agent(sim, *i) => {
            let inst = sim.inst_mut(&name(*i));
            if let Some(a) = inst.agent.as_mut() {
                a.escalation = None;
            }
        }
        Event::Silence(i) if has_agent(sim, *i) => sim.silence(&name(*i)),
        Event::Speak(i) if has_agent(sim, *i) => sim.unsilence(&name(*i)),
        Event::Alb(i, state) => sim.set_alb(&name(*i), *state),
        Event::Deps(i, mask) if has_agent(sim, *i) => {
            if let Some(a) = sim.inst_mut(&name(*i)).agent.as_mut() {
                a.failing_dependencies = deps(*mask);
            }
        }
        Event::Lifecycle(i, l) => {
            if let Some(a) = sim.inst_mut(&name(*i)).asg_instance.as_mut() {
                a.lifecycle = l.clone();
            }
        }
        Event::Skip(i, skip) => sim.inst_mut(&name(*i)).skipped = *skip,
        Event::Pause(on) => {
            sim.fleet.pause = on.then(|| autoheal_policy::Pause {
                by: "prop".into(),
                reason: "test".into(),
                since: sim.now,
            });
        }
        Event::Drain(i) => sim.drain(&name(*i)),
        Event::ToggleDryRun(asg) => {
            dry_run[*asg] = !dry_run[*asg];
            sim.engine = Engine::new(config(g, *dry_run));
        }
        Event::Group(asg, mask, refresh, grace) => {
            let conditions = AsgConditions {
                suspended: PROCESSES
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| mask & (1 << k) != 0)
                    .map(|(_, p)| p.clone())
                    .collect(),
                refresh: refresh.then(|| "InProgress".to_owned()),
                health_check_grace: secs(*grace),
            };
            for inst in &mut sim.fleet.instances {
                if inst.asg.as_str() == ASGS[*asg]
                    && let Some(a) = inst.asg_instance.as_mut()
                {
                    a.group = conditions.clone();
                }
            }
        }
        Event::Protect(i, protected) => {
            if let Some(a) = sim.inst_mut(&name(*i)).asg_instance.as_mut() {
                a.protected = *protected;
            }
        }
        Event::AsgHealth(i, unhealthy) => {
            if let Some(a) = sim.inst_mut(&name(*i)).asg_instance.as_mut() {
                a.health = if *unhealthy {
                    AsgHealth::Unhealthy
                } else {
                    AsgHealth::Healthy
                };
            }
        }
        _ => {}
    }
}

/// One decision pass as the invariants see it.
struct Pass<'a> {
    engine: &'a Engine,
    fleet: &'a Fleet,
    before: &'a RemediationBook,
    after: &'a RemediationBook,
    /// Every remediation ever seen, by (instance, start), so pruning hides nothing.
    history: &'a BTreeMap<(InstanceId, Timestamp), Remediation>,
    plan: &'a Plan,
    now: Timestamp,
}

impl Pass<'_> {
    fn acts(&self) -> impl Iterator<Item = (&InstanceId, &AsgName, &Action)> {
        self.plan.decisions.iter().filter_map(|d| match &d.kind {
            DecisionKind::Act(a) | DecisionKind::WouldAct(a) => Some((&d.instance, &d.asg, a)),
            _ => None,
        })
    }

    /// Executable actions that start a new remediation.
    fn starts(&self) -> impl Iterator<Item = (&InstanceId, &AsgName, &Action)> {
        self.plan
            .executable()
            .filter(|(d, _)| self.before.in_flight_for(&d.instance).is_none())
            .map(|(d, a)| (&d.instance, &d.asg, a))
    }

    fn guardrails(&self, asg: &AsgName) -> &GuardrailConfig {
        self.engine.config().for_asg(asg)
    }
}

/// Runs a scenario, calling `check` after every decision pass.
fn drive(
    s: &Scenario,
    mut check: impl FnMut(&Pass<'_>) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut sim = build(s);
    let mut dry_run = s.dry_run;
    let mut history = BTreeMap::new();
    for tick in &s.ticks {
        for e in &tick.events {
            apply(&mut sim, e, &s.guardrails, &mut dry_run);
        }
        sim.advance(secs(tick.advance));
        let before = sim.book.clone();
        let plan = sim.decide();
        for r in sim.book.iter() {
            history.insert((r.instance.clone(), r.started_at), r.clone());
        }
        check(&Pass {
            engine: &sim.engine,
            fleet: &sim.fleet,
            before: &before,
            after: &sim.book,
            history: &history,
            plan: &plan,
            now: sim.now,
        })?;
        sim.execute(&plan, tick.answer);
        for r in sim.book.iter() {
            history.insert((r.instance.clone(), r.started_at), r.clone());
        }
    }
    Ok(())
}

fn in_service_count(fleet: &Fleet, asg: &AsgName) -> u64 {
    fleet
        .in_asg(asg)
        .filter(|i| {
            i.asg_instance
                .as_ref()
                .is_some_and(|a| a.lifecycle == Lifecycle::InService)
        })
        .count() as u64
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn never_more_concurrent_remediations_than_allowed(s in scenario()) {
        drive(&s, |p| {
            for asg in p.fleet.asgs() {
                let g = p.guardrails(&asg);
                let size = in_service_count(p.fleet, &asg);
                let limit = u64::from(g.max_concurrent)
                    .min((size * u64::from(g.max_concurrent_percent) / 100).max(1));
                let before = p.before.in_flight_in(&asg).count() as u64;
                let after = p.after.in_flight_in(&asg).count() as u64;
                let started = p.starts().filter(|(_, a, _)| **a == asg).count();
                if started > 0 {
                    prop_assert!(after <= limit, "{asg}: {after} in flight after starting {started}; limit {limit}");
                }
                prop_assert!(after <= before.max(limit), "{asg}: {before} -> {after}; limit {limit}");
            }
            Ok(())
        })?;
    }

    #[test]
    fn never_below_min_healthy(s in scenario()) {
        drive(&s, |p| {
            let tgs: BTreeSet<TargetGroup> = p.fleet.instances.iter()
                .flat_map(|i| i.targets.iter().map(|t| t.target_group.clone()))
                .collect();
            for tg in tgs {
                let members: Vec<_> = p.fleet.instances.iter()
                    .filter_map(|i| i.targets.iter().find(|t| t.target_group == tg).map(|t| (i, t)))
                    .filter(|(_, t)| t.state.is_registered())
                    .collect();
                let total = members.len() as u64;
                let healthy = |book: &RemediationBook| members.iter()
                    .filter(|(i, t)| t.state == TargetState::Healthy
                        && !book.in_flight_for(&i.id).is_some_and(Remediation::past_deregistration))
                    .count() as u64;
                let (before, after) = (healthy(p.before), healthy(p.after));
                let min = u64::from(p.engine.config().defaults().min_healthy_percent);
                if after < before {
                    prop_assert!(after * 100 >= min * total,
                        "{tg}: healthy {before} -> {after} of {total}, under {min}%");
                }
                if before == 0 {
                    let removed = p.plan.executable().any(|(_, a)| matches!(a,
                        Action::Deregister { target_groups } if target_groups.contains(&tg)));
                    prop_assert!(!removed, "{tg}: deregistered from a group with no healthy target");
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn no_destructive_decision_while_the_brake_holds(s in scenario()) {
        drive(&s, |p| {
            for asg in p.fleet.asgs() {
                let g = p.guardrails(&asg);
                let brakes = p.engine.brakes(p.fleet, &asg, p.now);
                // An independent, narrower reading: instances plainly bad right now.
                let counted: Vec<_> = p.fleet.in_asg(&asg)
                    .filter(|i| i.asg_instance.as_ref().is_some_and(|a| a.lifecycle == Lifecycle::InService))
                    .filter(|i| p.now.since(i.launched_at) >= g.startup_grace)
                    .collect();
                let bad = counted.iter().filter(|i| {
                    let heard = i.agent.as_ref().map_or(i.launched_at, |a| a.last_heartbeat);
                    p.now.since(heard) > Duration::from_secs(90)
                        || i.agent.as_ref().is_some_and(|a| a.escalation.is_some())
                        || i.targets.iter().any(|t| t.state.is_failing())
                }).count() as u64;
                let oracle = bad >= u64::from(g.brake_min_instances)
                    && bad * 100 > u64::from(g.anomaly_percent) * counted.len() as u64;
                if oracle {
                    prop_assert!(!brakes.is_empty(), "{asg}: {bad} of {} bad but no brake", counted.len());
                }
                if !brakes.is_empty() {
                    let acted: Vec<_> = p.acts().filter(|(_, a, _)| **a == asg).collect();
                    prop_assert!(acted.is_empty(), "{asg} braked ({brakes:?}) yet decided {acted:?}");
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn no_destructive_decision_in_grace_or_outside_in_service(s in scenario()) {
        drive(&s, |p| {
            for (id, asg, action) in p.acts() {
                let inst = p.fleet.instance(id).expect("acted-on instance is in the fleet");
                let lifecycle = inst.asg_instance.as_ref().map(|a| a.lifecycle.clone());
                prop_assert_eq!(lifecycle, Some(Lifecycle::InService), "{} {:?}", id, action);
                prop_assert!(!inst.skipped, "{} skipped", id);
                prop_assert!(p.fleet.pause.is_none(), "paused");
                let starting = p.before.in_flight_for(id).is_none();
                if starting {
                    let age = p.now.since(inst.launched_at);
                    prop_assert!(age >= p.guardrails(asg).startup_grace,
                        "{} started {:?} at age {:?}", id, action, age);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn cooldowns_are_respected(s in scenario()) {
        drive(&s, |p| {
            let mut started_in: BTreeMap<&AsgName, usize> = BTreeMap::new();
            for (id, asg, _) in p.starts() {
                let g = p.guardrails(asg);
                for ((inst, started), r) in p.history {
                    if *started == p.now && inst == id {
                        continue; // the remediation this decision started
                    }
                    if inst == id && let Some(ended) = r.finished_at() {
                        prop_assert!(p.now.since(ended) >= g.instance_cooldown,
                            "{id} restarted {:?} after its last remediation ended", p.now.since(ended));
                    }
                    if &r.asg == asg && r.started_at < p.now {
                        let last = r.finished_at().unwrap_or(r.started_at);
                        prop_assert!(p.now.since(last) >= g.asg_cooldown,
                            "{asg}: start {:?} after the last activity", p.now.since(last));
                    }
                }
                *started_in.entry(asg).or_default() += 1;
                if !g.asg_cooldown.is_zero() {
                    prop_assert!(started_in[asg] <= 1, "{asg}: two starts in one pass");
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn one_instance_never_has_two_remediations_at_once(s in scenario()) {
        drive(&s, |p| {
            let mut seen = BTreeSet::new();
            for (id, _, _) in p.acts() {
                prop_assert!(seen.insert(id.clone()), "{id} got two actions in one pass");
                if let Some(r) = p.before.in_flight_for(id) {
                    let now = p.after.get(id).expect("still recorded");
                    prop_assert_eq!(now.started_at, r.started_at, "{} restarted mid-remediation", id);
                }
            }
            // No two remediations of one instance overlap in time.
            let mut by_instance: BTreeMap<&InstanceId, Vec<&Remediation>> = BTreeMap::new();
            for ((id, _), r) in p.history {
                by_instance.entry(id).or_default().push(r);
            }
            for (id, rs) in by_instance {
                for pair in rs.windows(2) {
                    let ended = pair[0].finished_at();
                    prop_assert!(ended.is_some_and(|e| e <= pair[1].started_at),
                        "{id}: remediation started at {} while the one from {} was in flight",
                        pair[1].started_at, pair[0].started_at);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn dry_run_never_emits_an_action(s in scenario()) {
        drive(&s, |p| {
            for d in &p.plan.decisions {
                if p.guardrails(&d.asg).dry_run {
                    prop_assert!(d.executable().is_none(), "dry-run {} got {:?}", d.instance, d.kind);
                    prop_assert!(d.dry_run);
                }
            }
            for asg in p.fleet.asgs().into_iter().chain(p.before.iter().map(|r| r.asg.clone())) {
                if p.guardrails(&asg).dry_run {
                    let before: Vec<_> = p.before.iter().filter(|r| r.asg == asg).collect();
                    let after: Vec<_> = p.after.iter().filter(|r| r.asg == asg).collect();
                    prop_assert_eq!(before, after, "dry-run changed the book of {}", asg);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn no_remediation_starts_for_a_flapping_instance(s in scenario()) {
        drive(&s, |p| {
            for (id, asg, action) in p.starts() {
                let g = p.guardrails(asg);
                let inst = p.fleet.instance(id).expect("started instance is in the fleet");
                let flips = inst.health_changes.iter()
                    .filter(|t| p.now.since(**t) <= g.flap_window)
                    .count() as u32;
                prop_assert!(flips < g.flap_transitions,
                    "{} started {:?} after {} flips within {:?}; limit {}",
                    id, action, flips, g.flap_window, g.flap_transitions);
            }
            Ok(())
        })?;
    }

    #[test]
    fn no_destructive_decision_for_an_instance_reporting_a_shared_dependency(s in scenario()) {
        drive(&s, |p| {
            for (id, _, action) in p.acts() {
                let inst = p.fleet.instance(id).expect("acted-on instance is in the fleet");
                let deps = inst.agent.as_ref().map(|a| a.failing_dependencies.clone()).unwrap_or_default();
                prop_assert!(deps.is_empty(), "{} decided {:?} while reporting {:?} failing", id, action, deps);
            }
            Ok(())
        })?;
    }

    #[test]
    fn the_dependency_brake_engages_exactly_at_its_threshold(s in scenario()) {
        drive(&s, |p| {
            for asg in p.fleet.asgs() {
                let g = p.guardrails(&asg);
                let counted: Vec<_> = p.fleet.in_asg(&asg)
                    .filter(|i| i.asg_instance.as_ref().is_some_and(|a| a.lifecycle == Lifecycle::InService))
                    .filter(|i| p.now.since(i.launched_at) >= g.startup_grace)
                    .collect();
                let total = counted.len() as u64;
                let expected: BTreeSet<String> = DEPS.iter()
                    .map(|d| (*d).to_owned())
                    .filter(|d| {
                        let naming = counted.iter()
                            .filter(|i| i.agent.as_ref().is_some_and(|a| a.failing_dependencies.contains(d)))
                            .count() as u64;
                        naming >= u64::from(g.brake_min_instances)
                            && naming * 100 >= u64::from(g.dependency_percent) * total
                    })
                    .collect();
                let braked: BTreeSet<String> = p.engine.brakes(p.fleet, &asg, p.now).into_iter()
                    .filter_map(|b| match b {
                        Guardrail::DependencyBrake { dependency, .. } => Some(dependency),
                        _ => None,
                    })
                    .collect();
                prop_assert_eq!(braked, expected, "{}", asg);
            }
            Ok(())
        })?;
    }

    #[test]
    fn the_anomaly_brake_engages_for_a_bad_az(s in scenario()) {
        drive(&s, |p| {
            for asg in p.fleet.asgs() {
                let g = p.guardrails(&asg);
                let brakes = p.engine.brakes(p.fleet, &asg, p.now);
                for az in AZS {
                    // An independent, narrower reading: instances of the AZ plainly bad right now.
                    let counted: Vec<_> = p.fleet.in_asg(&asg)
                        .filter(|i| i.az.as_str() == az)
                        .filter(|i| i.asg_instance.as_ref().is_some_and(|a| a.lifecycle == Lifecycle::InService))
                        .filter(|i| p.now.since(i.launched_at) >= g.startup_grace)
                        .collect();
                    let bad = counted.iter().filter(|i| {
                        let heard = i.agent.as_ref().map_or(i.launched_at, |a| a.last_heartbeat);
                        p.now.since(heard) > Duration::from_secs(90)
                            || i.agent.as_ref().is_some_and(|a| a.escalation.is_some())
                            || i.targets.iter().any(|t| t.state.is_failing())
                    }).count() as u64;
                    let oracle = bad >= u64::from(g.brake_min_instances)
                        && bad * 100 > u64::from(g.anomaly_percent) * counted.len() as u64;
                    if oracle {
                        let engaged = brakes.iter().any(|b| matches!(b,
                            Guardrail::AnomalyBrake { scope: BrakeScope::Az { az: a, .. }, .. } if a.as_str() == az));
                        prop_assert!(engaged, "{asg}/{az}: {bad} of {} bad but no AZ brake", counted.len());
                    }
                }
                let alerted: Vec<_> = p.plan.fleet_alerts.iter()
                    .filter(|a| a.asg == asg)
                    .map(|a| a.guardrail.clone())
                    .collect();
                prop_assert_eq!(alerted, brakes, "{}: fleet alerts are the brakes", asg);
            }
            Ok(())
        })?;
    }

    #[test]
    fn every_hold_names_the_guardrails_that_hold_it(s in scenario()) {
        drive(&s, |p| {
            for d in &p.plan.decisions {
                if let DecisionKind::Hold { action, held_by } = &d.kind {
                    prop_assert!(!held_by.is_empty(), "{} {:?} held by nothing", d.instance, action);
                    for g in held_by {
                        prop_assert!(d.reason.contains(&g.reason()),
                            "{}: reason {:?} does not say {:?}", d.instance, d.reason, g.reason());
                    }
                    let requested = p.after.in_flight_for(&d.instance).is_some_and(|r| r.stage_since == p.now
                        && matches!(r.stage, Stage::Requested { step, .. } if step == action.step()));
                    prop_assert!(!requested, "{}: held {:?} yet requested in the book", d.instance, action);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn deciding_on_one_reading_per_pass_is_deciding(s in scenario()) {
        drive(&s, |p| {
            // The simulation decides the way the coordinator should: one assess_fleet, then
            // decide_assessed. Plain decide on the same inputs must agree, book included.
            let mut book = p.before.clone();
            let plan = p.engine.decide(p.fleet, &mut book, p.now);
            prop_assert_eq!(&plan, p.plan);
            prop_assert_eq!(&book, p.after);
            // Readings from another moment are not trusted.
            let stale = p.engine.assess_fleet(p.fleet, p.now - Duration::from_secs(3600));
            let mut book = p.before.clone();
            let plan = p.engine.decide_assessed(p.fleet, &stale, &mut book, p.now);
            prop_assert_eq!(&plan, p.plan);
            Ok(())
        })?;
    }

    #[test]
    fn never_a_destructive_step_on_a_scale_in_protected_instance(s in scenario()) {
        drive(&s, |p| {
            for (id, _, action) in p.acts() {
                let inst = p.fleet.instance(id).expect("acted-on instance is in the fleet");
                let protected = inst.asg_instance.as_ref().is_some_and(|a| a.protected);
                prop_assert!(matches!(action, Action::SsmRemediate) || !protected,
                    "{} {:?} while protected from scale-in", id, action);
            }
            Ok(())
        })?;
    }

    #[test]
    fn never_a_destructive_step_during_an_instance_refresh(s in scenario()) {
        drive(&s, |p| {
            for (id, _, action) in p.acts() {
                let inst = p.fleet.instance(id).expect("acted-on instance is in the fleet");
                let refresh = inst.asg_instance.as_ref().and_then(|a| a.group.refresh.clone());
                prop_assert!(matches!(action, Action::SsmRemediate) || refresh.is_none(),
                    "{} {:?} during refresh {:?}", id, action, refresh);
            }
            Ok(())
        })?;
    }

    #[test]
    fn never_out_of_traffic_where_the_asg_cannot_replace(s in scenario()) {
        drive(&s, |p| {
            for (id, _, action) in p.acts() {
                let inst = p.fleet.instance(id).expect("acted-on instance is in the fleet");
                let group = inst.asg_instance.as_ref().map(|a| a.group.clone()).unwrap_or_default();
                prop_assert!(matches!(action, Action::SsmRemediate) || group.can_replace(),
                    "{} {:?} with {:?} suspended", id, action, group.suspended);
            }
            Ok(())
        })?;
    }

    #[test]
    fn an_instance_the_asg_already_holds_unhealthy_is_not_marked_again(s in scenario()) {
        drive(&s, |p| {
            for (id, _, action) in p.acts() {
                let inst = p.fleet.instance(id).expect("acted-on instance is in the fleet");
                let a = inst.asg_instance.as_ref().expect("in service, so the ASG reported it");
                prop_assert!(!(matches!(action, Action::Replace)
                    && a.health == AsgHealth::Unhealthy
                    && a.group.replaces_unhealthy()),
                    "{} marked unhealthy again", id);
            }
            Ok(())
        })?;
    }

    #[test]
    fn no_remediation_starts_inside_the_asg_health_check_grace(s in scenario()) {
        drive(&s, |p| {
            for (id, _, action) in p.starts() {
                let inst = p.fleet.instance(id).expect("acted-on instance is in the fleet");
                let grace = inst.asg_instance.as_ref().map(|a| a.group.health_check_grace)
                    .unwrap_or_default();
                let age = p.now.since(inst.launched_at);
                prop_assert!(age >= grace, "{} started {:?} at age {:?} in grace {:?}",
                    id, action, age, grace);
            }
            Ok(())
        })?;
    }
}
