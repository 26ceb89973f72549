//! Notifications to people and other systems: a Slack incoming webhook, an SNS topic, an
//! EventBridge bus. Each is optional and none may hold up a decision: the dispatcher reads the
//! fleet's event broadcast (which never blocks its sender), keeps the kinds worth a message, and
//! hands them to one outbox per sink over a bounded queue, dropping and counting what doesn't fit.
//! Each outbox sends at most one message per `min_interval`, so a storm becomes a few batched
//! messages ("… and 37 more events: …"), and retries a failed send a few times with backoff.
//!

mod config;
mod dispatch;

pub use config::{NotifyConfig, RawNotify, SLACK_WEBHOOK_ENV, Settings};
pub use dispatch::{Notifications, NotifyError, spawn_notifications};

#[cfg(test)]
mod tests;
