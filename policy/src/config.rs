//! Engine configuration: raw values in, a validated [`Config`] out, every problem reported at once
//! with the path of the field it concerns.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::fleet::AsgName;

/// Ladder timings. Global: they describe how long AWS and agents take, not a group's risk appetite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LadderConfig {
    /// How long an agent may be quiet before it counts as silent. Default [`LadderConfig::AGENT_SILENCE_GRACE`].
    pub agent_silence_grace: Duration,
    /// How long after the SSM command was sent the agent has to come back before the instance is
    /// deregistered. Default [`LadderConfig::SSM_TIMEOUT`].
    pub ssm_timeout: Duration,
    /// How long to wait for connections to drain after deregistration before replacing anyway.
    /// Default [`LadderConfig::DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// How long a decided action may go without an outcome before it is decided again (AWS calls
    /// are idempotent; a coordinator that died mid-call leaves no outcome).
    /// Default [`LadderConfig::ACTION_TIMEOUT`].
    pub action_timeout: Duration,
    /// Attempts per step before the remediation is abandoned and a person alerted.
    /// Default [`LadderConfig::MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// With `act_on_alb_unhealthy`, how long the ALB must report a healthy-agent instance failing
    /// before it is deregistered. Default [`LadderConfig::ALB_UNHEALTHY_GRACE`].
    pub alb_unhealthy_grace: Duration,
}

impl LadderConfig {
    /// 90 s: three missed 30 s heartbeats, so one dropped packet or a reconnect never counts.
    pub const AGENT_SILENCE_GRACE: Duration = Duration::from_secs(90);
    /// 3 min: long enough for SSM to deliver the command, restart the agent and let it reconnect
    /// with backoff.
    pub const SSM_TIMEOUT: Duration = Duration::from_secs(180);
    /// 300 s: the ELBv2 default deregistration delay.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
    /// 2 min: well past the coordinator's own AWS call timeouts and retries.
    pub const ACTION_TIMEOUT: Duration = Duration::from_secs(120);
    /// 3 attempts per step.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// 5 min of failing ALB checks with a healthy agent.
    pub const ALB_UNHEALTHY_GRACE: Duration = Duration::from_secs(300);
}

impl Default for LadderConfig {
    fn default() -> Self {
        LadderConfig {
            agent_silence_grace: Self::AGENT_SILENCE_GRACE,
            ssm_timeout: Self::SSM_TIMEOUT,
            drain_timeout: Self::DRAIN_TIMEOUT,
            action_timeout: Self::ACTION_TIMEOUT,
            max_attempts: Self::MAX_ATTEMPTS,
            alb_unhealthy_grace: Self::ALB_UNHEALTHY_GRACE,
        }
    }
}

