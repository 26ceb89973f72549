//! The coordinator's hands on AWS, as traits: what it reads of and does to Auto Scaling groups,
//! load balancers and instances. The SDK adapter (`adapters::aws::sdk`) implements them; tests
//! and the control loop see only these.

use std::time::Duration;

use tokio::time::Instant;

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
    /// Not sent (or not retried) because this coordinator could no longer be sure it leads.
    pub fenced: bool,
}

/// Leadership as a destructive AWS call sees it: asked before every attempt, so a leader that
/// lost (or may have lost) its lease — a process frozen past its lease, a renew that failed —
/// sends nothing more, not even a retry.
pub trait Fence: Send + Sync {
    /// The monotonic instant by which an attempt must have ended for this coordinator to be sure
    /// it still leads then; `None`: it no longer leads.
    fn act_deadline(&self) -> Option<Instant>;
}

/// No leadership involved (reads, and tests of the adapters): never expires.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unfenced;

impl Fence for Unfenced {
    fn act_deadline(&self) -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(365 * 24 * 3600))
    }
}

#[async_trait::async_trait]
pub trait ScalingGroups: Send + Sync {
    async fn groups(&self, selector: &Selector) -> Result<Vec<Group>, AwsError>;
    /// `SetInstanceHealth(Unhealthy)`: the group replaces the instance (launch-before-terminate
    /// where its maintenance policy says so).
    async fn mark_unhealthy(
        &self,
        instance_id: &str,
        respect_grace: bool,
        fence: &dyn Fence,
    ) -> Result<(), AwsError>;
    /// `TerminateInstanceInAutoScalingGroup` without decrementing: the group launches a replacement.
    async fn terminate(&self, instance_id: &str, fence: &dyn Fence) -> Result<(), AwsError>;
}

#[async_trait::async_trait]
pub trait LoadBalancer: Send + Sync {
    async fn target_health(&self, target_group: &str) -> Result<Vec<Target>, AwsError>;
    async fn deregistration_delay(&self, target_group: &str) -> Result<Duration, AwsError>;
    async fn deregister(
        &self,
        target_group: &str,
        instance_id: &str,
        fence: &dyn Fence,
    ) -> Result<(), AwsError>;
}

#[async_trait::async_trait]
pub trait RemoteCommand: Send + Sync {
    /// Runs a fixed shell script on the instance with `AWS-RunShellScript`; returns the command id.
    async fn run(
        &self,
        instance_id: &str,
        commands: &[String],
        comment: &str,
        fence: &dyn Fence,
    ) -> Result<String, AwsError>;
    async fn status(&self, command_id: &str, instance_id: &str) -> Result<CommandStatus, AwsError>;
}
