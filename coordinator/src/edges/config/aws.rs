//! The `[aws]` section: region, endpoint, which groups, how calls are bounded and retried.

use std::time::Duration;

use autoheal_common::config::ConfigErrors;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
pub(super) struct RawAws {
    region: Option<String>,
    endpoint: Option<String>,
    asg_names: Option<Vec<String>>,
    asg_tag: Option<String>,
    interval: Option<String>,
    replace_with: Option<String>,
    respect_grace_period: Option<bool>,
    call_timeout: Option<String>,
    max_attempts: Option<u32>,
    max_backoff: Option<String>,
}

/// How the coordinator reaches AWS and which groups it looks after.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub settings: crate::adapters::aws::AwsSettings,
    pub selector: crate::model::inventory::Selector,
    pub interval: Duration,
    pub replace_with: crate::services::control::ReplaceWith,
    pub respect_grace_period: bool,
}

pub(super) fn aws_config(raw: RawAws, errors: &mut ConfigErrors) -> AwsConfig {
    use crate::model::inventory::Selector;
    use crate::services::control::ReplaceWith;
    let defaults = crate::adapters::aws::AwsSettings::default();
    let region = raw
        .region
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or(defaults.region.clone());
    let selector = match (raw.asg_names, raw.asg_tag) {
        (Some(_), Some(_)) => {
            errors.push(
                "aws.asg_names",
                "give either asg_names or asg_tag, not both",
            );
            Selector::Names(Vec::new())
        }
        (Some(names), None) => {
            if names.is_empty() {
                errors.push("aws.asg_names", "must name at least one group");
            }
            Selector::Names(names)
        }
        (None, tag) => {
            let tag = tag.unwrap_or_else(|| "autoheal:enabled=true".to_owned());
            match tag.split_once('=') {
                Some((k, v)) if !k.is_empty() => Selector::Tag {
                    key: k.to_owned(),
                    value: v.to_owned(),
                },
                _ => {
                    errors.push(
                        "aws.asg_tag",
                        format!("{tag:?}: use KEY=VALUE, e.g. autoheal:enabled=true"),
                    );
                    Selector::Names(Vec::new())
                }
            }
        }
    };
    let replace_with = match raw.replace_with.as_deref() {
        None | Some("set-instance-health") => ReplaceWith::SetInstanceHealth,
        Some("terminate") => ReplaceWith::Terminate,
        Some(other) => {
            errors.push(
                "aws.replace_with",
                format!("{other:?}: use \"set-instance-health\" or \"terminate\""),
            );
            ReplaceWith::SetInstanceHealth
        }
    };
    let max_attempts = raw.max_attempts.unwrap_or(defaults.max_attempts);
    if max_attempts == 0 {
        errors.push("aws.max_attempts", "must be at least 1");
    }
    let interval = errors.duration(
        "aws.interval",
        raw.interval.as_deref(),
        Duration::from_secs(15),
    );
    if interval < Duration::from_millis(100) {
        errors.push("aws.interval", "must be at least 100ms");
    }
    AwsConfig {
        settings: crate::adapters::aws::AwsSettings {
            region,
            endpoint: raw
                .endpoint
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()),
            call_timeout: errors.duration(
                "aws.call_timeout",
                raw.call_timeout.as_deref(),
                defaults.call_timeout,
            ),
            max_attempts: max_attempts.max(1),
            max_backoff: errors.duration(
                "aws.max_backoff",
                raw.max_backoff.as_deref(),
                defaults.max_backoff,
            ),
            ..defaults
        },
        selector,
        interval,
        replace_with,
        respect_grace_period: raw.respect_grace_period.unwrap_or(true),
    }
}
