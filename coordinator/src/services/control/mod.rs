//! The control loop: refresh the inventory from AWS, build a fleet snapshot, let the pure policy
//! engine decide, and carry out its executable decisions — each behind a write-ahead journal
//! entry, each AWS call idempotent, retried and bounded. A restarted coordinator first reconciles
//! interrupted intents against what AWS says, and never repeats an action the journal shows done.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use autoheal_policy as policy;
use tokio::sync::{mpsc, oneshot, watch};

use crate::model::inventory::Selector;
use crate::model::journal::Entry;
use crate::ports::aws::LoadBalancer;
use crate::ports::aws::RemoteCommand;
use crate::ports::aws::ScalingGroups;
use crate::services::fleet::Fleet;
use crate::services::journal::Journal;
use crate::services::lease::LeaseHandle;

mod execute;
mod reconcile;
mod snapshot;
mod term;

/// What the operator API needs to answer what-if and guardrail questions: the engine, the last
/// snapshot it decided on, and the remediation book. Published after every pass.
#[derive(Debug, Clone)]
pub struct ControlView {
    pub engine: policy::Engine,
    pub fleet: policy::Fleet,
    pub book: policy::RemediationBook,
    pub at: SystemTime,
}

impl ControlView {
    pub fn now(&self) -> policy::Timestamp {
        ts(SystemTime::now())
    }
}

/// Requests from the operator API.
#[derive(Debug)]
pub enum Command {
    Drain {
        instance: String,
        reason: String,
        by: String,
        reply: oneshot::Sender<Result<Entry, DrainError>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("instance {0} is not in any managed auto scaling group")]
    NotFound(String),
    #[error("held by guardrails: {0}")]
    Held(String),
    #[error("{0}")]
    Failed(String),
}

/// The operator API's handle on the controller.
#[derive(Debug, Clone)]
pub struct Handle {
    pub view: watch::Receiver<Option<Arc<ControlView>>>,
    pub commands: mpsc::Sender<Command>,
}

/// The AWS services the controller acts through.
#[derive(Clone)]
pub struct Hands {
    pub groups: Arc<dyn ScalingGroups>,
    pub lb: Arc<dyn LoadBalancer>,
    pub commands: Arc<dyn RemoteCommand>,
}

impl std::fmt::Debug for Hands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hands").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceWith {
    /// `SetInstanceHealth(Unhealthy, ShouldRespectGracePeriod)`: the group's own replacement,
    /// honouring its maintenance policy (launch before terminate where configured).
    SetInstanceHealth,
    /// `TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=false)`.
    Terminate,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub selector: Selector,
    pub interval: Duration,
    pub replace_with: ReplaceWith,
    pub respect_grace: bool,
    /// The longest one AWS call may take with all its attempts and waits, plus clock skew:
    /// an intent without outcome is "possibly in flight" this long after it was written.
    pub in_flight: Duration,
}

#[derive(Debug)]
pub struct Controller {
    pub engine: policy::Engine,
    pub book: policy::RemediationBook,
    pub fleet: Fleet,
    pub hands: Hands,
    pub journal: Arc<Journal>,
    pub settings: Settings,
    /// SSM commands in flight: instance → (journal key, command id).
    pending_commands: HashMap<String, (String, String)>,
    /// The last decision said about each instance, so a hold repeated every pass is one event.
    last_said: HashMap<String, String>,
    unclaimed_reported: BTreeSet<String>,
    /// Each instance's last good/bad verdict and when it flipped: the flap quarantine and the
    /// anomaly window read these.
    verdicts: HashMap<String, (bool, Vec<policy::Timestamp>)>,
    view: watch::Sender<Option<Arc<ControlView>>>,
    commands: mpsc::Receiver<Command>,
    lease: LeaseHandle,
    store: Arc<dyn crate::ports::store::Store>,
    /// What the store holds of each remediation, so only changes are written.
    persisted: HashMap<String, serde_json::Value>,
    /// The fencing token of the term this controller is leading in; `None` while following.
    token: Option<u64>,
    reconciled: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ts(t: SystemTime) -> policy::Timestamp {
    policy::Timestamp::from_millis(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

impl Controller {
    pub fn new(
        engine: policy::Engine,
        fleet: Fleet,
        hands: Hands,
        journal: Arc<Journal>,
        settings: Settings,
        lease: LeaseHandle,
        store: Arc<dyn crate::ports::store::Store>,
    ) -> (Self, Handle) {
        let (view, view_rx) = watch::channel(None);
        let (commands_tx, commands) = mpsc::channel(16);
        let handle = Handle {
            view: view_rx,
            commands: commands_tx,
        };
        let controller = Self {
            engine,
            book: policy::RemediationBook::new(),
            fleet,
            hands,
            journal,
            settings,
            pending_commands: HashMap::new(),
            last_said: HashMap::new(),
            unclaimed_reported: BTreeSet::new(),
            verdicts: HashMap::new(),
            view,
            commands,
            lease,
            store,
            persisted: HashMap::new(),
            token: None,
            reconciled: false,
        };
        (controller, handle)
    }
}