/// Guardrails and modes for one ASG. Percentages are whole percent, 0–100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailConfig {
    /// Most remediations in flight at once in the group. Default [`Self::MAX_CONCURRENT`].
    pub max_concurrent: u32,
    /// Most remediations in flight as a share of the group's in-service instances, rounded down
    /// but never below one (else a small group could never heal). The stricter of this and
    /// `max_concurrent` applies. Default [`Self::MAX_CONCURRENT_PERCENT`].
    pub max_concurrent_percent: u8,
    /// Least share of a target group's registered targets that must stay healthy after a
    /// deregistration or replacement. Default [`Self::MIN_HEALTHY_PERCENT`].
    pub min_healthy_percent: u8,
    /// The anomaly brake engages when more than this share of the group, or of one AZ in it, is
    /// unhealthy or silent, or was within `anomaly_window`. Either freezes every destructive step
    /// in the whole group: an AZ in trouble makes the rest of the group the wrong place to take
    /// capacity from. Only in-service instances past startup grace are counted.
    /// Default [`Self::ANOMALY_PERCENT`].
    pub anomaly_percent: u8,
    /// How far back a bad instance still counts toward the anomaly brake after it recovered, so a
    /// brake does not let go while an outage is still flickering. Default [`Self::ANOMALY_WINDOW`].
    pub anomaly_window: Duration,
    /// The dependency brake engages when at least this share of the group names the same failing
    /// dependency. Default [`Self::DEPENDENCY_PERCENT`].
    pub dependency_percent: u8,
    /// Neither brake engages on fewer bad instances than this: one sick instance in a group of
    /// three is a sick instance, not an anomaly. Default [`Self::BRAKE_MIN_INSTANCES`].
    pub brake_min_instances: u32,
    /// No new remediation on an instance this soon after its last one ended.
    /// Default [`Self::INSTANCE_COOLDOWN`].
    pub instance_cooldown: Duration,
    /// No new remediation in the group this soon after the last one started or ended, so the
    /// group settles (replacements boot, targets turn healthy) before the next.
    /// Default [`Self::ASG_COOLDOWN`].
    pub asg_cooldown: Duration,
    /// No remediation on an instance this soon after launch. Default [`Self::STARTUP_GRACE`].
    pub startup_grace: Duration,
    /// An instance whose verdict flipped this many times within `flap_window` is quarantined:
    /// alerts only. Default [`Self::FLAP_TRANSITIONS`].
    pub flap_transitions: u32,
    /// See `flap_transitions`. Default [`Self::FLAP_WINDOW`].
    pub flap_window: Duration,
    /// Shadow mode: decide and record, never act. Default `false`.
    pub dry_run: bool,
    /// Replace instances whose agent is healthy but whose ALB checks fail (after
    /// `LadderConfig::alb_unhealthy_grace`). Default `false`: the agent knows the instance better
    /// than a single HTTP check, so the default is to alert.
    pub act_on_alb_unhealthy: bool,
    /// Remediate instances protected from scale-in. Default `false`: someone protected it on
    /// purpose (a long job, a stateful node), so autoheal holds and alerts instead.
    pub replace_protected: bool,
}

impl GuardrailConfig {
    /// 1 remediation at a time per group.
    pub const MAX_CONCURRENT: u32 = 1;
    /// 10 % of the group.
    pub const MAX_CONCURRENT_PERCENT: u8 = 10;
    /// 66 % of each target group stays healthy.
    pub const MIN_HEALTHY_PERCENT: u8 = 66;
    /// More than 30 % of the group or of one AZ.
    pub const ANOMALY_PERCENT: u8 = 30;
    /// 5 min.
    pub const ANOMALY_WINDOW: Duration = Duration::from_secs(300);
    /// 20 % of the group naming one dependency.
    pub const DEPENDENCY_PERCENT: u8 = 20;
    /// 2 instances.
    pub const BRAKE_MIN_INSTANCES: u32 = 2;
    /// 30 min per instance.
    pub const INSTANCE_COOLDOWN: Duration = Duration::from_secs(30 * 60);
    /// 5 min per group.
    pub const ASG_COOLDOWN: Duration = Duration::from_secs(300);
    /// 5 min after launch.
    pub const STARTUP_GRACE: Duration = Duration::from_secs(300);
    /// 6 flips, not 3: an agent's own restart attempts before it escalates already flip the
    /// verdict three or four times, and those instances must still be replaceable.
    pub const FLAP_TRANSITIONS: u32 = 6;
    /// 10 min.
    pub const FLAP_WINDOW: Duration = Duration::from_secs(600);
}

impl Default for GuardrailConfig {
    fn default() -> Self {
        GuardrailConfig {
            max_concurrent: Self::MAX_CONCURRENT,
            max_concurrent_percent: Self::MAX_CONCURRENT_PERCENT,
            min_healthy_percent: Self::MIN_HEALTHY_PERCENT,
            anomaly_percent: Self::ANOMALY_PERCENT,
            anomaly_window: Self::ANOMALY_WINDOW,
            dependency_percent: Self::DEPENDENCY_PERCENT,
            brake_min_instances: Self::BRAKE_MIN_INSTANCES,
            instance_cooldown: Self::INSTANCE_COOLDOWN,
            asg_cooldown: Self::ASG_COOLDOWN,
            startup_grace: Self::STARTUP_GRACE,
            flap_transitions: Self::FLAP_TRANSITIONS,
            flap_window: Self::FLAP_WINDOW,
            dry_run: false,
            act_on_alb_unhealthy: false,
            replace_protected: false,
        }
    }
}

