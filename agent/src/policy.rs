//! The pure parts of local healing: check thresholds (kubelet semantics), the restart budget with
//! exponential backoff and jitter, and flap detection. No I/O and no clock of their own: every
//! decision takes `now`, so tests drive time.

use std::{collections::VecDeque, time::Duration};

use autoheal_common::backoff;
use tokio::time::Instant;

use crate::{config::RestartPolicyConfig, state::Verdict};

/// Consecutive-result thresholds of one check, with a startup grace during which failures
/// before the first success don't count.
#[derive(Debug, Clone)]
pub struct Threshold {
    success: u32,
    failure: u32,
    oks: u32,
    fails: u32,
    verdict: Verdict,
    grace_until: Instant,
    seen_ok: bool,
}

impl Threshold {
    pub fn new(success: u32, failure: u32, now: Instant, grace: Duration) -> Self {
        Self {
            success: success.max(1),
            failure: failure.max(1),
            oks: 0,
            fails: 0,
            verdict: Verdict::Unknown,
            grace_until: now + grace,
            seen_ok: false,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Starts over (after a restart): unknown until proven, failures forgiven during `grace`.
    pub fn reset(&mut self, now: Instant, grace: Duration) {
        *self = Self::new(self.success, self.failure, now, grace);
    }

    /// Ends the grace: whatever isn't proven healthy now counts as unhealthy (a restart's
    /// verification ran out). Returns whether the verdict changed.
    pub fn fail_unproven(&mut self) -> bool {
        self.seen_ok = true;
        if self.verdict == Verdict::Healthy || self.verdict == Verdict::Unhealthy {
            return false;
        }
        self.verdict = Verdict::Unhealthy;
        self.oks = 0;
        self.fails = self.failure;
        true
    }

    /// Records one probe result; returns the new verdict if it changed.
    pub fn observe(&mut self, ok: bool, now: Instant) -> Option<Verdict> {
        if ok {
            self.seen_ok = true;
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
        } else {
            if !self.seen_ok && now < self.grace_until {
                return None;
            }
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
        }
        let next = if self.oks >= self.success {
            Verdict::Healthy
        } else if self.fails >= self.failure {
            Verdict::Unhealthy
        } else {
            self.verdict
        };
        (next != self.verdict).then(|| {
            self.verdict = next;
            next
        })
    }
}

/// The restart budget: at most `max_attempts` within `window`, spaced by exponential backoff
/// with jitter (the one backoff, `autoheal_common::backoff`). The first attempt after a healthy
/// spell is immediate.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    config: RestartPolicyConfig,
    attempts: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(config: RestartPolicyConfig) -> Self {
        Self {
            config,
            attempts: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&first) = self.attempts.front() {
            if now.saturating_duration_since(first) >= self.config.window {
                self.attempts.pop_front();
            } else {
                break;
            }
        }
    }

    /// Attempts made within the window.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.expire(now);
        self.attempts.len() as u32
    }

    pub fn exhausted(&mut self, now: Instant) -> bool {
        self.used(now) >= self.config.max_attempts
    }

    /// The earliest time the next attempt may start: now for the first, else the last attempt
    /// plus the backoff for that many attempts (`jitter` in [0, 1) picks within the upper half).
    pub fn next_allowed(&mut self, now: Instant, jitter: f64) -> Instant {
        self.expire(now);
        match self.attempts.back() {
            None => now,
            Some(&last) => last + self.backoff(self.attempts.len() as u32, jitter),
        }
    }

    /// Backoff after `n` attempts: initial * 2^(n-1), capped, with "equal jitter": half fixed,
    /// half random, so retries spread out but never come sooner than half the base.
    pub fn backoff(&self, n: u32, jitter: f64) -> Duration {
        let (attempt, initial, max) = (
            n.saturating_sub(1),
            self.config.backoff_initial,
            self.config.backoff_max,
        );
        backoff::ceiling(attempt, initial, max) / 2
            + backoff::full_jitter(attempt, initial, max, jitter) / 2
    }

    /// Records an attempt starting now; returns its 1-based number within the window.
    pub fn record(&mut self, now: Instant) -> u32 {
        self.expire(now);
        self.attempts.push_back(now);
        self.attempts.len() as u32
    }

    pub fn clear(&mut self) {
        self.attempts.clear();
    }
}

/// Too many healthy/unhealthy transitions within a window.
#[derive(Debug, Clone)]
pub struct FlapDetector {
    max: u32,
    window: Duration,
    transitions: VecDeque<Instant>,
}

