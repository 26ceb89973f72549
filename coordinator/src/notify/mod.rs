//! Notifications to people and other systems: a Slack incoming webhook, an SNS topic, an
//! EventBridge bus. Each is optional and none may hold up a decision: the dispatcher reads the
//! fleet's event broadcast (which never blocks its sender), keeps the kinds worth a message, and
//! hands them to one outbox per sink over a bounded queue, dropping and counting what doesn't fit.
//! Each outbox sends at most one message per `min_interval`, so a storm becomes a few batched
//! messages ("… and 37 more events: …"), and retries a failed send a few times with backoff.
//!
//! The Slack webhook URL is a secret (whoever has it can post to the channel): it lives in a
//! [`WebhookUrl`] whose `Debug` is redacted, and errors never carry it.

mod sinks;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use autoheal_common::config::ConfigErrors;
use serde::Deserialize;
use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use sinks::{EventBus, SlackWebhook, SnsTopic};

use crate::{
    aws::{AwsError, sdk::Clients},
    fleet::{Fleet, FleetEvent},
};

/// The environment variable that may hold the Slack webhook URL instead of a file.
pub const SLACK_WEBHOOK_ENV: &str = "AUTOHEAL_SLACK_WEBHOOK";

/// Fleet event kinds notified unless `notify.kinds` says otherwise: what a person may need to act
/// on or know about. Heartbeats, connects and check flaps are left out: they are noise at scale.
pub const DEFAULT_KINDS: &[&str] = &[
    "escalated",
    "decision",
    "dry-run",
    "guardrail",
    "alert",
    "action-succeeded",
    "action-failed",
    "paused",
    "resumed",
    "inventory-failed",
    "unknown-instance",
    "dependency-changed",
];

/// Every fleet event kind the coordinator records, so a typo in `notify.kinds` is caught.
pub const KNOWN_KINDS: &[&str] = &[
    "action-failed",
    "action-reconciled",
    "action-succeeded",
    "agent-connected",
    "agent-disconnected",
    "alert",
    "check-changed",
    "decision",
    "dependency-changed",
    "dry-run",
    "escalated",
    "events-dropped",
    "events-missing",
    "guardrail",
    "instance-discovered",
    "inventory-failed",
    "paused",
    "remediation-finished",
    "restart-attempted",
    "resumed",
    "service-state-changed",
    "ssm-finished",
    "unknown-instance",
];

/// One event's message is cut to this many characters: a batch must fit every sink's size limit
/// (SNS and EventBridge: 256 KiB; Slack truncates long texts).
const MAX_MESSAGE_CHARS: usize = 500;

/// The `[notify]` section as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawNotify {
    pub slack_webhook_file: Option<String>,
    pub sns_topic_arn: Option<String>,
    pub event_bus: Option<String>,
    pub min_interval: Option<String>,
    pub max_batch: Option<usize>,
    pub queue: Option<usize>,
    pub max_attempts: Option<u32>,
    pub timeout: Option<String>,
    pub kinds: Option<Vec<String>>,
}

/// A Slack incoming-webhook URL. Anyone holding it can post to the channel, so it is never
/// printed: `Debug` is redacted and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Accepts `https://…`, and plain `http://` only to a loopback host (a local relay, tests).
    /// The error names what is wrong, never the URL.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let raw = raw.trim();
        let uri: http::Uri = raw
            .parse()
            .map_err(|_| "is not a URL: expected https://hooks.slack.com/services/…")?;
        let host = uri.host().ok_or("has no host")?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(host) => {}
            Some("http") => return Err("must use https (plain http only to a loopback host)"),
            _ => return Err("must be an https:// URL"),
        }
        Ok(Self(raw.to_owned()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookUrl(<redacted>)")
    }
}

/// How the dispatcher batches, rate-limits and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// At most one message per sink per this interval; what arrives meanwhile is batched.
    pub min_interval: Duration,
    /// Events shown in full in one message; the rest are counted by kind.
    pub max_batch: usize,
    /// Events waiting for one sink; more are dropped and counted in the next message.
    pub queue: usize,
    /// Attempts at one message before it is dropped (and logged).
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on one attempt at one message.
    pub timeout: Duration,
    /// Fleet event kinds worth a message.
    pub kinds: BTreeSet<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(30),
            max_batch: 20,
            queue: 1024,
            max_attempts: 4,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            kinds: DEFAULT_KINDS.iter().map(|&k| k.to_owned()).collect(),
        }
    }
}

/// The validated `[notify]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    pub slack_webhook: Option<WebhookUrl>,
    pub sns_topic_arn: Option<String>,
    /// Event bus name or ARN.
    pub event_bus: Option<String>,
    pub settings: Settings,
}