/// Per-ASG changes to the defaults; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field overrides the `GuardrailConfig` field of the same name
pub struct GuardrailOverride {
    pub max_concurrent: Option<u32>,
    pub max_concurrent_percent: Option<u8>,
    pub min_healthy_percent: Option<u8>,
    pub anomaly_percent: Option<u8>,
    pub anomaly_window: Option<Duration>,
    pub dependency_percent: Option<u8>,
    pub brake_min_instances: Option<u32>,
    pub instance_cooldown: Option<Duration>,
    pub asg_cooldown: Option<Duration>,
    pub startup_grace: Option<Duration>,
    pub flap_transitions: Option<u32>,
    pub flap_window: Option<Duration>,
    pub dry_run: Option<bool>,
    pub act_on_alb_unhealthy: Option<bool>,
    pub replace_protected: Option<bool>,
}

impl GuardrailOverride {
    /// These overrides laid over `base`.
    pub fn apply(&self, base: &GuardrailConfig) -> GuardrailConfig {
        GuardrailConfig {
            max_concurrent: self.max_concurrent.unwrap_or(base.max_concurrent),
            max_concurrent_percent: self
                .max_concurrent_percent
                .unwrap_or(base.max_concurrent_percent),
            min_healthy_percent: self.min_healthy_percent.unwrap_or(base.min_healthy_percent),
            anomaly_percent: self.anomaly_percent.unwrap_or(base.anomaly_percent),
            anomaly_window: self.anomaly_window.unwrap_or(base.anomaly_window),
            dependency_percent: self.dependency_percent.unwrap_or(base.dependency_percent),
            brake_min_instances: self.brake_min_instances.unwrap_or(base.brake_min_instances),
            instance_cooldown: self.instance_cooldown.unwrap_or(base.instance_cooldown),
            asg_cooldown: self.asg_cooldown.unwrap_or(base.asg_cooldown),
            startup_grace: self.startup_grace.unwrap_or(base.startup_grace),
            flap_transitions: self.flap_transitions.unwrap_or(base.flap_transitions),
            flap_window: self.flap_window.unwrap_or(base.flap_window),
            dry_run: self.dry_run.unwrap_or(base.dry_run),
            act_on_alb_unhealthy: self
                .act_on_alb_unhealthy
                .unwrap_or(base.act_on_alb_unhealthy),
            replace_protected: self.replace_protected.unwrap_or(base.replace_protected),
        }
    }
}

/// Configuration as written, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig {
    /// Ladder timings.
    pub ladder: LadderConfig,
    /// Guardrails for every ASG without an override.
    pub guardrails: GuardrailConfig,
    /// Per-ASG overrides, by ASG name.
    pub asg: BTreeMap<String, GuardrailOverride>,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where, e.g. `asg.web.min_healthy_percent`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A configuration that failed validation, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy configuration ({} problem(s)): {}", .problems.len(), join(.problems))]
pub struct ConfigError {
    /// All problems, in field order.
    pub problems: Vec<ConfigProblem>,
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A validated configuration. `Default` is the documented defaults, no overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    ladder: LadderConfig,
    defaults: GuardrailConfig,
    per_asg: BTreeMap<AsgName, GuardrailConfig>,
}

