//! The AWS side of the view: which ASG each instance is in, its lifecycle and target health; and
//! the listings the operator API reads.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use crate::model::events;
use crate::model::inventory::Group;
use crate::model::inventory::Target;

use super::*;

impl Fleet {
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
                        state: target.state,
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
}

pub(super) fn with_skip(
    mut record: InstanceRecord,
    skips: &BTreeMap<String, Skip>,
) -> InstanceRecord {
    record.skipped = skips.contains_key(&record.instance_id);
    record
}
