//! autoheal's end-to-end tests, in one binary. Every test links the coordinator, the agent and
//! the AWS SDK: one executable links that world once, where one per file linked it once each.
//! The modules are the former test files (`agent_*` those of the agent crate); what they share
//! (PKI, processes, moto, fakes, polling) is the one harness, `autoheal_tests` in `tests/src`.

mod abuse;
mod agent;
mod agent_cli;
mod agent_exit;
mod agent_healing;
mod agent_lifecycle;
mod agent_metrics;
mod agent_reporter;
mod agent_units;
mod aws;
mod chaos;
mod demo;
mod enroll;
mod events;
mod ha;
mod lifecycle;
mod metrics;
mod notify;
mod spine;
mod store;
mod ui;