impl NotifyConfig {
    /// Validates the `[notify]` section (pass `RawNotify::default()` when there is none, so the
    /// environment alone can turn Slack on). Reads the webhook file, relative to `base`; `env`
    /// looks up environment variables (`|name| std::env::var(name).ok()`); `aws_configured` says
    /// whether an `[aws]` section gives SNS and EventBridge their region and credentials. Every
    /// problem is pushed to `errors` under `notify.<key>`.
    pub fn from_raw(
        raw: RawNotify,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
        aws_configured: bool,
        errors: &mut ConfigErrors,
    ) -> Self {
        let defaults = Settings::default();
        let from_env = env(SLACK_WEBHOOK_ENV).filter(|v| !v.trim().is_empty());
        let slack_webhook = match (raw.slack_webhook_file, from_env) {
            (Some(_), Some(_)) => {
                errors.push(
                    "notify.slack_webhook_file",
                    format!("{SLACK_WEBHOOK_ENV} is set too: give the webhook one way"),
                );
                None
            }
            (Some(file), None) => {
                let path = base.join(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => WebhookUrl::parse(&text)
                        .map_err(|why| {
                            errors.push(
                                "notify.slack_webhook_file",
                                format!("the URL in {} {why}", path.display()),
                            );
                        })
                        .ok(),
                    Err(e) => {
                        errors.push(
                            "notify.slack_webhook_file",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, Some(value)) => WebhookUrl::parse(&value)
                .map_err(|why| {
                    errors.push(
                        "notify.slack_webhook_file",
                        format!("the URL in {SLACK_WEBHOOK_ENV} {why}"),
                    );
                })
                .ok(),
            (None, None) => None,
        };

        if let Some(arn) = &raw.sns_topic_arn
            && let Err(why) = check_arn(arn, "sns", |r| !r.is_empty() && !r.contains('/'))
        {
            errors.push(
                "notify.sns_topic_arn",
                format!("{arn:?} {why}: use e.g. arn:aws:sns:us-east-1:123456789012:autoheal"),
            );
        }
        if let Some(bus) = &raw.event_bus {
            let ok = if bus.starts_with("arn:") {
                check_arn(bus, "events", |r| {
                    r.strip_prefix("event-bus/").is_some_and(|n| !n.is_empty())
                })
                .is_ok()
            } else {
                !bus.is_empty()
                    && bus.len() <= 256
                    && bus
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
            };
            if !ok {
                errors.push(
                    "notify.event_bus",
                    format!("{bus:?}: give a bus name (e.g. \"default\") or its ARN"),
                );
            }
        }
        if !aws_configured {
            for (key, set) in [
                ("notify.sns_topic_arn", raw.sns_topic_arn.is_some()),
                ("notify.event_bus", raw.event_bus.is_some()),
            ] {
                if set {
                    errors.push(key, "needs an [aws] section (region and credentials)");
                }
            }
        }

        let min_interval = errors.duration(
            "notify.min_interval",
            raw.min_interval.as_deref(),
            defaults.min_interval,
        );
        // Slack allows about one message a second per webhook; faster is a storm of its own.
        if min_interval < Duration::from_secs(1) {
            errors.push("notify.min_interval", "must be at least 1s");
        }
        let timeout = errors.duration("notify.timeout", raw.timeout.as_deref(), defaults.timeout);
        if timeout.is_zero() {
            errors.push("notify.timeout", "must be greater than zero");
        }
        let max_batch = raw.max_batch.unwrap_or(defaults.max_batch);
        if !(1..=100).contains(&max_batch) {
            errors.push("notify.max_batch", "must be between 1 and 100");
        }
        let queue = raw.queue.unwrap_or(defaults.queue);
        if queue == 0 {
            errors.push("notify.queue", "must be at least 1");
        }
        let max_attempts = raw.max_attempts.unwrap_or(defaults.max_attempts);
        if max_attempts == 0 {
            errors.push("notify.max_attempts", "must be at least 1");
        }
        let kinds = match raw.kinds {
            None => defaults.kinds.clone(),
            Some(kinds) => {
                for (i, kind) in kinds.iter().enumerate() {
                    if !KNOWN_KINDS.contains(&kind.as_str()) {
                        errors.push(
                            format!("notify.kinds[{i}]"),
                            format!(
                                "{kind:?} is not a fleet event kind: use one of {KNOWN_KINDS:?}"
                            ),
                        );
                    }
                }
                kinds.into_iter().collect()
            }
        };

        Self {
            slack_webhook,
            sns_topic_arn: raw.sns_topic_arn,
            event_bus: raw.event_bus,
            settings: Settings {
                min_interval,
                max_batch: max_batch.clamp(1, 100),
                queue: queue.max(1),
                max_attempts: max_attempts.max(1),
                timeout,
                kinds,
                ..defaults
            },
        }
    }

    /// Whether any sink is configured.
    pub fn is_empty(&self) -> bool {
        self.slack_webhook.is_none() && self.sns_topic_arn.is_none() && self.event_bus.is_none()
    }
}

/// `arn:partition:service:region:account:resource`, with `resource` checked by the caller.
fn check_arn(arn: &str, service: &str, resource: impl Fn(&str) -> bool) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, s, region, account, rest]
            if !partition.is_empty()
                && *s == service
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource(rest) =>
        {
            Ok(())
        }
        _ => Err(format!("is not an {service} ARN")),
    }
}

/// The region in an ARN (`arn:partition:service:region:…`).
pub(crate) fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

