//! autoheal's on-instance agent: health checks with kubelet semantics, local healing (restart
//! with a bounded budget, backoff, verification, dependency ordering, flap detection),
//! escalation when healing is exhausted, and reporting to the coordinator over one mTLS stream.
//!
//! - [`config`]: TOML → typed config, every error with its path.
//! - [`probe`], [`check`]: what a check does once, and the task that runs it on its interval.
//! - [`policy`]: the pure decisions (thresholds, restart budget, flapping), driven by `now`.
//! - [`service`], [`action`]: a service's supervisor and its process side.
//! - [`reporter`]: the coordinator stream, event numbering, buffering and replay.
//! - [`status`]: the local 0600 unix socket `autoheal-agent status` reads.
//! - [`metrics`]: Prometheus counters and the optional plain-HTTP `/metrics` endpoint.
//!
//! Healing must never depend on the coordinator: nothing here waits on the reporter. This crate
//! must not depend on the coordinator crate or on any AWS SDK.

pub mod action;
pub mod agent;
pub mod check;
pub mod clock;
pub mod config;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod reporter;
pub mod service;
pub mod state;
pub mod status;

pub use agent::Agent;
pub use config::Config;
