//! autoheal's coordinator: the fleet view fed by agent streams, the operator API, and (in
//! `autohealctl`) the client and development PKI.
//!
//! I/O lives at the edges: `grpc` is the only module that knows wire types; the decision engine
//! lives in the pure `autoheal-policy` crate. This crate must not be depended on by the agent.

pub mod aws;
pub mod aws_actions;
pub mod book;
pub mod config;
pub mod control;
pub mod ctl;
pub mod fleet;
pub mod grpc;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod pki;
pub mod report;
pub mod server;
pub mod store;

/// An error with its `source()` chain, `a: b: c`, for one-line logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    autoheal_common::error::DisplayChain(error).to_string()
}
