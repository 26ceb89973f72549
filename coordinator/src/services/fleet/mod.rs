//! The coordinator's live view of the fleet, fed by agent streams (and, later, by the AWS
//! inventory loop), read by the operator API. Heartbeats stay in memory; state changes become
//! fleet events that operators can watch and resume from a cursor.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::model::events;
use crate::model::events::FleetEvent;
use crate::model::events::PauseState;
use crate::model::inventory::Group;
use crate::model::inventory::Member;
use crate::model::inventory::Target;
use crate::model::report::Event;
use crate::model::report::EventKind;
use crate::model::report::Heartbeat;
use crate::model::report::Hello;
use crate::model::report::ServiceSpec;
use crate::model::report::ServiceState;

/// How many fleet events are kept for `WatchEvents` resumption and `GetInstance`.
const EVENT_LOG: usize = 10_000;
/// How many recent event seqs per agent epoch are remembered across reconnects.
const RECENT_PER_INSTANCE: usize = 50;

/// The agent side of one instance.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub connected: bool,
    pub agent_version: String,
    pub epoch: u64,
    /// Highest event seq of `epoch` that the coordinator holds.
    pub acked_seq: u64,
    pub connected_at: SystemTime,
    pub last_heartbeat: Option<SystemTime>,
    pub last_seen: SystemTime,
    pub declared: Vec<ServiceSpec>,
    pub services: BTreeMap<String, ServiceState>,
    pub failing_dependencies: BTreeSet<String>,
    pub escalations: Vec<Escalation>,
    pub dropped_events: u64,
    pub healing_paused: bool,
    /// The agent had numbered events before this coordinator knew its epoch (we restarted, or
    /// another replica held its stream): the first event received sets the baseline, and the
    /// earlier ones are not "missing" — a previous coordinator acknowledged them.
    baseline_unknown: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub service: String,
    pub reason: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub availability_zone: String,
    /// Auto Scaling group, once the inventory loop knows it.
    pub asg: Option<String>,
    pub agent: Option<AgentView>,
    pub recent_events: VecDeque<FleetEvent>,
    pub skipped: bool,
    /// When this coordinator first saw the instance (from the ASG or its agent).
    pub first_seen: SystemTime,
    /// The ASG's view of the instance, from the last inventory.
    pub asg_member: Option<Member>,
    /// Target health per target group, from the last inventory.
    pub targets: Vec<TargetRecord>,
    /// When services changed state, for flap detection.
    pub health_changes: VecDeque<SystemTime>,
    session: u64,
    session_cancel: Option<CancellationToken>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecord {
    pub target_group: String,
    pub state: String,
    pub reason: String,
    /// Since when the state has been what it is.
    pub since: SystemTime,
}

impl InstanceRecord {
    fn new(instance_id: &str, availability_zone: &str) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            availability_zone: availability_zone.to_owned(),
            asg: None,
            agent: None,
            recent_events: VecDeque::new(),
            skipped: false,
            first_seen: SystemTime::now(),
            asg_member: None,
            targets: Vec::new(),
            health_changes: VecDeque::new(),
            session: 0,
            session_cancel: None,
        }
    }
}

/// A connected agent stream, as the registry knows it.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: u64,
    pub instance_id: String,
    pub epoch: u64,
    /// Ends when a newer stream for the same instance replaces this one.
    pub superseded: CancellationToken,
}

/// What the registry made of an event; the stream acks `acked_seq` either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New {
        acked_seq: u64,
    },
    /// Already held (a replay after reconnect): not recorded twice.
    Duplicate {
        acked_seq: u64,
    },
    /// A newer stream for this instance took over; this one should end.
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceFilter {
    pub asg: Option<String>,
    pub availability_zone: Option<String>,
}

#[derive(Debug)]
struct State {
    instances: BTreeMap<String, InstanceRecord>,
    log: VecDeque<FleetEvent>,
    next_cursor: u64,
    next_session: u64,
    pause: PauseState,
    skips: BTreeMap<String, Skip>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub reason: String,
    pub by: String,
    pub since: SystemTime,
}

