//! The embedded backend: one append-only file, `store.log`, in the coordinator's state directory.
//!
//! Each record is a frame: payload length (u32 LE), CRC-32 of the payload (u32 LE), then the
//! payload (one JSON [`Record`]). A write returns once its frame is fsync'd. On open the log is
//! replayed; a torn last frame (a crash mid-write: short header, payload past the end of the
//! file, a bad checksum on the very last frame, or zero fill) was never acknowledged and is cut
//! off. A bad frame with good data after it is not a crash artefact, and opening fails rather than
//! silently dropping acknowledged writes. When most of the log is dead (superseded pauses,
//! expired events) it is rewritten on open: temp file, fsync, rename, fsync of the directory.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, SystemTime},
};

use crate::model::enrollment::Enrollment;
use crate::model::events::FleetEvent;
use crate::model::events::PauseState;
use crate::model::journal::Entry;
use crate::ports::store::Claim;
use crate::ports::store::JournalQuery;
use crate::ports::store::LeaseClaim;
use crate::ports::store::LeaseRecord;
use crate::ports::store::SharedClock;
use crate::ports::store::Skip;
use crate::ports::store::Store;
use crate::ports::store::StoreError;
use crate::ports::store::system_clock;
use autoheal_common::clock::unix_ms;

mod log;
mod state;

use log::{FileLog, frame, replay, sync_dir};
use state::{Record, State, lease_record};

const FILE_NAME: &str = "store.log";
/// Compaction only pays off past this many records.
const COMPACT_MIN_RECORDS: usize = 1024;

