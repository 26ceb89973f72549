//! autoheal's wire contract: everything the agent and the coordinator must agree on to talk.
//!
//! - [`v1`]: the `autoheal.v1` messages and services, generated from `proto/` and checked in
//!   under `src/generated/` (so no one needs `protoc`; `tests/bootstrap.rs` fails on drift).
//! - [`identity`]: SPIFFE-style identities carried in certificate URI SANs and the roles they bind.
//!
//! TLS configurations, config vocabulary and the other shared pieces live in `autoheal-common`.
//! This crate must not depend on any other crate of ours, on agent or coordinator logic, on the
//! AWS SDK, or on any I/O.

pub mod identity;

/// The `autoheal.v1` package.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod v1 {
    include!("generated/autoheal.v1.rs");

    /// Encoded `FileDescriptorSet` of the autoheal.v1 package, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/autoheal_v1_descriptor.bin");
}

/// The version the agent reports in its Hello and binaries print with `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest gRPC message either side accepts. Larger ones fail with `RESOURCE_EXHAUSTED`.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
