//! `autohealctl`, the operator's tool: the fleet API client ([`client`]), what it prints
//! ([`tables`]), the development PKI behind `autohealctl certs` ([`pki`]) and the local fleet web
//! view behind `autohealctl ui` ([`ui`]).
//!
//! It speaks to the coordinator only over the wire (`autoheal-proto`) and must not depend on the
//! coordinator or agent crates, nor on the AWS SDK: an operator's laptop needs none of them.

pub mod client;
pub mod pki;
pub mod tables;
pub mod ui;
