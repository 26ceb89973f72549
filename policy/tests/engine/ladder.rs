//! Every rung of the decision ladder, with a simulated clock.

use std::time::Duration;

use autoheal_policy::{
    Action, Alert, Cause, Config, DecisionKind, Ending, GuardrailOverride, Outcome, RawConfig,
    Stage, Step, TargetGroup, TargetState, Waiting,
};

use crate::support::{Answer, Sim, about, held_by, id, only, secs};

fn web(n: usize) -> Sim {
    let mut sim = Sim::new(Config::default());
    sim.add_group("web", n, &["a", "b", "c"], &["tg-http", "tg-grpc"]);
    sim
}

fn both_tgs() -> Vec<TargetGroup> {
    vec![TargetGroup::from("tg-http"), TargetGroup::from("tg-grpc")]
}

#[test]
fn healthy_fleet_gets_no_decisions() {
    let mut sim = web(10);
    sim.advance(secs(10));
    let plan = sim.decide();
    assert!(plan.decisions.is_empty(), "{plan:#?}");
    assert!(plan.fleet_alerts.is_empty(), "{plan:#?}");
}

#[test]
fn escalation_deregisters_from_every_target_group_waits_for_drain_then_replaces() {
    let mut sim = web(10);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));

    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(
        d.kind,
        DecisionKind::Act(Action::Deregister {
            target_groups: both_tgs()
        })
    );
    assert!(d.reason.contains("agent escalated api"), "{}", d.reason);
    sim.execute(&plan, Answer::Succeed);

    sim.advance(secs(30));
    let plan = sim.decide();
    assert!(
        matches!(
            only(&plan, "web-0").kind,
            DecisionKind::Wait {
                waiting: Waiting::Drain,
                ..
            }
        ),
        "{plan:#?}"
    );

    sim.drain("web-0");
    sim.advance(secs(5));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(d.kind, DecisionKind::Act(Action::Replace));
    assert!(
        d.reason.contains("drained from tg-http, tg-grpc"),
        "{}",
        d.reason
    );
    sim.execute(&plan, Answer::Succeed);

    let r = sim.book.get(&id("web-0")).expect("remediation recorded");
    assert_eq!(r.stage, Stage::Finished(Ending::Replaced));
    assert_eq!(
        r.cause,
        Cause::Escalated {
            service: "api".into()
        }
    );
}

#[test]
fn drain_timeout_replaces_an_instance_still_draining() {
    let mut sim = web(10);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Succeed);

    sim.advance(secs(299));
    assert!(matches!(
        only(&sim.decide(), "web-0").kind,
        DecisionKind::Wait { .. }
    ));
    sim.advance(secs(1));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(d.kind, DecisionKind::Act(Action::Replace));
    assert!(d.reason.contains("still draining after 5m"), "{}", d.reason);
}

#[test]
fn escalated_instance_in_no_target_group_goes_straight_to_replacement() {
    let mut sim = web(10);
    sim.inst_mut("web-0").targets.clear();
    sim.escalate("web-0", "worker");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert_eq!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Replace)
    );
}

#[test]
fn silent_agent_with_failing_alb_gets_ssm_then_deregistration_then_replacement() {
    let mut sim = web(10);
    sim.silence("web-0");
    sim.set_alb("web-0", TargetState::Unhealthy);

    sim.advance(secs(60));
    let plan = sim.decide();
    assert!(
        matches!(
            about(&plan, "web-0")[..],
            [DecisionKind::Alert(Alert::AlbFailing { .. })]
        ),
        "not silent yet, so only the ALB alert: {plan:#?}"
    );

    sim.advance(secs(31));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(d.kind, DecisionKind::Act(Action::SsmRemediate));
    assert!(d.reason.contains("agent silent for 1m31s"), "{}", d.reason);
    sim.execute(&plan, Answer::Succeed);

    sim.advance(secs(120));
    assert!(matches!(
        only(&sim.decide(), "web-0").kind,
        DecisionKind::Wait {
            waiting: Waiting::AgentAfterSsm,
            ..
        }
    ));

    sim.advance(secs(60));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert_eq!(
        d.kind,
        DecisionKind::Act(Action::Deregister {
            target_groups: both_tgs()
        })
    );
    assert!(
        d.reason.contains("still silent 3m after SSM"),
        "{}",
        d.reason
    );
    sim.execute(&plan, Answer::Succeed);
    sim.drain("web-0");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert_eq!(
        only(&plan, "web-0").kind,
        DecisionKind::Act(Action::Replace)
    );
}

