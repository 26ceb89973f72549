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
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

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
use crate::ports::store::StoredEvent;
use crate::ports::store::system_clock;
use autoheal_common::clock::from_unix_ms;
use autoheal_common::clock::unix_ms;

const FILE_NAME: &str = "store.log";
const HEADER: usize = 8;
/// No record comes near this; a bigger length is a torn or corrupt header.
const MAX_RECORD: usize = 16 << 20;
/// Fleet events kept (in memory and across compaction); older ones are dropped.
const MAX_EVENTS: usize = 10_000;
/// Compaction only pays off past this many records.
const COMPACT_MIN_RECORDS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
enum Record {
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
}

#[derive(Debug, Default)]
struct State {
    journal: Vec<Entry>,
    pause: PauseState,
    skips: BTreeMap<String, Skip>,
    events: VecDeque<(StoredEvent, u64)>,
    remediation: BTreeMap<String, serde_json::Value>,
    lease: Option<LeaseRecord>,
}

impl State {
    fn apply(&mut self, record: Record) {
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
        }
    }

    fn current_token(&self) -> u64 {
        self.lease.as_ref().map_or(0, |l| l.fencing_token)
    }

    /// Single process: a token is fenced only once a later claim in this same store superseded
    /// it.
    fn fence(&self, token: u64) -> Result<(), StoreError> {
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
    fn live_records(&self, now_ms: u64) -> Vec<Record> {
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
        records
    }
}

fn lease_record(l: &LeaseRecord) -> Record {
    Record::Lease {
        owner: l.owner.clone(),
        endpoint: l.endpoint.clone(),
        fencing_token: l.fencing_token,
        expires_at_ms: unix_ms(l.expires_at),
    }
}

/// The single-file store. Cheap to clone; clones share the file.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    clock: SharedClock,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Bytes of whole, acknowledged frames.
    len: u64,
    /// Set when a failed write could not be undone (or fsync failed, leaving the page cache in
    /// an unknown state): every later write fails until the store is reopened.
    broken: bool,
    state: State,
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
            inner: Arc::new(Mutex::new(Inner {
                file,
                len: good_len,
                broken: false,
                state,
            })),
            clock,
        };
        let live = store.lock().state.live_records(unix_ms(store.clock.wall()));
        if count >= COMPACT_MIN_RECORDS && count > 2 * live.len() {
            store.compact(dir, &live)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut inner = self.lock();
        inner.file = file;
        inner.len = bytes.len() as u64;
        tracing::info!(path = %self.path.display(), records = live.len(), "compacted the state store");
        Ok(())
    }

    /// Decides, writes, fsyncs, then applies under one lock, off the async runtime. `decide`
    /// sees the state before the write and returns the record to write (if any) and the answer,
    /// or refuses.
    async fn write<T, F>(&self, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&State) -> Result<(Option<Record>, T), StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            let (record, answer) = decide(&inner.state)?;
            if let Some(record) = record {
                inner.append(&path, &record)?;
                inner.state.apply(record);
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
        f(&self.lock().state)
    }
}

