//! Each guardrail holding a destructive step, and the what-if answers that name it.

use autoheal_policy::{
    Action, BrakeScope, Config, DecisionKind, Guardrail, GuardrailConfig, Lifecycle, Pause,
    PolicyError, RawConfig, Step, TargetState,
};

use crate::support::{Answer, Sim, held_by, id, only, secs};

fn config(edit: impl FnOnce(&mut GuardrailConfig)) -> Config {
    let mut raw = RawConfig::default();
    edit(&mut raw.guardrails);
    Config::try_new(raw).expect("valid test config")
}

#[test]
fn max_concurrent_lets_one_start_and_holds_the_next() {
    let mut sim = Sim::new(config(|g| g.asg_cooldown = secs(0)));
    sim.add_group("web", 10, &["a", "b"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.escalate("web-1", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert!(matches!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Deregister { .. })
    ));
    let held = only(&plan, "web-1");
    assert_eq!(held_by(held), vec!["max_concurrent"]);
    assert!(
        held.reason
            .contains("1 remediation(s) in flight in asg web; limit 1"),
        "{}",
        held.reason
    );
}

#[test]
fn max_concurrent_percent_is_the_stricter_limit() {
    let mut sim = Sim::new(config(|g| {
        g.max_concurrent = 5;
        g.max_concurrent_percent = 20;
        g.asg_cooldown = secs(0);
    }));
    sim.add_group("web", 10, &["a", "b"], &["tg"]);
    assert_eq!(
        sim.engine
            .concurrency_limit(&sim.fleet, &autoheal_policy::AsgName::from("web")),
        2
    );
}

#[test]
fn asg_cooldown_spaces_starts_in_a_group() {
    let mut sim = Sim::new(config(|g| g.max_concurrent = 3));
    sim.add_group("web", 30, &["a", "b"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.escalate("web-1", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert!(only(&plan, "web-0").executable().is_some());
    assert_eq!(held_by(only(&plan, "web-1")), vec!["asg_cooldown"]);
    sim.execute(&plan, Answer::Succeed);
    sim.advance(secs(300));
    let plan = sim.decide();
    assert!(only(&plan, "web-1").executable().is_some(), "{plan:#?}");
}

#[test]
fn min_healthy_holds_a_deregistration_that_would_cross_the_floor() {
    let mut sim = Sim::new(config(|g| {
        g.max_concurrent = 3;
        g.max_concurrent_percent = 100;
        g.asg_cooldown = secs(0);
        g.anomaly_percent = 100;
    }));
    sim.add_group("web", 3, &["a"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.escalate("web-1", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert!(only(&plan, "web-0").executable().is_some());
    let held = only(&plan, "web-1");
    assert_eq!(held_by(held), vec!["min_healthy"]);
    assert!(
        held.reason
            .contains("target group tg would have 1 of 3 targets healthy (33%); minimum 66%"),
        "{}",
        held.reason
    );
}

#[test]
fn min_healthy_lets_a_failing_target_go_but_not_the_last_ones_when_the_alb_fails_open() {
    let mut sim = Sim::new(config(|g| {
        g.anomaly_percent = 100;
        g.dependency_percent = 100;
    }));
    sim.add_group("web", 2, &["a"], &["tg"]);
    // One of two failing: removing it costs no capacity even though 1 of 2 is under 66 %.
    sim.escalate("web-0", "api");
    sim.set_alb("web-0", TargetState::Unhealthy);
    sim.advance(secs(5));
    let plan = sim.decide();
    assert!(only(&plan, "web-0").executable().is_some(), "{plan:#?}");

    // Both failing: the ALB fails open and both may be serving; hold.
    let mut sim = Sim::new(config(|g| {
        g.anomaly_percent = 100;
    }));
    sim.add_group("web", 2, &["a"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.set_alb("web-0", TargetState::Unhealthy);
    sim.set_alb("web-1", TargetState::Unhealthy);
    sim.advance(secs(5));
    let plan = sim.decide();
    let held = only(&plan, "web-0");
    assert_eq!(held_by(held), vec!["min_healthy"]);
    assert!(held.reason.contains("fails open"), "{}", held.reason);
}

#[test]
fn startup_grace_holds_new_instances() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a"], &["tg"]);
    let now = sim.now;
    sim.inst_mut("web-0").launched_at = now - secs(60);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let d = sim.decide();
    let held = only(&d, "web-0");
    assert_eq!(held_by(held), vec!["startup_grace"]);
    assert!(
        held.reason.contains("launched 1m5s ago; grace 5m"),
        "{}",
        held.reason
    );
}

#[test]
fn non_in_service_lifecycle_states_hold_every_step() {
    for state in [
        Lifecycle::Pending,
        Lifecycle::Terminating,
        Lifecycle::Standby,
        Lifecycle::Detaching,
    ] {
        let mut sim = Sim::new(Config::default());
        sim.add_group("web", 10, &["a"], &["tg"]);
        sim.inst_mut("web-0")
            .asg_instance
            .as_mut()
            .expect("asg view")
            .lifecycle = state.clone();
        sim.escalate("web-0", "api");
        sim.advance(secs(5));
        let plan = sim.decide();
        let held = only(&plan, "web-0");
        assert_eq!(held_by(held), vec!["lifecycle"], "{state}");
        assert!(
            held.reason.contains(&format!("is {state}")),
            "{}",
            held.reason
        );
    }
}

#[test]
fn unknown_asg_view_holds_like_a_lifecycle_state() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a"], &["tg"]);
    sim.inst_mut("web-0").asg_instance = None;
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    assert_eq!(held_by(only(&sim.decide(), "web-0")), vec!["lifecycle"]);
}

#[test]
fn pause_and_skip_hold_and_say_who_and_why() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a"], &["tg"]);
    sim.fleet.pause = Some(Pause {
        by: "alice".into(),
        reason: "database migration".into(),
        since: sim.now,
    });
    sim.inst_mut("web-0").skipped = true;
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    let held = only(&plan, "web-0");
    assert_eq!(held_by(held), vec!["paused", "skipped"]);
    assert!(
        held.reason.contains("paused by alice: database migration"),
        "{}",
        held.reason
    );
}

#[test]
fn flapping_instance_is_quarantined() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a"], &["tg"]);
    let now = sim.now;
    sim.inst_mut("web-0").health_changes = (1..=6).map(|k| now - secs(60 * k)).collect();
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert_eq!(held_by(only(&plan, "web-0")), vec!["flap_quarantine"]);
}

#[test]
fn shared_dependency_named_by_the_agent_is_never_the_instance_fault() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.fail_dependency("web-0", "postgres-main");
    sim.advance(secs(5));
    let plan = sim.decide();
    let held = only(&plan, "web-0");
    assert_eq!(held_by(held), vec!["shared_dependency"]);
    assert!(held.reason.contains("postgres-main"), "{}", held.reason);
}

#[test]
fn held_step_in_flight_resumes_when_the_guardrail_lets_go() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Succeed);
    sim.drain("web-0");
    sim.fleet.pause = Some(Pause {
        by: "bob".into(),
        reason: "incident".into(),
        since: sim.now,
    });
    sim.advance(secs(5));
    let plan = sim.decide();
    assert_eq!(held_by(only(&plan, "web-0")), vec!["paused"]);
    sim.fleet.pause = None;
    sim.advance(secs(5));
    let plan = sim.decide();
    assert_eq!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Replace)
    );
}

