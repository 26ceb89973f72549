//! What the machine reports: the snapshot it publishes, and the last results it attaches to an
//! escalation as evidence.

use autoheal_proto::v1;

use super::Machine;
use crate::{
    clock,
    config::ServiceConfig,
    state::{CheckSnapshot, ServiceSnapshot, ServiceState, Verdict},
};

/// The snapshot a service starts with (before its first evaluation).
pub fn initial_snapshot(config: &ServiceConfig) -> ServiceSnapshot {
    ServiceSnapshot {
        name: config.name.clone(),
        state: ServiceState::Starting,
        reason: "starting".into(),
        pid: None,
        restarts: 0,
        checks: config
            .checks
            .iter()
            .map(|c| CheckSnapshot {
                name: c.name.clone(),
                kind: c.probe.kind().into(),
                dependency: c.dependency.clone(),
                status: Verdict::Unknown,
                detail: String::new(),
                last_probe_unix_ms: None,
            })
            .collect(),
    }
}

impl Machine {
    /// The service's state as `status`, heartbeats and metrics see it.
    pub(super) fn snapshot(&mut self) -> ServiceSnapshot {
        ServiceSnapshot {
            name: self.config.name.clone(),
            state: self.state,
            reason: self.reason.clone(),
            pid: self.pid,
            restarts: self.budget.used(self.at.now),
            checks: self
                .config
                .checks
                .iter()
                .enumerate()
                .map(|(i, c)| CheckSnapshot {
                    name: c.name.clone(),
                    kind: c.probe.kind().into(),
                    dependency: c.dependency.clone(),
                    status: self.thresholds[i].verdict(),
                    detail: self.last[i]
                        .as_ref()
                        .map(|(o, _)| o.detail.clone())
                        .unwrap_or_default(),
                    last_probe_unix_ms: self.last[i].as_ref().map(|(_, at)| clock::unix_ms(*at)),
                })
                .collect(),
        }
    }

    /// Each check's last result, the main process's first if it is down.
    pub(super) fn last_results(&self) -> Vec<v1::CheckResult> {
        let mut last_results: Vec<v1::CheckResult> = self
            .config
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| v1::CheckResult {
                check: c.name.clone(),
                status: self.thresholds[i].verdict().wire() as i32,
                detail: self.last[i]
                    .as_ref()
                    .map(|(o, _)| o.detail.clone())
                    .unwrap_or_default(),
                at: self.last[i].as_ref().map(|(_, at)| clock::timestamp(*at)),
            })
            .collect();
        if let Some(d) = &self.process_down {
            last_results.insert(
                0,
                v1::CheckResult {
                    check: "main-process".into(),
                    status: v1::CheckStatus::Unhealthy as i32,
                    detail: d.clone(),
                    at: Some(clock::timestamp(self.at.wall)),
                },
            );
        }
        last_results
    }
}
