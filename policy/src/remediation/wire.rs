//! The persisted shape of [`super::Stage`] (feature `serde`): tagged by `"stage"`, the ending
//! of a finished remediation nested under `"end"`. An internally tagged newtype variant would
//! flatten the ending into the stage, and the records the coordinator already stored nest it.

use super::{Ending, Step};
use crate::fleet::TargetGroup;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
pub(super) enum Stage {
    Requested {
        step: Step,
        attempt: u32,
    },
    Failed {
        step: Step,
        attempt: u32,
        error: String,
    },
    SsmSent {
        result: Option<bool>,
    },
    Draining {
        target_groups: Vec<TargetGroup>,
    },
    Drained,
    Finished {
        end: Ending,
    },
}

impl From<super::Stage> for Stage {
    fn from(s: super::Stage) -> Self {
        match s {
            super::Stage::Requested { step, attempt } => Stage::Requested { step, attempt },
            super::Stage::Failed {
                step,
                attempt,
                error,
            } => Stage::Failed {
                step,
                attempt,
                error,
            },
            super::Stage::SsmSent { result } => Stage::SsmSent { result },
            super::Stage::Draining { target_groups } => Stage::Draining { target_groups },
            super::Stage::Drained => Stage::Drained,
            super::Stage::Finished(end) => Stage::Finished { end },
        }
    }
}

impl From<Stage> for super::Stage {
    fn from(s: Stage) -> Self {
        match s {
            Stage::Requested { step, attempt } => super::Stage::Requested { step, attempt },
            Stage::Failed {
                step,
                attempt,
                error,
            } => super::Stage::Failed {
                step,
                attempt,
                error,
            },
            Stage::SsmSent { result } => super::Stage::SsmSent { result },
            Stage::Draining { target_groups } => super::Stage::Draining { target_groups },
            Stage::Drained => super::Stage::Drained,
            Stage::Finished { end } => super::Stage::Finished(end),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::*;
    use crate::fleet::{AsgName, InstanceId, TargetGroup};
    use crate::time::Timestamp;

    /// The coordinator stores remediations in this shape (format 1 of its book records); the
    /// derives must keep writing and reading it.
    #[test]
    fn serde_keeps_the_stored_shape() {
        let mut book = RemediationBook::new();
        let id = InstanceId::from("i-1");
        let web = AsgName::from("web");
        book.start(&id, &web, Cause::Silent, Step::Ssm, Timestamp::from_secs(1));
        let t = Timestamp::from_secs(2);
        book.record(&id, Outcome::SsmSent, t).expect("sent fits");
        book.enter(
            &id,
            Stage::Finished(Ending::GaveUp {
                step: Step::Ssm,
                error: "x".into(),
            }),
            t,
        );
        let r = book.get(&id).expect("record").clone();
        let stored = json!({
            "instance": "i-1",
            "asg": "web",
            "cause": {"cause": "silent"},
            "started_at": 1000,
            "stage": {"stage": "finished", "end": {"ending": "gave-up", "step": "ssm", "error": "x"}},
            "stage_since": 2000,
            "history": [
                {"at": 1000, "stage": {"stage": "requested", "step": "ssm", "attempt": 1}},
                {"at": 2000, "stage": {"stage": "ssm-sent", "result": null}},
                {"at": 2000, "stage": {"stage": "finished", "end": {"ending": "gave-up", "step": "ssm", "error": "x"}}},
            ],
        });
        assert_eq!(serde_json::to_value(&r).expect("serialises"), stored);
        let back: Remediation = serde_json::from_value(stored).expect("deserialises");
        assert_eq!(back, r);
        let escalated = Cause::Escalated {
            service: "nginx".into(),
        };
        assert_eq!(
            serde_json::to_value(&escalated).expect("serialises"),
            json!({"cause": "escalated", "service": "nginx"})
        );
        assert_eq!(
            serde_json::to_value(Cause::AlbUnhealthy).expect("serialises"),
            json!({"cause": "alb-unhealthy"})
        );
        let draining = Stage::Draining {
            target_groups: vec![TargetGroup::from("arn:tg/1")],
        };
        assert_eq!(
            serde_json::to_value(&draining).expect("serialises"),
            json!({"stage": "draining", "target_groups": ["arn:tg/1"]})
        );
        assert_eq!(
            serde_json::to_value(Step::Deregister).expect("serialises"),
            json!("deregister")
        );
    }
}
