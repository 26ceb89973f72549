//! Agent sessions: a Hello opens one (a newer stream supersedes the old), heartbeats and events
//! are recorded against it, replays are recognised by sequence number.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use tokio_util::sync::CancellationToken;

use crate::model::events;
use crate::model::report::Event;
use crate::model::report::EventKind;
use crate::model::report::Heartbeat;
use crate::model::report::Hello;
use crate::model::report::ServiceState;

use super::*;

impl Fleet {
    /// Records a new agent stream. Returns the session and the highest seq already held for the
    /// agent's epoch (0 for a new epoch), for the Welcome.
    pub fn agent_connected(&self, hello: &Hello) -> (Session, u64) {
        let now = SystemTime::now();
        let mut state = self.lock();
        let id = state.next_session;
        state.next_session += 1;
        let superseded = CancellationToken::new();
        let record = state
            .instances
            .entry(hello.instance_id.clone())
            .or_insert_with(|| InstanceRecord::new(&hello.instance_id, &hello.availability_zone));
        if let Some(old) = record.session_cancel.replace(superseded.clone()) {
            old.cancel();
        }
        record.session = id;
        record.availability_zone = hello.availability_zone.clone();
        let previous = record.agent.take();
        let acked_seq = previous
            .as_ref()
            .filter(|a| a.epoch == hello.epoch)
            .map_or(0, |a| a.acked_seq);
        let restarted = previous.as_ref().is_some_and(|a| a.epoch != hello.epoch);
        let mut agent = AgentView {
            connected: true,
            agent_version: hello.agent_version.clone(),
            epoch: hello.epoch,
            acked_seq,
            connected_at: now,
            last_heartbeat: None,
            last_seen: now,
            declared: hello.services.clone(),
            services: BTreeMap::new(),
            failing_dependencies: BTreeSet::new(),
            escalations: Vec::new(),
            dropped_events: 0,
            healing_paused: hello.healing_paused,
            baseline_unknown: acked_seq == 0 && hello.last_seq > 0,
        };
        if let Some(prev) = previous.filter(|a| a.epoch == hello.epoch) {
            // Same agent process reconnecting: what it told us still holds.
            agent.services = prev.services;
            agent.failing_dependencies = prev.failing_dependencies;
            agent.escalations = prev.escalations;
            agent.dropped_events = prev.dropped_events;
            agent.baseline_unknown = prev.baseline_unknown && acked_seq == 0;
        }
        record.agent = Some(agent);
        let message = format!(
            "agent {} connected (epoch {:x}{})",
            hello.agent_version,
            hello.epoch,
            if restarted { ", agent restarted" } else { "" }
        );
        let instance = hello.instance_id.clone();
        push_event(
            &mut state,
            &self.events,
            &instance,
            events::EventKind::AgentConnected,
            message,
        );
        (
            Session {
                id,
                instance_id: hello.instance_id.clone(),
                epoch: hello.epoch,
                superseded,
            },
            acked_seq,
        )
    }

    pub fn agent_disconnected(&self, session: &Session, why: &str) {
        let mut state = self.lock();
        let Some(record) = state.instances.get_mut(&session.instance_id) else {
            return;
        };
        if record.session != session.id {
            return;
        }
        record.session_cancel = None;
        if let Some(agent) = record.agent.as_mut() {
            agent.connected = false;
        }
        push_event(
            &mut state,
            &self.events,
            &session.instance_id,
            events::EventKind::AgentDisconnected,
            format!("agent stream ended: {why}"),
        );
    }

    /// Returns the seq to ack, or `None` if the session was superseded.
    pub fn heartbeat(&self, session: &Session, heartbeat: &Heartbeat) -> Option<u64> {
        let now = SystemTime::now();
        let mut state = self.lock();
        let agent = current_agent(&mut state, session)?;
        agent.last_heartbeat = Some(now);
        agent.last_seen = now;
        agent.dropped_events = heartbeat.dropped_events;
        for (name, service_state) in &heartbeat.services {
            agent.services.insert(name.clone(), *service_state);
            // A coordinator that restarted after the Escalated event was acked learns of the
            // escalation from the heartbeat's service states.
            if *service_state == ServiceState::Escalated
                && !agent.escalations.iter().any(|e| &e.service == name)
            {
                agent.escalations.push(Escalation {
                    service: name.clone(),
                    reason: "reported escalated by the agent's heartbeat".to_owned(),
                    at: now,
                });
            }
        }
        Some(agent.acked_seq)
    }

    pub fn event(&self, session: &Session, event: &Event) -> Recorded {
        let mut state = self.lock();
        let Some(record) = state
            .instances
            .get_mut(&session.instance_id)
            .filter(|r| r.session == session.id)
        else {
            return Recorded::Superseded;
        };
        let health_changes = &mut record.health_changes;
        let Some(agent) = record.agent.as_mut() else {
            return Recorded::Superseded;
        };
        agent.last_seen = SystemTime::now();
        if event.seq <= agent.acked_seq {
            return Recorded::Duplicate {
                acked_seq: agent.acked_seq,
            };
        }
        let gap = (event.seq > agent.acked_seq + 1 && !agent.baseline_unknown)
            .then(|| (agent.acked_seq + 1, event.seq - 1));
        agent.baseline_unknown = false;
        agent.acked_seq = event.seq;
        match &event.kind {
            EventKind::ServiceStateChanged { service, to, .. } => {
                agent.services.insert(service.clone(), *to);
                if health_changes.len() == 32 {
                    health_changes.pop_front();
                }
                health_changes.push_back(event.at);
            }
            EventKind::Escalated {
                service, reason, ..
            } => {
                agent
                    .services
                    .insert(service.clone(), ServiceState::Escalated);
                agent.escalations.push(Escalation {
                    service: service.clone(),
                    reason: reason.clone(),
                    at: event.at,
                });
            }
            EventKind::DependencyChanged {
                dependency,
                failing,
                ..
            } => {
                if *failing {
                    agent.failing_dependencies.insert(dependency.clone());
                } else {
                    agent.failing_dependencies.remove(dependency);
                }
            }
            _ => {}
        }
        let acked_seq = agent.acked_seq;
        if let Some((first, last)) = gap {
            push_event(
                &mut state,
                &self.events,
                &session.instance_id,
                events::EventKind::EventsMissing,
                format!("events {first}..={last} never arrived"),
            );
        }
        push_event_at(
            &mut state,
            &self.events,
            &session.instance_id,
            events::EventKind::from(&event.kind),
            event.kind.describe(),
            event.at,
        );
        Recorded::New { acked_seq }
    }
}

pub(super) fn current_agent<'a>(
    state: &'a mut State,
    session: &Session,
) -> Option<&'a mut AgentView> {
    state
        .instances
        .get_mut(&session.instance_id)
        .filter(|r| r.session == session.id)
        .and_then(|r| r.agent.as_mut())
}
