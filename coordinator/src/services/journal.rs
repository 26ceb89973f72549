//! The action journal: a write-ahead record of every AWS action — the intent before the call, the
//! outcome after — so a restarted coordinator knows what it did and never acts twice. Entries live
//! in the [`Store`] (embedded file or DynamoDB), each stamped with the leader's fencing token.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::ports::store::JournalQuery;
use crate::ports::store::Store;
use crate::ports::store::StoreError;

use crate::model::journal::{Entry, Phase, Step};

/// The journal as the control loop sees it: every entry of the current leader's term in memory
/// for quick questions ("was this already done?"), each new entry written through to the
/// [`Store`] before `append` returns — so a write the store refuses (I/O trouble, or a fencing
/// token that lost the lease) means no record, and no action.
#[derive(Debug)]
pub struct Journal {
    store: Arc<dyn Store>,
    entries: Mutex<Vec<Entry>>,
}

impl Journal {
    /// Loads every entry from the store.
    pub async fn open(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let entries = store.journal(JournalQuery::All).await?;
        Ok(Self {
            store,
            entries: Mutex::new(entries),
        })
    }

    /// An empty journal over `store`, for when it can't be read yet (the next term reloads it).
    pub fn empty(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Re-reads the store (another leader may have written since).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let entries = self.store.journal(JournalQuery::All).await?;
        *self.lock() = entries;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durable when it returns; refused with [`StoreError::Fenced`] if `entry.fencing_token`
    /// no longer holds the lease.
    pub async fn append(&self, entry: &Entry) -> Result<(), StoreError> {
        self.store.append_journal(entry).await?;
        self.lock().push(entry.clone());
        Ok(())
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// The newest entries first, optionally for one instance.
    pub fn recent(&self, instance: Option<&str>, limit: usize) -> Vec<Entry> {
        self.lock()
            .iter()
            .rev()
            .filter(|e| instance.is_none_or(|i| e.instance_id == i))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The newest succeeded outcome of `step` on `instance` written at or after `since_ms`.
    pub fn succeeded_since(&self, instance: &str, step: Step, since_ms: u64) -> Option<Entry> {
        self.lock()
            .iter()
            .rev()
            .take_while(|e| e.at_ms >= since_ms)
            .find(|e| e.instance_id == instance && e.step == step && e.phase == Phase::Succeeded)
            .cloned()
    }

    /// The newest outcome (succeeded or failed) of an action carrying out the policy's `step` on
    /// `instance`, written at or after `since_ms`.
    pub fn outcome_since(
        &self,
        instance: &str,
        step: autoheal_policy::Step,
        since_ms: u64,
    ) -> Option<Entry> {
        self.lock()
            .iter()
            .rev()
            .take_while(|e| e.at_ms >= since_ms)
            .find(|e| {
                e.instance_id == instance
                    && e.policy_step() == step
                    && matches!(e.phase, Phase::Succeeded | Phase::Failed)
            })
            .cloned()
    }

    /// Intents that have no outcome: calls a crash may have interrupted.
    pub fn in_flight(&self) -> Vec<Entry> {
        let entries = self.lock();
        entries
            .iter()
            .filter(|e| e.phase == Phase::Intent)
            .filter(|intent| {
                !entries.iter().any(|e| {
                    e.key == intent.key && matches!(e.phase, Phase::Succeeded | Phase::Failed)
                })
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::EmbeddedStore;

    fn entry(key: &str, phase: Phase, at_ms: u64) -> Entry {
        Entry {
            key: key.into(),
            instance_id: "i-1".into(),
            asg: "web".into(),
            step: Step::Deregister,
            phase,
            target_groups: vec!["tg".into()],
            reason: "escalated".into(),
            detail: String::new(),
            fencing_token: 0,
            at_ms,
            requested_by: String::new(),
            in_flight_until_ms: 0,
        }
    }

    #[tokio::test]
    async fn entries_survive_reopen_and_in_flight_intents_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open =
            || -> Arc<dyn Store> { Arc::new(EmbeddedStore::open(dir.path()).expect("store")) };
        let journal = Journal::open(open()).await.expect("open");
        journal
            .append(&entry("a", Phase::Intent, 1))
            .await
            .expect("append");
        journal
            .append(&entry("a", Phase::Succeeded, 2))
            .await
            .expect("append");
        journal
            .append(&entry("b", Phase::Intent, 3))
            .await
            .expect("append");
        drop(journal);
        let journal = Journal::open(open()).await.expect("reopen");
        assert_eq!(journal.entries().len(), 3);
        let in_flight = journal.in_flight();
        assert_eq!(in_flight.len(), 1);
        assert_eq!(in_flight[0].key, "b");
        assert!(
            journal
                .succeeded_since("i-1", Step::Deregister, 0)
                .is_some()
        );
        assert!(
            journal
                .succeeded_since("i-1", Step::Deregister, 3)
                .is_none()
        );
        assert_eq!(journal.recent(Some("i-1"), 1)[0].key, "b");
    }
}
