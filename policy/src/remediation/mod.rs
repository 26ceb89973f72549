//! Remediations in flight and recently ended: where each instance is on the ladder. The engine
//! writes intents into the book as it decides; the coordinator feeds back outcomes with
//! [`RemediationBook::record`] and persists the book with its journal.

use std::collections::BTreeMap;
use std::fmt;

use crate::fleet::{AsgName, InstanceId, TargetGroup};
use crate::time::Timestamp;

/// Why a remediation started: which rung of the ladder the instance entered on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "cause", rename_all = "kebab-case"))]
pub enum Cause {
    /// The agent exhausted local healing for `service`.
    Escalated {
        /// The service it could not heal.
        service: String,
    },
    /// The agent went silent and the ALB reports the instance failing.
    Silent,
    /// The agent is fine but the ALB has failed it long enough, and the group is configured to act.
    AlbUnhealthy,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Escalated { service } => write!(f, "agent escalated {service}"),
            Cause::Silent => f.write_str("agent silent and ALB failing"),
            Cause::AlbUnhealthy => f.write_str("ALB failing with a healthy agent"),
        }
    }
}

/// A step that calls AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum Step {
    /// Run the fixed SSM command (restart agent and services).
    Ssm,
    /// Deregister from every target group.
    Deregister,
    /// `SetInstanceHealth Unhealthy` so the ASG replaces the instance.
    Replace,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Ssm => "SSM remediation",
            Step::Deregister => "deregistration",
            Step::Replace => "replacement",
        })
    }
}

/// Where a remediation is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(into = "wire::Stage", from = "wire::Stage"))]
pub enum Stage {
    /// `step` was decided (attempt `attempt`, counting from 1); its outcome has not come back.
    Requested {
        /// The step.
        step: Step,
        /// Which attempt.
        attempt: u32,
    },
    /// Attempt `attempt` of `step` failed; the engine tries again while attempts remain.
    Failed {
        /// The step.
        step: Step,
        /// The attempt that failed.
        attempt: u32,
        /// What AWS said.
        error: String,
    },
    /// The SSM command was sent; waiting for the agent to come back. `result` is the command's own
    /// result once known.
    SsmSent {
        /// `Some(true)` if the command succeeded, `Some(false)` if it failed.
        result: Option<bool>,
    },
    /// Deregistered; connections draining.
    Draining {
        /// The groups it was removed from.
        target_groups: Vec<TargetGroup>,
    },
    /// Connections drained; replacement next.
    Drained,
    /// Over.
    Finished(Ending),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Requested { step, attempt } => write!(f, "{step} requested (attempt {attempt})"),
            Stage::Failed {
                step,
                attempt,
                error,
            } => write!(f, "{step} attempt {attempt} failed: {error}"),
            Stage::SsmSent { result: None } => f.write_str("SSM command sent"),
            Stage::SsmSent { result: Some(true) } => f.write_str("SSM command succeeded"),
            Stage::SsmSent {
                result: Some(false),
            } => f.write_str("SSM command failed"),
            Stage::Draining { target_groups } => {
                write!(f, "draining from {} target group(s)", target_groups.len())
            }
            Stage::Drained => f.write_str("drained"),
            Stage::Finished(ending) => write!(f, "finished: {ending}"),
        }
    }
}

/// How a remediation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "ending", rename_all = "kebab-case"))]
pub enum Ending {
    /// The instance recovered before traffic was taken from it.
    Recovered,
    /// The ASG was told to replace it.
    Replaced,
    /// A step failed `max_attempts` times; a person must look.
    GaveUp {
        /// The step.
        step: Step,
        /// The last error.
        error: String,
    },
    /// The instance left the fleet by other means.
    Gone,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Recovered => f.write_str("recovered"),
            Ending::Replaced => f.write_str("replacement requested"),
            Ending::GaveUp { step, error } => write!(f, "gave up on {step}: {error}"),
            Ending::Gone => f.write_str("instance left the fleet"),
        }
    }
}

/// What happened to a step the coordinator carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// SSM accepted the command.
    SsmSent,
    /// The SSM command finished.
    SsmFinished {
        /// It exited successfully.
        ok: bool,
    },
    /// Deregistered from these target groups.
    Deregistered {
        /// The groups.
        target_groups: Vec<TargetGroup>,
    },
    /// Draining finished (optional: the engine also sees it in the ALB view).
    Drained,
    /// `SetInstanceHealth Unhealthy` succeeded.
    ReplaceRequested,
    /// The step's AWS call failed for good (after the coordinator's own retries).
    Failed {
        /// What AWS said.
        error: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::SsmSent => f.write_str("SSM command sent"),
            Outcome::SsmFinished { ok } => write!(f, "SSM command finished (ok: {ok})"),
            Outcome::Deregistered { target_groups } => {
                write!(
                    f,
                    "deregistered from {} target group(s)",
                    target_groups.len()
                )
            }
            Outcome::Drained => f.write_str("drained"),
            Outcome::ReplaceRequested => f.write_str("replacement requested"),
            Outcome::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// One line of a remediation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// When.
    pub at: Timestamp,
    /// The stage entered.
    pub stage: Stage,
}

