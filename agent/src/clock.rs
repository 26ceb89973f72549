//! Time: the one `Clock` (from `autoheal-common`) and its conversions to the wire's types.

use std::time::{Duration, SystemTime};

pub use autoheal_common::clock::{Clock, SharedClock, SystemClock, system, unix_ms};

/// A protobuf timestamp for `t`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A protobuf duration for `d` (saturating).
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}
