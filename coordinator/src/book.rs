//! The policy engine's remediation book, persisted: each instance's remediation as JSON in the
//! store, written before the actions it decided are carried out and read back at the start of a
//! leader's term — so cooldowns, concurrency limits and ladders in flight survive a restart or a
//! failover. The policy crate stays free of serde; this module owns the mapping.

use autoheal_policy::{
    AsgName, Cause, Ending, Entry, InstanceId, Remediation, Stage, Step, TargetGroup, Timestamp,
};
use serde_json::{Value, json};

fn step(s: Step) -> &'static str {
    match s {
        Step::Ssm => "ssm",
        Step::Deregister => "deregister",
        Step::Replace => "replace",
    }
}

fn parse_step(v: &Value) -> Option<Step> {
    Some(match v.as_str()? {
        "ssm" => Step::Ssm,
        "deregister" => Step::Deregister,
        "replace" => Step::Replace,
        _ => return None,
    })
}

fn tgs(t: &[TargetGroup]) -> Value {
    Value::Array(t.iter().map(|g| json!(g.as_str())).collect())
}

fn parse_tgs(v: &Value) -> Option<Vec<TargetGroup>> {
    v.as_array()?
        .iter()
        .map(|g| g.as_str().map(TargetGroup::new))
        .collect()
}

fn ending(e: &Ending) -> Value {
    match e {
        Ending::Recovered => json!({"ending": "recovered"}),
        Ending::Replaced => json!({"ending": "replaced"}),
        Ending::Gone => json!({"ending": "gone"}),
        Ending::GaveUp { step: s, error } => {
            json!({"ending": "gave-up", "step": step(*s), "error": error})
        }
    }
}

fn parse_ending(v: &Value) -> Option<Ending> {
    Some(match v["ending"].as_str()? {
        "recovered" => Ending::Recovered,
        "replaced" => Ending::Replaced,
        "gone" => Ending::Gone,
        "gave-up" => Ending::GaveUp {
            step: parse_step(&v["step"])?,
            error: v["error"].as_str()?.to_owned(),
        },
        _ => return None,
    })
}

fn stage(s: &Stage) -> Value {
    match s {
        Stage::Requested { step: st, attempt } => {
            json!({"stage": "requested", "step": step(*st), "attempt": attempt})
        }
        Stage::Failed {
            step: st,
            attempt,
            error,
        } => json!({"stage": "failed", "step": step(*st), "attempt": attempt, "error": error}),
        Stage::SsmSent { result } => json!({"stage": "ssm-sent", "result": result}),
        Stage::Draining { target_groups } => {
            json!({"stage": "draining", "target_groups": tgs(target_groups)})
        }
        Stage::Drained => json!({"stage": "drained"}),
        Stage::Finished(e) => json!({"stage": "finished", "end": ending(e)}),
    }
}

fn parse_stage(v: &Value) -> Option<Stage> {
    let attempt = || v["attempt"].as_u64().and_then(|a| u32::try_from(a).ok());
    Some(match v["stage"].as_str()? {
        "requested" => Stage::Requested {
            step: parse_step(&v["step"])?,
            attempt: attempt()?,
        },
        "failed" => Stage::Failed {
            step: parse_step(&v["step"])?,
            attempt: attempt()?,
            error: v["error"].as_str()?.to_owned(),
        },
        "ssm-sent" => Stage::SsmSent {
            result: v["result"].as_bool(),
        },
        "draining" => Stage::Draining {
            target_groups: parse_tgs(&v["target_groups"])?,
        },
        "drained" => Stage::Drained,
        "finished" => Stage::Finished(parse_ending(&v["end"])?),
        _ => return None,
    })
}

fn cause(c: &Cause) -> Value {
    match c {
        Cause::Escalated { service } => json!({"cause": "escalated", "service": service}),
        Cause::Silent => json!({"cause": "silent"}),
        Cause::AlbUnhealthy => json!({"cause": "alb-unhealthy"}),
    }
}

fn parse_cause(v: &Value) -> Option<Cause> {
    Some(match v["cause"].as_str()? {
        "escalated" => Cause::Escalated {
            service: v["service"].as_str()?.to_owned(),
        },
        "silent" => Cause::Silent,
        "alb-unhealthy" => Cause::AlbUnhealthy,
        _ => return None,
    })
}

/// The JSON the store keeps for one remediation.
pub fn to_json(r: &Remediation) -> Value {
    json!({
        "instance": r.instance.as_str(),
        "asg": r.asg.as_str(),
        "cause": cause(&r.cause),
        "started_at": r.started_at.as_millis(),
        "stage": stage(&r.stage),
        "stage_since": r.stage_since.as_millis(),
        "history": r.history.iter().map(|e| json!({"at": e.at.as_millis(), "stage": stage(&e.stage)})).collect::<Vec<_>>(),
    })
}

/// `None` for a record this version can't read (logged by the caller, never guessed at).
pub fn from_json(v: &Value) -> Option<Remediation> {
    Some(Remediation {
        instance: InstanceId::new(v["instance"].as_str()?.to_owned()),
        asg: AsgName::new(v["asg"].as_str()?.to_owned()),
        cause: parse_cause(&v["cause"])?,
        started_at: Timestamp::from_millis(v["started_at"].as_u64()?),
        stage: parse_stage(&v["stage"])?,
        stage_since: Timestamp::from_millis(v["stage_since"].as_u64()?),
        history: v["history"]
            .as_array()?
            .iter()
            .map(|e| {
                Some(Entry {
                    at: Timestamp::from_millis(e["at"].as_u64()?),
                    stage: parse_stage(&e["stage"])?,
                })
            })
            .collect::<Option<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
