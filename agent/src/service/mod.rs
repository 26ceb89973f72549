//! The supervisor of one service: the edge around its pure [`machine::Machine`]. It waits for
//! inputs (probe results, process liveness, restart replies, the state of the services it
//! depends on, the pause switch, the machine's own deadlines), reads the clock, steps the machine
//! and performs the effects it returns: events, probe control, restart commands to the process
//! task, and the service's state over `watch`.

use std::collections::VecDeque;

use autoheal_proto::v1::event;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_stream::{StreamExt, StreamMap, wrappers::WatchStream};
use tokio_util::sync::CancellationToken;

use crate::{
    action::{Liveness, ProcessCommand, RestartReply},
    check::{Control, ProbeResult},
    clock::SharedClock,
    config::ServiceConfig,
    metrics::ServiceMetrics,
    state::{EventSink, ServiceSnapshot},
};

pub mod machine;

pub use machine::initial_snapshot;
use machine::{Effect, Input, Machine, Moment};

#[derive(Debug)]
pub struct Supervisor {
    pub config: ServiceConfig,
    pub clock: SharedClock,
    pub results: mpsc::Receiver<ProbeResult>,
    pub control: watch::Sender<Control>,
    pub liveness: mpsc::Receiver<Liveness>,
    pub process: mpsc::Sender<ProcessCommand>,
    pub deps: Vec<(String, watch::Receiver<ServiceSnapshot>)>,
    pub paused: watch::Receiver<bool>,
    pub events: EventSink,
    pub state: watch::Sender<ServiceSnapshot>,
    pub metrics: ServiceMetrics,
}

impl Supervisor {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let paused = *self.paused.borrow_and_update();
        let mut machine = Machine::new(self.config.clone(), self.moment(), paused);
        // The stream map only wakes us; states are read fresh from `self.deps` before each
        // step, so a change that races with another input is never decided on stale.
        let mut deps = StreamMap::new();
        for (name, rx) in &self.deps {
            machine.observe_dependency(name, rx.borrow().state);
            deps.insert(name.clone(), WatchStream::new(rx.clone()));
        }
        let start = machine.start();
        self.perform(&mut machine, start, &mut None);
        // The reply to the restart in flight, if any.
        let mut reply: Option<oneshot::Receiver<RestartReply>> = None;
        loop {
            let wake = machine.next_wake();
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(r) = self.results.recv() => Input::Result(r),
                Some(l) = self.liveness.recv() => Input::Liveness(l),
                r = async { match reply.as_mut() { Some(rx) => rx.await, None => std::future::pending().await } } => {
                    reply = None;
                    Input::Restarted(r.unwrap_or_else(|_| Err("process task ended".into())))
                }
                Some((name, snap)) = deps.next(), if !deps.is_empty() => Input::Dependency(name, snap.state),
                changed = self.paused.changed() => match changed {
                    Ok(()) => Input::Paused(*self.paused.borrow_and_update()),
                    // The pause switch is gone: the agent is shutting down.
                    Err(_) => return,
                },
                () = sleep_until_opt(wake) => Input::Tick,
            };
            machine.observe_paused(*self.paused.borrow());
            for (name, rx) in &self.deps {
                machine.observe_dependency(name, rx.borrow().state);
            }
            let effects = machine.step(input, self.moment());
            self.perform(&mut machine, effects, &mut reply);
            if !machine.awaiting_restart() {
                reply = None;
            }
        }
    }

    fn moment(&self) -> Moment {
        Moment {
            now: self.clock.now(),
            wall: self.clock.wall(),
            jitter: rand::random::<f64>(),
        }
    }

    /// Performs `effects` in order; a restart that can't be handed over is fed back at once.
    fn perform(
        &mut self,
        machine: &mut Machine,
        effects: Vec<Effect>,
        reply: &mut Option<oneshot::Receiver<RestartReply>>,
    ) {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Emit { at, kind } => {
                    // The healing counters follow the events that report them.
                    match &kind {
                        event::Kind::RestartAttempted(r) => {
                            self.metrics.restart(r.succeeded);
                        }
                        event::Kind::Escalated(_) => self.metrics.escalated(),
                        _ => {}
                    }
                    self.events.emit(at, kind);
                }
                Effect::Control(c) => {
                    self.control.send_replace(c);
                }
                Effect::Restart => {
                    let (tx, rx) = oneshot::channel();
                    match self.process.try_send(ProcessCommand::Restart { reply: tx }) {
                        Ok(()) => *reply = Some(rx),
                        Err(e) => {
                            let more = machine
                                .step(Input::RestartUnavailable(e.to_string()), self.moment());
                            queue.extend(more);
                        }
                    }
                }
                Effect::Publish(snapshot) => {
                    self.state.send_if_modified(|old| {
                        if *old == *snapshot {
                            false
                        } else {
                            *old = *snapshot;
                            true
                        }
                    });
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
