//! Plain data: what agents report, the AWS inventory as typed values. Nothing here does I/O or
//! imports from a layer above.

pub mod enrollment;
pub mod events;
pub mod inventory;
pub mod journal;
pub mod report;