/// The single-file store. Cheap to clone; clones share the file.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    path: PathBuf,
    /// Held by one writer at a time, through its write and fsync.
    log: Arc<Mutex<FileLog>>,
    /// What reads see. Changed only by a writer holding `log`, after its fsync: a read never
    /// waits for the disk.
    state: Arc<RwLock<State>>,
    clock: SharedClock,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/store.log` with the system clock.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(dir, system_clock())
    }

    pub fn open_with_clock(dir: &Path, clock: SharedClock) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(open_err(e)),
        };
        let (records, good_len) = replay(&path, &bytes)?;
        let count = records.len();
        let mut state = State::default();
        for record in records {
            state.apply(record);
        }
        let existed = !bytes.is_empty() || path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(open_err)?;
        if good_len < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() as u64 - good_len,
                "dropping a torn last write from the state store"
            );
            file.set_len(good_len).map_err(open_err)?;
            file.sync_all().map_err(open_err)?;
        }
        if !existed {
            // The new file's name must survive a crash too.
            sync_dir(dir).map_err(open_err)?;
        }
        let store = Self {
            path,
            log: Arc::new(Mutex::new(FileLog {
                file,
                len: good_len,
                broken: false,
            })),
            state: Arc::new(RwLock::new(state)),
            clock,
        };
        let live = store.read(|state| state.live_records(unix_ms(store.clock.wall())));
        if count >= COMPACT_MIN_RECORDS && count > 2 * live.len() {
            store.compact(dir, &live)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_log(&self) -> MutexGuard<'_, FileLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rewrites the log as `live` alone: write a temp file, fsync it, rename it over the log,
    /// fsync the directory. A crash at any point leaves either the old or the new log.
    fn compact(&self, dir: &Path, live: &[Record]) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("log.compact");
        let write_err = |source| StoreError::Write {
            path: tmp.clone(),
            source,
        };
        let mut bytes = Vec::new();
        for record in live {
            bytes.extend(frame(record).map_err(write_err)?);
        }
        let mut file = File::create(&tmp).map_err(write_err)?;
        file.write_all(&bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(write_err)?;
        sync_dir(dir).map_err(write_err)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(write_err)?;
        let mut log = self.lock_log();
        log.file = file;
        log.len = bytes.len() as u64;
        tracing::info!(path = %self.path.display(), records = live.len(), "compacted the state store");
        Ok(())
    }

    /// Decides, writes, fsyncs, then applies, off the async runtime, holding the log so writes
    /// are serial; the state is locked only to decide (read) and to apply (write), never across
    /// the fsync. `decide` sees the state before the write and returns the record to write (if
    /// any) and the answer, or refuses.
    async fn write<T, F>(&self, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&State) -> Result<(Option<Record>, T), StoreError> + Send + 'static,
    {
        let log = self.log.clone();
        let state = self.state.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            let (record, answer) = decide(&state.read().unwrap_or_else(|p| p.into_inner()))?;
            if let Some(record) = record {
                log.append(&path, &record)?;
                state
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply(record);
            }
            Ok(answer)
        })
        .await
        .map_err(StoreError::Worker)?
    }

    /// Writes `record` unconditionally.
    async fn put(&self, record: Record) -> Result<(), StoreError> {
        self.write(move |_| Ok((Some(record), ()))).await
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn append_journal(&self, entry: &Entry) -> Result<(), StoreError> {
        let entry = entry.clone();
        self.write(move |state| {
            state.fence(entry.fencing_token)?;
            Ok((Some(Record::Journal { entry }), ()))
        })
        .await
    }

    async fn journal(&self, query: JournalQuery) -> Result<Vec<Entry>, StoreError> {
        Ok(self.read(|state| match query {
            JournalQuery::All => state.journal.clone(),
            JournalQuery::Instance(id) => state
                .journal
                .iter()
                .filter(|e| e.instance_id == id)
                .cloned()
                .collect(),
            JournalQuery::Recent(limit) => {
                state.journal.iter().rev().take(limit).cloned().collect()
            }
        }))
    }

    async fn pause(&self) -> Result<PauseState, StoreError> {
        Ok(self.read(|state| state.pause.clone()))
    }

    async fn set_pause(&self, pause: &PauseState) -> Result<(), StoreError> {
        self.put(Record::Pause {
            pause: pause.clone(),
        })
        .await
    }

    async fn set_skip(&self, skip: &Skip) -> Result<(), StoreError> {
        self.put(Record::Skip { skip: skip.clone() }).await
    }

    async fn unset_skip(&self, instance_id: &str) -> Result<(), StoreError> {
        let instance_id = instance_id.to_owned();
        self.write(move |state| {
            let record = state
                .skips
                .contains_key(&instance_id)
                .then_some(Record::Unskip { instance_id });
            Ok((record, ()))
        })
        .await
    }

    async fn skips(&self) -> Result<Vec<Skip>, StoreError> {
        Ok(self.read(|state| state.skips.values().cloned().collect()))
    }

    async fn append_event(&self, event: &FleetEvent, ttl: Duration) -> Result<(), StoreError> {
        self.put(Record::Event {
            event: event.into(),
            expires_at_ms: unix_ms(self.clock.wall() + ttl),
        })
        .await
    }

    async fn recent_events(&self, limit: usize) -> Result<Vec<FleetEvent>, StoreError> {
        let now_ms = unix_ms(self.clock.wall());
        Ok(self.read(|state| {
            state
                .events
                .iter()
                .rev()
                .filter(|(_, expires)| *expires > now_ms)
                .take(limit)
                .filter_map(|(event, _)| event.clone().into_event())
                .collect()
        }))
    }

    async fn set_remediation(
        &self,
        instance_id: &str,
        state: Option<&serde_json::Value>,
        fencing_token: u64,
    ) -> Result<(), StoreError> {
        let record = Record::Remediation {
            instance_id: instance_id.to_owned(),
            state: state.cloned(),
        };
        self.write(move |s| {
            s.fence(fencing_token)?;
            Ok((Some(record), ()))
        })
        .await
    }

    async fn remediation(
        &self,
        instance_id: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.read(|state| state.remediation.get(instance_id).cloned()))
    }

    async fn remediations(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        Ok(self.read(|state| state.remediation.clone()))
    }

    async fn lease(&self) -> Result<Option<LeaseRecord>, StoreError> {
        Ok(self.read(|state| state.lease.clone()))
    }

    async fn claim_lease(&self, claim: &LeaseClaim, now: SystemTime) -> Result<Claim, StoreError> {
        let claim = claim.clone();
        self.write(move |state| {
            if let Some(held) = &state.lease
                && held.owner != claim.owner
                && held.expires_at > now
            {
                return Ok((None, Claim::Held(Some(held.clone()))));
            }
            let won = LeaseRecord {
                owner: claim.owner,
                endpoint: claim.endpoint,
                fencing_token: state.current_token() + 1,
                expires_at: now + claim.ttl,
            };
            Ok((Some(lease_record(&won)), Claim::Won(won)))
        })
        .await
    }

    async fn renew_lease(
        &self,
        held: &LeaseRecord,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<LeaseRecord, StoreError> {
        let held = held.clone();
        self.write(move |state| {
            check_holder(state, &held)?;
            let renewed = LeaseRecord {
                expires_at: now + ttl,
                ..held
            };
            Ok((Some(lease_record(&renewed)), renewed))
        })
        .await
    }

    async fn release_lease(&self, held: &LeaseRecord) -> Result<(), StoreError> {
        let held = held.clone();
        self.write(move |state| {
            let record = check_holder(state, &held).is_ok().then(|| {
                lease_record(&LeaseRecord {
                    expires_at: SystemTime::UNIX_EPOCH,
                    ..held
                })
            });
            Ok((record, ()))
        })
        .await
    }

    async fn enrollment(&self, instance_id: &str) -> Result<Option<Enrollment>, StoreError> {
        Ok(self.read(|state| state.enrollments.get(instance_id).cloned()))
    }

    async fn put_enrollment(
        &self,
        record: &Enrollment,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let enrollment = record.clone();
        self.write(move |state| {
            let stored = state.enrollments.get(&enrollment.instance_id);
            if stored == Some(&enrollment) {
                return Ok((None, true));
            }
            if stored.map(|e| e.version) != expected {
                return Ok((None, false));
            }
            Ok((Some(Record::Enrollment { enrollment }), true))
        })
        .await
    }

    async fn enrollments(&self) -> Result<Vec<Enrollment>, StoreError> {
        Ok(self.read(|state| state.enrollments.values().cloned().collect()))
    }
}

fn check_holder(state: &State, held: &LeaseRecord) -> Result<(), StoreError> {
    match &state.lease {
        Some(l) if l.owner == held.owner && l.fencing_token == held.fencing_token => Ok(()),
        current => Err(StoreError::Fenced {
            token: held.fencing_token,
            current: current.as_ref().map(|l| l.fencing_token),
        }),
    }
}

#[cfg(test)]
mod tests;