/// The fleet registry. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Fleet {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<FleetEvent>,
    store: Option<Arc<dyn crate::ports::store::Store>>,
    pub coordinator_id: Arc<str>,
    pub dry_run: bool,
}

impl Fleet {
    /// `store` keeps what must survive a restart (the global pause, per-instance skips); `None`
    /// keeps everything in memory. Call [`Fleet::load_persisted`] once before serving.
    pub fn new(
        coordinator_id: &str,
        dry_run: bool,
        store: Option<Arc<dyn crate::ports::store::Store>>,
    ) -> std::io::Result<Self> {
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                instances: BTreeMap::new(),
                log: VecDeque::new(),
                next_cursor: 1,
                next_session: 1,
                pause: PauseState::default(),
                skips: BTreeMap::new(),
            })),
            events,
            store,
            coordinator_id: coordinator_id.into(),
            dry_run,
        })
    }

    /// Reads the pause and the skips from the store (at start, and when another replica may
    /// have changed them).
    pub async fn load_persisted(&self) -> Result<(), crate::ports::store::StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let pause = store.pause().await?;
        let skips = store.skips().await?;
        let mut state = self.lock();
        state.pause = pause;
        state.skips = skips
            .into_iter()
            .map(|s| {
                (
                    s.instance_id.clone(),
                    Skip {
                        reason: s.reason,
                        by: s.by,
                        since: s.since,
                    },
                )
            })
            .collect();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

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
        push_event(
            &mut state,
            &self.events,
            &session.instance_id,
            events::EventKind::from(&event.kind),
            event.kind.describe(),
        );
        Recorded::New { acked_seq }
    }

    /// Folds a fresh inventory into the view: which ASG each instance is in, its lifecycle and
    /// health there, and its target health in each target group. Returns the ids of connected
    /// agents no known ASG claims (reported, never acted on).
    pub fn apply_inventory(
        &self,
        groups: &[Group],
        targets: &BTreeMap<String, Vec<Target>>,
    ) -> Vec<String> {
        let now = SystemTime::now();
        let mut state = self.lock();
        let mut claimed = BTreeSet::new();
        let mut new_instances = Vec::new();
        for group in groups {
            for member in &group.instances {
                claimed.insert(member.instance_id.clone());
                let record = state
                    .instances
                    .entry(member.instance_id.clone())
                    .or_insert_with(|| {
                        new_instances.push((member.instance_id.clone(), group.name.clone()));
                        InstanceRecord::new(&member.instance_id, &member.availability_zone)
                    });
                record.asg = Some(group.name.clone());
                if record.availability_zone.is_empty() {
                    record.availability_zone = member.availability_zone.clone();
                }
                record.asg_member = Some(member.clone());
                let mut fresh = Vec::new();
                for tg in &group.target_groups {
                    let Some(target) = targets
                        .get(tg)
                        .and_then(|ts| ts.iter().find(|t| t.instance_id == member.instance_id))
                    else {
                        continue;
                    };
                    let since = record
                        .targets
                        .iter()
                        .find(|old| &old.target_group == tg && old.state == target.state)
                        .map_or(now, |old| old.since);
                    fresh.push(TargetRecord {
                        target_group: tg.clone(),
                        state: target.state.clone(),
                        reason: target.reason.clone(),
                        since,
                    });
                }
                record.targets = fresh;
            }
        }
        for record in state.instances.values_mut() {
            if !claimed.contains(&record.instance_id) {
                record.asg_member = None;
            }
        }
        for (id, asg) in new_instances {
            push_event(
                &mut state,
                &self.events,
                &id,
                events::EventKind::InstanceDiscovered,
                format!("instance found in auto scaling group {asg}"),
            );
        }
        state
            .instances
            .values()
            .filter(|r| r.agent.as_ref().is_some_and(|a| a.connected))
            .filter(|r| !claimed.contains(&r.instance_id))
            .map(|r| r.instance_id.clone())
            .collect()
    }

    /// Records a fleet event that is not from an agent (decisions, actions, inventory trouble).
    pub fn record_event(&self, instance_id: &str, kind: events::EventKind, message: String) {
        let mut state = self.lock();
        push_event(&mut state, &self.events, instance_id, kind, message);
    }

    pub fn instances(&self, filter: &InstanceFilter) -> Vec<InstanceRecord> {
        let state = self.lock();
        state
            .instances
            .values()
            .filter(|r| {
                filter
                    .asg
                    .as_ref()
                    .is_none_or(|asg| r.asg.as_deref() == Some(asg.as_str()))
                    && filter
                        .availability_zone
                        .as_ref()
                        .is_none_or(|az| &r.availability_zone == az)
            })
            .cloned()
            .map(|r| with_skip(r, &state.skips))
            .collect()
    }

    pub fn instance(&self, id: &str) -> Option<InstanceRecord> {
        let state = self.lock();
        state
            .instances
            .get(id)
            .cloned()
            .map(|r| with_skip(r, &state.skips))
    }

    pub fn pause_state(&self) -> PauseState {
        self.lock().pause.clone()
    }

    /// Sets the global pause and persists it before answering, so a restart keeps it.
    pub async fn set_paused(
        &self,
        paused: bool,
        reason: &str,
        by: &str,
    ) -> Result<PauseState, crate::ports::store::StoreError> {
        let new = PauseState {
            paused,
            reason: reason.to_owned(),
            by: by.to_owned(),
            since: Some(SystemTime::now()),
        };
        if let Some(store) = &self.store {
            store.set_pause(&new).await?;
        }
        let mut state = self.lock();
        state.pause = new.clone();
        let message = if paused {
            format!("fleet paused by {by}: {reason}")
        } else {
            format!("fleet resumed by {by}: {reason}")
        };
        push_event(
            &mut state,
            &self.events,
            "",
            if paused {
                events::EventKind::Paused
            } else {
                events::EventKind::Resumed
            },
            message,
        );
        Ok(new)
    }

    /// Excludes `instance` from automatic remediation (or returns it), persisted before answering.
    pub async fn set_skipped(
        &self,
        instance: &str,
        skip: bool,
        reason: &str,
        by: &str,
    ) -> Result<Option<InstanceRecord>, crate::ports::store::StoreError> {
        if !self.lock().instances.contains_key(instance) {
            return Ok(None);
        }
        let since = SystemTime::now();
        if let Some(store) = &self.store {
            if skip {
                store
                    .set_skip(&crate::ports::store::Skip {
                        instance_id: instance.to_owned(),
                        reason: reason.to_owned(),
                        by: by.to_owned(),
                        since,
                    })
                    .await?;
            } else {
                store.unset_skip(instance).await?;
            }
        }
        let mut state = self.lock();
        if skip {
            state.skips.insert(
                instance.to_owned(),
                Skip {
                    reason: reason.to_owned(),
                    by: by.to_owned(),
                    since,
                },
            );
        } else {
            state.skips.remove(instance);
        }
        let message = if skip {
            format!("excluded from automatic remediation by {by}: {reason}")
        } else {
            format!("returned to automatic remediation by {by}: {reason}")
        };
        push_event(
            &mut state,
            &self.events,
            instance,
            if skip {
                events::EventKind::Skipped
            } else {
                events::EventKind::Unskipped
            },
            message,
        );
        Ok(state
            .instances
            .get(instance)
            .cloned()
            .map(|r| with_skip(r, &state.skips)))
    }

    /// Events after `cursor` still in the log, and a receiver for the ones to come. Subscribing
    /// under the lock means nothing falls between the two.
    pub fn subscribe(&self, after: u64) -> (Vec<FleetEvent>, broadcast::Receiver<FleetEvent>) {
        let state = self.lock();
        let receiver = self.events.subscribe();
        let backlog = state
            .log
            .iter()
            .filter(|e| e.cursor > after)
            .cloned()
            .collect();
        (backlog, receiver)
    }
}

