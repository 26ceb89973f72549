//! autoheal's decision engine. Owns the decision ladder (escalation → deregister → drain →
//! replace; silence → SSM → deregister → replace), every guardrail that can hold a destructive
//! step, the remediation book that tracks where each instance is on the ladder, and the what-if
//! answers the API gives.
//!
//! It is pure and must stay so: a fleet snapshot, the remediation book and a clock value in;
//! decisions with reasons out. It must not depend on tokio, tonic, the AWS SDK or anything that
//! does I/O, nor on the other autoheal crates (`autoheal-proto`, `autoheal-common`: the wire and
//! the programs' plumbing belong to the coordinator, which maps them to these types), and never
//! reads a clock (`now` is always a [`Timestamp`] the caller passes), so every guardrail can be
//! tested with a simulated clock and property tests. Its one optional dependency is `serde`
//! (feature `serde`), for the records the coordinator persists.
//!
//! Inside, data flows one way: `time` and `fleet` (the inputs) ← `config`, `remediation` (the
//! book) ← `assess` (reading an instance) ← `guardrail` (what holds a step) ← `decision` (what a
//! pass returns) ← `engine` (the ladder and the pass). `scripts/check-layers.py` fails CI on a
//! cycle.
//!
//! One pass:
//! 1. the coordinator builds a [`Fleet`] from agent streams and the inventory loop, reading every
//!    instance once with [`Engine::assess_fleet`] to record verdict flips;
//! 2. [`Engine::decide_assessed`] (or [`Engine::decide`], which reads the instances itself)
//!    returns a [`Plan`] and writes the actions it decided into the [`RemediationBook`] as
//!    requested (write-ahead: persist the book before acting);
//! 3. the coordinator carries out each [`Decision::executable`] action and reports what happened
//!    with [`RemediationBook::record`].
//!
//! Alerts, holds and waits repeat on every pass while their condition lasts: the engine keeps no
//! memory of what it told, so the coordinator notifies on change.
//!
//! Dry-run ASGs get [`DecisionKind::WouldAct`], which is not executable, and leave the book as it
//! was.

mod assess;
mod config;
mod decision;
mod engine;
mod fleet;
mod guardrail;
mod remediation;
mod time;

pub use assess::{AlbHealth, Assessment, Assessments};
pub use config::{
    Config, ConfigError, ConfigProblem, GuardrailConfig, GuardrailOverride, LadderConfig, RawConfig,
};
pub use decision::{
    Action, Alert, Decision, DecisionKind, FleetAlert, Plan, PolicyError, Waiting, WhatIf,
};
pub use engine::Engine;
pub use fleet::{
    AgentView, AsgConditions, AsgHealth, AsgInstance, AsgName, Az, Escalation, Fleet, InstanceId,
    InstanceView, Lifecycle, Pause, ScalingProcess, TargetGroup, TargetState, TargetView,
};
pub use guardrail::{BrakeScope, Guardrail};
pub use remediation::{
    BookError, Cause, Ending, Entry, Outcome, Remediation, RemediationBook, Stage, Step,
};
pub use time::{HumanDuration, Timestamp};
