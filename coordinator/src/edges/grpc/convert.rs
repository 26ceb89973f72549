//! Wire types → domain types. Every rejected field is named in the error, so the agent's
//! operator can tell which value to fix; the caller turns it into `INVALID_ARGUMENT`.

use std::time::{Duration, SystemTime};

use autoheal_proto::{identity::validate_segment, v1};

use crate::model::report::CheckResult;
use crate::model::report::CheckSpec;
use crate::model::report::CheckStatus;
use crate::model::report::Event;
use crate::model::report::EventKind;
use crate::model::report::Heartbeat;
use crate::model::report::Hello;
use crate::model::report::RestartAttempt;
use crate::model::report::ServiceSpec;
use crate::model::report::ServiceState;

/// A field of an incoming message that can't be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

const MAX_NAME: usize = 128;
const MAX_TEXT: usize = 4096;
const MAX_SERVICES: usize = 256;
const MAX_CHECKS: usize = 64;

fn name(field: &str, value: &str) -> Result<String, FieldError> {
    if value.is_empty() {
        return Err(err(field, "required"));
    }
    if value.len() > MAX_NAME || value.chars().any(|c| c.is_control()) {
        return Err(err(
            field,
            format!("must be 1-{MAX_NAME} printable characters"),
        ));
    }
    Ok(value.to_owned())
}

fn text(field: &str, value: &str) -> Result<String, FieldError> {
    if value.len() > MAX_TEXT {
        return Err(err(field, format!("longer than {MAX_TEXT} bytes")));
    }
    Ok(value.to_owned())
}

fn optional(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn timestamp(field: &str, ts: Option<prost_types::Timestamp>) -> Result<SystemTime, FieldError> {
    let ts = ts.ok_or_else(|| err(field, "required"))?;
    SystemTime::try_from(ts).map_err(|_| err(field, "not a valid timestamp"))
}

fn duration(field: &str, d: Option<prost_types::Duration>) -> Result<Duration, FieldError> {
    match d {
        None => Ok(Duration::ZERO),
        Some(d) => Duration::try_from(d).map_err(|_| err(field, "must be a non-negative duration")),
    }
}

fn service_state(field: &str, raw: i32) -> Result<ServiceState, FieldError> {
    Ok(
        match v1::ServiceState::try_from(raw)
            .map_err(|_| err(field, format!("unknown state {raw}")))?
        {
            v1::ServiceState::Unspecified => return Err(err(field, "required")),
            v1::ServiceState::Starting => ServiceState::Starting,
            v1::ServiceState::Healthy => ServiceState::Healthy,
            v1::ServiceState::Unhealthy => ServiceState::Unhealthy,
            v1::ServiceState::Restarting => ServiceState::Restarting,
            v1::ServiceState::Flapping => ServiceState::Flapping,
            v1::ServiceState::WaitingOnDependency => ServiceState::WaitingOnDependency,
            v1::ServiceState::Escalated => ServiceState::Escalated,
        },
    )
}

pub fn service_state_to_wire(state: ServiceState) -> v1::ServiceState {
    match state {
        ServiceState::Starting => v1::ServiceState::Starting,
        ServiceState::Healthy => v1::ServiceState::Healthy,
        ServiceState::Unhealthy => v1::ServiceState::Unhealthy,
        ServiceState::Restarting => v1::ServiceState::Restarting,
        ServiceState::Flapping => v1::ServiceState::Flapping,
        ServiceState::WaitingOnDependency => v1::ServiceState::WaitingOnDependency,
        ServiceState::Escalated => v1::ServiceState::Escalated,
    }
}

fn check_status(field: &str, raw: i32) -> Result<CheckStatus, FieldError> {
    match v1::CheckStatus::try_from(raw) {
        Ok(v1::CheckStatus::Healthy) => Ok(CheckStatus::Healthy),
        Ok(v1::CheckStatus::Unhealthy) => Ok(CheckStatus::Unhealthy),
        Ok(v1::CheckStatus::Unspecified) => Err(err(field, "required")),
        Err(_) => Err(err(field, format!("unknown status {raw}"))),
    }
}

impl TryFrom<v1::Hello> for Hello {
    type Error = FieldError;

    fn try_from(h: v1::Hello) -> Result<Self, FieldError> {
        validate_segment("instance id", &h.instance_id)
            .map_err(|e| err("hello.instance_id", e.to_string()))?;
        if h.epoch == 0 {
            return Err(err(
                "hello.epoch",
                "required (a random non-zero number per agent start)",
            ));
        }
        if h.services.len() > MAX_SERVICES {
            return Err(err(
                "hello.services",
                format!("at most {MAX_SERVICES} services"),
            ));
        }
        let services = h
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| service_spec(&format!("hello.services[{i}]"), s))
            .collect::<Result<_, _>>()?;
        Ok(Hello {
            instance_id: h.instance_id,
            availability_zone: text("hello.availability_zone", &h.availability_zone)?,
            agent_version: text("hello.agent_version", &h.agent_version)?,
            epoch: h.epoch,
            last_seq: h.last_seq,
            services,
            healing_paused: h.healing_paused,
        })
    }
}

