//! The three classic disasters. Each runs the full loop (decide, carry out, drain) for an hour of
//! simulated time; none may lead to a replacement.

use autoheal_policy::{Action, BrakeScope, Config, DecisionKind, Guardrail, TargetState};

use crate::support::{Sim, secs};

fn replacements(sim: &Sim) -> usize {
    sim.acted()
        .iter()
        .filter(|(_, a)| matches!(a, Action::Replace))
        .count()
}

fn traffic_removals(sim: &Sim) -> usize {
    sim.acted()
        .iter()
        .filter(|(_, a)| matches!(a, Action::Deregister { .. } | Action::Replace))
        .count()
}

fn brakes_alerted(sim: &Sim) -> bool {
    // The brake shows as a hold naming it on the instances the ladder wanted to act on.
    sim.log.iter().any(|(_, d)| match &d.kind {
        DecisionKind::Hold { held_by, .. } => held_by.iter().any(Guardrail::is_brake),
        _ => false,
    })
}

#[test]
fn shared_database_outage_leads_to_no_replacement() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a", "b", "c"], &["tg-http"]);
    // 8 of 10 lose the database, a few seconds apart; their ALB checks fail (the health endpoint
    // touches the database) and, after the agents' own restarts fail, they escalate too.
    for k in 0..8 {
        let i = format!("web-{k}");
        sim.fail_dependency(&i, "postgres-main");
        sim.set_alb(&i, TargetState::Unhealthy);
        sim.advance(secs(3));
    }
    sim.run(secs(120), secs(10));
    for k in 0..8 {
        sim.escalate(&format!("web-{k}"), "api");
    }
    sim.run(secs(3600), secs(10));

    assert_eq!(traffic_removals(&sim), 0, "{:#?}", sim.acted());
    assert!(sim.acted().is_empty(), "not even SSM: {:#?}", sim.acted());
    let plan = sim.decide();
    assert!(
        plan.fleet_alerts.iter().any(|a| matches!(
            &a.guardrail,
            Guardrail::DependencyBrake { dependency, naming: 8, total: 10, .. } if dependency == "postgres-main"
        )),
        "{:#?}",
        plan.fleet_alerts
    );
}

#[test]
fn shared_outage_without_named_dependency_is_stopped_by_the_anomaly_brake() {
    // Same outage, but the checks do not name the dependency: the anomaly brake must catch it.
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a", "b", "c"], &["tg-http"]);
    sim.set_alb("web-0", TargetState::Unhealthy);
    sim.set_alb("web-1", TargetState::Unhealthy);
    sim.advance(secs(10));
    for k in 0..8 {
        sim.escalate(&format!("web-{k}"), "api");
        sim.set_alb(&format!("web-{k}"), TargetState::Unhealthy);
    }
    sim.run(secs(3600), secs(10));
    assert_eq!(replacements(&sim), 0, "{:#?}", sim.acted());
    assert_eq!(traffic_removals(&sim), 0, "{:#?}", sim.acted());
    assert!(brakes_alerted(&sim));
}

#[test]
fn az_outage_leads_to_no_replacement() {
    // 12 instances over 4 AZs: losing one AZ is 25 % of the group, under the group brake, so the
    // per-AZ brake has to hold it.
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 12, &["a", "b", "c", "d"], &["tg-http"]);
    let in_a: Vec<String> = sim
        .fleet
        .instances
        .iter()
        .filter(|i| i.az.as_str() == "a")
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(in_a.len(), 3);
    for i in &in_a {
        sim.silence(i);
        sim.set_alb(i, TargetState::Unavailable);
        sim.advance(secs(2));
    }
    sim.run(secs(3600), secs(10));

    assert_eq!(replacements(&sim), 0, "{:#?}", sim.acted());
    assert_eq!(traffic_removals(&sim), 0, "{:#?}", sim.acted());
    let plan = sim.decide();
    assert!(
        plan.fleet_alerts.iter().any(|a| matches!(
            &a.guardrail,
            Guardrail::AnomalyBrake { scope: BrakeScope::Az { az, .. }, bad: 3, total: 3, .. } if az.as_str() == "a"
        )),
        "{:#?}",
        plan.fleet_alerts
    );
    assert!(
        !plan.fleet_alerts.iter().any(|a| matches!(
            &a.guardrail,
            Guardrail::AnomalyBrake {
                scope: BrakeScope::Asg(_),
                ..
            }
        )),
        "3 of 12 is under the group limit: {:#?}",
        plan.fleet_alerts
    );
}

#[test]
fn az_outage_without_the_brake_would_replace_instances() {
    // Control for the test above: with the brakes off the same outage runs the ladder to
    // replacement, so the test above passes because of the brake, not by accident.
    let mut raw = autoheal_policy::RawConfig::default();
    raw.guardrails.anomaly_percent = 100;
    raw.guardrails.min_healthy_percent = 0;
    let mut sim = Sim::new(Config::try_new(raw).expect("valid"));
    sim.add_group("web", 12, &["a", "b", "c", "d"], &["tg-http"]);
    for i in ["web-0", "web-4", "web-8"] {
        sim.silence(i);
        sim.set_alb(i, TargetState::Unavailable);
    }
    sim.run(secs(3600), secs(10));
    assert!(replacements(&sim) > 0, "{:#?}", sim.acted());
}

#[test]
fn network_partition_leads_to_no_action_at_all() {
    // Coordinator cut off from the fleet: every agent silent at once, the ALB still healthy.
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a", "b", "c"], &["tg-http"]);
    sim.add_group("api", 6, &["a", "b"], &["tg-api"]);
    let all: Vec<String> = sim
        .fleet
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    for i in &all {
        sim.silence(i);
    }
    sim.run(secs(3600), secs(10));

    assert!(sim.acted().is_empty(), "{:#?}", sim.acted());
    let plan = sim.decide();
    assert_eq!(
        plan.decisions
            .iter()
            .filter(|d| matches!(
                d.kind,
                DecisionKind::Alert(autoheal_policy::Alert::AgentLost { .. })
            ))
            .count(),
        16,
        "every instance alerts agent lost: {plan:#?}"
    );
    assert!(
        plan.fleet_alerts
            .iter()
            .any(|a| matches!(a.guardrail, Guardrail::AnomalyBrake { .. })),
        "the partition also engages the brake: {:#?}",
        plan.fleet_alerts
    );
}

#[test]
fn partition_that_also_fails_alb_checks_is_braked() {
    // Worse partition: the ALB loses the fleet too (e.g. a security group change). Silence plus
    // failing ALB is the SSM rung for one instance, but not for the whole group.
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a", "b", "c"], &["tg-http"]);
    let all: Vec<String> = sim
        .fleet
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    for i in &all {
        sim.silence(i);
        sim.set_alb(i, TargetState::Unhealthy);
    }
    sim.run(secs(3600), secs(10));
    assert!(sim.acted().is_empty(), "{:#?}", sim.acted());
    assert!(brakes_alerted(&sim));
}
