//! Tests of the machine, driven with explicit instants: no runtime, no processes, no sleeping.

use std::time::{Duration, SystemTime};

use super::*;
use crate::{
    config::{CheckConfig, Probe, RestartPolicyConfig},
    probe::Outcome,
};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn check(name: &str, dependency: Option<&str>) -> CheckConfig {
    CheckConfig {
        name: name.into(),
        interval: s(5),
        timeout: s(1),
        initial_delay: Duration::ZERO,
        startup_grace: Duration::ZERO,
        success_threshold: 1,
        failure_threshold: 1,
        dependency: dependency.map(str::to_owned),
        probe: Probe::Tcp {
            address: "127.0.0.1:1".into(),
        },
    }
}

fn service(action: Action) -> ServiceConfig {
    ServiceConfig {
        name: "web".into(),
        action,
        depends_on: Vec::new(),
        policy: RestartPolicyConfig {
            max_attempts: 2,
            backoff_initial: s(2),
            backoff_max: s(8),
            verify_timeout: s(10),
            ..RestartPolicyConfig::default()
        },
        checks: vec![check("http", None)],
    }
}

fn command() -> Action {
    Action::Command {
        argv: vec!["/bin/true".into()],
        dir: "/".into(),
        pidfile: None,
    }
}

/// A machine and a clock the test moves by hand.
struct Drive {
    m: Machine,
    t0: Instant,
    now: Instant,
    generation: u64,
}

impl Drive {
    fn new(config: ServiceConfig) -> Self {
        let t0 = Instant::now();
        let mut m = Machine::new(config, at(t0), false);
        assert_eq!(
            m.start(),
            [Effect::Control(Control {
                generation: 0,
                fast: true
            })]
        );
        Self {
            m,
            t0,
            now: t0,
            generation: 0,
        }
    }

    fn at(&mut self, secs: u64) -> &mut Self {
        self.now = self.t0 + s(secs);
        self
    }

    fn step(&mut self, input: Input) -> Vec<Effect> {
        let effects = self.m.step(input, at(self.now));
        for e in &effects {
            if let Effect::Control(c) = e {
                self.generation = c.generation;
            }
        }
        effects
    }

    fn probe(&mut self, ok: bool) -> Vec<Effect> {
        let outcome = Outcome {
            ok,
            detail: if ok { "ok" } else { "refused" }.into(),
        };
        let generation = self.generation;
        self.step(Input::Result(ProbeResult {
            index: 0,
            generation,
            outcome,
            at: SystemTime::UNIX_EPOCH,
        }))
    }
}

fn at(now: Instant) -> Moment {
    Moment {
        now,
        wall: SystemTime::UNIX_EPOCH,
        jitter: 1.0,
    }
}

fn restarts(effects: &[Effect]) -> usize {
    effects.iter().filter(|e| **e == Effect::Restart).count()
}

fn attempts(effects: &[Effect]) -> Vec<(u32, bool, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit {
                kind: v1::event::Kind::RestartAttempted(r),
                ..
            } => Some((r.attempt, r.succeeded, r.detail.clone())),
            _ => None,
        })
        .collect()
}

fn escalations(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit {
                kind: v1::event::Kind::Escalated(x),
                ..
            } => Some(x.reason.clone()),
            _ => None,
        })
        .collect()
}

fn published(effects: &[Effect]) -> ServiceSnapshot {
    effects
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::Publish(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("every step publishes")
}

#[test]
fn healthy_checks_make_a_healthy_service_and_slow_probing_down() {
    let mut d = Drive::new(service(command()));
    let effects = d.at(1).probe(true);
    assert_eq!(d.m.state(), ServiceState::Healthy);
    assert!(effects.contains(&Effect::Control(Control {
        generation: 0,
        fast: false
    })));
    let snapshot = published(&effects);
    assert_eq!(snapshot.state, ServiceState::Healthy);
    assert_eq!(snapshot.checks[0].status, Verdict::Healthy);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Emit { kind: v1::event::Kind::ServiceStateChanged(c), .. }
            if c.to == v1::ServiceState::Healthy as i32
    )));
}

