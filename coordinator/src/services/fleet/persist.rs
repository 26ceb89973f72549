//! What the fleet view must not forget across restarts — the global pause and per-instance
//! skips — written through the store before the change is visible.

use std::time::SystemTime;

use crate::model::events;
use crate::model::events::PauseState;

use super::*;

impl Fleet {
    /// Reads the pause and the skips from the store (at start, and when another replica may
    /// have changed them).
    pub async fn load_persisted(&self) -> Result<(), crate::ports::store::StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let pause = store.pause().await?;
        let skips = store.skips().await?;
        let mut state = self.lock();
        state.pause = pause;
        state.skips = skips
            .into_iter()
            .map(|s| {
                (
                    s.instance_id.clone(),
                    Skip {
                        reason: s.reason,
                        by: s.by,
                        since: s.since,
                    },
                )
            })
            .collect();
        Ok(())
    }

    pub fn pause_state(&self) -> PauseState {
        self.lock().pause.clone()
    }

    /// Sets the global pause and persists it before answering, so a restart keeps it.
    pub async fn set_paused(
        &self,
        paused: bool,
        reason: &str,
        by: &str,
    ) -> Result<PauseState, crate::ports::store::StoreError> {
        let new = PauseState {
            paused,
            reason: reason.to_owned(),
            by: by.to_owned(),
            since: Some(SystemTime::now()),
        };
        if let Some(store) = &self.store {
            store.set_pause(&new).await?;
        }
        let mut state = self.lock();
        state.pause = new.clone();
        let message = if paused {
            format!("fleet paused by {by}: {reason}")
        } else {
            format!("fleet resumed by {by}: {reason}")
        };
        push_event(
            &mut state,
            &self.events,
            "",
            if paused {
                events::EventKind::Paused
            } else {
                events::EventKind::Resumed
            },
            message,
        );
        Ok(new)
    }

    /// Excludes `instance` from automatic remediation (or returns it), persisted before answering.
    pub async fn set_skipped(
        &self,
        instance: &str,
        skip: bool,
        reason: &str,
        by: &str,
    ) -> Result<Option<InstanceRecord>, crate::ports::store::StoreError> {
        if !self.lock().instances.contains_key(instance) {
            return Ok(None);
        }
        let since = SystemTime::now();
        if let Some(store) = &self.store {
            if skip {
                store
                    .set_skip(&crate::ports::store::Skip {
                        instance_id: instance.to_owned(),
                        reason: reason.to_owned(),
                        by: by.to_owned(),
                        since,
                    })
                    .await?;
            } else {
                store.unset_skip(instance).await?;
            }
        }
        let mut state = self.lock();
        if skip {
            state.skips.insert(
                instance.to_owned(),
                Skip {
                    reason: reason.to_owned(),
                    by: by.to_owned(),
                    since,
                },
            );
        } else {
            state.skips.remove(instance);
        }
        let message = if skip {
            format!("excluded from automatic remediation by {by}: {reason}")
        } else {
            format!("returned to automatic remediation by {by}: {reason}")
        };
        push_event(
            &mut state,
            &self.events,
            instance,
            if skip {
                events::EventKind::Skipped
            } else {
                events::EventKind::Unskipped
            },
            message,
        );
        Ok(state
            .instances
            .get(instance)
            .cloned()
            .map(|r| with_skip(r, &state.skips)))
    }
}