/// One instance's remediation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Remediation {
    /// The instance.
    pub instance: InstanceId,
    /// Its ASG.
    pub asg: AsgName,
    /// Why it started.
    pub cause: Cause,
    /// When it started.
    pub started_at: Timestamp,
    /// Where it is.
    pub stage: Stage,
    /// Since when.
    pub stage_since: Timestamp,
    /// Every stage it went through, oldest first.
    pub history: Vec<Entry>,
}

impl Remediation {
    /// Still running (holds a concurrency slot).
    pub fn in_flight(&self) -> bool {
        !matches!(self.stage, Stage::Finished(_))
    }

    /// When it ended, if it has.
    pub fn finished_at(&self) -> Option<Timestamp> {
        match self.stage {
            Stage::Finished(_) => Some(self.stage_since),
            _ => None,
        }
    }

    /// The instance has been (or is being) taken out of traffic.
    pub fn past_deregistration(&self) -> bool {
        match &self.stage {
            Stage::Requested { step, .. } | Stage::Failed { step, .. } => *step != Step::Ssm,
            Stage::Draining { .. } | Stage::Drained => true,
            Stage::SsmSent { .. } | Stage::Finished(_) => false,
        }
    }

    /// The last time this remediation started or ended, for the ASG cooldown.
    pub fn last_activity(&self) -> Timestamp {
        self.finished_at().unwrap_or(self.started_at)
    }

    pub(crate) fn enter(&mut self, stage: Stage, now: Timestamp) {
        self.history.push(Entry {
            at: now,
            stage: stage.clone(),
        });
        self.stage = stage;
        self.stage_since = now;
    }
}

#[cfg(feature = "serde")]
mod wire;

/// Errors from feeding the book.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// An outcome for an instance with no remediation in flight.
    #[error("no remediation in flight for {instance}; outcome `{outcome}` ignored")]
    NoRemediation {
        /// The instance.
        instance: InstanceId,
        /// The outcome, as text.
        outcome: String,
    },
    /// An outcome that does not fit the remediation's stage (late or duplicated).
    #[error("outcome `{outcome}` does not fit remediation of {instance} at stage `{stage}`")]
    UnexpectedOutcome {
        /// The instance.
        instance: InstanceId,
        /// The outcome, as text.
        outcome: String,
        /// The stage, as text.
        stage: String,
    },
    /// Restoring a book with two records for one instance.
    #[error("two remediation records for {instance}; a book holds one per instance")]
    Duplicate {
        /// The instance.
        instance: InstanceId,
    },
}

/// All remediations: at most one per instance, in flight or the last one ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemediationBook {
    by_instance: BTreeMap<InstanceId, Remediation>,
}

impl RemediationBook {
    /// An empty book.
    pub fn new() -> Self {
        RemediationBook::default()
    }

    /// Rebuilds a book from persisted records, refusing two for one instance.
    pub fn restore(records: impl IntoIterator<Item = Remediation>) -> Result<Self, BookError> {
        let mut by_instance = BTreeMap::new();
        for r in records {
            let instance = r.instance.clone();
            if by_instance.insert(instance.clone(), r).is_some() {
                return Err(BookError::Duplicate { instance });
            }
        }
        Ok(RemediationBook { by_instance })
    }

    /// The instance's remediation, in flight or last ended.
    pub fn get(&self, instance: &InstanceId) -> Option<&Remediation> {
        self.by_instance.get(instance)
    }

    /// The instance's remediation if it is in flight.
    pub fn in_flight_for(&self, instance: &InstanceId) -> Option<&Remediation> {
        self.get(instance).filter(|r| r.in_flight())
    }

    /// Every record.
    pub fn iter(&self) -> impl Iterator<Item = &Remediation> {
        self.by_instance.values()
    }

    /// Remediations in flight.
    pub fn in_flight(&self) -> impl Iterator<Item = &Remediation> {
        self.iter().filter(|r| r.in_flight())
    }

    /// Remediations in flight in one ASG.
    pub fn in_flight_in<'a>(&'a self, asg: &'a AsgName) -> impl Iterator<Item = &'a Remediation> {
        self.in_flight().filter(move |r| &r.asg == asg)
    }

    /// The last time a remediation in `asg` started or ended.
    pub fn last_activity_in(&self, asg: &AsgName) -> Option<Timestamp> {
        self.iter()
            .filter(|r| &r.asg == asg)
            .map(Remediation::last_activity)
            .max()
    }