#[test]
fn a_failure_restarts_and_a_healthy_result_after_it_verifies_the_attempt() {
    let mut d = Drive::new(service(command()));
    d.at(1).probe(true);
    let effects = d.at(2).probe(false);
    assert_eq!(restarts(&effects), 1);
    assert!(d.m.awaiting_restart());
    assert_eq!(d.m.state(), ServiceState::Restarting);

    let effects = d.at(3).step(Input::Restarted(Ok(None)));
    assert!(!d.m.awaiting_restart());
    assert!(effects.contains(&Effect::Control(Control {
        generation: 1,
        fast: true
    })));
    assert_eq!(d.m.reason(), "verifying restart attempt 1");
    assert_eq!(d.m.next_wake(), Some(d.t0 + s(13)), "the verify deadline");

    let effects = d.at(4).probe(true);
    assert_eq!(attempts(&effects), [(1, true, "healthy again".into())]);
    assert_eq!(d.m.state(), ServiceState::Healthy);
}

#[test]
fn results_of_an_old_generation_are_ignored() {
    let mut d = Drive::new(service(command()));
    d.at(1).probe(false);
    d.at(2).step(Input::Restarted(Ok(None)));
    let stale = d.m.step(
        Input::Result(ProbeResult {
            index: 0,
            generation: 0,
            outcome: Outcome {
                ok: true,
                detail: "ok".into(),
            },
            at: SystemTime::UNIX_EPOCH,
        }),
        at(d.t0 + s(3)),
    );
    assert!(attempts(&stale).is_empty());
    assert_eq!(d.m.state(), ServiceState::Restarting);
}

#[test]
fn a_missed_verify_deadline_fails_the_attempt_and_retries_once_the_backoff_has_passed() {
    let mut d = Drive::new(service(command()));
    d.at(1).probe(false);
    d.at(2).step(Input::Restarted(Ok(None)));
    // No result within verify_timeout (10 s): the tick at the deadline fails the attempt.
    let effects = d.at(12).step(Input::Tick);
    assert_eq!(
        attempts(&effects),
        [(
            1,
            false,
            "not healthy within verify_timeout 10s: checks not passing".into()
        )]
    );
    // What was unproven is failing now, with the last result seen.
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Emit { kind: v1::event::Kind::CheckChanged(c), .. }
            if c.status == v1::CheckStatus::Unhealthy as i32 && c.detail == "refused"
    )));
    // The backoff after attempt 1 (2 s from its start at 1 s) is long over: attempt 2 now.
    assert_eq!(restarts(&effects), 1);
    assert_eq!(d.m.reason(), "restart attempt 2: http: refused");
}

#[test]
fn restarts_back_off_then_the_spent_budget_escalates_until_healthy_again() {
    let mut d = Drive::new(service(command()));
    d.at(1).probe(false);
    let effects = d.at(1).step(Input::Restarted(Err("exit 1".into())));
    assert_eq!(
        attempts(&effects),
        [(1, false, "restart action failed: exit 1".into())]
    );
    // Backoff after one attempt with jitter 1.0: the full 2 s.
    assert_eq!(d.m.state(), ServiceState::Unhealthy);
    assert_eq!(d.m.reason(), "next restart in 2.0s: http: refused");
    assert_eq!(d.m.next_wake(), Some(d.t0 + s(3)));
    assert_eq!(restarts(&d.at(2).step(Input::Tick)), 0, "still backing off");
    assert_eq!(
        restarts(&d.at(3).step(Input::Tick)),
        1,
        "attempt 2 after the backoff"
    );

    // Attempt 2 fails too: the budget (2 within 600 s) is spent, so it escalates at once.
    let effects = d.at(3).step(Input::Restarted(Err("exit 1".into())));
    assert_eq!(restarts(&effects), 0);
    let reasons = escalations(&effects);
    assert_eq!(
        reasons,
        ["2 restart attempts within 600s did not make it healthy: http: refused"]
    );
    assert_eq!(d.m.state(), ServiceState::Escalated);
    assert_eq!(published(&effects).restarts, 2);

    // Escalated (once) until the checks pass again.
    assert!(escalations(&d.at(4).probe(false)).is_empty());
    assert_eq!(d.m.state(), ServiceState::Escalated);
    d.at(5).probe(true);
    assert_eq!(d.m.state(), ServiceState::Healthy);
    assert_eq!(d.m.reason(), "recovered after escalation");
}