impl FlapDetector {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            transitions: VecDeque::new(),
        }
    }

    pub fn record(&mut self, now: Instant) {
        self.transitions.push_back(now);
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&first) = self.transitions.front() {
            if now.saturating_duration_since(first) >= self.window {
                self.transitions.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn flapping(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.transitions.len() as u32 >= self.max
    }

    pub fn count(&self) -> usize {
        self.transitions.len()
    }

    /// When the oldest transition leaves the window (when `flapping` may change).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.transitions.front().map(|t| *t + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let t0 = Instant::now();
        let mut t = Threshold::new(2, 3, t0, Duration::ZERO);
        assert_eq!(t.observe(true, t0), None);
        assert_eq!(t.observe(true, t0), Some(Verdict::Healthy));
        assert_eq!(t.observe(false, t0), None);
        assert_eq!(t.observe(false, t0), None);
        assert_eq!(
            t.observe(true, t0),
            None,
            "a success resets the failure count"
        );
        assert_eq!(t.observe(false, t0), None);
        assert_eq!(t.observe(false, t0), None);
        assert_eq!(t.observe(false, t0), Some(Verdict::Unhealthy));
        assert_eq!(t.observe(true, t0), None);
        assert_eq!(t.observe(true, t0), Some(Verdict::Healthy));
    }

    #[test]
    fn startup_grace_forgives_failures_before_the_first_success() {
        let t0 = Instant::now();
        let mut t = Threshold::new(1, 1, t0, s(10));
        assert_eq!(t.observe(false, t0 + s(5)), None);
        assert_eq!(t.verdict(), Verdict::Unknown);
        assert_eq!(t.observe(false, t0 + s(11)), Some(Verdict::Unhealthy));
        t.reset(t0 + s(20), s(10));
        assert_eq!(t.verdict(), Verdict::Unknown);
        assert_eq!(t.observe(true, t0 + s(21)), Some(Verdict::Healthy));
        // After the first success, failures count even within the grace.
        assert_eq!(t.observe(false, t0 + s(22)), Some(Verdict::Unhealthy));
    }

    fn budget(max: u32) -> RestartBudget {
        RestartBudget::new(RestartPolicyConfig {
            max_attempts: max,
            window: s(60),
            backoff_initial: s(1),
            backoff_max: s(8),
            ..RestartPolicyConfig::default()
        })
    }

    #[test]
    fn restart_attempts_are_bounded_within_the_window() {
        let t0 = Instant::now();
        let mut b = budget(3);
        assert_eq!(b.next_allowed(t0, 0.5), t0, "first attempt is immediate");
        assert_eq!(b.record(t0), 1);
        assert_eq!(b.record(t0 + s(1)), 2);
        assert!(!b.exhausted(t0 + s(2)));
        assert_eq!(b.record(t0 + s(3)), 3);
        assert!(b.exhausted(t0 + s(4)));
        // The first attempt leaves the window after 60 s.
        assert!(!b.exhausted(t0 + s(60)));
        assert_eq!(b.used(t0 + s(60)), 2);
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_bounds() {
        let b = budget(10);
        assert_eq!(b.backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(b.backoff(1, 1.0), s(1));
        assert_eq!(b.backoff(2, 1.0), s(2));
        assert_eq!(b.backoff(3, 1.0), s(4));
        assert_eq!(b.backoff(4, 1.0), s(8));
        assert_eq!(b.backoff(30, 1.0), s(8), "capped at backoff_max");
        for i in 0..100 {
            let j = f64::from(i) / 100.0;
            let d = b.backoff(3, j);
            assert!(d >= s(2) && d <= s(4), "{d:?}");
        }
        let t0 = Instant::now();
        let mut b = budget(10);
        b.record(t0);
        b.record(t0);
        assert_eq!(b.next_allowed(t0, 1.0), t0 + s(2));
    }

    #[test]
    fn flapping_is_transitions_within_the_window() {
        let t0 = Instant::now();
        let mut f = FlapDetector::new(3, s(10));
        f.record(t0);
        f.record(t0 + s(1));
        assert!(!f.flapping(t0 + s(2)));
        f.record(t0 + s(2));
        assert!(f.flapping(t0 + s(3)));
        assert_eq!(f.next_expiry(), Some(t0 + s(10)));
        assert!(!f.flapping(t0 + s(10)), "oldest transition left the window");
    }
}
