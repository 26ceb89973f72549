//! SDK implementations of the AWS traits. The only module that builds SDK clients.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_autoscaling::types::Filter;
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use aws_sdk_ssm::types::CommandInvocationStatus;

use crate::adapters::aws::AwsSettings;
use crate::adapters::aws::{retry, retry_fenced};
use crate::model::inventory::CommandStatus;
use crate::model::inventory::Group;
use crate::model::inventory::Member;
use crate::model::inventory::Selector;
use crate::model::inventory::{
    AsgConditions, AsgHealth, Lifecycle, ScalingProcess, Target, TargetState,
};
use crate::ports::aws::LoadBalancer;
use crate::ports::aws::RemoteCommand;
use crate::ports::aws::ScalingGroups;
use crate::ports::aws::{AwsError, Fence};

/// SDK clients for every service the coordinator calls, sharing one configuration.
#[derive(Debug, Clone)]
pub struct Clients {
    pub settings: AwsSettings,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sns: aws_sdk_sns::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub ec2: aws_sdk_ec2::Client,
}

impl Clients {
    /// Credentials come from the standard chain (environment, ECS task role, instance profile).
    /// The SDK's own retries are off: `retry` does it, with one `is_retryable`, and logs each.
    pub async fn new(settings: AwsSettings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(settings.call_timeout)
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        Self {
            autoscaling: aws_sdk_autoscaling::Client::new(&config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            sns: aws_sdk_sns::Client::new(&config),
            eventbridge: aws_sdk_eventbridge::Client::new(&config),
            ec2: aws_sdk_ec2::Client::new(&config),
            settings,
        }
    }
}

impl Clients {
    /// The status of an instance refresh under way in `group`, if any. One attempt per pass: an
    /// emulator without the call (moto answers 500) must not slow every pass with retries, so a
    /// failure counts as "none under way" and is logged once — except AccessDenied, a missing
    /// IAM grant that must not silently turn the guardrail off.
    async fn refresh_under_way(&self, group: &str) -> Result<Option<String>, AwsError> {
        use aws_sdk_autoscaling::types::InstanceRefreshStatus as S;
        static WARNED: std::sync::Once = std::sync::Once::new();
        let once = AwsSettings {
            max_attempts: 1,
            ..self.settings.clone()
        };
        let out = retry(&once, "autoscaling:DescribeInstanceRefreshes", || {
            self.autoscaling
                .describe_instance_refreshes()
                .auto_scaling_group_name(group)
                .send()
        })
        .await;
        match out {
            Ok(out) => Ok(out
                .instance_refreshes()
                .iter()
                .filter_map(|r| r.status())
                .find(|s| {
                    matches!(
                        s,
                        S::Pending
                            | S::InProgress
                            | S::Cancelling
                            | S::RollbackInProgress
                            | S::Baking
                    )
                })
                .map(|s| s.as_str().to_owned())),
            Err(e)
                if e.code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("AccessDenied")) =>
            {
                Err(e)
            }
            Err(error) => {
                WARNED.call_once(|| {
                    tracing::warn!(
                        %error,
                        "cannot read instance refreshes; acting as if none were under way"
                    );
                });
                tracing::debug!(%error, group, "DescribeInstanceRefreshes failed");
                Ok(None)
            }
        }
    }
}