    /// Feeds back the outcome of the step in flight for `instance`.
    pub fn record(
        &mut self,
        instance: &InstanceId,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<(), BookError> {
        let Some(r) = self.by_instance.get_mut(instance).filter(|r| r.in_flight()) else {
            return Err(BookError::NoRemediation {
                instance: instance.clone(),
                outcome: outcome.to_string(),
            });
        };
        let next = match (&r.stage, &outcome) {
            (
                Stage::Requested {
                    step: Step::Ssm, ..
                },
                Outcome::SsmSent,
            ) => Stage::SsmSent { result: None },
            // A fast command may report its result before (or instead of) the send.
            (
                Stage::Requested {
                    step: Step::Ssm, ..
                }
                | Stage::SsmSent { .. },
                Outcome::SsmFinished { ok },
            ) => Stage::SsmSent { result: Some(*ok) },
            (
                Stage::Requested {
                    step: Step::Deregister,
                    ..
                },
                Outcome::Deregistered { target_groups },
            ) => Stage::Draining {
                target_groups: target_groups.clone(),
            },
            (Stage::Draining { .. }, Outcome::Drained) => Stage::Drained,
            (
                Stage::Requested {
                    step: Step::Replace,
                    ..
                },
                Outcome::ReplaceRequested,
            ) => Stage::Finished(Ending::Replaced),
            (Stage::Requested { step, attempt }, Outcome::Failed { error }) => Stage::Failed {
                step: *step,
                attempt: *attempt,
                error: error.clone(),
            },
            (stage, outcome) => {
                return Err(BookError::UnexpectedOutcome {
                    instance: instance.clone(),
                    outcome: outcome.to_string(),
                    stage: stage.to_string(),
                });
            }
        };
        r.enter(next, now);
        Ok(())
    }

    /// Starts a remediation. The engine calls this only when none is in flight for the instance.
    pub(crate) fn start(
        &mut self,
        instance: &InstanceId,
        asg: &AsgName,
        cause: Cause,
        step: Step,
        now: Timestamp,
    ) {
        debug_assert!(self.in_flight_for(instance).is_none());
        let stage = Stage::Requested { step, attempt: 1 };
        let r = Remediation {
            instance: instance.clone(),
            asg: asg.clone(),
            cause,
            started_at: now,
            stage: stage.clone(),
            stage_since: now,
            history: vec![Entry { at: now, stage }],
        };
        self.by_instance.insert(instance.clone(), r);
    }

    pub(crate) fn enter(&mut self, instance: &InstanceId, stage: Stage, now: Timestamp) {
        if let Some(r) = self.by_instance.get_mut(instance) {
            r.enter(stage, now);
        }
    }

    /// Drops ended remediations whose cooldowns can no longer matter.
    pub(crate) fn prune(&mut self, keep: impl Fn(&Remediation) -> bool) {
        self.by_instance.retain(|_, r| r.in_flight() || keep(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book_with_ssm() -> (RemediationBook, InstanceId) {
        let mut book = RemediationBook::new();
        let id = InstanceId::from("i-1");
        book.start(
            &id,
            &AsgName::from("web"),
            Cause::Silent,
            Step::Ssm,
            Timestamp::from_secs(1),
        );
        (book, id)
    }

    #[test]
    fn outcomes_walk_the_stages() {
        let (mut book, id) = book_with_ssm();
        let t = Timestamp::from_secs(2);
        book.record(&id, Outcome::SsmSent, t).expect("sent fits");
        book.record(&id, Outcome::SsmFinished { ok: false }, t)
            .expect("finished fits");
        assert_eq!(
            book.get(&id).expect("record").stage,
            Stage::SsmSent {
                result: Some(false)
            }
        );
        assert_eq!(book.get(&id).expect("record").history.len(), 3);
    }

    #[test]
    fn an_outcome_that_does_not_fit_the_stage_is_refused() {
        let (mut book, id) = book_with_ssm();
        let err = book
            .record(&id, Outcome::ReplaceRequested, Timestamp::from_secs(2))
            .expect_err("replace outcome during SSM");
        assert!(matches!(err, BookError::UnexpectedOutcome { .. }), "{err}");
        let err = book
            .record(
                &InstanceId::from("i-2"),
                Outcome::SsmSent,
                Timestamp::from_secs(2),
            )
            .expect_err("unknown instance");
        assert!(matches!(err, BookError::NoRemediation { .. }), "{err}");
    }

    #[test]
    fn restore_refuses_two_records_for_one_instance() {
        let (book, _) = book_with_ssm();
        let r = book.iter().next().expect("one record").clone();
        let err = RemediationBook::restore([r.clone(), r]).expect_err("duplicate");
        assert!(matches!(err, BookError::Duplicate { .. }));
    }
}