impl Inner {
    fn append(&mut self, path: &Path, record: &Record) -> Result<(), StoreError> {
        let write_err = |source| StoreError::Write {
            path: path.to_owned(),
            source,
        };
        if self.broken {
            return Err(write_err(std::io::Error::other(
                "an earlier write failed and could not be undone; reopen the store",
            )));
        }
        let bytes = frame(record).map_err(write_err)?;
        if let Err(error) = self.file.write_all(&bytes) {
            // Cut a partial frame so later writes don't follow garbage.
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(write_err(error));
        }
        if let Err(error) = self.file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: nothing written
            // since the last good fsync can be trusted.
            self.broken = true;
            return Err(write_err(error));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn frame(record: &Record) -> std::io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| (l as usize) <= MAX_RECORD)
        .ok_or_else(|| std::io::Error::other("record too large"))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Every whole record, and the length of the prefix they fill.
fn replay(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, u64), StoreError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_owned(),
            offset: offset as u64,
            reason,
        };
        // Zero fill: the file grew but the data never reached the disk.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let Some(header) = rest.get(..HEADER) else {
            break;
        };
        let (len_bytes, crc_bytes) = header.split_at(4);
        let len = u32::from_le_bytes(len_bytes.try_into().map_err(|_| corrupt("header".into()))?)
            as usize;
        let crc = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| corrupt("header".into()))?);
        if len > MAX_RECORD {
            return Err(corrupt(format!("record length {len} is impossible")));
        }
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            // The payload runs past the end of the file: the last write was torn.
            break;
        };
        let is_last = rest.len() == HEADER + len;
        if crc32(payload) != crc {
            if is_last {
                break;
            }
            return Err(corrupt("checksum mismatch".into()));
        }
        let record = serde_json::from_slice(payload)
            .map_err(|e| corrupt(format!("record does not parse: {e}")))?;
        records.push(record);
        offset += HEADER + len;
    }
    Ok((records, offset as u64))
}

