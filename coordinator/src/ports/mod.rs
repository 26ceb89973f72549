//! The traits the coordinator acts through, each with its own error type. Adapters implement
//! them; services use only these.

pub mod aws;
pub mod instances;
pub mod notify;
pub mod store;