#[test]
fn failed_ssm_command_moves_on_without_waiting_for_the_timeout() {
    let mut sim = web(10);
    sim.silence("web-0");
    sim.set_alb("web-0", TargetState::Unavailable);
    sim.advance(secs(100));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Succeed);
    sim.advance(secs(10));
    sim.record("web-0", Outcome::SsmFinished { ok: false });
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert!(
        matches!(d.kind, DecisionKind::Act(Action::Deregister { .. })),
        "{d:#?}"
    );
    assert!(d.reason.contains("SSM command failed"), "{}", d.reason);
}

#[test]
fn agent_back_after_ssm_ends_the_remediation_and_starts_the_instance_cooldown() {
    let mut sim = web(10);
    sim.silence("web-0");
    sim.set_alb("web-0", TargetState::Unhealthy);
    sim.advance(secs(100));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Succeed);

    sim.advance(secs(40));
    sim.unsilence("web-0");
    sim.set_alb("web-0", TargetState::Healthy);
    let plan = sim.decide();
    assert_eq!(
        only(&plan, "web-0").kind,
        DecisionKind::Finished(Ending::Recovered)
    );

    // It breaks again ten minutes later: the instance cooldown holds a second remediation.
    sim.advance(secs(600));
    sim.silence("web-0");
    sim.set_alb("web-0", TargetState::Unhealthy);
    sim.advance(secs(100));
    let plan = sim.decide();
    assert_eq!(held_by(only(&plan, "web-0")), vec!["instance_cooldown"]);
}

#[test]
fn silent_agent_with_healthy_alb_only_alerts_agent_lost() {
    let mut sim = web(10);
    sim.silence("web-0");
    sim.run(secs(3600), secs(30));
    assert!(sim.acted().is_empty(), "{:#?}", sim.acted());
    let (_, last) = sim.log.last().expect("decisions were made");
    assert!(
        matches!(last.kind, DecisionKind::Alert(Alert::AgentLost { .. })),
        "{last:#?}"
    );
    assert!(last.reason.contains("ALB still healthy"), "{}", last.reason);
}

#[test]
fn healthy_agent_with_failing_alb_only_alerts_by_default() {
    let mut sim = web(10);
    sim.set_alb("web-0", TargetState::Unhealthy);
    sim.run(secs(3600), secs(30));
    assert!(sim.acted().is_empty(), "{:#?}", sim.acted());
    assert!(
        sim.log
            .iter()
            .all(|(_, d)| matches!(d.kind, DecisionKind::Alert(Alert::AlbFailing { .. })))
    );
}

#[test]
fn healthy_agent_with_failing_alb_is_deregistered_after_grace_when_configured() {
    let mut raw = RawConfig::default();
    raw.asg.insert(
        "web".into(),
        GuardrailOverride {
            act_on_alb_unhealthy: Some(true),
            ..GuardrailOverride::default()
        },
    );
    let mut sim = Sim::new(Config::try_new(raw).expect("valid"));
    sim.add_group("web", 10, &["a", "b"], &["tg-http"]);
    sim.set_alb("web-0", TargetState::Unhealthy);
    sim.advance(secs(299));
    assert!(matches!(
        only(&sim.decide(), "web-0").kind,
        DecisionKind::Alert(Alert::AlbFailing { .. })
    ));
    sim.advance(secs(1));
    let plan = sim.decide();
    assert!(
        matches!(
            only(&plan, "web-0").kind,
            DecisionKind::Act(Action::Deregister { .. })
        ),
        "{plan:#?}"
    );
}

