//! `FleetService`: what operators and viewers see and steer. Role checks happened in `authz`;
//! here we only need the caller's identity to record who paused or drained.

use std::{collections::BTreeMap, pin::Pin, time::SystemTime};

use autoheal_proto::v1::{self, fleet_service_server::FleetService};
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{PeerInfo, convert::service_state_to_wire};
use crate::model::events::FleetEvent;
use crate::model::events::PauseState;
use crate::model::inventory::AsgHealth;
use crate::model::report::ServiceState;
use crate::services::fleet::Fleet;
use crate::services::fleet::InstanceFilter;
use crate::services::fleet::InstanceRecord;

#[derive(Debug, Clone)]
pub struct FleetApi {
    pub fleet: Fleet,
    pub journal: std::sync::Arc<crate::services::journal::Journal>,
    /// `None` when the coordinator runs without AWS (no inventory, no actions).
    pub control: Option<crate::services::control::Handle>,
    pub leadership: crate::services::lease::LeaseHandle,
    pub shutdown: CancellationToken,
}

/// An instance id from a request, checked like the Hello's: the error names the field and echoes
/// at most a short prefix of what was sent.
fn instance_id(value: &str) -> Result<&str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument("instance_id: required"));
    }
    autoheal_proto::identity::validate_segment("instance_id", value)
        .map_err(|e| Status::invalid_argument(format!("instance_id: {e}")))?;
    Ok(value)
}

/// An optional instance filter: empty means every instance.
fn instance_filter(value: &str) -> Result<Option<&str>, Status> {
    if value.is_empty() {
        Ok(None)
    } else {
        instance_id(value).map(Some)
    }
}

/// Longest reason an operator may give (it is stored and notified).
const MAX_REASON: usize = 1024;

fn reason(value: &str) -> Result<&str, Status> {
    if value.len() > MAX_REASON {
        return Err(Status::invalid_argument(format!(
            "reason: longer than {MAX_REASON} bytes"
        )));
    }
    Ok(value)
}

fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.identity.to_string())
        .unwrap_or_default()
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn pause_to_wire(p: PauseState) -> v1::PauseState {
    v1::PauseState {
        paused: p.paused,
        reason: p.reason,
        by: p.by,
        since: p.since.map(ts),
    }
}

pub fn action_to_wire(e: crate::model::journal::Entry) -> v1::Action {
    use crate::model::journal::Phase;
    use crate::model::journal::Step;
    v1::Action {
        id: e.key,
        instance_id: e.instance_id,
        kind: match e.step {
            Step::Deregister | Step::Drain => v1::ActionKind::Deregister,
            Step::Replace | Step::Terminate => v1::ActionKind::Replace,
            Step::Ssm => v1::ActionKind::RemoteRestart,
        }
        .into(),
        status: match e.phase {
            Phase::Intent => v1::ActionStatus::Intended,
            Phase::Succeeded => v1::ActionStatus::Succeeded,
            Phase::Failed => v1::ActionStatus::Failed,
            Phase::WouldAct => v1::ActionStatus::DryRun,
        }
        .into(),
        reason: e.reason,
        detail: if e.target_groups.is_empty() || !e.detail.is_empty() {
            e.detail
        } else {
            format!("{} [{}]", e.detail, e.target_groups.join(", "))
        },
        at: Some(ts(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms)
        )),
        fencing_token: e.fencing_token,
        requested_by: e.requested_by,
    }
}

fn event_to_wire(e: FleetEvent) -> v1::FleetEvent {
    v1::FleetEvent {
        cursor: e.cursor,
        at: Some(ts(e.at)),
        instance_id: e.instance_id,
        asg: e.asg,
        kind: e.kind.as_str().to_owned(),
        message: e.message,
    }
}

/// One word for an instance's overall state, from what its agent says.
fn instance_state(r: &InstanceRecord) -> v1::InstanceState {
    let Some(agent) = &r.agent else {
        return v1::InstanceState::Unknown;
    };
    if !agent.connected {
        return v1::InstanceState::Silent;
    }
    if agent
        .services
        .values()
        .any(|s| *s == ServiceState::Escalated)
    {
        return v1::InstanceState::Escalated;
    }
    if agent
        .services
        .values()
        .any(|s| !matches!(s, ServiceState::Healthy | ServiceState::Starting))
    {
        return v1::InstanceState::Degraded;
    }
    v1::InstanceState::Healthy
}

