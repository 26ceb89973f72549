//! The one backoff: exponential, capped, with jitter.

use std::time::Duration;

/// The exponential ceiling of attempt `attempt` (0-based): `min(cap, base * 2^attempt)`.
pub fn ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(cap)
}

/// Full jitter: `unit` (a sample in [0, 1]) of the ceiling of `attempt`. Callers that draw
/// `unit` from `rand` get AWS's "full jitter"; tests pass a fixed one.
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    ceiling(attempt, base, cap).mul_f64(unit.clamp(0.0, 1.0))
}

/// Full-jitter exponential backoff: a random wait in [0, min(cap, base * 2^attempt)].
pub fn random(attempt: u32, base: Duration, cap: Duration) -> Duration {
    full_jitter(attempt, base, cap, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let (b, c) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(ceiling(0, b, c), b);
        assert_eq!(ceiling(2, b, c), Duration::from_millis(400));
        assert_eq!(ceiling(9, b, c), c);
        assert_eq!(ceiling(u32::MAX, b, c), c);
    }

    #[test]
    fn random_stays_within_the_ceiling() {
        let (b, c) = (Duration::from_millis(10), Duration::from_millis(300));
        for attempt in 0..30 {
            assert!(random(attempt, b, c) <= ceiling(attempt, b, c));
        }
        assert_eq!(full_jitter(3, b, c, 0.5), Duration::from_millis(40));
    }
}
