//! The supervisor of one service: owns its check thresholds, its restart budget and its state.
//! Inputs: probe results, process liveness, the state of the services it depends on, and the
//! pause switch. Outputs: restart commands, events, and its state over `watch`.

use std::{
    collections::{BTreeMap, VecDeque},
    time::SystemTime,
};

use autoheal_proto::v1;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_stream::{StreamExt, StreamMap, wrappers::WatchStream};
use tokio_util::sync::CancellationToken;

use crate::{
    action::{Liveness, ProcessCommand, RestartReply},
    check::{Control, ProbeResult},
    clock::{self, SharedClock},
    config::{Action, ServiceConfig},
    metrics::ServiceMetrics,
    policy::{FlapDetector, RestartBudget, Threshold},
    probe::Outcome,
    state::{CheckSnapshot, EventSink, ServiceSnapshot, ServiceState, Verdict},
};

/// Restart attempts kept as escalation evidence.
const MAX_EVIDENCE: usize = 20;

#[derive(Debug)]
pub struct Supervisor {
    pub config: ServiceConfig,
    pub clock: SharedClock,
    pub results: mpsc::Receiver<ProbeResult>,
    pub control: watch::Sender<Control>,
    pub liveness: mpsc::Receiver<Liveness>,
    pub process: mpsc::Sender<ProcessCommand>,
    pub deps: Vec<(String, watch::Receiver<ServiceSnapshot>)>,
    pub paused: watch::Receiver<bool>,
    pub events: EventSink,
    pub state: watch::Sender<ServiceSnapshot>,
    pub metrics: ServiceMetrics,
}

#[derive(Debug)]
enum Input {
    Result(ProbeResult),
    Liveness(Liveness),
    Restarted(RestartReply),
    Dep(String, ServiceState),
    Paused(bool),
    Tick,
}

#[derive(Debug)]
struct Attempt {
    number: u32,
    started: Instant,
    reply: Option<oneshot::Receiver<RestartReply>>,
    verify_until: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
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
    paused: bool,
}

/// The initial snapshot a supervisor publishes (before its first evaluation).
pub fn initial_snapshot(config: &ServiceConfig) -> ServiceSnapshot {
    ServiceSnapshot {
        name: config.name.clone(),
        state: ServiceState::Starting,
        reason: "starting".into(),
        pid: None,
        restarts: 0,
        checks: config
            .checks
            .iter()
            .map(|c| CheckSnapshot {
                name: c.name.clone(),
                kind: c.probe.kind().into(),
                dependency: c.dependency.clone(),
                status: Verdict::Unknown,
                detail: String::new(),
                last_probe_unix_ms: None,
            })
            .collect(),
    }
}

