//! The fleet as the policy engine sees it: only instances a managed ASG claims, with their agent,
//! ASG and load-balancer views.

use std::time::SystemTime;

use autoheal_policy as policy;

use crate::model::report::ServiceState;
use crate::services::fleet::InstanceRecord;

use super::*;

impl Controller {
    /// The fleet as the engine will see it this pass, and the engine's one reading of each
    /// instance (taken once: the decision uses the same reading).
    pub(super) fn snapshot(&mut self, now: SystemTime) -> (policy::Fleet, policy::Assessments) {
        let records = self.fleet.instances(&Default::default());
        let pause = self.fleet.pause_state();
        let instances: Vec<policy::InstanceView> = records
            .iter()
            .filter_map(|r| instance_view(r, now))
            .collect();
        let mut fleet = policy::Fleet {
            instances,
            pause: pause.paused.then(|| policy::Pause {
                by: pause.by.clone(),
                reason: pause.reason.clone(),
                since: ts(pause.since.unwrap_or(now)),
            }),
        };
        // Readings don't depend on the health-change history written below.
        let assessments = self.engine.assess_fleet(&fleet, ts(now));
        for view in &mut fleet.instances {
            let bad = assessments.get(&view.id).is_some_and(|a| a.is_bad());
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
        (fleet, assessments)
    }
}

impl Controller {
    /// How a replacement is asked for on `instance`: as configured, except that where the group
    /// has `ReplaceUnhealthy` suspended, `SetInstanceHealth` would replace nothing, so only
    /// terminate-without-decrement can (the engine holds the step where that can't work either).
    pub(super) fn replace_with(&self, instance: &str) -> ReplaceWith {
        let replaces = self
            .fleet
            .instance(instance)
            .and_then(|r| r.asg_member)
            .is_none_or(|m| m.group.replaces_unhealthy());
        if replaces {
            self.settings.replace_with
        } else {
            ReplaceWith::Terminate
        }
    }
}

/// The policy engine's view of one instance. Only instances a managed ASG claims are in it:
/// the rest are reported, never acted on.
pub(super) fn instance_view(r: &InstanceRecord, now: SystemTime) -> Option<policy::InstanceView> {
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
                state: t.state,
                reason: (!t.reason.is_empty()).then(|| t.reason.clone()),
                since: ts(t.since),
            })
            .collect(),
        asg_instance: Some(policy::AsgInstance {
            lifecycle: member.lifecycle.clone(),
            health: member.health,
            protected: member.protected,
            group: member.group.clone(),
        }),
        skipped: r.skipped,
        // Filled in by the controller from verdict flips.
        health_changes: Vec::new(),
    })
}
