//! The records of the log and the state they fold into: what a replay rebuilds and what reads see.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::enrollment::Enrollment;
use crate::model::events::PauseState;
use crate::model::journal::Entry;
use crate::ports::store::LeaseRecord;
use crate::ports::store::Skip;
use crate::ports::store::StoreError;
use crate::ports::store::StoredEvent;
use autoheal_common::clock::from_unix_ms;
use autoheal_common::clock::unix_ms;

/// Fleet events kept (in memory and across compaction); older ones are dropped.
const MAX_EVENTS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub(super) enum Record {
    Journal {
        entry: Entry,
    },
    Pause {
        pause: PauseState,
    },
    Skip {
        skip: Skip,
    },
    Unskip {
        instance_id: String,
    },
    Event {
        event: StoredEvent,
        expires_at_ms: u64,
    },
    Remediation {
        instance_id: String,
        state: Option<serde_json::Value>,
    },
    Lease {
        owner: String,
        endpoint: String,
        fencing_token: u64,
        expires_at_ms: u64,
    },
    Enrollment {
        enrollment: Enrollment,
    },
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) journal: Vec<Entry>,
    pub(super) pause: PauseState,
    pub(super) skips: BTreeMap<String, Skip>,
    pub(super) events: VecDeque<(StoredEvent, u64)>,
    pub(super) remediation: BTreeMap<String, serde_json::Value>,
    pub(super) lease: Option<LeaseRecord>,
    pub(super) enrollments: BTreeMap<String, Enrollment>,
}

impl State {
    pub(super) fn apply(&mut self, record: Record) {
        match record {
            Record::Journal { entry } => self.journal.push(entry),
            Record::Pause { pause } => self.pause = pause,
            Record::Skip { skip } => {
                self.skips.insert(skip.instance_id.clone(), skip);
            }
            Record::Unskip { instance_id } => {
                self.skips.remove(&instance_id);
            }
            Record::Event {
                event,
                expires_at_ms,
            } => {
                self.events.push_back((event, expires_at_ms));
                while self.events.len() > MAX_EVENTS {
                    self.events.pop_front();
                }
            }
            Record::Remediation { instance_id, state } => match state {
                Some(s) => {
                    self.remediation.insert(instance_id, s);
                }
                None => {
                    self.remediation.remove(&instance_id);
                }
            },
            Record::Lease {
                owner,
                endpoint,
                fencing_token,
                expires_at_ms,
            } => {
                self.lease = Some(LeaseRecord {
                    owner,
                    endpoint,
                    fencing_token,
                    expires_at: from_unix_ms(expires_at_ms),
                });
            }
            Record::Enrollment { enrollment } => {
                self.enrollments
                    .insert(enrollment.instance_id.clone(), enrollment);
            }
        }
    }

    pub(super) fn current_token(&self) -> u64 {
        self.lease.as_ref().map_or(0, |l| l.fencing_token)
    }

    /// Single process: a token is fenced only once a later claim in this same store superseded
    /// it.
    pub(super) fn fence(&self, token: u64) -> Result<(), StoreError> {
        let current = self.current_token();
        if token < current {
            return Err(StoreError::Fenced {
                token,
                current: Some(current),
            });
        }
        Ok(())
    }

    /// The records that rebuild this state, for compaction.
    pub(super) fn live_records(&self, now_ms: u64) -> Vec<Record> {
        let mut records: Vec<Record> = self
            .journal
            .iter()
            .map(|entry| Record::Journal {
                entry: entry.clone(),
            })
            .collect();
        records.push(Record::Pause {
            pause: self.pause.clone(),
        });
        records.extend(
            self.skips
                .values()
                .map(|skip| Record::Skip { skip: skip.clone() }),
        );
        records.extend(
            self.events
                .iter()
                .filter(|(_, expires)| *expires > now_ms)
                .map(|(event, expires)| Record::Event {
                    event: event.clone(),
                    expires_at_ms: *expires,
                }),
        );
        records.extend(
            self.remediation
                .iter()
                .map(|(instance_id, state)| Record::Remediation {
                    instance_id: instance_id.clone(),
                    state: Some(state.clone()),
                }),
        );
        records.extend(self.lease.as_ref().map(lease_record));
        records.extend(
            self.enrollments
                .values()
                .map(|enrollment| Record::Enrollment {
                    enrollment: enrollment.clone(),
                }),
        );
        records
    }
}

pub(super) fn lease_record(l: &LeaseRecord) -> Record {
    Record::Lease {
        owner: l.owner.clone(),
        endpoint: l.endpoint.clone(),
        fencing_token: l.fencing_token,
        expires_at_ms: unix_ms(l.expires_at),
    }
}