impl Supervisor {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let now = self.clock.now();
        // The stream map only wakes us; states are read fresh from `self.deps` when deciding,
        // so a change that races with another input is never decided on stale.
        let mut deps = StreamMap::new();
        let mut dep_states = BTreeMap::new();
        for (name, rx) in &self.deps {
            dep_states.insert(name.clone(), rx.borrow().state);
            deps.insert(name.clone(), WatchStream::new(rx.clone()));
        }
        let mut s = Inner {
            thresholds: self
                .config
                .checks
                .iter()
                .map(|c| {
                    // A process the agent starts itself gets the verify timeout to come up,
                    // like after a restart; otherwise the check's own startup grace.
                    let grace = match self.config.action {
                        Action::Run { .. } if c.dependency.is_none() => {
                            c.startup_grace.max(self.config.policy.verify_timeout)
                        }
                        _ => c.startup_grace,
                    };
                    Threshold::new(c.success_threshold, c.failure_threshold, now, grace)
                })
                .collect(),
            last: vec![None; self.config.checks.len()],
            generation: 0,
            state: ServiceState::Starting,
            reason: "starting".into(),
            ever_healthy: false,
            was_healthy: false,
            budget: RestartBudget::new(self.config.policy.clone()),
            flaps: FlapDetector::new(
                self.config.policy.flap_transitions,
                self.config.policy.flap_window,
            ),
            next_attempt: None,
            attempt: None,
            attempts: VecDeque::new(),
            escalated: false,
            pid: None,
            process_down: None,
            dep_states,
            dep_failing: vec![false; self.config.checks.len()],
            paused: *self.paused.borrow_and_update(),
        };
        // Probe quickly until the service is first seen healthy.
        self.control.send_replace(Control {
            generation: 0,
            fast: true,
        });
        loop {
            let wake = self.next_wake(&s);
            let mut reply = s.attempt.as_mut().and_then(|a| a.reply.take());
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(r) = self.results.recv() => Input::Result(r),
                Some(l) = self.liveness.recv() => Input::Liveness(l),
                r = async { match reply.as_mut() { Some(rx) => rx.await, None => std::future::pending().await } } => {
                    Input::Restarted(r.unwrap_or_else(|_| Err("process task ended".into())))
                }
                Some((name, snap)) = deps.next(), if !deps.is_empty() => Input::Dep(name, snap.state),
                changed = self.paused.changed() => match changed {
                    Ok(()) => Input::Paused(*self.paused.borrow_and_update()),
                    // The pause switch is gone: the agent is shutting down.
                    Err(_) => return,
                },
                () = sleep_until_opt(wake) => Input::Tick,
            };
            match input {
                Input::Result(r) => self.on_result(&mut s, r),
                Input::Liveness(l) => self.on_liveness(&mut s, l),
                Input::Restarted(r) => self.on_restart_done(&mut s, r),
                Input::Dep(name, state) => {
                    s.dep_states.insert(name, state);
                }
                Input::Paused(p) => s.paused = p,
                Input::Tick => {}
            }
            // Not finished: put the pending reply back.
            if let (Some(rx), Some(a)) = (reply, s.attempt.as_mut())
                && a.reply.is_none()
                && a.verify_until.is_none()
            {
                a.reply = Some(rx);
            }
            self.evaluate(&mut s);
        }
    }

    fn next_wake(&self, s: &Inner) -> Option<Instant> {
        let verify = s.attempt.as_ref().and_then(|a| a.verify_until);
        let flap = s.flaps.next_expiry();
        [verify, s.next_attempt, flap].into_iter().flatten().min()
    }

    fn on_result(&mut self, s: &mut Inner, r: ProbeResult) {
        if r.generation != s.generation || r.index >= s.thresholds.len() {
            return;
        }
        let now = self.clock.now();
        let changed = s.thresholds[r.index].observe(r.outcome.ok, now);
        s.last[r.index] = Some((r.outcome.clone(), r.at));
        if let Some(v) = changed {
            self.announce(s, r.index, v, &r.outcome.detail, r.at);
        }
    }

    fn announce(&self, s: &mut Inner, index: usize, v: Verdict, detail: &str, at: SystemTime) {
        let check = &self.config.checks[index];
        match &check.dependency {
            Some(dep) => {
                let failing = v == Verdict::Unhealthy;
                if failing != s.dep_failing[index] {
                    s.dep_failing[index] = failing;
                    self.events.emit(
                        at,
                        v1::event::Kind::DependencyChanged(v1::DependencyChanged {
                            dependency: dep.clone(),
                            check: format!("{}/{}", self.config.name, check.name),
                            failing,
                            detail: detail.to_owned(),
                        }),
                    );
                }
            }
            None => {
                if v != Verdict::Unknown {
                    self.events.emit(
                        at,
                        v1::event::Kind::CheckChanged(v1::CheckChanged {
                            service: self.config.name.clone(),
                            check: check.name.clone(),
                            status: v.wire() as i32,
                            detail: detail.to_owned(),
                        }),
                    );
                }
            }
        }
    }

    fn on_liveness(&mut self, s: &mut Inner, l: Liveness) {
        match l {
            Liveness::Up { pid } => {
                s.pid = Some(pid);
                s.process_down = None;
            }
            Liveness::Down { pid, detail } => {
                if pid.is_none() || pid == s.pid {
                    tracing::warn!(service = %self.config.name, %detail, "main process down");
                    s.pid = None;
                    s.process_down = Some(detail);
                }
            }
        }
    }

    fn on_restart_done(&mut self, s: &mut Inner, r: RestartReply) {
        let now = self.clock.now();
        let Some(a) = s.attempt.as_mut() else { return };
        a.reply = None;
        match r {
            Ok(pid) => {
                if pid.is_some() {
                    s.pid = pid;
                }
                s.process_down = None;
                // Start the checks over: a new generation (initial delays again), failures
                // before the first success forgiven until the verify deadline, fast probing.
                let verify = self.config.policy.verify_timeout;
                a.verify_until = Some(now + verify);
                s.generation += 1;
                // A shared dependency's checks keep their state: restarting us doesn't change it.
                for (t, c) in s.thresholds.iter_mut().zip(&self.config.checks) {
                    if c.dependency.is_none() {
                        t.reset(now, verify);
                    }
                }
                self.control.send_replace(Control {
                    generation: s.generation,
                    fast: true,
                });
            }
            Err(detail) => self.attempt_failed(s, format!("restart action failed: {detail}")),
        }
    }

    fn attempt_failed(&mut self, s: &mut Inner, detail: String) {
        let now = self.clock.now();
        let Some(a) = s.attempt.take() else { return };
        let record = v1::RestartAttempted {
            service: self.config.name.clone(),
            attempt: a.number,
            succeeded: false,
            detail,
            took: Some(clock::duration(now.saturating_duration_since(a.started))),
        };
        self.record_attempt(s, record);
        s.next_attempt = Some(s.budget.next_allowed(now, rand::random::<f64>()));
        // What was unproven at the deadline is failing now.
        for (i, t) in s.thresholds.iter_mut().enumerate() {
            if t.verdict() != Verdict::Healthy && self.config.checks[i].dependency.is_none() {
                if !t.fail_unproven() {
                    continue;
                }
                let (detail, at) = s.last[i]
                    .as_ref()
                    .map(|(o, at)| (o.detail.clone(), *at))
                    .unwrap_or_else(|| ("no result yet".into(), self.clock.wall()));
                self.announce_unhealthy(i, &detail, at);
            }
        }
        self.control.send_replace(Control {
            generation: s.generation,
            fast: false,
        });
    }

    fn announce_unhealthy(&self, index: usize, detail: &str, at: SystemTime) {
        let check = &self.config.checks[index];
        self.events.emit(
            at,
            v1::event::Kind::CheckChanged(v1::CheckChanged {
                service: self.config.name.clone(),
                check: check.name.clone(),
                status: v1::CheckStatus::Unhealthy as i32,
                detail: detail.to_owned(),
            }),
        );
    }

    fn record_attempt(&self, s: &mut Inner, record: v1::RestartAttempted) {
        self.metrics.restart(record.succeeded);
        self.events.emit(
            self.clock.wall(),
            v1::event::Kind::RestartAttempted(record.clone()),
        );
        s.attempts.push_back(record);
        while s.attempts.len() > MAX_EVIDENCE {
            s.attempts.pop_front();
        }
    }

    fn own_checks_healthy(&self, s: &Inner) -> bool {
        s.thresholds
            .iter()
            .zip(&self.config.checks)
            .filter(|(_, c)| c.dependency.is_none())
            .all(|(t, _)| t.verdict() == Verdict::Healthy)
    }

    fn evaluate(&mut self, s: &mut Inner) {
        let now = self.clock.now();
        s.paused = *self.paused.borrow();
        for (name, rx) in &self.deps {
            s.dep_states.insert(name.clone(), rx.borrow().state);
        }
        let failing_checks: Vec<String> = s
            .thresholds
            .iter()
            .zip(&self.config.checks)
            .enumerate()
            .filter(|(_, (t, c))| c.dependency.is_none() && t.verdict() == Verdict::Unhealthy)
            .map(|(i, (_, c))| {
                let detail = s.last[i]
                    .as_ref()
                    .map(|(o, _)| o.detail.as_str())
                    .unwrap_or("");
                format!("{}: {detail}", c.name)
            })
            .collect();
        let mut waiting_on: Vec<String> = s
            .thresholds
            .iter()
            .zip(&self.config.checks)
            .filter(|(t, _)| t.verdict() == Verdict::Unhealthy)
            .filter_map(|(_, c)| c.dependency.clone())
            .collect();
        waiting_on.extend(
            s.dep_states
                .iter()
                .filter(|(_, st)| **st != ServiceState::Healthy)
                .map(|(n, st)| format!("{n} ({st:?})")),
        );
        let process_up = match &self.config.action {
            Action::Run { .. } => s.pid.is_some() && s.process_down.is_none(),
            _ => s.process_down.is_none(),
        };
        let own_failing = !failing_checks.is_empty() || s.process_down.is_some();
        let all_ok = self.own_checks_healthy(s) && process_up;

        // A restart in flight: wait for the action, then verify.
        if let Some(a) = &s.attempt {
            if a.reply.is_some() {
                return self.set_state(
                    s,
                    ServiceState::Restarting,
                    format!("restart attempt {} running", a.number),
                );
            }
            if all_ok {
                let a = s.attempt.take().expect("checked above");
                let record = v1::RestartAttempted {
                    service: self.config.name.clone(),
                    attempt: a.number,
                    succeeded: true,
                    detail: match s.pid {
                        Some(pid) => format!("healthy again, pid {pid}"),
                        None => "healthy again".into(),
                    },
                    took: Some(clock::duration(now.saturating_duration_since(a.started))),
                };
                self.record_attempt(s, record);
                s.next_attempt = None;
                self.control.send_replace(Control {
                    generation: s.generation,
                    fast: false,
                });
            } else if let Some(detail) = s.process_down.clone() {
                self.attempt_failed(s, format!("did not stay up: {detail}"));
            } else if a.verify_until.is_some_and(|t| now >= t) {
                let detail = if failing_checks.is_empty() {
                    "checks not passing".to_owned()
                } else {
                    failing_checks.join("; ")
                };
                self.attempt_failed(
                    s,
                    format!(
                        "not healthy within verify_timeout {:?}: {detail}",
                        self.config.policy.verify_timeout
                    ),
                );
            } else {
                let n = a.number;
                return self.set_state(
                    s,
                    ServiceState::Restarting,
                    format!("verifying restart attempt {n}"),
                );
            }
        }
        // Re-read after a possible attempt failure (which marks unproven checks failing).
        let failing_checks: Vec<String> = s
            .thresholds
            .iter()
            .zip(&self.config.checks)
            .enumerate()
            .filter(|(_, (t, c))| c.dependency.is_none() && t.verdict() == Verdict::Unhealthy)
            .map(|(i, (_, c))| {
                let detail = s.last[i]
                    .as_ref()
                    .map(|(o, _)| o.detail.as_str())
                    .unwrap_or("");
                format!("{}: {detail}", c.name)
            })
            .collect();
        let own_failing = own_failing || !failing_checks.is_empty();
        let all_ok = self.own_checks_healthy(s) && process_up && s.process_down.is_none();
        let why = {
            let mut parts = failing_checks.clone();
            if let Some(d) = &s.process_down {
                parts.insert(0, d.clone());
            }
            parts.join("; ")
        };

        let (state, reason) = if s.escalated {
            if all_ok {
                s.escalated = false;
                s.budget.clear();
                (
                    ServiceState::Healthy,
                    "recovered after escalation".to_owned(),
                )
            } else {
                (ServiceState::Escalated, s.reason.clone())
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
            } else if s.paused {
                (ServiceState::Unhealthy, format!("healing paused: {}", why))
            } else if self.config.action == Action::None {
                self.escalate(
                    s,
                    format!("unhealthy and no restart action configured: {}", why),
                );
                (ServiceState::Escalated, s.reason.clone())
            } else if s.budget.exhausted(now) {
                let p = &self.config.policy;
                self.escalate(
                    s,
                    format!(
                        "{} restart attempts within {:?} did not make it healthy: {}",
                        p.max_attempts, p.window, why
                    ),
                );
                (ServiceState::Escalated, s.reason.clone())
            } else if s.next_attempt.is_some_and(|t| now < t) {
                let wait = s.next_attempt.map(|t| t - now).unwrap_or_default();
                (
                    ServiceState::Unhealthy,
                    format!("next restart in {wait:.1?}: {}", why),
                )
            } else {
                self.start_restart(s, now, why.clone());
                let n = s.attempt.as_ref().map_or(0, |a| a.number);
                (
                    ServiceState::Restarting,
                    format!("restart attempt {n}: {}", why),
                )
            }
        } else if all_ok {
            (ServiceState::Healthy, "all checks passing".to_owned())
        } else if !s.ever_healthy {
            (
                ServiceState::Starting,
                "waiting for checks to pass".to_owned(),
            )
        } else {
            (
                ServiceState::Starting,
                "waiting for checks to pass again".to_owned(),
            )
        };

        // Flapping: healthy <-> not healthy too often. A state of its own for what it reports;
        // restarts stay bounded by the budget either way.
        let healthy = state == ServiceState::Healthy;
        if healthy != s.was_healthy && (s.ever_healthy || healthy) {
            s.flaps.record(now);
        }
        s.was_healthy = healthy;
        if healthy && !s.ever_healthy {
            s.ever_healthy = true;
            self.control.send_replace(Control {
                generation: s.generation,
                fast: false,
            });
        }
        let (state, reason) = if matches!(
            state,
            ServiceState::Healthy | ServiceState::Unhealthy | ServiceState::Starting
        ) && s.flaps.flapping(now)
        {
            (
                ServiceState::Flapping,
                format!(
                    "{} health transitions within {:?}; {reason}",
                    s.flaps.count(),
                    self.config.policy.flap_window
                ),
            )
        } else {
            (state, reason)
        };
        self.set_state(s, state, reason);
    }

    fn start_restart(&mut self, s: &mut Inner, now: Instant, why: String) {
        let number = s.budget.record(now);
        let (tx, rx) = oneshot::channel();
        tracing::info!(service = %self.config.name, attempt = number, %why, "restarting");
        match self.process.try_send(ProcessCommand::Restart { reply: tx }) {
            Ok(()) => {
                s.attempt = Some(Attempt {
                    number,
                    started: now,
                    reply: Some(rx),
                    verify_until: None,
                });
            }
            Err(e) => {
                s.attempt = Some(Attempt {
                    number,
                    started: now,
                    reply: None,
                    verify_until: None,
                });
                self.attempt_failed(s, format!("process task unavailable: {e}"));
            }
        }
    }

    fn escalate(&mut self, s: &mut Inner, reason: String) {
        s.escalated = true;
        s.reason = reason.clone();
        let mut last_results: Vec<v1::CheckResult> = self
            .config
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| v1::CheckResult {
                check: c.name.clone(),
                status: s.thresholds[i].verdict().wire() as i32,
                detail: s.last[i]
                    .as_ref()
                    .map(|(o, _)| o.detail.clone())
                    .unwrap_or_default(),
                at: s.last[i].as_ref().map(|(_, at)| clock::timestamp(*at)),
            })
            .collect();
        if let Some(d) = &s.process_down {
            last_results.insert(
                0,
                v1::CheckResult {
                    check: "main-process".into(),
                    status: v1::CheckStatus::Unhealthy as i32,
                    detail: d.clone(),
                    at: Some(clock::timestamp(self.clock.wall())),
                },
            );
        }
        tracing::error!(service = %self.config.name, %reason, "local healing exhausted; escalating");
        self.metrics.escalated();
        self.events.emit(
            self.clock.wall(),
            v1::event::Kind::Escalated(v1::Escalated {
                service: self.config.name.clone(),
                reason,
                last_results,
                attempts: s.attempts.iter().cloned().collect(),
            }),
        );
    }

    fn set_state(&mut self, s: &mut Inner, state: ServiceState, reason: String) {
        if state != s.state {
            tracing::info!(service = %self.config.name, from = ?s.state, to = ?state, %reason, "service state");
            self.events.emit(
                self.clock.wall(),
                v1::event::Kind::ServiceStateChanged(v1::ServiceStateChanged {
                    service: self.config.name.clone(),
                    from: s.state.wire() as i32,
                    to: state.wire() as i32,
                    reason: reason.clone(),
                }),
            );
            s.state = state;
        }
        s.reason = reason;
        let now = self.clock.now();
        let snapshot = ServiceSnapshot {
            name: self.config.name.clone(),
            state,
            reason: s.reason.clone(),
            pid: s.pid,
            restarts: s.budget.used(now),
            checks: self
                .config
                .checks
                .iter()
                .enumerate()
                .map(|(i, c)| CheckSnapshot {
                    name: c.name.clone(),
                    kind: c.probe.kind().into(),
                    dependency: c.dependency.clone(),
                    status: s.thresholds[i].verdict(),
                    detail: s.last[i]
                        .as_ref()
                        .map(|(o, _)| o.detail.clone())
                        .unwrap_or_default(),
                    last_probe_unix_ms: s.last[i].as_ref().and_then(|(_, at)| {
                        at.duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_millis() as u64)
                    }),
                })
                .collect(),
        };
        self.state.send_if_modified(|old| {
            if *old == snapshot {
                false
            } else {
                *old = snapshot;
                true
            }
        });
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