impl Config {
    /// Validates `raw`, returning every problem rather than the first.
    pub fn try_new(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        check_ladder(&raw.ladder, &mut problems);
        check_guardrails("guardrails", &raw.guardrails, &mut problems);
        let mut per_asg = BTreeMap::new();
        for (name, over) in &raw.asg {
            if name.trim().is_empty() {
                problems.push(problem(
                    "asg",
                    "an ASG override has an empty name; use the Auto Scaling group's name",
                ));
                continue;
            }
            let resolved = over.apply(&raw.guardrails);
            check_guardrails(&format!("asg.{name}"), &resolved, &mut problems);
            per_asg.insert(AsgName::new(name.clone()), resolved);
        }
        if problems.is_empty() {
            Ok(Config {
                ladder: raw.ladder,
                defaults: raw.guardrails,
                per_asg,
            })
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Ladder timings.
    pub fn ladder(&self) -> &LadderConfig {
        &self.ladder
    }

    /// The guardrails that apply to `asg`: its override merged over the defaults.
    pub fn for_asg(&self, asg: &AsgName) -> &GuardrailConfig {
        self.per_asg.get(asg).unwrap_or(&self.defaults)
    }

    /// The defaults for ASGs without an override.
    pub fn defaults(&self) -> &GuardrailConfig {
        &self.defaults
    }
}

fn problem(path: &str, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn check_ladder(l: &LadderConfig, out: &mut Vec<ConfigProblem>) {
    let positive = [
        ("ladder.agent_silence_grace", l.agent_silence_grace),
        ("ladder.ssm_timeout", l.ssm_timeout),
        ("ladder.drain_timeout", l.drain_timeout),
        ("ladder.action_timeout", l.action_timeout),
    ];
    for (path, d) in positive {
        if d.is_zero() {
            out.push(problem(path, "must be longer than zero"));
        }
    }
    if l.max_attempts == 0 {
        out.push(problem("ladder.max_attempts", "must be at least 1"));
    }
}

fn check_guardrails(prefix: &str, g: &GuardrailConfig, out: &mut Vec<ConfigProblem>) {
    let p = |field: &str| format!("{prefix}.{field}");
    if g.max_concurrent == 0 {
        out.push(problem(
            &p("max_concurrent"),
            "must be at least 1; to stop remediation use pause or dry_run",
        ));
    }
    let percents = [
        ("max_concurrent_percent", g.max_concurrent_percent, 1),
        ("min_healthy_percent", g.min_healthy_percent, 0),
        ("anomaly_percent", g.anomaly_percent, 1),
        ("dependency_percent", g.dependency_percent, 1),
    ];
    for (field, value, min) in percents {
        if value > 100 || value < min {
            out.push(problem(
                &p(field),
                format!("must be a percentage from {min} to 100, got {value}"),
            ));
        }
    }
    if g.anomaly_window.is_zero() {
        out.push(problem(&p("anomaly_window"), "must be longer than zero"));
    }
    if g.brake_min_instances == 0 {
        out.push(problem(
            &p("brake_min_instances"),
            "must be at least 1, else a healthy group would count as an anomaly",
        ));
    }
    if g.flap_transitions < 2 {
        out.push(problem(
            &p("flap_transitions"),
            format!(
                "must be at least 2 (one flip is just failing), got {}",
                g.flap_transitions
            ),
        ));
    }
    if g.flap_window.is_zero() {
        out.push(problem(&p("flap_window"), "must be longer than zero"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::try_new(RawConfig::default()).is_ok());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut raw = RawConfig::default();
        raw.ladder.ssm_timeout = Duration::ZERO;
        raw.guardrails.min_healthy_percent = 120;
        raw.asg.insert(
            "web".into(),
            GuardrailOverride {
                anomaly_percent: Some(0),
                flap_transitions: Some(1),
                ..GuardrailOverride::default()
            },
        );
        let err = Config::try_new(raw).expect_err("four problems");
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"ladder.ssm_timeout"), "{paths:?}");
        assert!(
            paths.contains(&"guardrails.min_healthy_percent"),
            "{paths:?}"
        );
        assert!(paths.contains(&"asg.web.anomaly_percent"), "{paths:?}");
        assert!(paths.contains(&"asg.web.flap_transitions"), "{paths:?}");
        // The bad default is inherited by the override, and reported there too.
        assert!(paths.contains(&"asg.web.min_healthy_percent"), "{paths:?}");
        assert!(err.to_string().contains("5 problem(s)"), "{err}");
    }

    #[test]
    fn overrides_merge_over_defaults() {
        let mut raw = RawConfig::default();
        raw.guardrails.max_concurrent = 2;
        raw.asg.insert(
            "batch".into(),
            GuardrailOverride {
                dry_run: Some(true),
                ..GuardrailOverride::default()
            },
        );
        let config = Config::try_new(raw).expect("valid");
        let batch = config.for_asg(&AsgName::from("batch"));
        assert!(batch.dry_run);
        assert_eq!(batch.max_concurrent, 2);
        assert!(!config.for_asg(&AsgName::from("web")).dry_run);
    }
}
