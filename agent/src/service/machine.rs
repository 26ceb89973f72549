//! The state machine of one service, pure like the coordinator's policy engine: inputs (probe
//! results, process liveness, restart replies, the states of the services it depends on, the
//! pause switch) and the moment they are seen go in; effects (events, probe control, restart
//! commands, the published snapshot) come out. It spawns nothing, sleeps never and reads no
//! clock: the supervisor in [`super`] performs the effects, and tests drive it with explicit
//! instants.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, SystemTime},
};

use autoheal_proto::v1;
use tokio::time::Instant;

use crate::{
    action::{Liveness, RestartReply},
    check::{Control, ProbeResult},
    clock,
    config::{Action, CheckConfig, ServiceConfig},
    policy::{FlapDetector, RestartBudget, Threshold},
    probe::Outcome,
    state::{ServiceSnapshot, ServiceState, Verdict},
};

mod report;

pub use report::initial_snapshot;

/// Restart attempts kept as escalation evidence.
const MAX_EVIDENCE: usize = 20;

/// When an input is seen: the clock's two readings, and a random sample in [0, 1] for the
/// restart backoff's jitter (the edge draws it; tests fix it).
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub now: Instant,
    pub wall: SystemTime,
    pub jitter: f64,
}

#[derive(Debug)]
pub enum Input {
    Result(ProbeResult),
    Liveness(Liveness),
    /// The process task's answer to [`Effect::Restart`].
    Restarted(RestartReply),
    /// [`Effect::Restart`] could not be handed to the process task.
    RestartUnavailable(String),
    Dependency(String, ServiceState),
    Paused(bool),
    /// Nothing new: time passed (a backoff, a verify deadline or a flap window ran out).
    Tick,
}

/// What the supervisor must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// An event for the reporter and local observers.
    Emit {
        at: SystemTime,
        kind: v1::event::Kind,
    },
    /// Steer the service's check tasks.
    Control(Control),
    /// Run the restart action; answer with [`Input::Restarted`] or [`Input::RestartUnavailable`].
    Restart,
    /// The service's state, for `watch` subscribers.
    Publish(Box<ServiceSnapshot>),
}

#[derive(Debug)]
struct Attempt {
    number: u32,
    started: Instant,
    /// The restart action is running: no reply yet.
    running: bool,
    verify_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Machine {
    config: ServiceConfig,
    thresholds: Vec<Threshold>,
    last: Vec<Option<(Outcome, SystemTime)>>,
    generation: u64,
    state: ServiceState,
    reason: String,
    ever_healthy: bool,
    was_healthy: bool,
    budget: RestartBudget,
    flaps: FlapDetector,
    next_attempt: Option<Instant>,
    attempt: Option<Attempt>,
    attempts: VecDeque<v1::RestartAttempted>,
    escalated: bool,
    pid: Option<u32>,
    process_down: Option<String>,
    dep_states: BTreeMap<String, ServiceState>,
    dep_failing: Vec<bool>,
    /// A dependency recovered: the own checks that failed meanwhile are being probed again, and
    /// nothing counts against the service until each has a fresh verdict.
    recheck: bool,
    paused: bool,
    /// The moment of the input being handled.
    at: Moment,
    /// Effects of the input being handled.
    effects: Vec<Effect>,
}

impl Machine {
    pub fn new(config: ServiceConfig, at: Moment, paused: bool) -> Self {
        let thresholds = config
            .checks
            .iter()
            .map(|c| {
                // A process the agent starts itself gets the same grace as after any restart;
                // a service already running when the agent starts, its check's own grace.
                let grace = match config.action {
                    Action::Run { .. } if c.dependency.is_none() => start_grace(&config, c),
                    _ => c.startup_grace,
                };
                Threshold::new(c.success_threshold, c.failure_threshold, at.now, grace)
            })
            .collect();
        let n = config.checks.len();
        Self {
            thresholds,
            last: vec![None; n],
            generation: 0,
            state: ServiceState::Starting,
            reason: "starting".into(),
            ever_healthy: false,
            was_healthy: false,
            budget: RestartBudget::new(config.policy.clone()),
            flaps: FlapDetector::new(config.policy.flap_transitions, config.policy.flap_window),
            next_attempt: None,
            attempt: None,
            attempts: VecDeque::new(),
            escalated: false,
            pid: None,
            process_down: None,
            dep_states: BTreeMap::new(),
            dep_failing: vec![false; n],
            recheck: false,
            paused,
            at,
            effects: Vec::new(),
            config,
        }
    }

