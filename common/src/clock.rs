//! Time, from a clock the caller passes in, so decisions that depend on it can be driven in
//! tests. Monotonic time is tokio's (which `tokio::time::pause` controls, and in which a
//! SIGSTOPped process sees the time it slept); wall time stamps events and is what lease expiries
//! in the store are written in.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
    fn wall(&self) -> SystemTime;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub type SharedClock = Arc<dyn Clock>;

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Unix milliseconds, saturating.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}
