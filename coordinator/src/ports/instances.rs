//! What enrollment asks EC2 about an instance: its state and owner (`DescribeInstances`).

use crate::model::enrollment::InstanceStatus;
use crate::ports::aws::AwsError;

/// At most this many instance ids go into one `DescribeInstances` call.
pub const MAX_IDS_PER_CALL: usize = 100;

#[tonic::async_trait]
pub trait Instances: Send + Sync {
    /// The status of each id AWS knows; ids it doesn't know are left out. Implementations call
    /// `DescribeInstances` with at most [`MAX_IDS_PER_CALL`] ids at a time.
    async fn describe(&self, ids: &[String]) -> Result<Vec<InstanceStatus>, AwsError>;
}
