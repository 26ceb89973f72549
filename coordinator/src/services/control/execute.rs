//! Carrying out a decision: the journaled intent, the AWS call (retried, bounded, fenced), the
//! outcome; operator drains; SSM command results.

use std::time::SystemTime;

use autoheal_policy as policy;

use crate::adapters::aws;
use crate::model::events::EventKind;
use crate::model::inventory::CommandStatus;
use crate::model::journal::Entry;
use crate::model::journal::Phase;
use crate::model::journal::Step;
use crate::ports::aws::Fence;
use crate::ports::store::StoreError;
use crate::services::lease::LeaderState;

use super::*;

impl Controller {
    /// Writes a journal entry with the current term's token. A fenced write means another
    /// coordinator leads: tell the lease (it steps down) and act on nothing.
    pub(super) async fn record(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let appended = self.journal.append(entry).await;
        if appended.is_ok() {
            crate::metrics::global().journaled(entry.step.as_str(), entry.phase.as_str());
        }
        match appended {
            Err(error) if error.is_fenced() => {
                tracing::error!(%error, "fenced: stepping down");
                self.lease.report_fenced(entry.fencing_token).await;
                self.token = None;
                Err(error)
            }
            other => other,
        }
    }

    pub(super) async fn execute(
        &mut self,
        d: &policy::Decision,
        action: &policy::Action,
    ) -> policy::Outcome {
        let instance = d.instance.to_string();
        let step = step_of(action, self.replace_with(&instance));
        // "Already done" means done for *this* remediation: a success journaled before it
        // started (an earlier remediation of the same instance) does not count.
        let since = self
            .book
            .in_flight_for(&d.instance)
            .map_or_else(now_ms, |r| r.started_at.as_millis());
        if let Some(done) = self.journal.succeeded_since(&instance, step, since) {
            tracing::info!(instance, step = step.as_str(), key = %done.key, "already done; not repeating");
            return done_outcome(action);
        }
        let key = format!("{instance}/{}/{}", step.as_str(), now_ms());
        let intent = Entry {
            key: key.clone(),
            instance_id: instance.clone(),
            asg: d.asg.to_string(),
            step,
            phase: Phase::Intent,
            target_groups: target_groups(action),
            reason: d.reason.clone(),
            detail: String::new(),
            fencing_token: self.token.unwrap_or_default(),
            at_ms: now_ms(),
            requested_by: String::new(),
            in_flight_until_ms: now_ms().saturating_add(millis(self.settings.in_flight)),
        };
        if self.token.is_none() {
            return policy::Outcome::Failed {
                error: "not the leader".to_owned(),
            };
        }
        fault_point("pause-before-intent", step);
        if let Err(error) = self.record(&intent).await {
            // A coordinator that can't write its journal must not act.
            tracing::error!(%error, "not acting");
            self.fleet.record_event(
                &instance,
                EventKind::ActionFailed,
                format!("{step:?} not attempted: {error}"),
            );
            return policy::Outcome::Failed {
                error: error.to_string(),
            };
        }
        self.fleet.record_event(
            &instance,
            EventKind::ActionStarted,
            format!("{}: {}", step.as_str(), d.reason),
        );
        let fence = self.lease.fence(intent.fencing_token);
        let result = self.call(&instance, action, &key, &fence).await;
        fault_point("crash-after-call", step);
        let (phase, detail, outcome) = match result {
            Ok((detail, outcome)) => (Phase::Succeeded, detail, outcome),
            Err(error) => (
                Phase::Failed,
                error.to_string(),
                policy::Outcome::Failed {
                    error: error.to_string(),
                },
            ),
        };
        let entry = Entry {
            phase,
            detail: detail.clone(),
            at_ms: now_ms(),
            ..intent
        };
        if let Err(error) = self.record(&entry).await {
            tracing::error!(%error, "cannot journal an outcome; reconciliation will settle it");
        }
        let kind = if phase == Phase::Succeeded {
            EventKind::ActionSucceeded
        } else {
            EventKind::ActionFailed
        };
        self.fleet
            .record_event(&instance, kind, format!("{}: {detail}", step.as_str()));
        outcome
    }

