//! The `[ladder]` and `[guardrails]` sections, with per-ASG overrides, into the policy engine's config.

use autoheal_common::config::ConfigErrors;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
pub(super) struct RawLadder {
    agent_silence_grace: Option<String>,
    ssm_timeout: Option<String>,
    drain_timeout: Option<String>,
    action_timeout: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize, Default, Clone)]
pub(super) struct RawGuard {
    max_concurrent: Option<u32>,
    max_concurrent_percent: Option<u8>,
    min_healthy_percent: Option<u8>,
    anomaly_percent: Option<u8>,
    anomaly_window: Option<String>,
    dependency_percent: Option<u8>,
    brake_min_instances: Option<u32>,
    instance_cooldown: Option<String>,
    asg_cooldown: Option<String>,
    startup_grace: Option<String>,
    flap_transitions: Option<u32>,
    flap_window: Option<String>,
    act_on_alb_unhealthy: Option<bool>,
    replace_protected: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct RawGuardrails {
    #[serde(flatten)]
    defaults: RawGuard,
    asg: Option<std::collections::BTreeMap<String, RawGuard>>,
}

pub(super) fn guard_override(
    raw: &RawGuard,
    prefix: &str,
    errors: &mut ConfigErrors,
) -> autoheal_policy::GuardrailOverride {
    let mut d = |name: &str, v: &Option<String>| {
        v.as_deref()
            .and_then(|v| match autoheal_common::config::parse_duration(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(format!("{prefix}{name}"), e);
                    None
                }
            })
    };
    autoheal_policy::GuardrailOverride {
        max_concurrent: raw.max_concurrent,
        max_concurrent_percent: raw.max_concurrent_percent,
        min_healthy_percent: raw.min_healthy_percent,
        anomaly_percent: raw.anomaly_percent,
        anomaly_window: d("anomaly_window", &raw.anomaly_window),
        dependency_percent: raw.dependency_percent,
        brake_min_instances: raw.brake_min_instances,
        instance_cooldown: d("instance_cooldown", &raw.instance_cooldown),
        asg_cooldown: d("asg_cooldown", &raw.asg_cooldown),
        startup_grace: d("startup_grace", &raw.startup_grace),
        flap_transitions: raw.flap_transitions,
        flap_window: d("flap_window", &raw.flap_window),
        dry_run: None,
        act_on_alb_unhealthy: raw.act_on_alb_unhealthy,
        replace_protected: raw.replace_protected,
    }
}

pub(super) fn policy_config(
    ladder: RawLadder,
    guardrails: RawGuardrails,
    dry_run: bool,
    errors: &mut ConfigErrors,
) -> autoheal_policy::Config {
    let mut raw = autoheal_policy::RawConfig::default();
    let l = &mut raw.ladder;
    l.agent_silence_grace = errors.duration(
        "ladder.agent_silence_grace",
        ladder.agent_silence_grace.as_deref(),
        l.agent_silence_grace,
    );
    l.ssm_timeout = errors.duration(
        "ladder.ssm_timeout",
        ladder.ssm_timeout.as_deref(),
        l.ssm_timeout,
    );
    l.drain_timeout = errors.duration(
        "ladder.drain_timeout",
        ladder.drain_timeout.as_deref(),
        l.drain_timeout,
    );
    l.action_timeout = errors.duration(
        "ladder.action_timeout",
        ladder.action_timeout.as_deref(),
        l.action_timeout,
    );
    if let Some(n) = ladder.max_attempts {
        l.max_attempts = n;
    }
    let global = guard_override(&guardrails.defaults, "guardrails.", errors);
    raw.guardrails = global.apply(&raw.guardrails);
    // The coordinator-wide dry-run switch wins: acting is opted into in one place.
    raw.guardrails.dry_run = dry_run;
    for (asg, g) in guardrails.asg.unwrap_or_default() {
        let o = guard_override(&g, &format!("guardrails.asg.{asg}."), errors);
        raw.asg.insert(asg, o);
    }
    match autoheal_policy::Config::try_new(raw) {
        Ok(c) => c,
        Err(e) => {
            for p in e.problems {
                let path = if p.path.starts_with("ladder") || p.path.starts_with("asg.") {
                    p.path.replacen("asg.", "guardrails.asg.", 1)
                } else {
                    format!("guardrails.{}", p.path.trim_start_matches("guardrails."))
                };
                errors.push(path, p.message);
            }
            autoheal_policy::Config::default()
        }
    }
}