    /// The first effects: probe quickly until the service is first seen healthy.
    pub fn start(&mut self) -> Vec<Effect> {
        vec![Effect::Control(Control {
            generation: 0,
            fast: true,
        })]
    }

    /// Records the freshest state of a dependency without deciding anything (the supervisor
    /// calls it before each input, so no decision is taken on a stale view).
    pub fn observe_dependency(&mut self, name: &str, state: ServiceState) {
        let recovered = match self.dep_states.get_mut(name) {
            Some(s) => {
                let recovered = *s != ServiceState::Healthy && state == ServiceState::Healthy;
                *s = state;
                recovered
            }
            None => {
                self.dep_states.insert(name.to_owned(), state);
                false
            }
        };
        if recovered {
            self.dependency_recovered();
        }
    }

    /// What the service's own checks saw while a dependency was failing is stale once it
    /// recovers (`db-conn: connection refused` says nothing about `app` now): they start over
    /// without a grace, and are probed quickly, before any failure counts against the service.
    fn dependency_recovered(&mut self) {
        if self.attempt.is_some() {
            return;
        }
        let now = self.at.now;
        let mut any = false;
        for (t, c) in self.thresholds.iter_mut().zip(&self.config.checks) {
            if c.dependency.is_none() && t.verdict() == Verdict::Unhealthy {
                t.reset(now, Duration::ZERO);
                any = true;
            }
        }
        if any {
            self.recheck = true;
            self.control(true);
        }
    }

    /// Records the pause switch without deciding anything.
    pub fn observe_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Handles one input seen at `at`, then re-evaluates; returns what to do.
    pub fn step(&mut self, input: Input, at: Moment) -> Vec<Effect> {
        self.at = at;
        match input {
            Input::Result(r) => self.on_result(r),
            Input::Liveness(l) => self.on_liveness(l),
            Input::Restarted(r) => self.on_restart_done(r),
            Input::RestartUnavailable(e) => {
                self.attempt_failed(format!("process task unavailable: {e}"));
            }
            Input::Dependency(name, state) => self.observe_dependency(&name, state),
            Input::Paused(p) => self.paused = p,
            Input::Tick => {}
        }
        self.evaluate();
        std::mem::take(&mut self.effects)
    }

