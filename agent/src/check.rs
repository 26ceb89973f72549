//! A check task: probes on its interval and sends every result to its service's supervisor,
//! which owns the thresholds. The supervisor steers it over a `watch`: a new generation (after a
//! restart) restarts the initial delay, `fast` probes often while a restart is verified.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{clock::SharedClock, config::CheckConfig, metrics::CheckMetrics, probe};

/// Probe period while a restart is being verified (bounded by the check's own interval).
pub const FAST_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    pub generation: u64,
    pub fast: bool,
}

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub index: usize,
    pub generation: u64,
    pub outcome: probe::Outcome,
    pub at: SystemTime,
}

#[derive(Debug)]
pub struct CheckTask {
    pub index: usize,
    pub config: CheckConfig,
    pub results: mpsc::Sender<ProbeResult>,
    pub control: watch::Receiver<Control>,
    pub clock: SharedClock,
    pub metrics: CheckMetrics,
}

impl CheckTask {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut generation = self.control.borrow_and_update().generation;
        'generation: loop {
            if !self.config.initial_delay.is_zero() {
                let until = self.clock.now() + self.config.initial_delay;
                loop {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(until) => break,
                        changed = self.control.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let c = *self.control.borrow_and_update();
                            if c.generation != generation {
                                generation = c.generation;
                                continue 'generation;
                            }
                        }
                    }
                }
            }
            loop {
                let c = *self.control.borrow_and_update();
                if c.generation != generation {
                    generation = c.generation;
                    continue 'generation;
                }
                let started = std::time::Instant::now();
                let outcome = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    o = probe::run(&self.config.probe, self.config.timeout) => o,
                };
                self.metrics.observe(outcome.ok, started.elapsed());
                let result = ProbeResult {
                    index: self.index,
                    generation,
                    outcome,
                    at: self.clock.wall(),
                };
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    sent = self.results.send(result) => if sent.is_err() { return },
                }
                let wait = if c.fast {
                    self.config.interval.min(FAST_INTERVAL)
                } else {
                    self.config.interval
                };
                let until = self.clock.now() + wait;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(until) => {}
                    changed = self.control.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}