fn summary(r: &InstanceRecord) -> v1::InstanceSummary {
    v1::InstanceSummary {
        instance_id: r.instance_id.clone(),
        asg: r.asg.clone().unwrap_or_default(),
        availability_zone: r.availability_zone.clone(),
        state: instance_state(r).into(),
        connected: r.agent.as_ref().is_some_and(|a| a.connected),
        last_heartbeat: r.agent.as_ref().and_then(|a| a.last_heartbeat).map(ts),
        agent_version: r
            .agent
            .as_ref()
            .map(|a| a.agent_version.clone())
            .unwrap_or_default(),
        failing_dependencies: r
            .agent
            .as_ref()
            .map(|a| a.failing_dependencies.iter().cloned().collect())
            .unwrap_or_default(),
    }
}

fn fleet_guardrails(fleet: &Fleet) -> Vec<v1::Guardrail> {
    let mut held = Vec::new();
    let pause = fleet.pause_state();
    if pause.paused {
        held.push(v1::Guardrail {
            name: "paused".into(),
            reason: format!("fleet paused by {}: {}", pause.by, pause.reason),
        });
    }
    if fleet.dry_run {
        held.push(v1::Guardrail {
            name: "dry-run".into(),
            reason: "coordinator runs in dry-run mode: decisions are recorded, not acted on".into(),
        });
    }
    held
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::FleetEvent, Status>> + Send>>;

/// Response metadata naming who answered: `leader`, or `follower; leader=<endpoint>` (`unknown`
/// while no one holds the lease). Agents stream to the leader only, so a follower's instance
/// list shows every agent as disconnected and its journal may lag: clients say so.
pub const ANSWERED_BY: &str = "autoheal-answered-by";

impl FleetApi {
    fn answered_by(&self) -> String {
        match self.leadership.current() {
            crate::services::lease::LeaderState::Leader { .. } => "leader".to_owned(),
            crate::services::lease::LeaderState::Follower { leader_endpoint } => format!(
                "follower; leader={}",
                leader_endpoint.as_deref().unwrap_or("unknown")
            ),
        }
    }

    fn answer<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        // An endpoint is host:port, always valid ASCII; a value that isn't is left out.
        if let Ok(value) = self.answered_by().parse() {
            response.metadata_mut().insert(ANSWERED_BY, value);
        }
        response
    }
}

#[tonic::async_trait]
impl FleetService for FleetApi {
    type WatchEventsStream = EventStream;

    async fn get_fleet_status(
        &self,
        _request: Request<v1::GetFleetStatusRequest>,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        let instances = self.fleet.instances(&InstanceFilter::default());
        let view = self.control.as_ref().and_then(|c| c.view.borrow().clone());
        let mut groups: BTreeMap<String, v1::GroupStatus> = BTreeMap::new();
        for r in &instances {
            let name = r.asg.clone().unwrap_or_default();
            let g = groups.entry(name.clone()).or_insert_with(|| {
                let guardrails = match (&view, name.is_empty()) {
                    (Some(v), false) => v
                        .engine
                        .fleet_guardrails(
                            &v.fleet,
                            &v.book,
                            &autoheal_policy::AsgName::new(name.clone()),
                            v.now(),
                        )
                        .iter()
                        .map(|g| v1::Guardrail {
                            name: g.name().to_owned(),
                            reason: g.reason(),
                        })
                        .collect(),
                    _ => fleet_guardrails(&self.fleet),
                };
                v1::GroupStatus {
                    name,
                    guardrails,
                    ..Default::default()
                }
            });
            g.instances += 1;
            let remediating = view.as_ref().is_some_and(|v| {
                v.book
                    .in_flight_for(&autoheal_policy::InstanceId::new(r.instance_id.clone()))
                    .is_some()
            });
            match instance_state(r) {
                _ if remediating => g.remediating += 1,
                v1::InstanceState::Healthy => g.healthy += 1,
                v1::InstanceState::Silent | v1::InstanceState::Unknown => g.silent += 1,
                v1::InstanceState::Remediating => g.remediating += 1,
                _ => g.unhealthy += 1,
            }
            if r.agent.as_ref().is_some_and(|a| a.connected) {
                g.connected += 1;
            }
        }
        let connected = groups.values().map(|g| g.connected).sum();
        Ok(self.answer(v1::FleetStatus {
            pause: Some(pause_to_wire(self.fleet.pause_state())),
            dry_run: self.fleet.dry_run,
            leader: self.leadership.current().token().is_some(),
            coordinator_id: self.fleet.coordinator_id.to_string(),
            instances: u32::try_from(instances.len()).unwrap_or(u32::MAX),
            connected,
            groups: groups.into_values().collect(),
        }))
    }

