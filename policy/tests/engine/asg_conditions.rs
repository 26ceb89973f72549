//! What the ASG itself is doing holds autoheal's steps: suspended processes, an instance refresh,
//! its own health check grace, an instance it already holds unhealthy, standby and detaching.

use autoheal_policy::{
    Action, AsgHealth, Config, DecisionKind, Lifecycle, RawConfig, ScalingProcess, Step,
};

use crate::support::{Sim, held_by, id, only, secs};

fn sim(tgs: &[&str]) -> Sim {
    let mut raw = RawConfig::default();
    raw.guardrails.asg_cooldown = secs(0);
    let mut sim = Sim::new(Config::try_new(raw).expect("valid test config"));
    sim.add_group("web", 6, &["a", "b"], tgs);
    sim
}

fn suspend(sim: &mut Sim, processes: &[ScalingProcess]) {
    for inst in &mut sim.fleet.instances {
        let a = inst.asg_instance.as_mut().expect("asg view");
        a.group.suspended = processes.iter().cloned().collect();
    }
}

#[test]
fn launch_or_terminate_suspended_holds_and_names_the_processes() {
    for suspended in [
        vec![ScalingProcess::Launch],
        vec![ScalingProcess::Terminate, ScalingProcess::ReplaceUnhealthy],
    ] {
        let mut sim = sim(&["tg"]);
        suspend(&mut sim, &suspended);
        sim.escalate("web-0", "api");
        sim.advance(secs(5));
        let plan = sim.decide();
        let d = only(&plan, "web-0");
        assert!(
            matches!(d.kind, DecisionKind::Hold { .. }),
            "{suspended:?}: {d:?}"
        );
        assert_eq!(held_by(d), vec!["processes_suspended"]);
        assert!(d.reason.contains("nothing would replace"), "{}", d.reason);
        assert!(d.reason.contains(&suspended[0].to_string()), "{}", d.reason);
        assert!(sim.book.in_flight_for(&id("web-0")).is_none());
    }
}

#[test]
fn replace_unhealthy_alone_suspended_still_acts_through_terminate() {
    let mut sim = sim(&[]);
    suspend(&mut sim, &[ScalingProcess::ReplaceUnhealthy]);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert!(matches!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Replace)
    ));
}

#[test]
fn suspension_lets_ssm_through() {
    let mut sim = sim(&["tg"]);
    suspend(&mut sim, &[ScalingProcess::Launch]);
    let what = sim
        .engine
        .what_if(&sim.fleet, &sim.book, &id("web-0"), Step::Ssm, sim.now)
        .expect("known instance");
    assert!(what.allowed, "{what:?}");
}

#[test]
fn an_instance_refresh_holds_destructive_steps_and_what_if_says_so() {
    let mut sim = sim(&["tg"]);
    for inst in &mut sim.fleet.instances {
        inst.asg_instance.as_mut().expect("asg view").group.refresh = Some("InProgress".into());
    }
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(held_by(d), vec!["instance_refresh"]);
    assert!(
        d.reason.contains("instance refresh InProgress"),
        "{}",
        d.reason
    );
    let status = sim.engine.fleet_guardrails(
        &sim.fleet,
        &sim.book,
        &autoheal_policy::AsgName::from("web"),
        sim.now,
    );
    assert!(
        status.iter().any(|g| g.name() == "instance_refresh"),
        "{status:?}"
    );
    let what = sim
        .engine
        .what_if(&sim.fleet, &sim.book, &id("web-1"), Step::Replace, sim.now)
        .expect("known instance");
    assert!(!what.allowed);
    assert!(
        what.held_by.iter().any(|g| g.name() == "instance_refresh"),
        "{what:?}"
    );
}

#[test]
fn a_refresh_that_starts_mid_remediation_holds_the_next_step() {
    let mut sim = sim(&["tg"]);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert!(matches!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Deregister { .. })
    ));
    sim.execute(&plan, crate::support::Answer::Succeed);
    for inst in &mut sim.fleet.instances {
        inst.asg_instance.as_mut().expect("asg view").group.refresh = Some("Pending".into());
    }
    sim.drain("web-0");
    sim.advance(secs(5));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert!(
        matches!(
            d.kind,
            DecisionKind::Hold {
                action: Action::Replace,
                ..
            }
        ),
        "{d:?}"
    );
    assert_eq!(held_by(d), vec!["instance_refresh"]);
}

#[test]
fn the_asg_health_check_grace_extends_startup_grace() {
    let mut sim = sim(&[]);
    // Launched 10 min ago: past autoheal's 5 min startup grace, inside the ASG's 15 min.
    let now = sim.now;
    let inst = sim.inst_mut("web-0");
    inst.launched_at = now - secs(600);
    inst.asg_instance
        .as_mut()
        .expect("asg view")
        .group
        .health_check_grace = secs(900);
    sim.escalate("web-0", "api");
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(held_by(d), vec!["startup_grace"]);
    assert!(d.reason.contains("grace 15m"), "{}", d.reason);
    sim.advance(secs(301));
    let plan = sim.decide();
    assert!(matches!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Replace)
    ));
}

#[test]
fn an_instance_the_asg_holds_unhealthy_is_not_marked_again() {
    let mut sim = sim(&[]);
    sim.inst_mut("web-0")
        .asg_instance
        .as_mut()
        .expect("asg view")
        .health = AsgHealth::Unhealthy;
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert_eq!(held_by(only(&plan, "web-0")), vec!["already_unhealthy"]);
    // Where the ASG won't replace unhealthy instances, terminate mode still can.
    suspend(&mut sim, &[ScalingProcess::ReplaceUnhealthy]);
    let plan = sim.decide();
    assert!(matches!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Replace)
    ));
}

#[test]
fn standby_and_detaching_instances_are_never_acted_on() {
    for state in [
        Lifecycle::Standby,
        Lifecycle::Detaching,
        Lifecycle::from_aws("EnteringStandby"),
        Lifecycle::from_aws("Detached"),
    ] {
        let mut sim = sim(&["tg"]);
        sim.inst_mut("web-0")
            .asg_instance
            .as_mut()
            .expect("asg view")
            .lifecycle = state.clone();
        sim.escalate("web-0", "api");
        sim.advance(secs(5));
        let plan = sim.decide();
        let d = only(&plan, "web-0");
        assert_eq!(held_by(d), vec!["lifecycle"], "{state}: {d:?}");
        for step in [Step::Ssm, Step::Deregister, Step::Replace] {
            let what = sim
                .engine
                .what_if(&sim.fleet, &sim.book, &id("web-0"), step, sim.now)
                .expect("known instance");
            assert!(!what.allowed, "{state} {step:?}");
        }
    }
}

#[test]
fn a_scale_in_protected_instance_is_held_unless_the_asg_allows_it() {
    let mut sim = sim(&["tg"]);
    sim.inst_mut("web-0")
        .asg_instance
        .as_mut()
        .expect("asg view")
        .protected = true;
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(held_by(d), vec!["scale_in_protected"]);
    assert!(d.reason.contains("replace_protected"), "{}", d.reason);

    let mut raw = RawConfig::default();
    raw.guardrails.asg_cooldown = secs(0);
    raw.asg.insert(
        "web".into(),
        autoheal_policy::GuardrailOverride {
            replace_protected: Some(true),
            ..Default::default()
        },
    );
    sim.engine = autoheal_policy::Engine::new(Config::try_new(raw).expect("valid"));
    let plan = sim.decide();
    assert!(matches!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Deregister { .. })
    ));
}
