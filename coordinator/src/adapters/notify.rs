//! The three sinks. Each makes exactly one attempt per `send`: the outbox owns timeouts and
//! retries, so every sink is retried the same way.

use std::{fmt, time::Duration};

use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use crate::adapters::aws::AwsSettings;
use crate::adapters::aws::retry;
use crate::ports::notify::Batch;
use crate::ports::notify::Notifier;
use crate::ports::notify::SendError;
use crate::ports::notify::WebhookUrl;

/// EventBridge `source` and `detail-type` of every event autoheal puts: what rules match on.
pub const EVENT_SOURCE: &str = "autoheal";
pub const EVENT_DETAIL_TYPE: &str = "autoheal fleet event";

/// A Slack incoming webhook.
pub struct SlackWebhook {
    client: reqwest::Client,
    url: WebhookUrl,
}

impl fmt::Debug for SlackWebhook {
    // By hand: the URL is the credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackWebhook").finish_non_exhaustive()
    }
}

impl SlackWebhook {
    pub fn new(url: WebhookUrl, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect would hand the secret path's answer to someone else; Slack never
            // redirects a webhook.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, url })
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped, or a message could ping `<!channel>`.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The message text: a header line, one bullet per event, the summary in italics.
pub fn slack_text(batch: &Batch) -> String {
    let mut text = format!(
        "*autoheal* coordinator `{}`\n",
        slack_escape(&batch.coordinator_id)
    );
    for line in batch.lines() {
        text.push_str("• ");
        text.push_str(&slack_escape(&line));
        text.push('\n');
    }
    if let Some(summary) = batch.summary() {
        text.push('_');
        text.push_str(&slack_escape(&summary));
        text.push_str("_\n");
    }
    text
}

#[async_trait::async_trait]
impl Notifier for SlackWebhook {
    fn name(&self) -> &'static str {
        "slack"
    }

    async fn send(&self, batch: &Batch) -> Result<(), SendError> {
        let body = serde_json::json!({ "text": slack_text(batch) });
        let response = self
            .client
            .post(self.url.expose())
            .json(&body)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Status {
                status: status.as_u16(),
            })
        }
    }
}

/// Describes a request failure with its causes, after stripping the URL (reqwest's `Display`
/// includes it).
fn request_error(error: reqwest::Error) -> SendError {
    let retryable = error.is_timeout() || error.is_connect() || error.is_request();
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    SendError::Request { message, retryable }
}

/// Each sink call is one attempt: the outbox retries.
fn one_attempt(settings: &AwsSettings) -> AwsSettings {
    AwsSettings {
        max_attempts: 1,
        ..settings.clone()
    }
}

/// An SNS topic; subscribers get [`Batch::text`] with [`Batch::subject`].
#[derive(Debug)]
pub struct SnsTopic {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    settings: AwsSettings,
}

impl SnsTopic {
    /// A topic lives in one region, named in its ARN; publishing elsewhere fails, so the client is
    /// pointed there when it differs from the coordinator's.
    pub fn new(client: aws_sdk_sns::Client, topic_arn: String, settings: &AwsSettings) -> Self {
        let client = match arn_region(&topic_arn) {
            Some(region) if client.config().region().map(|r| r.as_ref()) != Some(region) => {
                aws_sdk_sns::Client::from_conf(
                    client
                        .config()
                        .to_builder()
                        .region(aws_sdk_sns::config::Region::new(region.to_owned()))
                        .build(),
                )
            }
            _ => client,
        };
        Self {
            client,
            topic_arn,
            settings: one_attempt(settings),
        }
    }
}

/// SNS subjects: printable ASCII, no line breaks, at most 100 characters.
fn sns_subject(batch: &Batch) -> String {
    batch
        .subject()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(100)
        .collect()
}

#[async_trait::async_trait]
impl Notifier for SnsTopic {
    fn name(&self) -> &'static str {
        "sns"
    }

    async fn send(&self, batch: &Batch) -> Result<(), SendError> {
        let subject = sns_subject(batch);
        let message = batch.text();
        retry(&self.settings, "sns:Publish", || {
            self.client
                .publish()
                .topic_arn(&self.topic_arn)
                .subject(&subject)
                .message(&message)
                .send()
        })
        .await?;
        Ok(())
    }
}

/// An EventBridge bus; each batch is one event, source `autoheal`, detail-type
/// `autoheal fleet event`, detail [`Batch::to_json`].
#[derive(Debug)]
pub struct EventBus {
    client: aws_sdk_eventbridge::Client,
    bus: String,
    settings: AwsSettings,
}

impl EventBus {
    /// `bus` is a name (in the coordinator's region) or an ARN (whose region is used).
    pub fn new(client: aws_sdk_eventbridge::Client, bus: String, settings: &AwsSettings) -> Self {
        let client = match arn_region(&bus).filter(|_| bus.starts_with("arn:")) {
            Some(region) if client.config().region().map(|r| r.as_ref()) != Some(region) => {
                aws_sdk_eventbridge::Client::from_conf(
                    client
                        .config()
                        .to_builder()
                        .region(aws_sdk_eventbridge::config::Region::new(region.to_owned()))
                        .build(),
                )
            }
            _ => client,
        };
        Self {
            client,
            bus,
            settings: one_attempt(settings),
        }
    }
}

#[async_trait::async_trait]
impl Notifier for EventBus {
    fn name(&self) -> &'static str {
        "eventbridge"
    }

    async fn send(&self, batch: &Batch) -> Result<(), SendError> {
        let detail = batch.to_json().to_string();
        let out = retry(&self.settings, "events:PutEvents", || {
            self.client
                .put_events()
                .entries(
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(EVENT_SOURCE)
                        .detail_type(EVENT_DETAIL_TYPE)
                        .detail(&detail)
                        .build(),
                )
                .send()
        })
        .await?;
        // PutEvents answers 200 even when it refuses entries; the refusal is per entry.
        if out.failed_entry_count() > 0 {
            let entry = out.entries().iter().find(|e| e.error_code().is_some());
            return Err(SendError::Rejected {
                code: entry
                    .and_then(|e| e.error_code())
                    .unwrap_or("unknown")
                    .to_owned(),
                message: entry
                    .and_then(|e| e.error_message())
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// The region in an ARN (`arn:partition:service:region:…`).
pub fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}
