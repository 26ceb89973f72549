//! The start of a term: every intent a previous leader journaled without an outcome is settled
//! against what AWS says, before anything new is decided.

use std::time::SystemTime;

use autoheal_policy as policy;

use crate::model::events::EventKind;
use crate::model::journal::Entry;
use crate::model::journal::Phase;
use crate::model::journal::Step;

use super::*;

impl Controller {
    /// Intents without outcome are calls a crash interrupted: ask AWS whether they took effect.
    pub(super) async fn reconcile(&mut self) {
        for intent in self.journal.in_flight() {
            let done = match intent.step {
                Step::Deregister | Step::Drain => {
                    let mut all = true;
                    for tg in &intent.target_groups {
                        match self.hands.lb.target_health(tg).await {
                            Ok(targets) => {
                                let registered = targets.iter().any(|t| {
                                    t.instance_id == intent.instance_id
                                        && !matches!(t.state.as_str(), "draining" | "unused")
                                });
                                all &= !registered;
                            }
                            Err(_) => all = false,
                        }
                    }
                    all
                }
                Step::Replace | Step::Terminate => {
                    let record = self.fleet.instance(&intent.instance_id);
                    match record.and_then(|r| r.asg_member) {
                        None => true,
                        Some(m) => m.health == "Unhealthy" || m.lifecycle.starts_with("Terminat"),
                    }
                }
                // Not destructive: an interrupted SSM command is treated as failed, and the ladder
                // goes on from there.
                Step::Ssm => false,
            };
            let phase = if done {
                Phase::Succeeded
            } else {
                Phase::Failed
            };
            let detail = if done {
                "reconciled after restart: AWS shows the action took effect".to_owned()
            } else {
                "reconciled after restart: AWS shows no effect; the ladder decides again".to_owned()
            };
            tracing::info!(key = %intent.key, step = intent.step.as_str(), done, "reconciled interrupted action");
            let outcome = Entry {
                phase,
                detail: detail.clone(),
                at_ms: now_ms(),
                fencing_token: self.token.unwrap_or_default(),
                ..intent.clone()
            };
            if let Err(error) = self.record(&outcome).await {
                tracing::error!(%error, "cannot journal a reconciliation");
                return;
            }
            self.fleet.record_event(
                &intent.instance_id,
                EventKind::ActionReconciled,
                format!("{}: {detail}", intent.step.as_str()),
            );
            // Tell the ladder what happened, so it moves on now rather than after a timeout.
            let id = policy::InstanceId::new(intent.instance_id.clone());
            let outcome = match (done, intent.step) {
                (true, Step::Deregister | Step::Drain) => policy::Outcome::Deregistered {
                    target_groups: intent
                        .target_groups
                        .iter()
                        .map(|t| policy::TargetGroup::new(t.clone()))
                        .collect(),
                },
                (true, Step::Replace | Step::Terminate) => policy::Outcome::ReplaceRequested,
                _ => policy::Outcome::Failed {
                    error: "interrupted by a coordinator restart or a change of leader".to_owned(),
                },
            };
            let _ = self.book.record(&id, outcome, ts(SystemTime::now()));
        }
        // Steps a previous term decided but never started (no intent in the journal): decide
        // them again now.
        let unstarted: Vec<policy::InstanceId> = self
            .book
            .in_flight()
            .filter(|r| matches!(r.stage, policy::Stage::Requested { .. }))
            .map(|r| r.instance.clone())
            .collect();
        for id in unstarted {
            let _ = self.book.record(
                &id,
                policy::Outcome::Failed {
                    error: "decided by a previous leader but never started".to_owned(),
                },
                ts(SystemTime::now()),
            );
        }
    }
}
