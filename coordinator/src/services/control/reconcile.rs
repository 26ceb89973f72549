//! The start of a term: every intent a previous leader (or this process before a crash)
//! journaled without an outcome is settled against what AWS says — but only once its call can no
//! longer land — and every step the remediation book says was requested is matched with what the
//! journal says happened to it, before anything new is decided.

use std::time::SystemTime;

use autoheal_policy as policy;

use crate::model::events::EventKind;
use crate::model::inventory::{AsgHealth, Lifecycle, TargetState};
use crate::model::journal::Entry;
use crate::model::journal::Phase;
use crate::model::journal::Step;

use super::*;

/// What AWS says about an interrupted intent.
enum Effect {
    /// The action took effect.
    Done,
    /// It did not.
    NotDone,
    /// AWS could not tell us now: ask again at the next pass.
    Unknown(String),
}

impl Controller {
    /// Settles what earlier terms left open. Returns `true` once everything is settled; `false`
    /// while some intent may still be in flight or AWS or the store could not answer (this is
    /// called again at the next pass, and nothing new is decided until it returns `true`).
    pub(super) async fn reconcile(&mut self) -> bool {
        let now = now_ms();
        let mut settled = true;
        for intent in self.journal.in_flight() {
            let until = intent.in_flight_until(self.settings.in_flight);
            if now < until {
                tracing::info!(
                    key = %intent.key,
                    step = intent.step.as_str(),
                    wait_ms = until - now,
                    "an interrupted call may still land: deciding once it no longer can"
                );
                settled = false;
                continue;
            }
            let done = match self.effect_of(&intent).await {
                Effect::Done => true,
                Effect::NotDone => false,
                Effect::Unknown(why) => {
                    tracing::warn!(key = %intent.key, %why, "cannot tell whether an interrupted action took effect; asking again next pass");
                    self.fleet.record_event(
                        &intent.instance_id,
                        EventKind::ActionFailed,
                        format!(
                            "{}: cannot tell yet whether the interrupted call took effect: {why}",
                            intent.step.as_str()
                        ),
                    );
                    settled = false;
                    continue;
                }
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
                tracing::error!(%error, "cannot journal a reconciliation; trying again next pass");
                return false;
            }
            self.fleet.record_event(
                &intent.instance_id,
                EventKind::ActionReconciled,
                format!("{}: {detail}", intent.step.as_str()),
            );
        }
        if !settled {
            return false;
        }
        // The book and the journal must agree whatever the crash instant: a step the book says
        // was requested gets the outcome the journal holds for it (a success journaled just
        // before a crash is a success, not "never started").
        let requested: Vec<(policy::InstanceId, policy::Step, policy::Timestamp)> = self
            .book
            .in_flight()
            .filter_map(|r| match r.stage {
                policy::Stage::Requested { step, .. } => {
                    Some((r.instance.clone(), step, r.stage_since))
                }
                _ => None,
            })
            .collect();
        for (id, step, since) in requested {
            let outcome = match self
                .journal
                .outcome_since(id.as_str(), step, since.as_millis())
            {
                Some(entry) if entry.phase == Phase::Succeeded => succeeded(&entry),
                Some(entry) => policy::Outcome::Failed {
                    error: format!("{}: {}", entry.step.as_str(), entry.detail),
                },
                None => policy::Outcome::Failed {
                    error: "decided by a previous leader but never started".to_owned(),
                },
            };
            tracing::info!(instance = %id, ?step, ?outcome, "requested step settled from the journal");
            let _ = self.book.record(&id, outcome, ts(SystemTime::now()));
        }
        true
    }

    /// Asks AWS whether `intent` took effect.
    async fn effect_of(&self, intent: &Entry) -> Effect {
        match intent.step {
            Step::Deregister | Step::Drain => {
                for tg in &intent.target_groups {
                    match self.hands.lb.target_health(tg).await {
                        Ok(targets) => {
                            let registered = targets.iter().any(|t| {
                                t.instance_id == intent.instance_id
                                    && !matches!(
                                        t.state,
                                        TargetState::Draining | TargetState::Unused
                                    )
                            });
                            if registered {
                                return Effect::NotDone;
                            }
                        }
                        Err(error) => return Effect::Unknown(error.to_string()),
                    }
                }
                Effect::Done
            }
            Step::Replace | Step::Terminate => {
                // The inventory was refreshed this pass (a pass runs only on a fresh one).
                match self
                    .fleet
                    .instance(&intent.instance_id)
                    .and_then(|r| r.asg_member)
                {
                    None => Effect::Done,
                    Some(m)
                        if m.health == AsgHealth::Unhealthy
                            || m.lifecycle == Lifecycle::Terminating =>
                    {
                        Effect::Done
                    }
                    Some(_) => Effect::NotDone,
                }
            }
            // Not destructive: an interrupted SSM command is treated as not done, and the
            // ladder goes on from there.
            Step::Ssm => Effect::NotDone,
        }
    }
}

/// What the ladder hears for a step the journal shows succeeded.
fn succeeded(entry: &Entry) -> policy::Outcome {
    match entry.step {
        Step::Deregister | Step::Drain => policy::Outcome::Deregistered {
            target_groups: entry
                .target_groups
                .iter()
                .map(|t| policy::TargetGroup::new(t.clone()))
                .collect(),
        },
        Step::Replace | Step::Terminate => policy::Outcome::ReplaceRequested,
        Step::Ssm => policy::Outcome::SsmSent,
    }
}
