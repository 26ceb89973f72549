//! The engine's behaviour, end to end over its public API, with a simulated clock: every rung of
//! the ladder, every guardrail, the three classic disasters, and property tests for each
//! guardrail invariant. One test binary, so it links once.

#![allow(clippy::unwrap_used)]

mod asg_conditions;
mod disasters;
mod guardrails;
mod ladder;
mod properties;
mod support;
