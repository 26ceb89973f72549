//! The `[notify]` section: which sinks, which event kinds, and how the dispatcher batches,
//! rate-limits and retries.

use std::{collections::BTreeSet, path::Path, time::Duration};

use autoheal_common::config::ConfigErrors;
use serde::Deserialize;

use crate::model::events::EventKind;
use crate::ports::notify::WebhookUrl;

/// The environment variable that may hold the Slack webhook URL instead of a file.
pub const SLACK_WEBHOOK_ENV: &str = "AUTOHEAL_SLACK_WEBHOOK";

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
    pub kinds: BTreeSet<EventKind>,
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
            kinds: EventKind::ALL
                .iter()
                .copied()
                .filter(|k| k.notified_by_default())
                .collect(),
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
                let mut known = BTreeSet::new();
                for (i, kind) in kinds.iter().enumerate() {
                    match kind.parse::<EventKind>() {
                        Ok(k) => {
                            known.insert(k);
                        }
                        Err(_) => {
                            let names: Vec<&str> =
                                EventKind::ALL.iter().map(|k| k.as_str()).collect();
                            errors.push(
                                format!("notify.kinds[{i}]"),
                                format!(
                                    "{:?} is not a fleet event kind: use one of {names:?}",
                                    autoheal_common::config::prefix(kind)
                                ),
                            );
                        }
                    }
                }
                known
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
