//! What the agent, the coordinator and `autohealctl` share that is not the wire contract:
//!
//! - [`tls`]: rustls server and client configurations for mutual TLS from PEM files, and a
//!   reloader that swaps them when the files change on disk;
//! - [`config`]: the config vocabulary (durations, the `[tls]` section, an error list that
//!   collects every problem with its path);
//! - [`tasks`]: the one shutdown model (named tasks, cancel, wait with a deadline);
//! - [`clock`]: the one `Clock`; [`backoff`]: the one backoff; [`error`]: the one error-chain
//!   display; [`exposition`]: the `/metrics` text format.
//!
//! It depends on `autoheal-proto` (for identities) and nothing else of ours; it must not depend
//! on agent, coordinator or policy logic, or on the AWS SDK.

pub mod backoff;
pub mod clock;
pub mod config;
pub mod error;
pub mod exposition;
pub mod tasks;
pub mod tls;
