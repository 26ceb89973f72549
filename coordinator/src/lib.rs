//! autoheal's coordinator: the fleet view fed by agent streams, the guardrailed decisions of the
//! `autoheal-policy` engine carried out on AWS behind a write-ahead journal, notifications, and
//! the operator API.
//!
//! Layers, each importing only from the ones before it (`scripts/check-layers.py` fails CI on a
//! cycle):
//!
//! 1. [`model`]: plain data — agent reports, fleet events, journal entries, the typed inventory.
//! 2. [`ports`]: the traits the coordinator acts through — `ScalingGroups`, `LoadBalancer`,
//!    `RemoteCommand`, `Store`, `Notifier` — each with its own error type.
//! 3. [`adapters`]: their implementations — the AWS SDK, the embedded and DynamoDB stores, the
//!    notification sinks — plus [`metrics`], a leaf that imports nothing of ours.
//! 4. [`services`]: the fleet view, the leader lease, the journal, the control loop, notify.
//! 5. [`edges`]: gRPC services and the TLS listener, config, and the server that wires it all.
//!
//! This crate must not be depended on by the agent; the wire types stop at `edges::grpc`.

pub mod adapters;
pub mod edges;
pub mod metrics;
pub mod model;
pub mod ports;
pub mod services;

pub mod book;

/// An error with its `source()` chain, `a: b: c`, for one-line logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    autoheal_common::error::chain(error)
}