fn service_spec(path: &str, s: v1::ServiceSpec) -> Result<ServiceSpec, FieldError> {
    if s.checks.len() > MAX_CHECKS {
        return Err(err(
            format!("{path}.checks"),
            format!("at most {MAX_CHECKS} checks"),
        ));
    }
    let checks = s
        .checks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let p = format!("{path}.checks[{i}]");
            Ok(CheckSpec {
                name: name(&format!("{p}.name"), &c.name)?,
                kind: name(&format!("{p}.kind"), &c.kind)?,
                dependency: optional(&c.dependency),
                interval: duration(&format!("{p}.interval"), c.interval)?,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let depends_on = s
        .depends_on
        .iter()
        .enumerate()
        .map(|(i, d)| name(&format!("{path}.depends_on[{i}]"), d))
        .collect::<Result<_, _>>()?;
    Ok(ServiceSpec {
        name: name(&format!("{path}.name"), &s.name)?,
        unit: optional(&s.unit),
        depends_on,
        checks,
    })
}

impl TryFrom<v1::Heartbeat> for Heartbeat {
    type Error = FieldError;

    fn try_from(h: v1::Heartbeat) -> Result<Self, FieldError> {
        let services = h
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let p = format!("heartbeat.services[{i}]");
                Ok((
                    name(&format!("{p}.name"), &s.name)?,
                    service_state(&format!("{p}.state"), s.state)?,
                ))
            })
            .collect::<Result<_, FieldError>>()?;
        Ok(Heartbeat {
            last_seq: h.last_seq,
            dropped_events: h.dropped_events,
            services,
        })
    }
}

fn restart(path: &str, r: v1::RestartAttempted) -> Result<RestartAttempt, FieldError> {
    Ok(RestartAttempt {
        service: name(&format!("{path}.service"), &r.service)?,
        attempt: r.attempt,
        succeeded: r.succeeded,
        detail: text(&format!("{path}.detail"), &r.detail)?,
        took: duration(&format!("{path}.took"), r.took)?,
    })
}

impl TryFrom<v1::Event> for Event {
    type Error = FieldError;

