//! Implementations of the ports: the AWS SDK, the embedded and DynamoDB stores, the notification
//! sinks. Values from outside are typed here, once.

pub mod aws;
pub mod notify;
pub mod store;
