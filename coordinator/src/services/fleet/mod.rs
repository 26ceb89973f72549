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

use crate::model::events::FleetEvent;
use crate::model::events::PauseState;
use crate::model::inventory::Member;
use crate::model::report::ServiceSpec;
use crate::model::report::ServiceState;

mod inventory;
mod log;
mod persist;
mod registry;

use inventory::with_skip;
pub use log::count_events;
use log::{push_event, push_event_at};

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
    pub state: crate::model::inventory::TargetState,
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
