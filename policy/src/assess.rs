//! Reading an instance: what its agent, its silence and the load balancer say about it at one
//! moment. The ladder, the brakes and the coordinator's verdict tracking all start from this one
//! reading, taken once per instance per pass ([`Assessments`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::LadderConfig;
use crate::fleet::{Escalation, Fleet, InstanceId, InstanceView, TargetGroup, TargetState};
use crate::time::Timestamp;

/// How the load balancer sees an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlbHealth {
    /// Groups where it is healthy.
    pub healthy: Vec<TargetGroup>,
    /// Groups where it is unhealthy or unavailable.
    pub failing: Vec<TargetGroup>,
    /// The earliest time one of the failing states was first seen.
    pub failing_since: Option<Timestamp>,
}

impl AlbHealth {
    /// Failing somewhere and healthy nowhere.
    pub fn all_failing(&self) -> bool {
        !self.failing.is_empty() && self.healthy.is_empty()
    }
}

/// The engine's reading of one instance at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// `Some(how long)` if the agent has been quiet longer than the silence grace.
    pub silent_for: Option<Duration>,
    /// The agent's escalation, if any.
    pub escalation: Option<Escalation>,
    /// Services the agent is healing locally.
    pub unhealthy_services: BTreeSet<String>,
    /// Shared dependencies the agent reports failing.
    pub failing_dependencies: BTreeSet<String>,
    /// The load balancer's view.
    pub alb: AlbHealth,
}

impl Assessment {
    /// Unhealthy or silent by any source. The fleet view records when this flips, into
    /// [`InstanceView::health_changes`].
    pub fn is_bad(&self) -> bool {
        self.silent_for.is_some()
            || self.escalation.is_some()
            || !self.unhealthy_services.is_empty()
            || !self.failing_dependencies.is_empty()
            || !self.alb.failing.is_empty()
    }
}

/// Reads one instance. Depends only on its agent report, launch time and targets, never on its
/// `health_changes`, so a reading taken before the verdict history is updated stays valid after.
pub(crate) fn assess(ladder: &LadderConfig, inst: &InstanceView, now: Timestamp) -> Assessment {
    // An agent that never connected is silent from launch; startup grace covers boot.
    let heard = inst
        .agent
        .as_ref()
        .map_or(inst.launched_at, |a| a.last_heartbeat);
    let quiet = now.since(heard);
    let mut alb = AlbHealth::default();
    for t in &inst.targets {
        if t.state == TargetState::Healthy {
            alb.healthy.push(t.target_group.clone());
        } else if t.state.is_failing() {
            alb.failing.push(t.target_group.clone());
            alb.failing_since = Some(alb.failing_since.map_or(t.since, |s| s.min(t.since)));
        }
    }
    let agent = inst.agent.as_ref();
    Assessment {
        silent_for: (quiet > ladder.agent_silence_grace).then_some(quiet),
        escalation: agent.and_then(|a| a.escalation.clone()),
        unhealthy_services: agent
            .map(|a| a.unhealthy_services.clone())
            .unwrap_or_default(),
        failing_dependencies: agent
            .map(|a| a.failing_dependencies.clone())
            .unwrap_or_default(),
        alb,
    }
}

/// Every instance of a fleet snapshot read once, at one moment. Built by
/// [`crate::Engine::assess_fleet`]; a pass ([`crate::Engine::decide_assessed`]) reuses it instead
/// of reading instances again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessments {
    at: Timestamp,
    by_instance: BTreeMap<InstanceId, Assessment>,
}

impl Assessments {
    pub(crate) fn of<'a>(
        ladder: &LadderConfig,
        instances: impl IntoIterator<Item = &'a InstanceView>,
        now: Timestamp,
    ) -> Self {
        Assessments {
            at: now,
            by_instance: instances
                .into_iter()
                .map(|i| (i.id.clone(), assess(ladder, i, now)))
                .collect(),
        }
    }

    pub(crate) fn of_fleet(ladder: &LadderConfig, fleet: &Fleet, now: Timestamp) -> Self {
        Self::of(ladder, &fleet.instances, now)
    }

    /// When the readings were taken.
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The reading of one instance.
    pub fn get(&self, instance: &InstanceId) -> Option<&Assessment> {
        self.by_instance.get(instance)
    }

    /// Every reading, by instance id.
    pub fn iter(&self) -> impl Iterator<Item = (&InstanceId, &Assessment)> {
        self.by_instance.iter()
    }

    /// The reading of `inst` at `now`: the stored one if it was taken then, else a fresh one (an
    /// instance the snapshot did not have, or readings from another moment, are never trusted).
    pub(crate) fn read(
        &self,
        ladder: &LadderConfig,
        inst: &InstanceView,
        now: Timestamp,
    ) -> Cow<'_, Assessment> {
        match self.get(&inst.id) {
            Some(a) if self.at == now => Cow::Borrowed(a),
            _ => Cow::Owned(assess(ladder, inst, now)),
        }
    }
}