/// What a sink is asked to deliver: some events in full, the rest counted by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub coordinator_id: String,
    /// Shown in full, oldest first; each message cut to a bounded length.
    pub events: Vec<FleetEvent>,
    /// Further events by kind, summarized.
    pub more: BTreeMap<String, usize>,
    /// Events that never reached this sink's queue (it was full, or the dispatcher fell behind).
    pub dropped: u64,
}

impl Batch {
    /// Events this batch stands for: shown plus summarized (not counting dropped).
    pub fn total(&self) -> usize {
        self.events.len() + self.more.values().sum::<usize>()
    }

    /// A short title, e.g. for an SNS subject.
    pub fn subject(&self) -> String {
        let total = self.total();
        match self.events.as_slice() {
            [only] if total == 1 => {
                let mut s = format!("autoheal {}: {}", only.kind, only.instance_id);
                truncate(&mut s, 100);
                s
            }
            _ => format!("autoheal: {total} fleet events"),
        }
    }

    /// "and 37 more events: 30 escalated, 7 action-failed", most frequent kinds first.
    pub fn summary(&self) -> Option<String> {
        let more: usize = self.more.values().sum();
        let mut parts = Vec::new();
        if more > 0 {
            let mut kinds: Vec<(&String, &usize)> = self.more.iter().collect();
            kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            parts.push(format!(
                "and {more} more event{}: {}",
                if more == 1 { "" } else { "s" },
                kinds.join(", ")
            ));
        }
        if self.dropped > 0 {
            parts.push(format!(
                "{} event{} dropped: notifications fell behind",
                self.dropped,
                if self.dropped == 1 { "" } else { "s" }
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// One line per event: `kind instance (asg): message`.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.events.iter().map(|e| {
            let mut line = format!("{} ", e.kind);
            line.push_str(if e.instance_id.is_empty() {
                "fleet"
            } else {
                &e.instance_id
            });
            if !e.asg.is_empty() {
                line.push_str(&format!(" ({})", e.asg));
            }
            line.push_str(": ");
            line.push_str(&e.message);
            line
        })
    }

    /// Plain text for people (SNS e-mail and SMS subscribers).
    pub fn text(&self) -> String {
        let mut text = format!("autoheal coordinator {}:\n", self.coordinator_id);
        for line in self.lines() {
            text.push_str("- ");
            text.push_str(&line);
            text.push('\n');
        }
        if let Some(summary) = self.summary() {
            text.push_str(&summary);
            text.push('\n');
        }
        text
    }

    /// Structured form for machines (EventBridge detail).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "coordinator": self.coordinator_id,
            "events": self.events.iter().map(|e| serde_json::json!({
                "cursor": e.cursor,
                "at": rfc3339(e.at),
                "instance_id": e.instance_id,
                "asg": e.asg,
                "kind": e.kind,
                "message": e.message,
            })).collect::<Vec<_>>(),
            "more": self.more,
            "dropped": self.dropped,
        })
    }
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn truncate(s: &mut String, max_chars: usize) {
    if let Some((cut, _)) = s.char_indices().nth(max_chars) {
        s.truncate(cut);
        s.push('…');
    }
}

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The webhook answered with an error status.
    #[error("webhook answered HTTP {status}")]
    Status { status: u16 },
    /// The webhook could not be reached. Built from an error stripped of its URL.
    #[error("webhook request failed: {message}")]
    Request { message: String, retryable: bool },
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// EventBridge accepted the call but not the entry.
    #[error("events:PutEvents refused the entry: {code}: {message}")]
    Rejected { code: String, message: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl SendError {
    /// Throttling, server trouble, timeouts and connection failures are worth another try;
    /// a refusal (bad URL, revoked webhook, missing permission) is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            SendError::Status { status } => *status == 429 || *status >= 500,
            SendError::Request { retryable, .. } => *retryable,
            SendError::Aws(e) => e.retryable,
            SendError::Rejected { code, .. } => matches!(
                code.as_str(),
                "ThrottlingException" | "InternalFailure" | "InternalException"
            ),
            SendError::Timeout(_) => true,
        }
    }
}

/// A place notifications go.
#[tonic::async_trait]
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Names the sink in logs ("slack", "sns", "eventbridge").
    fn name(&self) -> &'static str;
    /// One attempt at delivering `batch`; the caller bounds it in time and retries.
    async fn send(&self, batch: &Batch) -> Result<(), SendError>;
}

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
struct Pending {
    events: Vec<FleetEvent>,
    more: BTreeMap<String, usize>,
}

impl Pending {
    fn push(&mut self, mut event: FleetEvent, max_batch: usize) {
        if self.events.len() < max_batch {
            truncate(&mut event.message, MAX_MESSAGE_CHARS);
            self.events.push(event);
        } else {
            *self.more.entry(event.kind).or_default() += 1;
        }
    }

    fn is_empty(&self) -> bool {
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
        let wait = crate::aws::backoff(attempt, settings.base_backoff, settings.max_backoff);
        tracing::warn!(sink = sink.name(), attempt, error = %error, ?wait, "notification failed; retrying");
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests;