    async fn list_instances(
        &self,
        request: Request<v1::ListInstancesRequest>,
    ) -> Result<Response<v1::ListInstancesResponse>, Status> {
        let req = request.into_inner();
        let state = v1::InstanceState::try_from(req.state).map_err(|_| {
            Status::invalid_argument(format!("state: unknown instance state {}", req.state))
        })?;
        let filter = InstanceFilter {
            asg: (!req.asg.is_empty()).then_some(req.asg),
            availability_zone: (!req.availability_zone.is_empty()).then_some(req.availability_zone),
        };
        let instances = self
            .fleet
            .instances(&filter)
            .iter()
            .map(summary)
            .filter(|s| state == v1::InstanceState::Unspecified || s.state == i32::from(state))
            .collect();
        Ok(self.answer(v1::ListInstancesResponse { instances }))
    }

    async fn get_instance(
        &self,
        request: Request<v1::GetInstanceRequest>,
    ) -> Result<Response<v1::Instance>, Status> {
        let id = request.into_inner().instance_id;
        instance_id(&id)?;
        let r = self.fleet.instance(&id).ok_or_else(|| {
            Status::not_found(format!("instance {id} is not known to this coordinator"))
        })?;
        let agent = r.agent.as_ref();
        Ok(self.answer(v1::Instance {
            summary: Some(summary(&r)),
            services: agent
                .map(|a| {
                    a.services
                        .iter()
                        .map(|(name, state)| v1::ServiceStatus {
                            name: name.clone(),
                            state: service_state_to_wire(*state).into(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            declared: agent
                .map(|a| {
                    a.declared
                        .iter()
                        .map(|s| v1::ServiceSpec {
                            name: s.name.clone(),
                            unit: s.unit.clone().unwrap_or_default(),
                            depends_on: s.depends_on.clone(),
                            checks: s
                                .checks
                                .iter()
                                .map(|c| v1::CheckSpec {
                                    name: c.name.clone(),
                                    kind: c.kind.clone(),
                                    dependency: c.dependency.clone().unwrap_or_default(),
                                    interval: prost_types::Duration::try_from(c.interval).ok(),
                                })
                                .collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            recent_events: r.recent_events.iter().cloned().map(event_to_wire).collect(),
            targets: r
                .targets
                .iter()
                .map(|t| v1::TargetHealth {
                    target_group_arn: t.target_group.clone(),
                    state: t.state.to_string(),
                    reason: t.reason.clone(),
                })
                .collect(),
            asg: r.asg_member.as_ref().map(|m| v1::AsgView {
                lifecycle_state: m.lifecycle.to_string(),
                health_status: match m.health {
                    AsgHealth::Healthy => "Healthy",
                    AsgHealth::Unhealthy => "Unhealthy",
                }
                .to_owned(),
                protected_from_scale_in: m.protected,
            }),
            actions: self
                .journal
                .recent(Some(&id), 20)
                .into_iter()
                .map(action_to_wire)
                .collect(),
            dropped_events: agent.map_or(0, |a| a.dropped_events),
            skipped: r.skipped,
        }))
    }

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let req = request.into_inner();
        let (backlog, live) = self.fleet.subscribe(req.after);
        let mut last = req.after;
        instance_filter(&req.instance_id)?;
        let instance = req.instance_id;
        let shutdown = self.shutdown.clone();
        let backlog = tokio_stream::iter(backlog.into_iter().map(Ok));
        let live = tokio_stream::wrappers::BroadcastStream::new(live).map(|r| {
            r.map_err(|tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)| {
                Status::data_loss(format!(
                    "watcher fell {n} events behind; resume with the cursor of the last event received"
                ))
            })
        });
        let stream = futures::StreamExt::take_until(backlog.chain(live), async move {
            shutdown.cancelled().await;
        })
        .filter_map(move |r| match r {
            Ok(e) if e.cursor <= last => None,
            Ok(e) => {
                last = e.cursor;
                (instance.is_empty() || e.instance_id == instance).then(|| Ok(event_to_wire(e)))
            }
            Err(status) => Some(Err(status)),
        });
        Ok(self.answer(Box::pin(stream)))
    }

    async fn list_actions(
        &self,
        request: Request<v1::ListActionsRequest>,
    ) -> Result<Response<v1::ListActionsResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit.min(10_000)
        } as usize;
        let instance = instance_filter(&req.instance_id)?;
        let actions = self
            .journal
            .recent(instance, limit)
            .into_iter()
            .map(action_to_wire)
            .collect();
        Ok(self.answer(v1::ListActionsResponse { actions }))
    }

    async fn pause(
        &self,
        request: Request<v1::PauseRequest>,
    ) -> Result<Response<v1::PauseState>, Status> {
        let by = caller(&request);
        let reason = request.into_inner().reason;
        self::reason(&reason)?;
        if reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: required, so the people on call know why destructive actions stopped",
            ));
        }
        let state = self
            .fleet
            .set_paused(true, &reason, &by)
            .await
            .map_err(|e| Status::unavailable(format!("cannot persist the pause: {e}")))?;
        Ok(self.answer(pause_to_wire(state)))
    }

    async fn resume(
        &self,
        request: Request<v1::ResumeRequest>,
    ) -> Result<Response<v1::PauseState>, Status> {
        let by = caller(&request);
        let reason = request.into_inner().reason;
        self::reason(&reason)?;
        let state = self
            .fleet
            .set_paused(false, &reason, &by)
            .await
            .map_err(|e| Status::unavailable(format!("cannot persist the resume: {e}")))?;
        Ok(self.answer(pause_to_wire(state)))
    }

    async fn drain(
        &self,
        request: Request<v1::DrainRequest>,
    ) -> Result<Response<v1::Action>, Status> {
        let by = caller(&request);
        let req = request.into_inner();
        instance_id(&req.instance_id)?;
        reason(&req.reason)?;
        let Some(control) = &self.control else {
            return Err(Status::failed_precondition(
                "drain needs AWS: this coordinator runs without an [aws] section",
            ));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        control
            .commands
            .send(crate::services::control::Command::Drain {
                instance: req.instance_id.clone(),
                reason: if req.reason.is_empty() {
                    "operator drain".into()
                } else {
                    req.reason
                },
                by,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("the control loop is not running"))?;
        match answer.await {
            Ok(Ok(entry)) => Ok(self.answer(action_to_wire(entry))),
            Ok(Err(crate::services::control::DrainError::NotFound(id))) => Err(Status::not_found(
                format!("instance {id} is not in any managed auto scaling group"),
            )),
            Ok(Err(crate::services::control::DrainError::Held(why))) => Err(
                Status::failed_precondition(format!("held by guardrails: {why}")),
            ),
            Ok(Err(crate::services::control::DrainError::Failed(why))) => {
                Err(Status::unavailable(why))
            }
            Err(_) => Err(Status::unavailable("the control loop stopped")),
        }
    }

    async fn what_if(
        &self,
        request: Request<v1::WhatIfRequest>,
    ) -> Result<Response<v1::WhatIfResponse>, Status> {
        let req = request.into_inner();
        let action = v1::ActionKind::try_from(req.action)
            .ok()
            .filter(|a| *a != v1::ActionKind::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument("action: one of deregister, replace, remote-restart")
            })?;
        instance_id(&req.instance_id)?;
        if self.fleet.instance(&req.instance_id).is_none() {
            return Err(Status::not_found(format!(
                "instance {} is not known to this coordinator",
                req.instance_id
            )));
        }
        let view = self.control.as_ref().and_then(|c| c.view.borrow().clone());
        let Some(view) = view else {
            let held_by = fleet_guardrails(&self.fleet);
            let mut held_by = held_by;
            held_by.push(v1::Guardrail {
                name: "no-aws".into(),
                reason: "this coordinator runs without AWS (or has not completed an inventory yet)"
                    .into(),
            });
            return Ok(self.answer(v1::WhatIfResponse {
                allowed: false,
                explanation: format!("{} on {} is held", action.as_str_name(), req.instance_id),
                held_by,
            }));
        };
        let step = match action {
            v1::ActionKind::Deregister => autoheal_policy::Step::Deregister,
            v1::ActionKind::Replace => autoheal_policy::Step::Replace,
            _ => autoheal_policy::Step::Ssm,
        };
        let id = autoheal_policy::InstanceId::new(req.instance_id.clone());
        let answer = view
            .engine
            .what_if(&view.fleet, &view.book, &id, step, view.now())
            .map_err(|e| Status::not_found(e.to_string()))?;
        let held_by: Vec<v1::Guardrail> = answer
            .held_by
            .iter()
            .map(|g| v1::Guardrail {
                name: g.name().to_owned(),
                reason: g.reason(),
            })
            .collect();
        Ok(self.answer(v1::WhatIfResponse {
            allowed: answer.allowed,
            explanation: if answer.allowed {
                format!("{step} on {} would be allowed now", req.instance_id)
            } else {
                format!(
                    "{step} on {} is held by: {}",
                    req.instance_id,
                    held_by
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            held_by,
        }))
    }

    async fn set_skip(
        &self,
        request: Request<v1::SetSkipRequest>,
    ) -> Result<Response<v1::InstanceSummary>, Status> {
        let by = caller(&request);
        let req = request.into_inner();
        instance_id(&req.instance_id)?;
        reason(&req.reason)?;
        if req.skip && req.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: required when skipping, so the people on call know why",
            ));
        }
        let record = self
            .fleet
            .set_skipped(&req.instance_id, req.skip, &req.reason, &by)
            .await
            .map_err(|e| Status::unavailable(format!("cannot persist the skip: {e}")))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "instance {} is not known to this coordinator",
                    req.instance_id
                ))
            })?;
        Ok(self.answer(summary(&record)))
    }
}

#[cfg(test)]
mod tests;
