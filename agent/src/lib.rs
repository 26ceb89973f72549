//! autoheal's on-instance agent: health checks with kubelet semantics, local healing (restart
//! with a bounded budget, backoff, verification, dependency ordering, flap detection),
//! escalation when healing is exhausted, and reporting to the coordinator over one mTLS stream.
//!
//! Data flows one way, from plain data to the edges:
//!
//! - [`state`]: the plain state types everything else shares (service states, verdicts,
//!   snapshots, the reporter's status, events); it imports nothing of ours.
//! - [`config`]: TOML → typed config, every error with its path.
//! - [`policy`]: the pure decisions (thresholds, restart budget, flapping), driven by `now`.
//! - [`service`]: a service's pure state machine ([`service::machine`]) and the supervisor that
//!   performs its effects; [`action`]: the process side (spawn, kill, systemctl); [`tree`]: a
//!   `run` service's whole process tree (subreaper, find, kill, reap).
//! - [`probe`], [`check`]: what a check does once, and the task that runs it on its interval.
//! - [`reporter`]: the coordinator stream, event numbering, buffering and replay.
//! - [`enroll`]: zero-touch enrollment and renewal of the agent's certificate (IMDSv2 identity
//!   document → coordinator), used by the reporter before it connects.
//! - [`status`]: the local 0600 unix socket `autoheal-agent status` reads.
//! - [`metrics`]: Prometheus counters and the optional plain-HTTP `/metrics` endpoint; a leaf
//!   that reads only [`state`].
//! - [`clock`]: the one `Clock` (from `autoheal-common`); [`http`], [`identity`]: the small HTTP
//!   client and the instance identity (IMDSv2 or static).
//!
//! Healing must never depend on the coordinator: nothing here waits on the reporter. This crate
//! must not depend on the coordinator or policy crates, or on any AWS SDK; what it shares with
//! them beside the wire (`autoheal-proto`) comes from `autoheal-common`.

pub mod action;
pub mod agent;
pub mod check;
pub mod clock;
pub mod config;
pub mod enroll;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod reporter;
pub mod service;
pub mod state;
pub mod status;
pub mod tree;

pub use agent::Agent;
pub use config::Config;

#[cfg(test)]
mod https_tests;