/// CRC-32 (IEEE 802.3, as in zlib and gzip).
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[tonic::async_trait]
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
mod tests {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
        time::Instant,
    };

    use super::*;
    use crate::model::events::EventKind;
    use crate::model::journal::Phase;
    use crate::model::journal::Step;

    fn entry(key: &str, instance: &str, token: u64, at_ms: u64) -> Entry {
        Entry {
            key: key.into(),
            instance_id: instance.into(),
            asg: "web".into(),
            step: Step::Deregister,
            phase: Phase::Intent,
            target_groups: vec!["tg".into()],
            reason: "escalated".into(),
            detail: String::new(),
            fencing_token: token,
            at_ms,
            requested_by: String::new(),
        }
    }

    fn event(cursor: u64) -> FleetEvent {
        FleetEvent {
            cursor,
            at: from_unix_ms(1_700_000_000_000 + cursor),
            instance_id: "i-1".into(),
            asg: "web".into(),
            kind: EventKind::Escalated,
            message: format!("event {cursor}"),
        }
    }

    fn claim(owner: &str) -> LeaseClaim {
        LeaseClaim {
            owner: owner.into(),
            endpoint: format!("https://{owner}:7443"),
            ttl: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn every_kind_of_record_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        store
            .append_journal(&entry("a", "i-1", 0, 1))
            .await
            .expect("journal");
        store
            .append_journal(&entry("b", "i-2", 0, 2))
            .await
            .expect("journal");
        let pause = PauseState {
            paused: true,
            reason: "incident".into(),
            by: "alice".into(),
            since: Some(from_unix_ms(5)),
        };
        store.set_pause(&pause).await.expect("pause");
        for id in ["i-1", "i-2"] {
            store
                .set_skip(&Skip {
                    instance_id: id.into(),
                    reason: "debugging".into(),
                    by: "bob".into(),
                    since: from_unix_ms(7),
                })
                .await
                .expect("skip");
        }
        store.unset_skip("i-1").await.expect("unskip");
        store
            .append_event(&event(1), Duration::from_secs(3600))
            .await
            .expect("event");
        store
            .append_event(&event(2), Duration::ZERO)
            .await
            .expect("expired event");
        let blob = serde_json::json!({"attempts": 2});
        store
            .set_remediation("i-1", Some(&blob), 0)
            .await
            .expect("remediation");
        store
            .set_remediation("i-2", Some(&blob), 0)
            .await
            .expect("remediation");
        store
            .set_remediation("i-2", None, 0)
            .await
            .expect("clear remediation");
        drop(store);

        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        let keys = |entries: Vec<Entry>| entries.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(
            keys(store.journal(JournalQuery::All).await.expect("all")),
            ["a", "b"]
        );
        assert_eq!(
            keys(
                store
                    .journal(JournalQuery::Instance("i-2".into()))
                    .await
                    .expect("by instance")
            ),
            ["b"]
        );
        assert_eq!(
            keys(
                store
                    .journal(JournalQuery::Recent(1))
                    .await
                    .expect("recent")
            ),
            ["b"]
        );
        assert_eq!(store.pause().await.expect("pause"), pause);
        let skips = store.skips().await.expect("skips");
        assert_eq!(skips.len(), 1);
        assert_eq!(skips[0].instance_id, "i-2");
        let events = store.recent_events(10).await.expect("events");
        assert_eq!(events, [event(1)], "the expired event is gone");
        assert_eq!(
            store.remediation("i-1").await.expect("remediation"),
            Some(blob)
        );
        assert_eq!(store.remediations().await.expect("all").len(), 1);
    }

    #[tokio::test]
    async fn a_torn_tail_is_dropped_and_appends_continue_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        store
            .append_journal(&entry("a", "i-1", 0, 1))
            .await
            .expect("append");
        let path = store.path().to_owned();
        drop(store);
        let whole = std::fs::read(&path).expect("read");
        let torn_frame = frame(&Record::Journal {
            entry: entry("torn", "i-1", 0, 2),
        })
        .expect("frame");
        // Every way a write can be torn: a short header, a short payload, a bad checksum on the
        // last frame, and zero fill.
        let mut bad_crc = torn_frame.clone();
        if let Some(b) = bad_crc.last_mut() {
            *b ^= 0xFF;
        }
        for tail in [
            torn_frame[..5].to_vec(),
            torn_frame[..torn_frame.len() - 3].to_vec(),
            bad_crc,
            vec![0; 64],
        ] {
            let mut bytes = whole.clone();
            bytes.extend(&tail);
            std::fs::write(&path, &bytes).expect("write");
            let store = EmbeddedStore::open(dir.path()).expect("reopen");
            store
                .append_journal(&entry("c", "i-1", 0, 3))
                .await
                .expect("append after the torn tail");
            drop(store);
            let store = EmbeddedStore::open(dir.path()).expect("reopen again");
            let keys: Vec<_> = store
                .journal(JournalQuery::All)
                .await
                .expect("all")
                .into_iter()
                .map(|e| e.key)
                .collect();
            assert_eq!(keys, ["a", "c"], "tail {tail:?}");
            drop(store);
            std::fs::write(&path, &whole).expect("restore");
        }
    }

    #[tokio::test]
    async fn a_bad_record_before_good_ones_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        for key in ["a", "b"] {
            store
                .append_journal(&entry(key, "i-1", 0, 1))
                .await
                .expect("append");
        }
        let path = store.path().to_owned();
        drop(store);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[HEADER + 2] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        let error = EmbeddedStore::open(dir.path()).expect_err("corrupt");
        assert!(
            matches!(error, StoreError::Corrupt { offset: 0, .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_stale_fencing_token_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let now = SystemTime::now();
        let Claim::Won(first) = store.claim_lease(&claim("a"), now).await.expect("claim") else {
            panic!("a free lease is won");
        };
        assert!(matches!(
            store.claim_lease(&claim("b"), now).await.expect("claim"),
            Claim::Held(Some(ref l)) if l.owner == "a"
        ));
        store.release_lease(&first).await.expect("release");
        let Claim::Won(second) = store.claim_lease(&claim("b"), now).await.expect("claim") else {
            panic!("a released lease is won");
        };
        assert!(second.fencing_token > first.fencing_token);
        let error = store
            .append_journal(&entry("stale", "i-1", first.fencing_token, 1))
            .await
            .expect_err("fenced");
        assert!(error.is_fenced(), "{error}");
        let error = store
            .set_remediation("i-1", None, first.fencing_token)
            .await
            .expect_err("fenced");
        assert!(error.is_fenced(), "{error}");
        assert!(matches!(
            store.renew_lease(&first, Duration::from_secs(1), now).await,
            Err(StoreError::Fenced { .. })
        ));
        store
            .append_journal(&entry("fresh", "i-1", second.fencing_token, 2))
            .await
            .expect("current token writes");
        drop(store);
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        let keys: Vec<_> = store
            .journal(JournalQuery::All)
            .await
            .expect("all")
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["fresh"]);
        let lease = store.lease().await.expect("lease").expect("held");
        assert_eq!(
            lease.fencing_token, second.fencing_token,
            "the token persists"
        );
    }

    #[tokio::test]
    async fn a_mostly_dead_log_is_compacted_on_open_and_keeps_live_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        for i in 0..(COMPACT_MIN_RECORDS as u64 + 10) {
            store
                .set_pause(&PauseState {
                    paused: i % 2 == 0,
                    reason: format!("flip {i}"),
                    by: "ops".into(),
                    since: None,
                })
                .await
                .expect("pause");
        }
        store
            .append_journal(&entry("a", "i-1", 0, 1))
            .await
            .expect("journal");
        let path = store.path().to_owned();
        let before = std::fs::metadata(&path).expect("stat").len();
        let last = store.pause().await.expect("pause");
        drop(store);
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        let after = std::fs::metadata(&path).expect("stat").len();
        assert!(after * 10 < before, "{after} bytes after, {before} before");
        assert_eq!(store.pause().await.expect("pause"), last);
        assert_eq!(
            store.journal(JournalQuery::All).await.expect("all").len(),
            1
        );
        store
            .append_journal(&entry("b", "i-1", 0, 2))
            .await
            .expect("append after compaction");
        drop(store);
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.journal(JournalQuery::All).await.expect("all").len(),
            2
        );
    }

    const BURST_DIR: &str = "AUTOHEAL_STORE_BURST_DIR";

    /// As the child (re-executed with `BURST_DIR` set): writes until killed, printing each
    /// acknowledged index. As the parent: SIGKILLs the child mid-burst, reopens, and checks that
    /// every acknowledged write is there.
    #[test]
    fn kill_9_mid_burst_loses_no_acknowledged_write() {
        if let Some(dir) = std::env::var_os(BURST_DIR) {
            burst(Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "adapters::store::embedded::tests::kill_9_mid_burst_loses_no_acknowledged_write",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(BURST_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.len() < 300 {
            assert!(Instant::now() < deadline, "writer too slow: {acked:?}");
            let line = lines
                .next()
                .expect("the writer stopped early")
                .expect("line");
            if let Some(n) = line.strip_prefix("ack ") {
                acked.push(n.parse::<u64>().expect("index"));
            }
        }
        child.kill().expect("SIGKILL");
        // Acks already in the pipe count too.
        for line in lines {
            if let Some(n) = line.expect("line").strip_prefix("ack ") {
                acked.push(n.parse::<u64>().expect("index"));
            }
        }
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the writer was killed, not finished");

        let store = EmbeddedStore::open(dir.path()).expect("reopen after kill -9");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let journal = rt
            .block_on(store.journal(JournalQuery::All))
            .expect("journal");
        let written: Vec<u64> = journal.iter().map(|e| e.at_ms).collect();
        let last_acked = *acked.iter().max().expect("acks");
        // Everything acknowledged is there, in order; at most the one write in flight beyond.
        assert!(
            written.len() as u64 > last_acked,
            "{} entries, last ack {last_acked}",
            written.len()
        );
        assert!(written.len() as u64 <= last_acked + 2);
        assert!(written.iter().copied().eq(0..written.len() as u64));
        let remediation = rt
            .block_on(store.remediation("i-burst"))
            .expect("remediation")
            .expect("set");
        assert!(remediation["n"].as_u64().expect("n") >= last_acked);
    }

    fn burst(dir: &Path) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let store = EmbeddedStore::open(dir).expect("open");
        let mut stdout = std::io::stdout();
        rt.block_on(async {
            for n in 0..1_000_000u64 {
                store
                    .append_journal(&entry(&format!("k{n}"), "i-burst", 0, n))
                    .await
                    .expect("append");
                store
                    .set_remediation("i-burst", Some(&serde_json::json!({ "n": n })), 0)
                    .await
                    .expect("remediation");
                writeln!(stdout, "ack {n}").expect("print");
            }
        });
    }
}
