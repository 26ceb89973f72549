//! The gRPC edge: mutual-TLS listener, role checks, and the two services. Proto types stop here.

pub mod agent;
pub mod authz;
pub mod convert;
pub mod enroll;
pub mod fleet;
pub mod listener;

pub use listener::{PeerInfo, PeerStream, TlsListener};
