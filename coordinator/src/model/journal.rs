//! Journal entries: the write-ahead record of every AWS action — the intent before the call, the
//! outcome after — as plain data. The journal service (`services::journal`) writes and reads
//! them through the store.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Deregister,
    Replace,
    Terminate,
    Ssm,
    /// Operator-requested deregistration.
    Drain,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Deregister => "deregister",
            Step::Replace => "replace",
            Step::Terminate => "terminate",
            Step::Ssm => "ssm",
            Step::Drain => "drain",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Intent,
    Succeeded,
    Failed,
    /// Dry-run: what would have been done.
    WouldAct,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::WouldAct => "would-act",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Idempotency key: the same for an intent and its outcome.
    pub key: String,
    pub instance_id: String,
    pub asg: String,
    pub step: Step,
    pub phase: Phase,
    #[serde(default)]
    pub target_groups: Vec<String>,
    pub reason: String,
    #[serde(default)]
    pub detail: String,
    /// The leader's fencing token when it was written.
    pub fencing_token: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    #[serde(default)]
    pub requested_by: String,
    /// Unix milliseconds until which an intent's call may still land at AWS (all its attempts,
    /// timeouts and waits, plus clock skew). Reconciliation decides nothing about an intent
    /// without an outcome before then. 0 in entries written before it existed.
    #[serde(default)]
    pub in_flight_until_ms: u64,
}

impl Entry {
    /// Until when this intent's call may still land: its own bound, or — for entries written
    /// before the bound was recorded — `at_ms` plus `longest_call`.
    pub fn in_flight_until(&self, longest_call: std::time::Duration) -> u64 {
        if self.in_flight_until_ms > 0 {
            self.in_flight_until_ms
        } else {
            self.at_ms
                .saturating_add(u64::try_from(longest_call.as_millis()).unwrap_or(u64::MAX))
        }
    }

    /// The policy engine's step this journal step carries out.
    pub fn policy_step(&self) -> autoheal_policy::Step {
        match self.step {
            Step::Deregister | Step::Drain => autoheal_policy::Step::Deregister,
            Step::Replace | Step::Terminate => autoheal_policy::Step::Replace,
            Step::Ssm => autoheal_policy::Step::Ssm,
        }
    }
}