#[async_trait::async_trait]
impl ScalingGroups for Clients {
    async fn groups(&self, selector: &Selector) -> Result<Vec<Group>, AwsError> {
        let mut groups = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = retry(
                &self.settings,
                "autoscaling:DescribeAutoScalingGroups",
                || {
                    let mut request = self
                        .autoscaling
                        .describe_auto_scaling_groups()
                        .set_next_token(token.clone());
                    request = match selector {
                        Selector::Names(names) => {
                            request.set_auto_scaling_group_names(Some(names.clone()))
                        }
                        Selector::Tag { key, value } => request.filters(
                            Filter::builder()
                                .name(format!("tag:{key}"))
                                .values(value.clone())
                                .build(),
                        ),
                    };
                    request.send()
                },
            )
            .await?;
            for g in page.auto_scaling_groups() {
                let suspended: BTreeSet<ScalingProcess> = g
                    .suspended_processes()
                    .iter()
                    .filter_map(|p| p.process_name())
                    .map(ScalingProcess::from_aws)
                    .collect();
                let conditions = AsgConditions {
                    suspended: suspended.clone(),
                    refresh: None,
                    health_check_grace: Duration::from_secs(
                        u64::try_from(g.health_check_grace_period().unwrap_or(0)).unwrap_or(0),
                    ),
                };
                groups.push(Group {
                    suspended,
                    refresh: None,
                    name: g.auto_scaling_group_name().unwrap_or_default().to_owned(),
                    target_groups: g.target_group_arns().to_vec(),
                    health_check_grace: Duration::from_secs(
                        u64::try_from(g.health_check_grace_period().unwrap_or(0)).unwrap_or(0),
                    ),
                    instances: g
                        .instances()
                        .iter()
                        .map(|i| Member {
                            instance_id: i.instance_id().unwrap_or_default().to_owned(),
                            availability_zone: i.availability_zone().unwrap_or_default().to_owned(),
                            lifecycle: Lifecycle::from_aws(
                                i.lifecycle_state().map_or("", |l| l.as_str()),
                            ),
                            health: if i.health_status() == Some("Unhealthy") {
                                AsgHealth::Unhealthy
                            } else {
                                AsgHealth::Healthy
                            },
                            protected: i.protected_from_scale_in().unwrap_or(false),
                            group: conditions.clone(),
                        })
                        .collect(),
                });
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        for group in &mut groups {
            group.refresh = self.refresh_under_way(&group.name).await?;
            let conditions = group.conditions();
            for member in &mut group.instances {
                member.group = conditions.clone();
            }
        }
        Ok(groups)
    }

    async fn mark_unhealthy(
        &self,
        instance_id: &str,
        respect_grace: bool,
        fence: &dyn Fence,
    ) -> Result<(), AwsError> {
        retry_fenced(
            &self.settings,
            "autoscaling:SetInstanceHealth",
            fence,
            || {
                self.autoscaling
                    .set_instance_health()
                    .instance_id(instance_id)
                    .health_status("Unhealthy")
                    .should_respect_grace_period(respect_grace)
                    .send()
            },
        )
        .await
        .map(|_| ())
    }

    async fn terminate(&self, instance_id: &str, fence: &dyn Fence) -> Result<(), AwsError> {
        retry_fenced(
            &self.settings,
            "autoscaling:TerminateInstanceInAutoScalingGroup",
            fence,
            || {
                self.autoscaling
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(instance_id)
                    .should_decrement_desired_capacity(false)
                    .send()
            },
        )
        .await
        .map(|_| ())
    }
}

#[async_trait::async_trait]
impl LoadBalancer for Clients {
    async fn target_health(&self, target_group: &str) -> Result<Vec<Target>, AwsError> {
        let out = retry(
            &self.settings,
            "elasticloadbalancing:DescribeTargetHealth",
            || {
                self.elb
                    .describe_target_health()
                    .target_group_arn(target_group)
                    .send()
            },
        )
        .await?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let id = d.target()?.id()?.to_owned();
                let health = d.target_health();
                Some(Target {
                    instance_id: id,
                    state: health
                        .and_then(|h| h.state())
                        .map_or(TargetState::Unavailable, target_state),
                    reason: health
                        .and_then(|h| h.reason())
                        .map(|r| r.as_str().to_owned())
                        .unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn deregistration_delay(&self, target_group: &str) -> Result<Duration, AwsError> {
        let out = retry(
            &self.settings,
            "elasticloadbalancing:DescribeTargetGroupAttributes",
            || {
                self.elb
                    .describe_target_group_attributes()
                    .target_group_arn(target_group)
                    .send()
            },
        )
        .await?;
        // AWS's default when the attribute is absent.
        let seconds = out
            .attributes()
            .iter()
            .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
            .and_then(|a| a.value())
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        Ok(Duration::from_secs(seconds))
    }

    async fn deregister(
        &self,
        target_group: &str,
        instance_id: &str,
        fence: &dyn Fence,
    ) -> Result<(), AwsError> {
        retry_fenced(
            &self.settings,
            "elasticloadbalancing:DeregisterTargets",
            fence,
            || {
                self.elb
                    .deregister_targets()
                    .target_group_arn(target_group)
                    .targets(TargetDescription::builder().id(instance_id).build())
                    .send()
            },
        )
        .await
        .map(|_| ())
    }
}

#[async_trait::async_trait]
impl RemoteCommand for Clients {
    async fn run(
        &self,
        instance_id: &str,
        commands: &[String],
        comment: &str,
        fence: &dyn Fence,
    ) -> Result<String, AwsError> {
        let out = retry_fenced(&self.settings, "ssm:SendCommand", fence, || {
            self.ssm
                .send_command()
                .instance_ids(instance_id)
                .document_name("AWS-RunShellScript")
                .parameters("commands", commands.to_vec())
                .comment(comment)
                .timeout_seconds(60)
                .send()
        })
        .await?;
        out.command()
            .and_then(|c| c.command_id())
            .map(str::to_owned)
            .ok_or_else(|| AwsError {
                operation: "ssm:SendCommand",
                message: "answer carried no command id".to_owned(),
                code: None,
                retryable: false,
                attempts: 1,
                fenced: false,
            })
    }

    async fn status(&self, command_id: &str, instance_id: &str) -> Result<CommandStatus, AwsError> {
        let out = retry(&self.settings, "ssm:GetCommandInvocation", || {
            self.ssm
                .get_command_invocation()
                .command_id(command_id)
                .instance_id(instance_id)
                .send()
        })
        .await?;
        let output = out.standard_output_content().unwrap_or_default().to_owned();
        Ok(match out.status() {
            Some(CommandInvocationStatus::Success) => CommandStatus::Succeeded { output },
            Some(
                CommandInvocationStatus::Pending
                | CommandInvocationStatus::InProgress
                | CommandInvocationStatus::Delayed,
            )
            | None => CommandStatus::Pending,
            Some(other) => CommandStatus::Failed {
                status: other.as_str().to_owned(),
                output,
            },
        })
    }
}

/// The load balancer's target state, typed where it enters.
fn target_state(s: &aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum) -> TargetState {
    use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum as S;
    match s {
        S::Initial => TargetState::Initial,
        S::Healthy => TargetState::Healthy,
        S::Unhealthy | S::UnhealthyDraining => TargetState::Unhealthy,
        S::Draining => TargetState::Draining,
        S::Unused => TargetState::Unused,
        _ => TargetState::Unavailable,
    }
}