#[test]
fn no_restart_while_a_dependency_is_unhealthy_or_healing_is_paused() {
    let mut d = Drive::new(service(command()));
    d.m.observe_dependency("db", ServiceState::Unhealthy);
    let effects = d.at(1).probe(false);
    assert_eq!(restarts(&effects), 0);
    assert_eq!(d.m.state(), ServiceState::WaitingOnDependency);
    assert!(d.m.reason().contains("db (Unhealthy)"), "{}", d.m.reason());

    d.at(2).step(Input::Paused(true));
    let effects = d
        .at(2)
        .step(Input::Dependency("db".into(), ServiceState::Healthy));
    assert_eq!(restarts(&effects), 0);
    // db recovered: the failure seen while it was down is checked again first (#19.3).
    assert_eq!(d.m.state(), ServiceState::Starting);
    let effects = d.at(2).probe(false);
    assert_eq!(restarts(&effects), 0);
    assert_eq!(d.m.state(), ServiceState::Unhealthy);
    assert!(d.m.reason().starts_with("healing paused"));

    let effects = d.at(3).step(Input::Paused(false));
    assert_eq!(restarts(&effects), 1);
}

#[test]
fn after_a_dependency_recovers_a_stale_failure_is_checked_again_before_any_restart() {
    let mut d = Drive::new(service(command()));
    d.m.observe_dependency("db", ServiceState::Healthy);
    d.at(1).probe(true);
    d.m.observe_dependency("db", ServiceState::Restarting);
    d.at(2).probe(false);
    assert_eq!(d.m.state(), ServiceState::WaitingOnDependency);
    // db is healthy again: no restart on the stale "refused", fast probing to check again.
    d.m.observe_dependency("db", ServiceState::Healthy);
    let effects = d
        .at(3)
        .step(Input::Dependency("db".into(), ServiceState::Healthy));
    assert_eq!(restarts(&effects), 0, "{effects:?}");
    assert!(effects.contains(&Effect::Control(Control {
        generation: 0,
        fast: true
    })));
    assert_eq!(d.m.state(), ServiceState::Starting);
    assert_eq!(d.m.reason(), "re-checking after a dependency recovered");
    let effects = d.at(4).probe(true);
    assert_eq!(restarts(&effects), 0);
    assert_eq!(d.m.state(), ServiceState::Healthy);
    // A failure after the recovery counts as usual.
    let effects = d.at(5).probe(false);
    assert_eq!(restarts(&effects), 1);
}

#[test]
fn a_restart_the_process_task_cannot_take_fails_the_attempt() {
    let mut d = Drive::new(service(command()));
    d.at(1).probe(false);
    let effects = d
        .at(1)
        .step(Input::RestartUnavailable("channel closed".into()));
    assert_eq!(
        attempts(&effects),
        [(1, false, "process task unavailable: channel closed".into())]
    );
    assert!(!d.m.awaiting_restart());
}

#[test]
fn without_a_restart_action_failures_escalate_at_once() {
    let mut d = Drive::new(service(Action::None));
    let effects = d.at(1).probe(false);
    assert_eq!(restarts(&effects), 0);
    let reasons = escalations(&effects);
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].starts_with("unhealthy and no restart action configured: http: refused"));
}

#[test]
fn a_dependency_check_reports_the_dependency_and_never_restarts() {
    let mut config = service(command());
    config.checks.push(check("pg", Some("postgres")));
    let mut d = Drive::new(config);
    d.at(1).probe(true);
    let effects = d.at(2).step(Input::Result(ProbeResult {
        index: 1,
        generation: 0,
        outcome: Outcome {
            ok: false,
            detail: "refused".into(),
        },
        at: SystemTime::UNIX_EPOCH,
    }));
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Emit { kind: v1::event::Kind::DependencyChanged(c), .. }
            if c.failing && c.dependency == "postgres" && c.check == "web/pg"
    )));
    assert_eq!(restarts(&effects), 0);
    assert_eq!(d.m.state(), ServiceState::Healthy);
}

