//! The control loop: refresh the inventory from AWS, build a fleet snapshot, let the pure policy
//! engine decide, and carry out its executable decisions — each behind a write-ahead journal
//! entry, each AWS call idempotent, retried and bounded. A restarted coordinator first reconciles
//! interrupted intents against what AWS says, and never repeats an action the journal shows done.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use autoheal_policy as policy;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::adapters::aws;
use crate::model::events::EventKind;
use crate::model::inventory::CommandStatus;
use crate::model::inventory::Selector;
use crate::model::journal::Entry;
use crate::model::journal::Phase;
use crate::model::journal::Step;
use crate::model::report::ServiceState;
use crate::ports::aws::LoadBalancer;
use crate::ports::aws::RemoteCommand;
use crate::ports::aws::ScalingGroups;
use crate::ports::store::StoreError;
use crate::services::fleet::Fleet;
use crate::services::fleet::InstanceRecord;
use crate::services::journal::Journal;
use crate::services::lease::LeaderState;
use crate::services::lease::LeaseHandle;

/// How far back a succeeded action in the journal stops the same action being taken again.
const DONE_WINDOW: Duration = Duration::from_secs(3600);

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

/// Fault injection for the crash-safety tests (never set in production):
/// - `AUTOHEAL_FAULT=crash-after-call:<step>`: abort right after that AWS call returns, before its
///   outcome is journaled;
/// - `AUTOHEAL_FAULT=pause-before-intent:<step>`: SIGSTOP ourselves just before writing that
///   step's intent, as a long GC pause or a frozen VM would.
fn fault_point(point: &str, step: Step) {
    if std::env::var("AUTOHEAL_FAULT").is_ok_and(|f| f == format!("{point}:{}", step.as_str())) {
        eprintln!("AUTOHEAL_FAULT: {point} {}", step.as_str());
        if point == "crash-after-call" {
            std::process::abort();
        }
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &std::process::id().to_string()])
            .status();
    }
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

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(command) = self.commands.recv() => {
                    match command {
                        Command::Drain { instance, reason, by, reply } => {
                            let result = self.drain(&instance, &reason, &by).await;
                            let _ = reply.send(result);
                        }
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            let fresh = self.refresh_inventory().await;
            match self.lease.current() {
                LeaderState::Leader { token } => {
                    if self.token != Some(token) && !self.begin_term(token).await {
                        continue;
                    }
                }
                LeaderState::Follower { .. } => {
                    // Only the leader acts. Keep the persisted view fresh for the read API.
                    if self.token.take().is_some() {
                        tracing::warn!("lost the lease: no longer acting");
                        self.fleet.record_event(
                            "",
                            EventKind::Leadership,
                            "this coordinator no longer leads: not acting".to_owned(),
                        );
                    }
                    if let Err(error) = self.fleet.load_persisted().await {
                        tracing::debug!(%error, "cannot refresh pause and skips");
                    }
                    continue;
                }
            }
            if !fresh {
                continue;
            }
            if !self.reconciled {
                self.reconcile().await;
                self.reconciled = true;
            }
            self.pass().await;
        }
    }

    /// A new term: what earlier leaders did is in the store, not in our memory.
    async fn begin_term(&mut self, token: u64) -> bool {
        if let Err(error) = self.journal.reload().await {
            tracing::warn!(%error, "cannot read the journal at the start of a term; not acting");
            return false;
        }
        if let Err(error) = self.fleet.load_persisted().await {
            tracing::warn!(%error, "cannot read the pause and skips at the start of a term; not acting");
            return false;
        }
        // The ladders, cooldowns and concurrency slots of earlier terms.
        match self.store.remediations().await {
            Ok(stored) => {
                let mut records = Vec::new();
                for (id, value) in &stored {
                    match crate::book::from_json(value) {
                        Some(r) => records.push(r),
                        None => {
                            tracing::warn!(instance = %id, "unreadable remediation record ignored")
                        }
                    }
                }
                match policy::RemediationBook::restore(records) {
                    Ok(book) => {
                        self.book = book;
                        self.persisted = stored.into_iter().collect();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot restore the remediation book; not acting");
                        return false;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "cannot read remediation state at the start of a term; not acting");
                return false;
            }
        }
        tracing::info!(token, "leading: acting with this fencing token");
        self.fleet.record_event(
            "",
            EventKind::Leadership,
            format!("this coordinator leads (fencing token {token})"),
        );
        self.token = Some(token);
        self.reconciled = false;
        true
    }

    /// Writes every remediation that changed since the last write. `false`: not durable (or
    /// fenced), so don't act on it.
    async fn persist_book(&mut self) -> bool {
        let Some(token) = self.token else {
            return false;
        };
        let changed: Vec<(String, serde_json::Value)> = self
            .book
            .iter()
            .map(|r| (r.instance.to_string(), crate::book::to_json(r)))
            .filter(|(id, v)| self.persisted.get(id) != Some(v))
            .collect();
        for (id, value) in changed {
            match self.store.set_remediation(&id, Some(&value), token).await {
                Ok(()) => {
                    self.persisted.insert(id, value);
                }
                Err(error) => {
                    if error.is_fenced() {
                        self.lease.report_fenced(token).await;
                        self.token = None;
                    }
                    tracing::warn!(error = %crate::error_chain(&error), "cannot persist remediation state; not acting");
                    return false;
                }
            }
        }
        true
    }

    /// Writes a journal entry with the current term's token. A fenced write means another
    /// coordinator leads: tell the lease (it steps down) and act on nothing.
    async fn record(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let appended = self.journal.append(entry).await;
        if appended.is_ok() {
            crate::metrics::global().journaled(entry.step.as_str(), entry.phase.as_str());
        }
        match appended {
            Err(error) if error.is_fenced() => {
                tracing::error!(%error, "fenced: stepping down");
                self.lease.report_fenced(entry.fencing_token).await;
                self.token = None;
                Err(error)
            }
            other => other,
        }
    }

    /// Returns whether the inventory is fresh enough to act on.
    async fn refresh_inventory(&mut self) -> bool {
        let groups = match self.hands.groups.groups(&self.settings.selector).await {
            Ok(g) => g,
            Err(error) => {
                tracing::warn!(%error, "inventory failed; not acting on a stale view");
                self.fleet.record_event(
                    "",
                    EventKind::InventoryFailed,
                    format!("cannot list auto scaling groups: {error}"),
                );
                return false;
            }
        };
        let mut targets = BTreeMap::new();
        let tgs: BTreeSet<&String> = groups.iter().flat_map(|g| &g.target_groups).collect();
        for tg in tgs {
            match self.hands.lb.target_health(tg).await {
                Ok(t) => {
                    targets.insert(tg.clone(), t);
                }
                Err(error) => {
                    tracing::warn!(%error, target_group = %tg, "target health failed; not acting on a stale view");
                    self.fleet.record_event(
                        "",
                        EventKind::InventoryFailed,
                        format!("cannot read target health of {tg}: {error}"),
                    );
                    return false;
                }
            }
        }
        for id in self.fleet.apply_inventory(&groups, &targets) {
            if self.unclaimed_reported.insert(id.clone()) {
                self.fleet.record_event(
                    &id,
                    EventKind::UnknownInstance,
                    "agent connected but no managed auto scaling group has this instance; it is reported, never acted on".to_owned(),
                );
            }
        }
        true
    }

    /// Intents without outcome are calls a crash interrupted: ask AWS whether they took effect.
    async fn reconcile(&mut self) {
        for intent in self.journal.in_flight() {
            let done = match intent.step {
                Step::Deregister | Step::Drain => {
                    let mut all = true;
                    for tg in &intent.target_groups {
                        match self.hands.lb.target_health(tg).await {
                            Ok(targets) => {
                                let registered = targets.iter().any(|t| {
                                    t.instance_id == intent.instance_id
                                        && !matches!(t.state.as_str(), "draining" | "unused")
                                });
                                all &= !registered;
                            }
                            Err(_) => all = false,
                        }
                    }
                    all
                }
                Step::Replace | Step::Terminate => {
                    let record = self.fleet.instance(&intent.instance_id);
                    match record.and_then(|r| r.asg_member) {
                        None => true,
                        Some(m) => m.health == "Unhealthy" || m.lifecycle.starts_with("Terminat"),
                    }
                }
                // Not destructive: an interrupted SSM command is treated as failed, and the ladder
                // goes on from there.
                Step::Ssm => false,
            };
            let phase = if done {
                Phase::Succeeded
            } else {
                Phase::Failed
            };
            let detail = if done {
                "reconciled after restart: AWS shows the action took effect".to_owned()
            } else {
                "reconciled after restart: AWS shows no effect; the ladder decides again".to_owned()
            };
            tracing::info!(key = %intent.key, step = intent.step.as_str(), done, "reconciled interrupted action");
            let outcome = Entry {
                phase,
                detail: detail.clone(),
                at_ms: now_ms(),
                fencing_token: self.token.unwrap_or_default(),
                ..intent.clone()
            };
            if let Err(error) = self.record(&outcome).await {
                tracing::error!(%error, "cannot journal a reconciliation");
                return;
            }
            self.fleet.record_event(
                &intent.instance_id,
                EventKind::ActionReconciled,
                format!("{}: {detail}", intent.step.as_str()),
            );
            // Tell the ladder what happened, so it moves on now rather than after a timeout.
            let id = policy::InstanceId::new(intent.instance_id.clone());
            let outcome = match (done, intent.step) {
                (true, Step::Deregister | Step::Drain) => policy::Outcome::Deregistered {
                    target_groups: intent
                        .target_groups
                        .iter()
                        .map(|t| policy::TargetGroup::new(t.clone()))
                        .collect(),
                },
                (true, Step::Replace | Step::Terminate) => policy::Outcome::ReplaceRequested,
                _ => policy::Outcome::Failed {
                    error: "interrupted by a coordinator restart or a change of leader".to_owned(),
                },
            };
            let _ = self.book.record(&id, outcome, ts(SystemTime::now()));
        }
        // Steps a previous term decided but never started (no intent in the journal): decide
        // them again now.
        let unstarted: Vec<policy::InstanceId> = self
            .book
            .in_flight()
            .filter(|r| matches!(r.stage, policy::Stage::Requested { .. }))
            .map(|r| r.instance.clone())
            .collect();
        for id in unstarted {
            let _ = self.book.record(
                &id,
                policy::Outcome::Failed {
                    error: "decided by a previous leader but never started".to_owned(),
                },
                ts(SystemTime::now()),
            );
        }
    }

    fn snapshot(&mut self, now: SystemTime) -> policy::Fleet {
        let records = self.fleet.instances(&Default::default());
        let pause = self.fleet.pause_state();
        let mut instances: Vec<policy::InstanceView> = records
            .iter()
            .filter_map(|r| instance_view(r, now))
            .collect();
        for view in &mut instances {
            let bad = self.engine.assess(view, ts(now)).is_bad();
            let (last, flips) = self
                .verdicts
                .entry(view.id.to_string())
                .or_insert((bad, Vec::new()));
            if *last != bad {
                *last = bad;
                flips.push(ts(now));
                if flips.len() > 32 {
                    flips.remove(0);
                }
            }
            view.health_changes = flips.clone();
        }
        policy::Fleet {
            instances,
            pause: pause.paused.then(|| policy::Pause {
                by: pause.by.clone(),
                reason: pause.reason.clone(),
                since: ts(pause.since.unwrap_or(now)),
            }),
        }
    }

    async fn pass(&mut self) {
        let now = SystemTime::now();
        self.poll_commands().await;
        let snapshot = self.snapshot(now);
        let plan = self.engine.decide(&snapshot, &mut self.book, ts(now));
        self.view.send_replace(Some(Arc::new(ControlView {
            engine: self.engine.clone(),
            fleet: snapshot.clone(),
            book: self.book.clone(),
            at: now,
        })));
        for decision in &plan.decisions {
            count_decision(decision);
            if let Some(entry) = self.tell(decision)
                && let Err(error) = self.record(&entry).await
            {
                tracing::warn!(%error, "cannot journal a dry-run decision");
            }
        }
        // Write-ahead: the book as decided is durable before any action it asks for.
        if !self.persist_book().await {
            return;
        }
        let actions: Vec<(policy::Decision, policy::Action)> = plan
            .executable()
            .map(|(d, a)| (d.clone(), a.clone()))
            .collect();
        for (decision, action) in actions {
            let outcome = self.execute(&decision, &action).await;
            if let Err(error) = self
                .book
                .record(&decision.instance, outcome, ts(SystemTime::now()))
            {
                tracing::warn!(%error, "remediation book refused an outcome");
            }
        }
    }

    /// One fleet event per change of what we'd say about an instance.
    fn tell(&mut self, d: &policy::Decision) -> Option<Entry> {
        let (kind, what) = match &d.kind {
            policy::DecisionKind::Act(a) => (EventKind::Decision, format!("{a}")),
            policy::DecisionKind::WouldAct(a) => (EventKind::DryRun, format!("would {a}")),
            policy::DecisionKind::Hold { action, held_by } => (
                EventKind::Guardrail,
                format!(
                    "{action} held by {}",
                    held_by
                        .iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
            policy::DecisionKind::Wait { .. } => return None,
            policy::DecisionKind::Alert(a) => (EventKind::Alert, format!("{a:?}")),
            policy::DecisionKind::Finished(e) => (EventKind::RemediationFinished, format!("{e:?}")),
        };
        let message = format!("{what}: {}", d.reason);
        if self.last_said.get(d.instance.as_str()) == Some(&message) {
            return None;
        }
        self.last_said
            .insert(d.instance.as_str().to_owned(), message.clone());
        self.fleet.record_event(d.instance.as_str(), kind, message);
        if let policy::DecisionKind::WouldAct(action) = &d.kind {
            return Some(Entry {
                key: format!("{}/{}/dry-run", d.instance, now_ms()),
                instance_id: d.instance.to_string(),
                asg: d.asg.to_string(),
                step: step_of(action, ReplaceWith::SetInstanceHealth),
                phase: Phase::WouldAct,
                target_groups: target_groups(action),
                reason: d.reason.clone(),
                detail: String::new(),
                fencing_token: self.token.unwrap_or_default(),
                at_ms: now_ms(),
                requested_by: String::new(),
            });
        }
        None
    }

    async fn execute(&mut self, d: &policy::Decision, action: &policy::Action) -> policy::Outcome {
        let instance = d.instance.to_string();
        let step = step_of(action, self.settings.replace_with);
        let since = now_ms().saturating_sub(u64::try_from(DONE_WINDOW.as_millis()).unwrap_or(0));
        if let Some(done) = self.journal.succeeded_since(&instance, step, since) {
            tracing::info!(instance, step = step.as_str(), key = %done.key, "already done; not repeating");
            return done_outcome(action);
        }
        let key = format!("{instance}/{}/{}", step.as_str(), now_ms());
        let intent = Entry {
            key: key.clone(),
            instance_id: instance.clone(),
            asg: d.asg.to_string(),
            step,
            phase: Phase::Intent,
            target_groups: target_groups(action),
            reason: d.reason.clone(),
            detail: String::new(),
            fencing_token: self.token.unwrap_or_default(),
            at_ms: now_ms(),
            requested_by: String::new(),
        };
        if self.token.is_none() {
            return policy::Outcome::Failed {
                error: "not the leader".to_owned(),
            };
        }
        fault_point("pause-before-intent", step);
        if let Err(error) = self.record(&intent).await {
            // A coordinator that can't write its journal must not act.
            tracing::error!(%error, "not acting");
            self.fleet.record_event(
                &instance,
                EventKind::ActionFailed,
                format!("{step:?} not attempted: {error}"),
            );
            return policy::Outcome::Failed {
                error: error.to_string(),
            };
        }
        self.fleet.record_event(
            &instance,
            EventKind::ActionStarted,
            format!("{}: {}", step.as_str(), d.reason),
        );
        let result = self.call(&instance, action, &key).await;
        fault_point("crash-after-call", step);
        let (phase, detail, outcome) = match result {
            Ok((detail, outcome)) => (Phase::Succeeded, detail, outcome),
            Err(error) => (
                Phase::Failed,
                error.clone(),
                policy::Outcome::Failed { error },
            ),
        };
        let entry = Entry {
            phase,
            detail: detail.clone(),
            at_ms: now_ms(),
            ..intent
        };
        if let Err(error) = self.record(&entry).await {
            tracing::error!(%error, "cannot journal an outcome; reconciliation will settle it");
        }
        let kind = if phase == Phase::Succeeded {
            EventKind::ActionSucceeded
        } else {
            EventKind::ActionFailed
        };
        self.fleet
            .record_event(&instance, kind, format!("{}: {detail}", step.as_str()));
        outcome
    }

    async fn call(
        &mut self,
        instance: &str,
        action: &policy::Action,
        key: &str,
    ) -> Result<(String, policy::Outcome), String> {
        match action {
            policy::Action::Deregister { target_groups } => {
                for tg in target_groups {
                    self.hands
                        .lb
                        .deregister(tg.as_str(), instance)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok((
                    format!(
                        "deregistered from {}",
                        target_groups
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    policy::Outcome::Deregistered {
                        target_groups: target_groups.clone(),
                    },
                ))
            }
            policy::Action::Replace => {
                match self.settings.replace_with {
                    ReplaceWith::SetInstanceHealth => self
                        .hands
                        .groups
                        .mark_unhealthy(instance, self.settings.respect_grace)
                        .await
                        .map_err(|e| e.to_string())?,
                    ReplaceWith::Terminate => self
                        .hands
                        .groups
                        .terminate(instance)
                        .await
                        .map_err(|e| e.to_string())?,
                }
                Ok((
                    "replacement requested from the auto scaling group".to_owned(),
                    policy::Outcome::ReplaceRequested,
                ))
            }
            policy::Action::SsmRemediate => {
                let units: Vec<String> = self
                    .fleet
                    .instance(instance)
                    .and_then(|r| r.agent)
                    .map(|a| a.declared.iter().filter_map(|s| s.unit.clone()).collect())
                    .unwrap_or_default();
                let script = aws::remediation_script(&units)?;
                let command = self
                    .hands
                    .commands
                    .run(instance, &script, &format!("autoheal {key}"))
                    .await
                    .map_err(|e| e.to_string())?;
                self.pending_commands
                    .insert(instance.to_owned(), (key.to_owned(), command.clone()));
                Ok((
                    format!("SSM command {command} sent"),
                    policy::Outcome::SsmSent,
                ))
            }
        }
    }

    /// Operator-requested deregistration. Guardrails still apply (min healthy, brakes…) except
    /// the global pause, which holds automatic actions, not a person's deliberate one. Dry-run
    /// records and doesn't act. The instance is then skipped, so automation doesn't fight it.
    async fn drain(&mut self, instance: &str, reason: &str, by: &str) -> Result<Entry, DrainError> {
        let Some(token) = self.token else {
            return Err(DrainError::Failed(match self.lease.current() {
                LeaderState::Follower {
                    leader_endpoint: Some(e),
                } => {
                    format!("this coordinator does not lead; the leader is {e}")
                }
                _ => "this coordinator does not lead".to_owned(),
            }));
        };
        let now = SystemTime::now();
        let snapshot = self.snapshot(now);
        let id = policy::InstanceId::new(instance.to_owned());
        let view = snapshot
            .instance(&id)
            .cloned()
            .ok_or_else(|| DrainError::NotFound(instance.to_owned()))?;
        let what = self
            .engine
            .what_if(
                &snapshot,
                &self.book,
                &id,
                policy::Step::Deregister,
                ts(now),
            )
            .map_err(|e| DrainError::Failed(e.to_string()))?;
        let dry_run = self.engine.config().for_asg(&view.asg).dry_run;
        let held: Vec<String> = what
            .held_by
            .iter()
            .filter(|g| {
                !matches!(
                    g,
                    policy::Guardrail::Paused { .. } | policy::Guardrail::DryRun { .. }
                )
            })
            .map(policy::Guardrail::reason)
            .collect();
        if !held.is_empty() {
            return Err(DrainError::Held(held.join("; ")));
        }
        let target_groups: Vec<String> = view
            .targets
            .iter()
            .filter(|t| t.state.is_registered() && t.state != policy::TargetState::Draining)
            .map(|t| t.target_group.to_string())
            .collect();
        let mut entry = Entry {
            key: format!("{instance}/drain/{}", now_ms()),
            instance_id: instance.to_owned(),
            asg: view.asg.to_string(),
            step: Step::Drain,
            phase: if dry_run {
                Phase::WouldAct
            } else {
                Phase::Intent
            },
            target_groups: target_groups.clone(),
            reason: reason.to_owned(),
            detail: String::new(),
            fencing_token: token,
            at_ms: now_ms(),
            requested_by: by.to_owned(),
        };
        self.record(&entry)
            .await
            .map_err(|e| DrainError::Failed(e.to_string()))?;
        if dry_run {
            self.fleet.record_event(
                instance,
                EventKind::DryRun,
                format!("would drain (requested by {by}): {reason}"),
            );
            return Ok(entry);
        }
        let mut failure = None;
        for tg in &target_groups {
            if let Err(e) = self.hands.lb.deregister(tg, instance).await {
                failure = Some(e.to_string());
                break;
            }
        }
        entry.phase = if failure.is_some() {
            Phase::Failed
        } else {
            Phase::Succeeded
        };
        entry.detail = failure.clone().unwrap_or_else(|| {
            format!("deregistered from {} target group(s)", target_groups.len())
        });
        entry.at_ms = now_ms();
        if let Err(error) = self.record(&entry).await {
            tracing::error!(%error, "cannot journal a drain outcome");
        }
        if let Some(error) = failure {
            self.fleet
                .record_event(instance, EventKind::ActionFailed, format!("drain: {error}"));
            return Err(DrainError::Failed(error));
        }
        if let Err(error) = self
            .fleet
            .set_skipped(instance, true, &format!("drained: {reason}"), by)
            .await
        {
            tracing::warn!(%error, "cannot persist the skip after a drain");
        }
        self.fleet.record_event(
            instance,
            EventKind::ActionSucceeded,
            format!("drained by {by}: {reason}"),
        );
        Ok(entry)
    }

    /// Looks at the real result of SSM commands in flight (not "sent" = "repaired").
    async fn poll_commands(&mut self) {
        let pending: Vec<_> = self
            .pending_commands
            .iter()
            .map(|(i, (k, c))| (i.clone(), k.clone(), c.clone()))
            .collect();
        for (instance, key, command) in pending {
            let ok = match self.hands.commands.status(&command, &instance).await {
                Ok(CommandStatus::Pending) => continue,
                Ok(CommandStatus::Succeeded { .. }) => true,
                Ok(CommandStatus::Failed { status, .. }) => {
                    self.fleet.record_event(
                        &instance,
                        EventKind::SsmFinished,
                        format!("SSM command {command}: {status}"),
                    );
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the SSM command's result; will ask again");
                    continue;
                }
            };
            self.pending_commands.remove(&instance);
            tracing::info!(instance, key, ok, "SSM command finished");
            let id = policy::InstanceId::new(instance.clone());
            if let Err(error) = self.book.record(
                &id,
                policy::Outcome::SsmFinished { ok },
                ts(SystemTime::now()),
            ) {
                tracing::debug!(%error, "SSM result for a remediation that moved on");
            }
        }
    }
}

fn step_of(action: &policy::Action, replace_with: ReplaceWith) -> Step {
    match action {
        policy::Action::Deregister { .. } => Step::Deregister,
        policy::Action::Replace => match replace_with {
            ReplaceWith::SetInstanceHealth => Step::Replace,
            ReplaceWith::Terminate => Step::Terminate,
        },
        policy::Action::SsmRemediate => Step::Ssm,
    }
}

fn target_groups(action: &policy::Action) -> Vec<String> {
    match action {
        policy::Action::Deregister { target_groups } => {
            target_groups.iter().map(|t| t.to_string()).collect()
        }
        _ => Vec::new(),
    }
}

/// What the ladder hears when the journal shows the step already done.
fn done_outcome(action: &policy::Action) -> policy::Outcome {
    match action {
        policy::Action::Deregister { target_groups } => policy::Outcome::Deregistered {
            target_groups: target_groups.clone(),
        },
        policy::Action::Replace => policy::Outcome::ReplaceRequested,
        policy::Action::SsmRemediate => policy::Outcome::SsmSent,
    }
}

/// The policy engine's view of one instance. Only instances a managed ASG claims are in it:
/// the rest are reported, never acted on.
fn instance_view(r: &InstanceRecord, now: SystemTime) -> Option<policy::InstanceView> {
    let asg = r.asg.clone()?;
    let member = r.asg_member.as_ref()?;
    let agent = r.agent.as_ref().map(|a| {
        let escalation = a
            .escalations
            .iter()
            .rev()
            .find(|e| a.services.get(&e.service) == Some(&ServiceState::Escalated))
            .map(|e| policy::Escalation {
                service: e.service.clone(),
                reason: e.reason.clone(),
                at: ts(e.at),
            });
        policy::AgentView {
            connected: a.connected,
            last_heartbeat: ts(a.last_seen),
            unhealthy_services: a
                .services
                .iter()
                .filter(|(_, s)| !matches!(s, ServiceState::Healthy | ServiceState::Starting))
                .map(|(n, _)| n.clone())
                .collect(),
            escalation,
            failing_dependencies: a.failing_dependencies.clone(),
        }
    });
    Some(policy::InstanceView {
        id: policy::InstanceId::new(r.instance_id.clone()),
        asg: policy::AsgName::new(asg),
        az: policy::Az::new(if r.availability_zone.is_empty() {
            member.availability_zone.clone()
        } else {
            r.availability_zone.clone()
        }),
        // Launch time isn't in the ASG's answer; when we first saw it is the conservative stand-in
        // (a restarted coordinator gives every instance a fresh startup grace: never worse).
        launched_at: ts(r.first_seen.min(now)),
        agent,
        targets: r
            .targets
            .iter()
            .map(|t| policy::TargetView {
                target_group: policy::TargetGroup::new(t.target_group.clone()),
                state: target_state(&t.state),
                reason: (!t.reason.is_empty()).then(|| t.reason.clone()),
                since: ts(t.since),
            })
            .collect(),
        asg_instance: Some(policy::AsgInstance {
            lifecycle: policy::Lifecycle::from_aws(&member.lifecycle),
            health: if member.health == "Unhealthy" {
                policy::AsgHealth::Unhealthy
            } else {
                policy::AsgHealth::Healthy
            },
            protected: member.protected,
        }),
        skipped: r.skipped,
        // Filled in by the controller from verdict flips.
        health_changes: Vec::new(),
    })
}

fn target_state(s: &str) -> policy::TargetState {
    match s {
        "initial" => policy::TargetState::Initial,
        "healthy" => policy::TargetState::Healthy,
        "unhealthy" => policy::TargetState::Unhealthy,
        "draining" => policy::TargetState::Draining,
        "unused" => policy::TargetState::Unused,
        _ => policy::TargetState::Unavailable,
    }
}

/// The engine's decision in the metrics: its kind, and each guardrail that held it.
fn count_decision(decision: &policy::Decision) {
    let (kind, held_by) = match &decision.kind {
        policy::DecisionKind::Act(_) => ("act", Vec::new()),
        policy::DecisionKind::WouldAct(_) => ("would-act", Vec::new()),
        policy::DecisionKind::Hold { held_by, .. } => {
            ("hold", held_by.iter().map(|g| g.name()).collect())
        }
        policy::DecisionKind::Wait { .. } => ("wait", Vec::new()),
        policy::DecisionKind::Alert(_) => ("alert", Vec::new()),
        policy::DecisionKind::Finished(_) => ("finished", Vec::new()),
    };
    crate::metrics::global().decision(kind, &held_by);
}
