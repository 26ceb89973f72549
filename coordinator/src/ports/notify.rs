//! Where notifications go, as a port: a [`Notifier`] is asked to deliver a [`Batch`] of fleet
//! events and says why it could not ([`SendError`]). The sinks (Slack, SNS, EventBridge) live in
//! `adapters::notify`; batching, rate limits and retries in `services::notify`.
//!
//! The Slack webhook URL is a secret (whoever has it can post to the channel): it lives in a
//! [`WebhookUrl`] whose `Debug` is redacted, and errors never carry it.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, SystemTime},
};

use crate::model::events::EventKind;
use crate::model::events::FleetEvent;
use crate::ports::aws::AwsError;

/// One event's message is cut to this many characters: a batch must fit every sink's size limit
/// (SNS and EventBridge: 256 KiB; Slack truncates long texts).
pub(crate) const MAX_MESSAGE_CHARS: usize = 500;

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

/// What a sink is asked to deliver: some events in full, the rest counted by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub coordinator_id: String,
    /// Shown in full, oldest first; each message cut to a bounded length.
    pub events: Vec<FleetEvent>,
    /// Further events by kind, summarized.
    pub more: BTreeMap<EventKind, usize>,
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
            let mut kinds: Vec<(&EventKind, &usize)> = self.more.iter().collect();
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
                "kind": e.kind.as_str(),
                "message": e.message,
            })).collect::<Vec<_>>(),
            "more": self.more.iter().map(|(k, n)| (k.as_str(), *n)).collect::<BTreeMap<_, _>>(),
            "dropped": self.dropped,
        })
    }
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn truncate(s: &mut String, max_chars: usize) {
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
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Names the sink in logs ("slack", "sns", "eventbridge").
    fn name(&self) -> &'static str;
    /// One attempt at delivering `batch`; the caller bounds it in time and retries.
    async fn send(&self, batch: &Batch) -> Result<(), SendError>;
}
