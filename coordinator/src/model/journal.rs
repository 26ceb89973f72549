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
}
