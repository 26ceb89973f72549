//! The coordinator's hands on AWS, as traits: what it reads of and does to Auto Scaling groups,
//! load balancers and instances. The SDK adapter (`adapters::aws::sdk`) implements them; tests
//! and the control loop see only these.

use std::time::Duration;

use crate::model::inventory::CommandStatus;
use crate::model::inventory::Group;
use crate::model::inventory::Selector;
use crate::model::inventory::Target;

/// An AWS call that failed for good (after retries, or at once when retrying can't help).
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}{}", if *attempts > 1 { format!(" (after {attempts} attempts)") } else { String::new() })]
pub struct AwsError {
    pub operation: &'static str,
    pub message: String,
    pub code: Option<String>,
    pub retryable: bool,
    pub attempts: u32,
}

#[tonic::async_trait]
pub trait ScalingGroups: Send + Sync {
    async fn groups(&self, selector: &Selector) -> Result<Vec<Group>, AwsError>;
    /// `SetInstanceHealth(Unhealthy)`: the group replaces the instance (launch-before-terminate
    /// where its maintenance policy says so).
    async fn mark_unhealthy(&self, instance_id: &str, respect_grace: bool) -> Result<(), AwsError>;
    /// `TerminateInstanceInAutoScalingGroup` without decrementing: the group launches a replacement.
    async fn terminate(&self, instance_id: &str) -> Result<(), AwsError>;
}

#[tonic::async_trait]
pub trait LoadBalancer: Send + Sync {
    async fn target_health(&self, target_group: &str) -> Result<Vec<Target>, AwsError>;
    async fn deregistration_delay(&self, target_group: &str) -> Result<Duration, AwsError>;
    async fn deregister(&self, target_group: &str, instance_id: &str) -> Result<(), AwsError>;
}

#[tonic::async_trait]
pub trait RemoteCommand: Send + Sync {
    /// Runs a fixed shell script on the instance with `AWS-RunShellScript`; returns the command id.
    async fn run(
        &self,
        instance_id: &str,
        commands: &[String],
        comment: &str,
    ) -> Result<String, AwsError>;
    async fn status(&self, command_id: &str, instance_id: &str) -> Result<CommandStatus, AwsError>;
}