#[test]
fn a_run_service_is_down_when_its_process_exits() {
    let run = Action::Run {
        argv: vec!["/bin/sleep".into(), "1000".into()],
        dir: "/".into(),
        stop_timeout: s(10),
    };
    let mut d = Drive::new(service(run));
    d.at(0).step(Input::Liveness(Liveness::Up { pid: 42 }));
    d.at(1).probe(true);
    assert_eq!(d.m.state(), ServiceState::Healthy);
    // An exit of another pid is not ours.
    d.at(2).step(Input::Liveness(Liveness::Down {
        pid: Some(7),
        detail: "exited".into(),
    }));
    assert_eq!(d.m.state(), ServiceState::Healthy);
    let effects = d.at(3).step(Input::Liveness(Liveness::Down {
        pid: Some(42),
        detail: "exited with status 1".into(),
    }));
    assert_eq!(restarts(&effects), 1);
    assert!(
        d.m.reason().contains("exited with status 1"),
        "{}",
        d.m.reason()
    );
}

#[test]
fn a_slow_starter_gets_its_startup_grace_after_every_restart_not_only_the_first() {
    // Needs 8 s to listen; startup_grace 12 s, verify_timeout 4 s (#19).
    let mut config = service(command());
    config.policy.verify_timeout = s(4);
    config.policy.max_attempts = 5;
    config.checks[0].startup_grace = s(12);
    let mut d = Drive::new(config);
    d.at(1).probe(true);
    d.at(2).probe(false);
    assert_eq!(restarts(&d.m.step(Input::Tick, at(d.t0 + s(2)))), 0);
    d.at(3).step(Input::Restarted(Ok(None)));
    // Refused for 8 s: forgiven, and the attempt is not judged at verify_timeout.
    for t in 4..11 {
        let effects = d.at(t).probe(false);
        assert!(attempts(&effects).is_empty(), "at {t}: {effects:?}");
        assert_eq!(restarts(&effects), 0, "at {t}");
        assert_eq!(d.m.state(), ServiceState::Restarting);
    }
    let effects = d.at(11).probe(true);
    assert_eq!(attempts(&effects), [(1, true, "healthy again".into())]);
    assert_eq!(d.m.state(), ServiceState::Healthy);
}

#[test]
fn a_start_that_never_comes_up_fails_when_the_startup_grace_is_over() {
    let mut config = service(command());
    config.policy.verify_timeout = s(4);
    config.checks[0].startup_grace = s(12);
    let mut d = Drive::new(config);
    d.at(1).probe(true);
    d.at(2).probe(false);
    d.at(2).step(Input::Restarted(Ok(None)));
    assert_eq!(d.m.next_wake(), Some(d.t0 + s(14)));
    assert!(attempts(&d.at(13).step(Input::Tick)).is_empty());
    assert_eq!(
        attempts(&d.at(14).step(Input::Tick)),
        [(
            1,
            false,
            "not healthy within startup_grace 12s: checks not passing".into()
        )]
    );
}

#[test]
fn flapping_counts_losses_of_health_and_four_healed_crashes_are_not_flapping() {
    let mut config = service(command());
    config.policy = RestartPolicyConfig {
        max_attempts: 100,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        ..RestartPolicyConfig::default()
    };
    assert_eq!(config.policy.flap_transitions, 5);
    let mut d = Drive::new(config);
    d.at(1).probe(true);
    for crash in 1..=5u64 {
        let t = crash * 10;
        d.at(t).probe(false);
        assert_ne!(d.m.state(), ServiceState::Flapping, "crash {crash}");
        d.at(t + 1).step(Input::Restarted(Ok(None)));
        d.at(t + 2).probe(true);
        if crash < 5 {
            assert_eq!(d.m.state(), ServiceState::Healthy, "crash {crash} healed");
        }
    }
    assert_eq!(d.m.state(), ServiceState::Flapping);
    assert!(
        d.m.reason().starts_with("lost health 5 times within 600s"),
        "{}",
        d.m.reason()
    );
}
