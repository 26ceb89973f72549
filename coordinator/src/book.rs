//! The policy engine's remediation book, persisted: each instance's remediation as JSON in the
//! store, written before the actions it decided are carried out and read back at the start of a
//! leader's term — so cooldowns, concurrency limits and ladders in flight survive a restart or a
//! failover. The mapping is the policy crate's `serde` derives; this module owns the record's
//! version and the rule that a record this version cannot read is refused, never guessed at.
//!
//! Format 1 (the only one so far) is the remediation's fields at the top level, enums tagged by
//! a kebab-case name (`"stage": "requested"`, `"cause": "silent"`), timestamps in milliseconds:
//!
//! ```json
//! {"instance": "i-1", "asg": "web", "cause": {"cause": "silent"}, "started_at": 1000,
//!  "stage": {"stage": "finished", "end": {"ending": "replaced"}}, "stage_since": 2000,
//!  "history": [{"at": 1000, "stage": {"stage": "requested", "step": "ssm", "attempt": 1}}]}
//! ```
//!
//! Format 1 records carry no `"version"` (records written before it was named have none, and
//! writing one would rewrite every record once for nothing); a later format writes
//! `"version": 2` or above, which this version refuses.

use autoheal_policy::Remediation;
use serde::Deserialize;
use serde_json::Value;

/// The record format this version writes and reads.
pub const FORMAT: u64 = 1;

/// Why a stored record was not read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Written by a newer version, in a format this one does not know.
    #[error("remediation record format {found}; this version reads format {FORMAT}")]
    Format {
        /// The record's `"version"`.
        found: u64,
    },
    /// `"version"` is there but not a whole number.
    #[error("remediation record version is not a number: {0}")]
    Version(Value),
    /// The record does not have the shape of its format.
    #[error("malformed remediation record")]
    Shape(#[source] serde_json::Error),
}

/// The JSON the store keeps for one remediation.
pub fn to_json(r: &Remediation) -> Value {
    // Cannot fail: serde_json refuses only non-string map keys and failing custom impls, and a
    // remediation has neither (serde's own derives, no maps).
    serde_json::to_value(r).expect("a remediation serialises to JSON")
}

/// Reads a stored record, saying why not if it can't.
pub fn decode(v: &Value) -> Result<Remediation, RecordError> {
    let version = match v.get("version") {
        None => FORMAT,
        Some(n) => n.as_u64().ok_or_else(|| RecordError::Version(n.clone()))?,
    };
    if version != FORMAT {
        return Err(RecordError::Format { found: version });
    }
    Remediation::deserialize(v).map_err(RecordError::Shape)
}