    fn try_from(e: v1::Event) -> Result<Self, FieldError> {
        use v1::event::Kind;
        if e.seq == 0 {
            return Err(err("event.seq", "required (sequence numbers start at 1)"));
        }
        let at = timestamp("event.at", e.at)?;
        let kind = match e.kind.ok_or_else(|| err("event.kind", "required"))? {
            Kind::CheckChanged(c) => EventKind::CheckChanged {
                service: name("event.check_changed.service", &c.service)?,
                check: name("event.check_changed.check", &c.check)?,
                status: check_status("event.check_changed.status", c.status)?,
                detail: text("event.check_changed.detail", &c.detail)?,
            },
            Kind::ServiceStateChanged(s) => EventKind::ServiceStateChanged {
                service: name("event.service_state_changed.service", &s.service)?,
                from: service_state("event.service_state_changed.from", s.from).ok(),
                to: service_state("event.service_state_changed.to", s.to)?,
                reason: text("event.service_state_changed.reason", &s.reason)?,
            },
            Kind::RestartAttempted(r) => {
                EventKind::RestartAttempted(restart("event.restart_attempted", r)?)
            }
            Kind::Escalated(x) => EventKind::Escalated {
                service: name("event.escalated.service", &x.service)?,
                reason: text("event.escalated.reason", &x.reason)?,
                last_results: x
                    .last_results
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let p = format!("event.escalated.last_results[{i}]");
                        Ok(CheckResult {
                            check: name(&format!("{p}.check"), &r.check)?,
                            status: check_status(&format!("{p}.status"), r.status)?,
                            detail: text(&format!("{p}.detail"), &r.detail)?,
                            at: r.at.and_then(|t| SystemTime::try_from(t).ok()),
                        })
                    })
                    .collect::<Result<_, FieldError>>()?,
                attempts: x
                    .attempts
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| restart(&format!("event.escalated.attempts[{i}]"), r))
                    .collect::<Result<_, _>>()?,
            },
            Kind::DependencyChanged(d) => EventKind::DependencyChanged {
                dependency: name("event.dependency_changed.dependency", &d.dependency)?,
                check: name("event.dependency_changed.check", &d.check)?,
                failing: d.failing,
                detail: text("event.dependency_changed.detail", &d.detail)?,
            },
            Kind::EventsDropped(d) => {
                if d.first_seq > d.last_seq {
                    return Err(err(
                        "event.events_dropped.first_seq",
                        "must not be greater than last_seq",
                    ));
                }
                EventKind::EventsDropped {
                    count: d.count,
                    first_seq: d.first_seq,
                    last_seq: d.last_seq,
                }
            }
        };
        Ok(Event {
            seq: e.seq,
            at,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> v1::Hello {
        v1::Hello {
            instance_id: "i-0abc".into(),
            availability_zone: "eu-west-1a".into(),
            agent_version: "0.1.0".into(),
            epoch: 7,
            last_seq: 0,
            services: vec![v1::ServiceSpec {
                name: "web".into(),
                unit: "web.service".into(),
                depends_on: vec![],
                checks: vec![v1::CheckSpec {
                    name: "http".into(),
                    kind: "http".into(),
                    dependency: String::new(),
                    interval: Some(prost_types::Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                }],
            }],
            healing_paused: false,
        }
    }

    #[test]
    fn valid_hello_converts() {
        let h = Hello::try_from(hello()).expect("valid");
        assert_eq!(h.instance_id, "i-0abc");
        assert_eq!(h.services[0].checks[0].interval, Duration::from_secs(5));
        assert_eq!(h.services[0].unit.as_deref(), Some("web.service"));
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut h = hello();
        h.instance_id = "i-../etc".into();
        assert_eq!(
            Hello::try_from(h).expect_err("bad id").field,
            "hello.instance_id"
        );

        let mut h = hello();
        h.services[0].checks[0].name.clear();
        assert_eq!(
            Hello::try_from(h).expect_err("empty check name").field,
            "hello.services[0].checks[0].name"
        );

        let mut h = hello();
        h.services[0].checks[0].interval = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        assert_eq!(
            Hello::try_from(h).expect_err("negative").field,
            "hello.services[0].checks[0].interval"
        );

        let mut h = hello();
        h.epoch = 0;
        assert_eq!(Hello::try_from(h).expect_err("epoch").field, "hello.epoch");
    }

    #[test]
    fn events_need_seq_time_and_kind() {
        let ev = v1::Event {
            seq: 0,
            at: None,
            kind: None,
        };
        assert_eq!(Event::try_from(ev).expect_err("seq").field, "event.seq");
        let ev = v1::Event {
            seq: 1,
            at: None,
            kind: None,
        };
        assert_eq!(Event::try_from(ev).expect_err("at").field, "event.at");
        let ev = v1::Event {
            seq: 1,
            at: Some(SystemTime::now().into()),
            kind: Some(v1::event::Kind::CheckChanged(v1::CheckChanged {
                service: "web".into(),
                check: "http".into(),
                status: 42,
                detail: String::new(),
            })),
        };
        assert_eq!(
            Event::try_from(ev).expect_err("status").field,
            "event.check_changed.status"
        );
    }
}

/// Stand-in for a fuzz target (no nightly toolchain here for cargo-fuzz): whatever arrives on the
/// wire, conversion never panics, and a rejection always names a field.
#[cfg(test)]
mod robustness {
    use proptest::prelude::*;

    use super::*;

    fn any_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
        proptest::option::of(
            (any::<i64>(), any::<i32>())
                .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        )
    }

    fn any_check() -> impl Strategy<Value = v1::CheckSpec> {
        (".{0,200}", ".{0,20}", ".{0,20}", any_duration()).prop_map(
            |(name, kind, dependency, interval)| v1::CheckSpec {
                name,
                kind,
                dependency,
                interval,
            },
        )
    }

    fn any_hello() -> impl Strategy<Value = v1::Hello> {
        (
            ".{0,80}",
            ".{0,40}",
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(
                (
                    ".{0,150}",
                    ".{0,20}",
                    proptest::collection::vec(any_check(), 0..4),
                ),
                0..4,
            ),
        )
            .prop_map(|(instance_id, az, epoch, last_seq, services)| v1::Hello {
                instance_id,
                availability_zone: az,
                agent_version: "x".into(),
                epoch,
                last_seq,
                services: services
                    .into_iter()
                    .map(|(name, unit, checks)| v1::ServiceSpec {
                        name,
                        unit,
                        depends_on: vec![],
                        checks,
                    })
                    .collect(),
                healing_paused: false,
            })
    }

    fn any_event() -> impl Strategy<Value = v1::Event> {
        (
            any::<u64>(),
            proptest::option::of((any::<i64>(), any::<i32>())),
            any::<i32>(),
            any::<i32>(),
            ".{0,50}",
            0u8..7,
        )
            .prop_map(|(seq, at, a, b, text, which)| {
                use v1::event::Kind;
                let kind = match which {
                    0 => None,
                    1 => Some(Kind::CheckChanged(v1::CheckChanged {
                        service: text.clone(),
                        check: text,
                        status: a,
                        detail: String::new(),
                    })),
                    2 => Some(Kind::ServiceStateChanged(v1::ServiceStateChanged {
                        service: text,
                        from: a,
                        to: b,
                        reason: String::new(),
                    })),
                    3 => Some(Kind::RestartAttempted(v1::RestartAttempted {
                        service: text,
                        attempt: 1,
                        succeeded: false,
                        detail: String::new(),
                        took: Some(prost_types::Duration {
                            seconds: i64::from(a),
                            nanos: b,
                        }),
                    })),
                    4 => Some(Kind::DependencyChanged(v1::DependencyChanged {
                        dependency: text.clone(),
                        check: text,
                        failing: true,
                        detail: String::new(),
                    })),
                    5 => Some(Kind::EventsDropped(v1::EventsDropped {
                        count: 1,
                        first_seq: u64::from(a.unsigned_abs()),
                        last_seq: u64::from(b.unsigned_abs()),
                    })),
                    _ => Some(Kind::Escalated(v1::Escalated {
                        service: text,
                        reason: String::new(),
                        last_results: vec![v1::CheckResult {
                            check: "c".into(),
                            status: a,
                            detail: String::new(),
                            at: None,
                        }],
                        attempts: vec![],
                    })),
                };
                v1::Event {
                    seq,
                    at: at.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    kind,
                }
            })
    }

    proptest! {
        #[test]
        fn hello_conversion_never_panics_and_names_the_field(hello in any_hello()) {
            if let Err(e) = Hello::try_from(hello) {
                prop_assert!(e.field.starts_with("hello."), "{e}");
                prop_assert!(!e.reason.is_empty());
            }
        }

        #[test]
        fn event_conversion_never_panics_and_names_the_field(event in any_event()) {
            if let Err(e) = Event::try_from(event) {
                prop_assert!(e.field.starts_with("event."), "{e}");
            }
        }
    }
}