/// Counts fleet events by kind in the metrics, off the fleet's broadcast like every other
/// observer.
pub async fn count_events(fleet: Fleet, shutdown: CancellationToken) {
    let (_, mut events) = fleet.subscribe(u64::MAX);
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => crate::metrics::global().fleet_event(event.kind.as_str()),
            // Missed events stay uncounted; counting the rest matters more than stopping.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn with_skip(mut record: InstanceRecord, skips: &BTreeMap<String, Skip>) -> InstanceRecord {
    record.skipped = skips.contains_key(&record.instance_id);
    record
}

fn current_agent<'a>(state: &'a mut State, session: &Session) -> Option<&'a mut AgentView> {
    state
        .instances
        .get_mut(&session.instance_id)
        .filter(|r| r.session == session.id)
        .and_then(|r| r.agent.as_mut())
}

fn push_event(
    state: &mut State,
    events: &broadcast::Sender<FleetEvent>,
    instance_id: &str,
    kind: events::EventKind,
    message: String,
) {
    let cursor = state.next_cursor;
    state.next_cursor += 1;
    let asg = state
        .instances
        .get(instance_id)
        .and_then(|r| r.asg.clone())
        .unwrap_or_default();
    let event = FleetEvent {
        cursor,
        at: SystemTime::now(),
        instance_id: instance_id.to_owned(),
        asg,
        kind,
        message,
    };
    // Routine agent chatter (every check flip, every restart) is debug: at fleet scale an info
    // line per event is most of the coordinator's ingest cost (BENCHMARKS.md, ingest). What a
    // person acts on stays at info; all of it is in WatchEvents and the store either way.
    use events::EventKind as K;
    if matches!(
        kind,
        K::CheckChanged
            | K::ServiceStateChanged
            | K::RestartAttempted
            | K::AgentConnected
            | K::AgentDisconnected
            | K::DependencyChanged
    ) {
        tracing::debug!(cursor, instance = instance_id, kind = kind.as_str(), message = %event.message, "fleet event");
    } else {
        tracing::info!(cursor, instance = instance_id, kind = kind.as_str(), message = %event.message, "fleet event");
    }
    if let Some(record) = state.instances.get_mut(instance_id) {
        if record.recent_events.len() == RECENT_PER_INSTANCE {
            record.recent_events.pop_front();
        }
        record.recent_events.push_back(event.clone());
    }
    if state.log.len() == EVENT_LOG {
        state.log.pop_front();
    }
    state.log.push_back(event.clone());
    // No receivers is fine: nobody is watching.
    let _ = events.send(event);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::report::CheckStatus;

    fn hello(epoch: u64) -> Hello {
        Hello {
            instance_id: "i-1".into(),
            availability_zone: "az-a".into(),
            agent_version: "0.1.0".into(),
            epoch,
            last_seq: 0,
            services: vec![],
            healing_paused: false,
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            at: SystemTime::now(),
            kind: EventKind::CheckChanged {
                service: "web".into(),
                check: "http".into(),
                status: CheckStatus::Unhealthy,
                detail: "HTTP 503".into(),
            },
        }
    }

    #[test]
    fn replayed_events_are_recorded_once() {
        let fleet = Fleet::new("c", true, None).expect("fleet");
        let (session, acked) = fleet.agent_connected(&hello(9));
        assert_eq!(acked, 0);
        assert_eq!(
            fleet.event(&session, &event(1)),
            Recorded::New { acked_seq: 1 }
        );
        assert_eq!(
            fleet.event(&session, &event(2)),
            Recorded::New { acked_seq: 2 }
        );
        fleet.agent_disconnected(&session, "test");
        // Same epoch reconnects and replays 2 and 3: 2 is a duplicate.
        let (session, acked) = fleet.agent_connected(&hello(9));
        assert_eq!(acked, 2);
        assert_eq!(
            fleet.event(&session, &event(2)),
            Recorded::Duplicate { acked_seq: 2 }
        );
        assert_eq!(
            fleet.event(&session, &event(3)),
            Recorded::New { acked_seq: 3 }
        );
        let checks = fleet
            .instance("i-1")
            .expect("known")
            .recent_events
            .iter()
            .filter(|e| e.kind == events::EventKind::CheckChanged)
            .count();
        assert_eq!(checks, 3);
        // A restarted agent (new epoch) starts over.
        let (_, acked) = fleet.agent_connected(&hello(10));
        assert_eq!(acked, 0);
    }

    #[test]
    fn a_restarted_coordinator_does_not_call_acked_events_missing() {
        let fleet = Fleet::new("c", true, None).expect("fleet");
        // The agent numbered 1..=2 and a previous coordinator acked them.
        let mut h = hello(5);
        h.last_seq = 2;
        let (session, acked) = fleet.agent_connected(&h);
        assert_eq!(acked, 0);
        assert_eq!(
            fleet.event(&session, &event(3)),
            Recorded::New { acked_seq: 3 }
        );
        // A real gap after the baseline is still reported.
        assert_eq!(
            fleet.event(&session, &event(5)),
            Recorded::New { acked_seq: 5 }
        );
        let kinds: Vec<_> = fleet
            .instance("i-1")
            .expect("known")
            .recent_events
            .iter()
            .map(|e| e.message.clone())
            .filter(|m| m.contains("never arrived"))
            .collect();
        assert_eq!(kinds, ["events 4..=4 never arrived"]);
    }

    #[test]
    fn a_newer_stream_supersedes_the_old_one() {
        let fleet = Fleet::new("c", true, None).expect("fleet");
        let (old, _) = fleet.agent_connected(&hello(1));
        let (new, _) = fleet.agent_connected(&hello(1));
        assert!(old.superseded.is_cancelled());
        assert_eq!(fleet.event(&old, &event(1)), Recorded::Superseded);
        assert_eq!(fleet.event(&new, &event(1)), Recorded::New { acked_seq: 1 });
        // The old stream ending must not mark the instance disconnected.
        fleet.agent_disconnected(&old, "superseded");
        assert!(
            fleet
                .instance("i-1")
                .and_then(|r| r.agent)
                .is_some_and(|a| a.connected)
        );
    }

    #[tokio::test]
    async fn pause_and_skips_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || -> Arc<dyn crate::ports::store::Store> {
            Arc::new(crate::adapters::store::EmbeddedStore::open(dir.path()).expect("store"))
        };
        let fleet = Fleet::new("c", true, Some(open())).expect("fleet");
        let (_session, _) = fleet.agent_connected(&hello(1));
        fleet
            .set_paused(true, "maintenance", "spiffe://td/operator/alice")
            .await
            .expect("persist");
        fleet
            .set_skipped("i-1", true, "debugging", "spiffe://td/operator/alice")
            .await
            .expect("persist")
            .expect("known instance");
        drop(fleet);
        let again = Fleet::new("c", true, Some(open())).expect("reopen");
        again.load_persisted().await.expect("load");
        let pause = again.pause_state();
        assert!(pause.paused);
        assert_eq!(pause.reason, "maintenance");
        assert_eq!(pause.by, "spiffe://td/operator/alice");
        again.agent_connected(&hello(2));
        assert!(again.instance("i-1").expect("known").skipped);
    }

    #[tokio::test]
    async fn watchers_resume_from_a_cursor_without_gaps() {
        let fleet = Fleet::new("c", true, None).expect("fleet");
        let (session, _) = fleet.agent_connected(&hello(1));
        fleet.event(&session, &event(1));
        let (backlog, mut live) = fleet.subscribe(1);
        assert_eq!(backlog.len(), 1, "only events after cursor 1");
        assert_eq!(backlog[0].cursor, 2);
        fleet.event(&session, &event(2));
        let next = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .expect("in time")
            .expect("event");
        assert_eq!(next.cursor, 3);
    }
}