#[test]
fn what_if_names_every_guardrail_that_holds() {
    let mut raw = RawConfig::default();
    raw.guardrails.dry_run = true;
    let mut sim = Sim::new(Config::try_new(raw).expect("valid"));
    sim.add_group("web", 10, &["a"], &["tg"]);
    sim.inst_mut("web-0").skipped = true;
    let now = sim.now;
    sim.inst_mut("web-0").launched_at = now - secs(10);
    let answer = sim
        .engine
        .what_if(&sim.fleet, &sim.book, &id("web-0"), Step::Replace, sim.now)
        .expect("known instance");
    assert!(!answer.allowed);
    let names: Vec<_> = answer.held_by.iter().map(Guardrail::name).collect();
    assert_eq!(names, vec!["skipped", "startup_grace", "dry_run"]);

    let answer = sim
        .engine
        .what_if(&sim.fleet, &sim.book, &id("web-1"), Step::Ssm, sim.now)
        .expect("known instance");
    assert_eq!(
        answer
            .held_by
            .iter()
            .map(Guardrail::name)
            .collect::<Vec<_>>(),
        vec!["dry_run"]
    );
}

#[test]
fn what_if_allows_a_step_no_guardrail_holds() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a"], &["tg"]);
    let answer = sim
        .engine
        .what_if(
            &sim.fleet,
            &sim.book,
            &id("web-3"),
            Step::Deregister,
            sim.now,
        )
        .expect("known instance");
    assert!(answer.allowed, "{answer:#?}");
    assert!(answer.held_by.is_empty());
}

#[test]
fn what_if_on_an_unknown_instance_says_so() {
    let sim = Sim::new(Config::default());
    let err = sim
        .engine
        .what_if(&sim.fleet, &sim.book, &id("i-nope"), Step::Replace, sim.now)
        .expect_err("unknown");
    assert_eq!(err, PolicyError::UnknownInstance(id("i-nope")));
}

#[test]
fn fleet_guardrails_show_the_brake_and_cooldown_for_an_asg() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a", "b"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Succeed);
    for k in 1..5 {
        sim.set_alb(&format!("web-{k}"), TargetState::Unhealthy);
    }
    sim.advance(secs(5));
    let web = autoheal_policy::AsgName::from("web");
    let held = sim
        .engine
        .fleet_guardrails(&sim.fleet, &sim.book, &web, sim.now);
    let names: Vec<_> = held.iter().map(Guardrail::name).collect();
    assert!(names.contains(&"anomaly_brake"), "{names:?}");
    assert!(names.contains(&"asg_cooldown"), "{names:?}");
    assert!(names.contains(&"max_concurrent"), "{names:?}");
    assert!(held.iter().any(|g| matches!(
        g,
        Guardrail::AnomalyBrake {
            scope: BrakeScope::Asg(_),
            bad: 5,
            total: 10,
            ..
        }
    )));
}

#[test]
fn anomaly_brake_holds_a_remediation_already_in_flight() {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", 10, &["a", "b"], &["tg"]);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Succeed);
    sim.drain("web-0");
    for k in 1..5 {
        sim.silence(&format!("web-{k}"));
        sim.set_alb(&format!("web-{k}"), TargetState::Unhealthy);
    }
    sim.advance(secs(100));
    let plan = sim.decide();
    let held = held_by(only(&plan, "web-0"));
    assert!(held.contains(&"anomaly_brake"), "{held:?}");
    assert!(!plan.fleet_alerts.is_empty());
}