/// `None` for a record this version can't read (logged by the caller, never guessed at).
pub fn from_json(v: &Value) -> Option<Remediation> {
    decode(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use autoheal_policy::{
        AsgName, Cause, Ending, Entry, InstanceId, Stage, Step, TargetGroup, Timestamp,
    };
    use serde_json::json;

    #[test]
    fn every_stage_round_trips() {
        let stages = [
            Stage::Requested {
                step: Step::Deregister,
                attempt: 2,
            },
            Stage::Failed {
                step: Step::Replace,
                attempt: 1,
                error: "throttled".into(),
            },
            Stage::SsmSent { result: None },
            Stage::SsmSent {
                result: Some(false),
            },
            Stage::Draining {
                target_groups: vec![TargetGroup::new("arn:tg/1")],
            },
            Stage::Drained,
            Stage::Finished(Ending::GaveUp {
                step: Step::Ssm,
                error: "x".into(),
            }),
            Stage::Finished(Ending::Replaced),
        ];
        for (i, s) in stages.iter().enumerate() {
            let r = Remediation {
                instance: InstanceId::new("i-1"),
                asg: AsgName::new("web"),
                cause: if i % 2 == 0 {
                    Cause::Escalated {
                        service: "web".into(),
                    }
                } else {
                    Cause::Silent
                },
                started_at: Timestamp::from_millis(1_000),
                stage: s.clone(),
                stage_since: Timestamp::from_millis(2_000),
                history: vec![Entry {
                    at: Timestamp::from_millis(1_500),
                    stage: s.clone(),
                }],
            };
            assert_eq!(from_json(&to_json(&r)).as_ref(), Some(&r), "{s:?}");
        }
        assert_eq!(from_json(&json!({"instance": "i-1"})), None);
    }

    /// Records exactly as the hand-written codec before serde wrote them, one per stage, cause
    /// and ending.
    fn format_1_records() -> Vec<(Value, Remediation)> {
        let r = |cause, stage: Stage| Remediation {
            instance: InstanceId::new("i-0abc"),
            asg: AsgName::new("web"),
            cause,
            started_at: Timestamp::from_millis(1_000),
            stage: stage.clone(),
            stage_since: Timestamp::from_millis(2_000),
            history: vec![
                Entry {
                    at: Timestamp::from_millis(1_000),
                    stage: Stage::Requested {
                        step: Step::Ssm,
                        attempt: 1,
                    },
                },
                Entry {
                    at: Timestamp::from_millis(2_000),
                    stage,
                },
            ],
        };
        let record = |cause: Value, stage: Value| {
            json!({
                "instance": "i-0abc",
                "asg": "web",
                "cause": cause,
                "started_at": 1000,
                "stage": stage,
                "stage_since": 2000,
                "history": [
                    {"at": 1000, "stage": {"stage": "requested", "step": "ssm", "attempt": 1}},
                    {"at": 2000, "stage": stage},
                ],
            })
        };
        let escalated = || Cause::Escalated {
            service: "nginx".into(),
        };
        let escalated_json = || json!({"cause": "escalated", "service": "nginx"});
        vec![
            (
                record(
                    escalated_json(),
                    json!({"stage": "requested", "step": "deregister", "attempt": 2}),
                ),
                r(
                    escalated(),
                    Stage::Requested {
                        step: Step::Deregister,
                        attempt: 2,
                    },
                ),
            ),
            (
                record(
                    json!({"cause": "silent"}),
                    json!({"stage": "failed", "step": "replace", "attempt": 3, "error": "throttled"}),
                ),
                r(
                    Cause::Silent,
                    Stage::Failed {
                        step: Step::Replace,
                        attempt: 3,
                        error: "throttled".into(),
                    },
                ),
            ),
            (
                record(
                    json!({"cause": "silent"}),
                    json!({"stage": "ssm-sent", "result": null}),
                ),
                r(Cause::Silent, Stage::SsmSent { result: None }),
            ),
            (
                record(
                    json!({"cause": "silent"}),
                    json!({"stage": "ssm-sent", "result": true}),
                ),
                r(Cause::Silent, Stage::SsmSent { result: Some(true) }),
            ),
            (
                record(
                    json!({"cause": "alb-unhealthy"}),
                    json!({"stage": "draining", "target_groups": ["arn:tg/1", "arn:tg/2"]}),
                ),
                r(
                    Cause::AlbUnhealthy,
                    Stage::Draining {
                        target_groups: vec![
                            TargetGroup::new("arn:tg/1"),
                            TargetGroup::new("arn:tg/2"),
                        ],
                    },
                ),
            ),
            (
                record(
                    json!({"cause": "alb-unhealthy"}),
                    json!({"stage": "drained"}),
                ),
                r(Cause::AlbUnhealthy, Stage::Drained),
            ),
            (
                record(
                    escalated_json(),
                    json!({"stage": "finished", "end": {"ending": "recovered"}}),
                ),
                r(escalated(), Stage::Finished(Ending::Recovered)),
            ),
            (
                record(
                    escalated_json(),
                    json!({"stage": "finished", "end": {"ending": "replaced"}}),
                ),
                r(escalated(), Stage::Finished(Ending::Replaced)),
            ),
            (
                record(
                    escalated_json(),
                    json!({"stage": "finished", "end": {"ending": "gone"}}),
                ),
                r(escalated(), Stage::Finished(Ending::Gone)),
            ),
            (
                record(
                    escalated_json(),
                    json!({"stage": "finished", "end": {"ending": "gave-up", "step": "ssm", "error": "no outcome after 3 attempts"}}),
                ),
                r(
                    escalated(),
                    Stage::Finished(Ending::GaveUp {
                        step: Step::Ssm,
                        error: "no outcome after 3 attempts".into(),
                    }),
                ),
            ),
        ]
    }

    #[test]
    fn records_written_before_serde_are_read_and_written_the_same() {
        for (stored, remediation) in format_1_records() {
            assert_eq!(
                decode(&stored).expect("a format 1 record is readable"),
                remediation
            );
            // Byte-for-byte the same JSON, so the store does not rewrite unchanged records.
            assert_eq!(to_json(&remediation), stored);
        }
    }

    #[test]
    fn a_record_from_a_newer_format_is_refused_not_guessed_at() {
        let (mut stored, remediation) = format_1_records().remove(0);
        stored["version"] = json!(1);
        assert_eq!(decode(&stored).expect("explicit format 1"), remediation);
        stored["version"] = json!(2);
        assert!(matches!(
            decode(&stored),
            Err(RecordError::Format { found: 2 })
        ));
        stored["version"] = json!("one");
        assert!(matches!(decode(&stored), Err(RecordError::Version(_))));
    }

    #[test]
    fn malformed_records_are_refused() {
        let (stored, _) = format_1_records().remove(0);
        for (field, bad) in [
            ("stage", json!({"stage": "exploded"})),
            ("cause", json!({"cause": "boredom"})),
            ("started_at", json!("yesterday")),
            ("history", json!(null)),
        ] {
            let mut v = stored.clone();
            v[field] = bad;
            assert!(
                matches!(decode(&v), Err(RecordError::Shape(_))),
                "{field}: {v}"
            );
        }
    }
}