    /// When to [`Input::Tick`] next if nothing else happens.
    pub fn next_wake(&self) -> Option<Instant> {
        let verify = self.attempt.as_ref().and_then(|a| a.verify_until);
        let flap = self.flaps.next_expiry();
        [verify, self.next_attempt, flap]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether a restart action is running (an [`Input::Restarted`] is awaited).
    pub fn awaiting_restart(&self) -> bool {
        self.attempt.as_ref().is_some_and(|a| a.running)
    }

    pub fn state(&self) -> ServiceState {
        self.state
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn emit(&mut self, at: SystemTime, kind: v1::event::Kind) {
        self.effects.push(Effect::Emit { at, kind });
    }

    fn control(&mut self, fast: bool) {
        self.effects.push(Effect::Control(Control {
            generation: self.generation,
            fast,
        }));
    }

    fn on_result(&mut self, r: ProbeResult) {
        if r.generation != self.generation || r.index >= self.thresholds.len() {
            return;
        }
        let changed = self.thresholds[r.index].observe(r.outcome.ok, self.at.now);
        self.last[r.index] = Some((r.outcome.clone(), r.at));
        if let Some(v) = changed {
            self.announce(r.index, v, &r.outcome.detail, r.at);
        }
    }

    fn announce(&mut self, index: usize, v: Verdict, detail: &str, at: SystemTime) {
        let check = &self.config.checks[index];
        let kind = match &check.dependency {
            Some(dep) => {
                let failing = v == Verdict::Unhealthy;
                if failing == self.dep_failing[index] {
                    return;
                }
                self.dep_failing[index] = failing;
                v1::event::Kind::DependencyChanged(v1::DependencyChanged {
                    dependency: dep.clone(),
                    check: format!("{}/{}", self.config.name, check.name),
                    failing,
                    detail: detail.to_owned(),
                })
            }
            None => {
                if v == Verdict::Unknown {
                    return;
                }
                v1::event::Kind::CheckChanged(v1::CheckChanged {
                    service: self.config.name.clone(),
                    check: check.name.clone(),
                    status: v.wire() as i32,
                    detail: detail.to_owned(),
                })
            }
        };
        let recovered = matches!(&kind, v1::event::Kind::DependencyChanged(c) if !c.failing);
        self.emit(at, kind);
        if recovered {
            self.dependency_recovered();
        }
    }

    fn on_liveness(&mut self, l: Liveness) {
        match l {
            Liveness::Up { pid } => {
                self.pid = Some(pid);
                self.process_down = None;
            }
            Liveness::Down { pid, detail } => {
                if pid.is_none() || pid == self.pid {
                    tracing::warn!(service = %self.config.name, %detail, "main process down");
                    self.pid = None;
                    self.process_down = Some(detail);
                }
            }
        }
    }

    fn on_restart_done(&mut self, r: RestartReply) {
        let now = self.at.now;
        let Some(a) = self.attempt.as_mut().filter(|a| a.running) else {
            return;
        };
        a.running = false;
        match r {
            Ok(pid) => {
                if pid.is_some() {
                    self.pid = pid;
                }
                self.process_down = None;
                // Start the checks over: a new generation (initial delays again), failures
                // before the first success forgiven for each check's start grace (every start,
                // not only the first), and the attempt judged when the longest grace is over:
                // a slow starter is not restarted before it could have come up.
                a.verify_until = Some(now + verify_deadline(&self.config));
                self.generation += 1;
                // A shared dependency's checks keep their state: restarting us doesn't change it.
                for (t, c) in self.thresholds.iter_mut().zip(&self.config.checks) {
                    if c.dependency.is_none() {
                        t.reset(now, start_grace(&self.config, c));
                    }
                }
                self.control(true);
            }
            Err(detail) => self.attempt_failed(format!("restart action failed: {detail}")),
        }
    }

    fn attempt_failed(&mut self, detail: String) {
        let now = self.at.now;
        let Some(a) = self.attempt.take() else { return };
        let record = v1::RestartAttempted {
            service: self.config.name.clone(),
            attempt: a.number,
            succeeded: false,
            detail,
            took: Some(clock::duration(now.saturating_duration_since(a.started))),
        };
        self.record_attempt(record);
        self.next_attempt = Some(self.budget.next_allowed(now, self.at.jitter));
        // What was unproven at the deadline is failing now.
        for i in 0..self.thresholds.len() {
            let t = &mut self.thresholds[i];
            if t.verdict() != Verdict::Healthy
                && self.config.checks[i].dependency.is_none()
                && t.fail_unproven()
            {
                let (detail, at) = self.last[i]
                    .as_ref()
                    .map(|(o, at)| (o.detail.clone(), *at))
                    .unwrap_or_else(|| ("no result yet".into(), self.at.wall));
                self.announce_unhealthy(i, detail, at);
            }
        }
        self.control(false);
    }

    fn announce_unhealthy(&mut self, index: usize, detail: String, at: SystemTime) {
        let kind = v1::event::Kind::CheckChanged(v1::CheckChanged {
            service: self.config.name.clone(),
            check: self.config.checks[index].name.clone(),
            status: v1::CheckStatus::Unhealthy as i32,
            detail,
        });
        self.emit(at, kind);
    }

    fn record_attempt(&mut self, record: v1::RestartAttempted) {
        self.emit(
            self.at.wall,
            v1::event::Kind::RestartAttempted(record.clone()),
        );
        self.attempts.push_back(record);
        while self.attempts.len() > MAX_EVIDENCE {
            self.attempts.pop_front();
        }
    }

    fn own_checks_healthy(&self) -> bool {
        self.thresholds
            .iter()
            .zip(&self.config.checks)
            .filter(|(_, c)| c.dependency.is_none())
            .all(|(t, _)| t.verdict() == Verdict::Healthy)
    }

    /// `name: detail` of each of the service's own checks that is unhealthy.
    fn failing_checks(&self) -> Vec<String> {
        self.thresholds
            .iter()
            .zip(&self.config.checks)
            .enumerate()
            .filter(|(_, (t, c))| c.dependency.is_none() && t.verdict() == Verdict::Unhealthy)
            .map(|(i, (_, c))| {
                let detail = self.last[i]
                    .as_ref()
                    .map(|(o, _)| o.detail.as_str())
                    .unwrap_or("");
                format!("{}: {detail}", c.name)
            })
            .collect()
    }

    fn evaluate(&mut self) {
        let now = self.at.now;
        let failing_checks = self.failing_checks();
        let mut waiting_on: Vec<String> = self
            .thresholds
            .iter()
            .zip(&self.config.checks)
            .filter(|(t, _)| t.verdict() == Verdict::Unhealthy)
            .filter_map(|(_, c)| c.dependency.clone())
            .collect();
        waiting_on.extend(
            self.dep_states
                .iter()
                .filter(|(_, st)| **st != ServiceState::Healthy)
                .map(|(n, st)| format!("{n} ({st:?})")),
        );
        let process_up = match &self.config.action {
            Action::Run { .. } => self.pid.is_some() && self.process_down.is_none(),
            _ => self.process_down.is_none(),
        };
        let own_failing = !failing_checks.is_empty() || self.process_down.is_some();
        let all_ok = self.own_checks_healthy() && process_up;

        // A restart in flight: wait for the action, then verify.
        if let Some(a) = self.attempt.take() {
            if a.running {
                let reason = format!("restart attempt {} running", a.number);
                self.attempt = Some(a);
                return self.set_state(ServiceState::Restarting, reason);
            }
            if all_ok {
                let record = v1::RestartAttempted {
                    service: self.config.name.clone(),
                    attempt: a.number,
                    succeeded: true,
                    detail: match self.pid {
                        Some(pid) => format!("healthy again, pid {pid}"),
                        None => "healthy again".into(),
                    },
                    took: Some(clock::duration(now.saturating_duration_since(a.started))),
                };
                self.record_attempt(record);
                self.next_attempt = None;
                self.control(false);
            } else if let Some(detail) = self.process_down.clone() {
                self.attempt = Some(a);
                self.attempt_failed(format!("did not stay up: {detail}"));
            } else if a.verify_until.is_some_and(|t| now >= t) {
                let detail = if failing_checks.is_empty() {
                    "checks not passing".to_owned()
                } else {
                    failing_checks.join("; ")
                };
                self.attempt = Some(a);
                let verify = self.config.policy.verify_timeout;
                let deadline = verify_deadline(&self.config);
                let within = if deadline > verify {
                    format!("startup_grace {deadline:?}")
                } else {
                    format!("verify_timeout {verify:?}")
                };
                self.attempt_failed(format!("not healthy within {within}: {detail}"));
            } else {
                let reason = format!("verifying restart attempt {}", a.number);
                self.attempt = Some(a);
                return self.set_state(ServiceState::Restarting, reason);
            }
        }
        // Re-read after a possible attempt failure (which marks unproven checks failing).
        let failing_checks = self.failing_checks();
        let own_failing = own_failing || !failing_checks.is_empty();
        let all_ok = self.own_checks_healthy() && process_up && self.process_down.is_none();
        let why = {
            let mut parts = failing_checks;
            if let Some(d) = &self.process_down {
                parts.insert(0, d.clone());
            }
            parts.join("; ")
        };

        let (state, reason) = if self.escalated {
            if all_ok {
                self.escalated = false;
                self.budget.clear();
                (
                    ServiceState::Healthy,
                    "recovered after escalation".to_owned(),
                )
            } else {
                (ServiceState::Escalated, self.reason.clone())
            }
        } else if own_failing {
            if !waiting_on.is_empty() {
                (
                    ServiceState::WaitingOnDependency,
                    format!(
                        "not restarting while {} failing: {}",
                        waiting_on.join(", "),
                        why
                    ),
                )
            } else if self.paused {
                (ServiceState::Unhealthy, format!("healing paused: {why}"))
            } else if self.config.action == Action::None {
                self.escalate(format!("unhealthy and no restart action configured: {why}"));
                (ServiceState::Escalated, self.reason.clone())
            } else if self.budget.exhausted(now) {
                let p = &self.config.policy;
                let reason = format!(
                    "{} restart attempts within {:?} did not make it healthy: {}",
                    p.max_attempts, p.window, why
                );
                self.escalate(reason);
                (ServiceState::Escalated, self.reason.clone())
            } else if self.next_attempt.is_some_and(|t| now < t) {
                let wait = self.next_attempt.map(|t| t - now).unwrap_or_default();
                (
                    ServiceState::Unhealthy,
                    format!("next restart in {wait:.1?}: {why}"),
                )
            } else {
                let n = self.start_restart(&why);
                (
                    ServiceState::Restarting,
                    format!("restart attempt {n}: {why}"),
                )
            }
        } else if all_ok {
            (ServiceState::Healthy, "all checks passing".to_owned())
        } else if !self.ever_healthy {
            (
                ServiceState::Starting,
                "waiting for checks to pass".to_owned(),
            )
        } else if self.recheck {
            (
                ServiceState::Starting,
                "re-checking after a dependency recovered".to_owned(),
            )
        } else {
            (
                ServiceState::Starting,
                "waiting for checks to pass again".to_owned(),
            )
        };

        // The re-check is over once no own check is unproven.
        if self.recheck
            && self
                .thresholds
                .iter()
                .zip(&self.config.checks)
                .all(|(t, c)| c.dependency.is_some() || t.verdict() != Verdict::Unknown)
        {
            self.recheck = false;
            self.control(false);
        }

        // Flapping: losing health too often. A transition is a loss of health (healthy, then
        // anything else); coming back is not counted, so one crash healed is one transition,
        // not two. A state of its own for what it reports; restarts stay bounded by the budget.
        let healthy = state == ServiceState::Healthy;
        if self.was_healthy && !healthy {
            self.flaps.record(now);
        }
        self.was_healthy = healthy;
        if healthy && !self.ever_healthy {
            self.ever_healthy = true;
            self.control(false);
        }
        let (state, reason) = if matches!(
            state,
            ServiceState::Healthy | ServiceState::Unhealthy | ServiceState::Starting
        ) && self.flaps.flapping(now)
        {
            (
                ServiceState::Flapping,
                format!(
                    "lost health {} times within {:?} (flap_transitions = {}); {reason}",
                    self.flaps.count(),
                    self.config.policy.flap_window,
                    self.config.policy.flap_transitions
                ),
            )
        } else {
            (state, reason)
        };
        self.set_state(state, reason);
    }

    /// Starts a restart attempt; returns its number within the window.
    fn start_restart(&mut self, why: &str) -> u32 {
        let now = self.at.now;
        let number = self.budget.record(now);
        tracing::info!(service = %self.config.name, attempt = number, %why, "restarting");
        self.attempt = Some(Attempt {
            number,
            started: now,
            running: true,
            verify_until: None,
        });
        self.effects.push(Effect::Restart);
        number
    }

    fn escalate(&mut self, reason: String) {
        self.escalated = true;
        self.reason = reason.clone();
        let last_results = self.last_results();
        tracing::error!(service = %self.config.name, %reason, "local healing exhausted; escalating");
        let kind = v1::event::Kind::Escalated(v1::Escalated {
            service: self.config.name.clone(),
            reason,
            last_results,
            attempts: self.attempts.iter().cloned().collect(),
        });
        self.emit(self.at.wall, kind);
    }

    fn set_state(&mut self, state: ServiceState, reason: String) {
        if state != self.state {
            tracing::info!(service = %self.config.name, from = ?self.state, to = ?state, %reason, "service state");
            let kind = v1::event::Kind::ServiceStateChanged(v1::ServiceStateChanged {
                service: self.config.name.clone(),
                from: self.state.wire() as i32,
                to: state.wire() as i32,
                reason: reason.clone(),
            });
            self.emit(self.at.wall, kind);
            self.state = state;
        }
        self.reason = reason;
        let snapshot = self.snapshot();
        self.effects.push(Effect::Publish(Box::new(snapshot)));
    }
}

/// How long after a start (the first or any restart) failures of `check` before its first
/// success are forgiven: its startup grace, and never less than the restart's verify timeout.
fn start_grace(config: &ServiceConfig, check: &CheckConfig) -> Duration {
    check.startup_grace.max(config.policy.verify_timeout)
}

/// How long after a restart the attempt may take to be healthy: the longest start grace of the
/// service's own checks (a shared dependency's checks don't judge a restart of ours).
fn verify_deadline(config: &ServiceConfig) -> Duration {
    config
        .checks
        .iter()
        .filter(|c| c.dependency.is_none())
        .map(|c| start_grace(config, c))
        .fold(config.policy.verify_timeout, Duration::max)
}

#[cfg(test)]
mod tests;