    pub(super) async fn call(
        &mut self,
        instance: &str,
        action: &policy::Action,
        key: &str,
        fence: &dyn Fence,
    ) -> Result<(String, policy::Outcome), CallError> {
        match action {
            policy::Action::Deregister { target_groups } => {
                for tg in target_groups {
                    self.hands
                        .lb
                        .deregister(tg.as_str(), instance, fence)
                        .await
                        .map_err(CallError::Aws)?;
                }
                Ok((
                    format!(
                        "deregistered from {}",
                        target_groups
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    policy::Outcome::Deregistered {
                        target_groups: target_groups.clone(),
                    },
                ))
            }
            policy::Action::Replace => {
                match self.replace_with(instance) {
                    ReplaceWith::SetInstanceHealth => self
                        .hands
                        .groups
                        .mark_unhealthy(instance, self.settings.respect_grace, fence)
                        .await
                        .map_err(CallError::Aws)?,
                    ReplaceWith::Terminate => self
                        .hands
                        .groups
                        .terminate(instance, fence)
                        .await
                        .map_err(CallError::Aws)?,
                }
                Ok((
                    "replacement requested from the auto scaling group".to_owned(),
                    policy::Outcome::ReplaceRequested,
                ))
            }
            policy::Action::SsmRemediate => {
                let units: Vec<String> = self
                    .fleet
                    .instance(instance)
                    .and_then(|r| r.agent)
                    .map(|a| a.declared.iter().filter_map(|s| s.unit.clone()).collect())
                    .unwrap_or_default();
                let script = aws::remediation_script(&units).map_err(CallError::Script)?;
                let command = self
                    .hands
                    .commands
                    .run(instance, &script, &format!("autoheal {key}"), fence)
                    .await
                    .map_err(CallError::Aws)?;
                self.pending_commands
                    .insert(instance.to_owned(), (key.to_owned(), command.clone()));
                Ok((
                    format!("SSM command {command} sent"),
                    policy::Outcome::SsmSent,
                ))
            }
        }
    }

    /// Operator-requested deregistration. Guardrails still apply (min healthy, brakes…) except
    /// the global pause, which holds automatic actions, not a person's deliberate one. Dry-run
    /// records and doesn't act. The instance is then skipped, so automation doesn't fight it.
    pub(super) async fn drain(
        &mut self,
        instance: &str,
        reason: &str,
        by: &str,
    ) -> Result<Entry, DrainError> {
        let Some(token) = self.token else {
            return Err(DrainError::Failed(match self.lease.current() {
                LeaderState::Follower {
                    leader_endpoint: Some(e),
                } => {
                    format!("this coordinator does not lead; the leader is {e}")
                }
                _ => "this coordinator does not lead".to_owned(),
            }));
        };
        let now = SystemTime::now();
        let (snapshot, _) = self.snapshot(now);
        let id = policy::InstanceId::new(instance.to_owned());
        let view = snapshot
            .instance(&id)
            .cloned()
            .ok_or_else(|| DrainError::NotFound(instance.to_owned()))?;
        let what = self
            .engine
            .what_if(
                &snapshot,
                &self.book,
                &id,
                policy::Step::Deregister,
                ts(now),
            )
            .map_err(|e| DrainError::Failed(e.to_string()))?;
        let dry_run = self.engine.config().for_asg(&view.asg).dry_run;
        let held: Vec<String> = what
            .held_by
            .iter()
            .filter(|g| {
                !matches!(
                    g,
                    policy::Guardrail::Paused { .. } | policy::Guardrail::DryRun { .. }
                )
            })
            .map(policy::Guardrail::reason)
            .collect();
        if !held.is_empty() {
            return Err(DrainError::Held(held.join("; ")));
        }
        let target_groups: Vec<String> = view
            .targets
            .iter()
            .filter(|t| t.state.is_registered() && t.state != policy::TargetState::Draining)
            .map(|t| t.target_group.to_string())
            .collect();
        let mut entry = Entry {
            key: format!("{instance}/drain/{}", now_ms()),
            instance_id: instance.to_owned(),
            asg: view.asg.to_string(),
            step: Step::Drain,
            phase: if dry_run {
                Phase::WouldAct
            } else {
                Phase::Intent
            },
            target_groups: target_groups.clone(),
            reason: reason.to_owned(),
            detail: String::new(),
            fencing_token: token,
            at_ms: now_ms(),
            requested_by: by.to_owned(),
            in_flight_until_ms: now_ms().saturating_add(millis(self.settings.in_flight)),
        };
        self.record(&entry)
            .await
            .map_err(|e| DrainError::Failed(e.to_string()))?;
        if dry_run {
            self.fleet.record_event(
                instance,
                EventKind::DryRun,
                format!("would drain (requested by {by}): {reason}"),
            );
            return Ok(entry);
        }
        let mut failure = None;
        let fence = self.lease.fence(token);
        for tg in &target_groups {
            if let Err(e) = self.hands.lb.deregister(tg, instance, &fence).await {
                failure = Some(e.to_string());
                break;
            }
        }
        entry.phase = if failure.is_some() {
            Phase::Failed
        } else {
            Phase::Succeeded
        };
        entry.detail = failure.clone().unwrap_or_else(|| {
            format!("deregistered from {} target group(s)", target_groups.len())
        });
        entry.at_ms = now_ms();
        if let Err(error) = self.record(&entry).await {
            tracing::error!(%error, "cannot journal a drain outcome");
        }
        if let Some(error) = failure {
            self.fleet
                .record_event(instance, EventKind::ActionFailed, format!("drain: {error}"));
            return Err(DrainError::Failed(error));
        }
        if let Err(error) = self
            .fleet
            .set_skipped(instance, true, &format!("drained: {reason}"), by)
            .await
        {
            tracing::warn!(%error, "cannot persist the skip after a drain");
        }
        self.fleet.record_event(
            instance,
            EventKind::ActionSucceeded,
            format!("drained by {by}: {reason}"),
        );
        Ok(entry)
    }

    /// Looks at the real result of SSM commands in flight (not "sent" = "repaired").
    pub(super) async fn poll_commands(&mut self) {
        let pending: Vec<_> = self
            .pending_commands
            .iter()
            .map(|(i, (k, c))| (i.clone(), k.clone(), c.clone()))
            .collect();
        for (instance, key, command) in pending {
            let ok = match self.hands.commands.status(&command, &instance).await {
                Ok(CommandStatus::Pending) => continue,
                Ok(CommandStatus::Succeeded { .. }) => true,
                Ok(CommandStatus::Failed { status, .. }) => {
                    self.fleet.record_event(
                        &instance,
                        EventKind::SsmFinished,
                        format!("SSM command {command}: {status}"),
                    );
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the SSM command's result; will ask again");
                    continue;
                }
            };
            self.pending_commands.remove(&instance);
            tracing::info!(instance, key, ok, "SSM command finished");
            let id = policy::InstanceId::new(instance.clone());
            if let Err(error) = self.book.record(
                &id,
                policy::Outcome::SsmFinished { ok },
                ts(SystemTime::now()),
            ) {
                tracing::debug!(%error, "SSM result for a remediation that moved on");
            }
        }
    }
}

/// Fault injection for the crash-safety tests, compiled only with the `fault-injection` feature
/// (which the end-to-end test crate turns on and no release build has):
/// - `AUTOHEAL_FAULT=crash-after-call:<step>`: abort right after that AWS call returns, before its
///   outcome is journaled;
/// - `AUTOHEAL_FAULT=pause-before-intent:<step>`: SIGSTOP ourselves just before writing that
///   step's intent, as a long GC pause or a frozen VM would.
#[cfg(feature = "fault-injection")]
pub(super) fn fault_point(point: &str, step: Step) {
    if std::env::var("AUTOHEAL_FAULT").is_ok_and(|f| f == format!("{point}:{}", step.as_str())) {
        eprintln!("AUTOHEAL_FAULT: {point} {}", step.as_str());
        if point == "crash-after-call" {
            std::process::abort();
        }
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &std::process::id().to_string()])
            .status();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(super) fn fault_point(_point: &str, _step: Step) {}

pub(super) fn step_of(action: &policy::Action, replace_with: ReplaceWith) -> Step {
    match action {
        policy::Action::Deregister { .. } => Step::Deregister,
        policy::Action::Replace => match replace_with {
            ReplaceWith::SetInstanceHealth => Step::Replace,
            ReplaceWith::Terminate => Step::Terminate,
        },
        policy::Action::SsmRemediate => Step::Ssm,
    }
}

pub(super) fn target_groups(action: &policy::Action) -> Vec<String> {
    match action {
        policy::Action::Deregister { target_groups } => {
            target_groups.iter().map(|t| t.to_string()).collect()
        }
        _ => Vec::new(),
    }
}

/// What the ladder hears when the journal shows the step already done.
pub(super) fn done_outcome(action: &policy::Action) -> policy::Outcome {
    match action {
        policy::Action::Deregister { target_groups } => policy::Outcome::Deregistered {
            target_groups: target_groups.clone(),
        },
        policy::Action::Replace => policy::Outcome::ReplaceRequested,
        policy::Action::SsmRemediate => policy::Outcome::SsmSent,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a step's AWS call did not happen: AWS said no (with whether retrying could help, and
/// whether the fence stopped it), or the request could not be built safely.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error(transparent)]
    Aws(crate::ports::aws::AwsError),
    #[error(transparent)]
    Script(aws::UnsafeUnit),
}
