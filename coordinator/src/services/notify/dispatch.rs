//! The dispatcher: fleet events in, filtered by kind, fanned out to one outbox per sink over a
//! bounded queue; each outbox batches, rate-limits and retries.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::config::{NotifyConfig, Settings};
use crate::adapters::notify::EventBus;
use crate::adapters::notify::SlackWebhook;
use crate::adapters::notify::SnsTopic;
use crate::ports::notify::Batch;
use crate::ports::notify::MAX_MESSAGE_CHARS;
use crate::ports::notify::Notifier;
use crate::ports::notify::SendError;
use crate::ports::notify::truncate;

use crate::adapters::aws::sdk::Clients;
use crate::model::events::EventKind;
use crate::model::events::FleetEvent;
use crate::services::fleet::Fleet;

/// Errors starting the notifications.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build the HTTP client for the Slack webhook")]
    Http(#[source] reqwest::Error),
    #[error("{0} is configured but the coordinator has no AWS clients (add an [aws] section)")]
    NoAws(&'static str),
}

/// Builds the configured sinks and spawns the dispatcher. `aws` gives SNS and EventBridge their
/// clients (the coordinator's, built in `aws::sdk`). Returns `None` when no sink is configured.
pub fn spawn_notifications(
    config: NotifyConfig,
    fleet: &Fleet,
    aws: Option<&Clients>,
    shutdown: CancellationToken,
) -> Result<Option<JoinHandle<()>>, NotifyError> {
    let mut sinks: Vec<Arc<dyn Notifier>> = Vec::new();
    if let Some(url) = config.slack_webhook {
        sinks.push(Arc::new(
            SlackWebhook::new(url, config.settings.timeout).map_err(NotifyError::Http)?,
        ));
    }
    if let Some(arn) = config.sns_topic_arn {
        let clients = aws.ok_or(NotifyError::NoAws("notify.sns_topic_arn"))?;
        sinks.push(Arc::new(SnsTopic::new(
            clients.sns.clone(),
            arn,
            &clients.settings,
        )));
    }
    if let Some(bus) = config.event_bus {
        let clients = aws.ok_or(NotifyError::NoAws("notify.event_bus"))?;
        sinks.push(Arc::new(EventBus::new(
            clients.eventbridge.clone(),
            bus,
            &clients.settings,
        )));
    }
    if sinks.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    tracing::info!(sinks = ?names, min_interval = ?config.settings.min_interval, "notifications on");
    let notifications = Notifications::new(fleet, sinks, config.settings);
    Ok(Some(tokio::spawn(
        notifications
            .run(shutdown)
            .instrument(tracing::info_span!("notifications")),
    )))
}

/// The dispatcher: fleet events in, filtered, fanned out to one outbox per sink.
#[derive(Debug)]
pub struct Notifications {
    events: broadcast::Receiver<FleetEvent>,
    coordinator_id: Arc<str>,
    sinks: Vec<Arc<dyn Notifier>>,
    settings: Settings,
}

impl Notifications {
    /// Subscribes at once, so every event recorded from now on is seen; earlier ones are history,
    /// not news.
    pub fn new(fleet: &Fleet, sinks: Vec<Arc<dyn Notifier>>, settings: Settings) -> Self {
        let (_history, events) = fleet.subscribe(u64::MAX);
        Self {
            events,
            coordinator_id: fleet.coordinator_id.clone(),
            sinks,
            settings,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut queues = Vec::new();
        let mut outboxes = Vec::new();
        for sink in &self.sinks {
            let (tx, rx) = mpsc::channel(self.settings.queue);
            let dropped = Arc::new(AtomicU64::new(0));
            let outbox = Outbox {
                sink: sink.clone(),
                events: rx,
                dropped: dropped.clone(),
                pending: Pending::default(),
                coordinator_id: self.coordinator_id.clone(),
                settings: self.settings.clone(),
            };
            outboxes.push(tokio::spawn(
                outbox
                    .run(shutdown.clone())
                    .instrument(tracing::info_span!("notify", sink = sink.name())),
            ));
            queues.push((tx, dropped, sink.name()));
        }
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = self.events.recv() => received,
            };
            match received {
                Ok(event) if self.settings.kinds.contains(&event.kind) => {
                    for (queue, dropped, name) in &queues {
                        if queue.try_send(event.clone()).is_err() {
                            // Full: the sink is slow or down. Counted, reported in its next
                            // message; the fleet never waits for a notification.
                            if dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::warn!(sink = name, "notification queue full; dropping");
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "notifications fell behind the fleet's events");
                    for (_, dropped, _) in &queues {
                        dropped.fetch_add(missed, Ordering::Relaxed);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        drop(queues);
        // Each outbox makes one last attempt at what it holds, bounded by the send timeout.
        for outbox in outboxes {
            let _ = outbox.await;
        }
    }
}

/// Events waiting for one sink: the first `max_batch` in full, the rest counted by kind, so a
/// storm costs bounded memory.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) events: Vec<FleetEvent>,
    more: BTreeMap<EventKind, usize>,
}

impl Pending {
    pub(super) fn push(&mut self, mut event: FleetEvent, max_batch: usize) {
        if self.events.len() < max_batch {
            truncate(&mut event.message, MAX_MESSAGE_CHARS);
            self.events.push(event);
        } else {
            *self.more.entry(event.kind).or_default() += 1;
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty() && self.more.is_empty()
    }
}

/// One sink's queue, batcher and rate limiter.
#[derive(Debug)]
struct Outbox {
    sink: Arc<dyn Notifier>,
    events: mpsc::Receiver<FleetEvent>,
    dropped: Arc<AtomicU64>,
    pending: Pending,
    coordinator_id: Arc<str>,
    settings: Settings,
}

impl Outbox {
    async fn run(mut self, shutdown: CancellationToken) {
        // The first event goes out at once; what follows waits out `min_interval`.
        let mut next_send = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // Before `recv`: a steady stream of events must not starve sending.
                () = tokio::time::sleep_until(next_send), if !self.pending.is_empty() => {
                    self.send(&shutdown).await;
                    next_send = Instant::now() + self.settings.min_interval;
                }
                event = self.events.recv() => match event {
                    Some(event) => self.pending.push(event, self.settings.max_batch),
                    None => break,
                },
            }
        }
        // Shutting down: one attempt at what is left, without waiting out the interval.
        self.send(&shutdown).await;
    }

    /// Takes everything queued and pending into one batch and delivers it.
    async fn send(&mut self, shutdown: &CancellationToken) {
        while let Ok(event) = self.events.try_recv() {
            self.pending.push(event, self.settings.max_batch);
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if self.pending.is_empty() && dropped == 0 {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let batch = Batch {
            coordinator_id: self.coordinator_id.to_string(),
            events: pending.events,
            more: pending.more,
            dropped,
        };
        deliver(self.sink.as_ref(), &batch, &self.settings, shutdown).await;
    }
}

/// Tries `batch` up to `max_attempts` times with jittered backoff; a shutdown cuts the waiting
/// short and allows one last attempt. Returns whether it was delivered.
async fn deliver(
    sink: &dyn Notifier,
    batch: &Batch,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> bool {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match tokio::time::timeout(settings.timeout, sink.send(batch)).await {
            Ok(Ok(())) => {
                tracing::debug!(
                    sink = sink.name(),
                    events = batch.total(),
                    attempt,
                    "notification sent"
                );
                return true;
            }
            Ok(Err(error)) => error,
            Err(_) => SendError::Timeout(settings.timeout),
        };
        if attempt >= settings.max_attempts || !error.is_retryable() || shutdown.is_cancelled() {
            tracing::warn!(
                sink = sink.name(),
                attempt,
                error = %error,
                events = batch.total(),
                "notification not sent; giving up on it"
            );
            return false;
        }
        let wait =
            autoheal_common::backoff::random(attempt, settings.base_backoff, settings.max_backoff);
        tracing::warn!(sink = sink.name(), attempt, error = %error, ?wait, "notification failed; retrying");
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
