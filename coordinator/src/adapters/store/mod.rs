//! The two backends of the [`Store`](crate::ports::store::Store) port:
//!
//! - [`EmbeddedStore`]: one append-only file in the state directory, the default;
//! - [`DynamoStore`]: one DynamoDB table shared by every coordinator replica, for production.

mod dynamo;
mod embedded;

pub use dynamo::{DynamoStore, create_table};
pub use embedded::EmbeddedStore;

/// The SDK crate the DynamoDB backend is built on, so callers (tests, `autohealctl`) can build a
/// client without a dependency of their own.
pub use aws_sdk_dynamodb;
