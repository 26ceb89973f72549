//! What the coordinator does: the fleet view, the leader lease, the journal, the control loop
//! and notifications. Built on the ports; knows nothing of gRPC.

pub mod control;
pub mod enroll;
pub mod fleet;
pub mod journal;
pub mod lease;
pub mod notify;