#[test]
fn failed_step_is_retried_then_abandoned_with_an_alert() {
    let mut sim = web(10);
    sim.escalate("web-0", "api");
    for attempt in 1..=3 {
        sim.advance(secs(5));
        let plan = sim.decide();
        assert!(
            matches!(
                only(&plan, "web-0").kind,
                DecisionKind::Act(Action::Deregister { .. })
            ),
            "attempt {attempt}: {plan:#?}"
        );
        sim.execute(&plan, Answer::Fail);
    }
    sim.advance(secs(5));
    let plan = sim.decide();
    let kinds = about(&plan, "web-0");
    assert!(
        kinds.iter().any(|k| matches!(
            k,
            DecisionKind::Alert(Alert::GaveUp {
                step: Step::Deregister,
                ..
            })
        )),
        "{plan:#?}"
    );
    assert!(matches!(
        sim.book.get(&id("web-0")).expect("record").stage,
        Stage::Finished(Ending::GaveUp { .. })
    ));
}

/// Found by `one_instance_never_has_two_remediations_at_once`: with both cooldowns off, the pass
/// that gave up on a remediation used to start a new one for the same instance right away.
#[test]
fn a_remediation_given_up_on_does_not_restart_in_the_same_pass() {
    let mut raw = RawConfig::default();
    raw.guardrails.instance_cooldown = Duration::ZERO;
    raw.guardrails.asg_cooldown = Duration::ZERO;
    let mut sim = Sim::new(Config::try_new(raw).expect("valid config"));
    sim.add_group("web", 10, &["a", "b", "c"], &["tg-http", "tg-grpc"]);
    sim.escalate("web-0", "api");
    for _ in 1..=3 {
        sim.advance(secs(5));
        let plan = sim.decide();
        sim.execute(&plan, Answer::Fail);
    }
    sim.advance(secs(5));
    let plan = sim.decide();
    let kinds = about(&plan, "web-0");
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, DecisionKind::Finished(Ending::GaveUp { .. }))),
        "{plan:#?}"
    );
    assert!(
        !kinds.iter().any(|k| matches!(k, DecisionKind::Act(_))),
        "{plan:#?}"
    );
    assert!(matches!(
        sim.book.get(&id("web-0")).expect("record").stage,
        Stage::Finished(Ending::GaveUp { .. })
    ));
    // The next pass decides afresh; with the cooldowns off it may start again.
    sim.advance(secs(5));
    assert!(matches!(
        only(&sim.decide(), "web-0").kind,
        DecisionKind::Act(Action::Deregister { .. })
    ));
}

#[test]
fn lost_outcome_is_decided_again_after_the_action_timeout() {
    let mut sim = web(10);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Lose);

    sim.advance(secs(60));
    assert!(matches!(
        only(&sim.decide(), "web-0").kind,
        DecisionKind::Wait {
            waiting: Waiting::Outcome(Step::Deregister),
            ..
        }
    ));
    sim.advance(secs(60));
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert!(
        matches!(d.kind, DecisionKind::Act(Action::Deregister { .. })),
        "{d:#?}"
    );
    assert!(d.reason.contains("deciding it again"), "{}", d.reason);
    assert_eq!(
        sim.book.get(&id("web-0")).expect("record").stage,
        Stage::Requested {
            step: Step::Deregister,
            attempt: 2
        }
    );
}

#[test]
fn instance_that_leaves_the_fleet_mid_remediation_ends_it() {
    let mut sim = web(10);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let plan = sim.decide();
    sim.execute(&plan, Answer::Succeed);
    sim.fleet.instances.retain(|i| i.id.as_str() != "web-0");
    sim.advance(secs(5));
    let plan = sim.decide();
    assert_eq!(
        only(&plan, "web-0").kind,
        DecisionKind::Finished(Ending::Gone)
    );
    assert!(sim.book.in_flight().next().is_none());
}

#[test]
fn dry_run_records_what_it_would_do_and_leaves_the_book_untouched() {
    let mut raw = RawConfig::default();
    raw.guardrails.dry_run = true;
    let mut sim = Sim::new(Config::try_new(raw).expect("valid"));
    sim.add_group("web", 10, &["a", "b"], &["tg-http"]);
    sim.escalate("web-0", "api");
    sim.advance(secs(5));
    let before = sim.book.clone();
    let plan = sim.decide();
    let d = only(&plan, "web-0");
    assert!(
        matches!(d.kind, DecisionKind::WouldAct(Action::Deregister { .. })),
        "{d:#?}"
    );
    assert!(d.dry_run);
    assert!(d.executable().is_none());
    assert!(
        d.reason.contains("dry-run: would deregister"),
        "{}",
        d.reason
    );
    assert_eq!(sim.book, before);
}
