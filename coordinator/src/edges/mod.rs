//! Where the coordinator meets the world: the gRPC services and TLS listener, the config file,
//! and the server that wires every layer together.

pub mod config;
pub mod grpc;
pub mod server;
