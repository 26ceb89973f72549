//! The action journal: a write-ahead record of every AWS action — the intent before the call, the
//! outcome after — so a restarted coordinator knows what it did and never acts twice.
//!
//! Embedded backend: one append-only JSON-lines file, fsync'd per entry. An entry counts once
//! `append` returns; a torn last line (a crash mid-write) was never acknowledged and is dropped on
//! open.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Deregister,
    Replace,
    Terminate,
    Ssm,
    /// Operator-requested deregistration.
    Drain,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Deregister => "deregister",
            Step::Replace => "replace",
            Step::Terminate => "terminate",
            Step::Ssm => "ssm",
            Step::Drain => "drain",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Intent,
    Succeeded,
    Failed,
    /// Dry-run: what would have been done.
    WouldAct,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Idempotency key: the same for an intent and its outcome.
    pub key: String,
    pub instance_id: String,
    pub asg: String,
    pub step: Step,
    pub phase: Phase,
    #[serde(default)]
    pub target_groups: Vec<String>,
    pub reason: String,
    #[serde(default)]
    pub detail: String,
    /// The leader's fencing token when it was written.
    pub fencing_token: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    #[serde(default)]
    pub requested_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the journal {path}: not acting without a record")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} line {line} is corrupt")]
    Corrupt {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    entries: Vec<Entry>,
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join("journal.jsonl");
        let open_err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let mut entries = Vec::new();
        let mut good_len = 0u64;
        if let Ok(file) = File::open(&path) {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            let mut number = 0;
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(open_err)?;
                if n == 0 {
                    break;
                }
                number += 1;
                if !line.ends_with('\n') {
                    // Torn write: never acknowledged.
                    tracing::warn!(line = number, "dropping a torn last journal line");
                    break;
                }
                let entry = serde_json::from_str(line.trim_end()).map_err(|source| {
                    JournalError::Corrupt {
                        path: path.clone(),
                        line: number,
                        source,
                    }
                })?;
                entries.push(entry);
                good_len += n as u64;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(open_err)?;
        // Cut a torn tail so the next entry starts on a line of its own.
        file.set_len(good_len).map_err(open_err)?;
        Ok(Self {
            path,
            inner: Mutex::new(Inner { file, entries }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durable when it returns.
    pub fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        let write_err = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line =
            serde_json::to_vec(entry).map_err(|e| write_err(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut inner = self.lock();
        inner.file.write_all(&line).map_err(write_err)?;
        inner.file.sync_data().map_err(write_err)?;
        inner.entries.push(entry.clone());
        Ok(())
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    /// The newest entries first, optionally for one instance.
    pub fn recent(&self, instance: Option<&str>, limit: usize) -> Vec<Entry> {
        self.lock()
            .entries
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
            .entries
            .iter()
            .rev()
            .take_while(|e| e.at_ms >= since_ms)
            .find(|e| e.instance_id == instance && e.step == step && e.phase == Phase::Succeeded)
            .cloned()
    }

    /// Intents that have no outcome: calls a crash may have interrupted.
    pub fn in_flight(&self) -> Vec<Entry> {
        let inner = self.lock();
        inner
            .entries
            .iter()
            .filter(|e| e.phase == Phase::Intent)
            .filter(|intent| {
                !inner.entries.iter().any(|e| {
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
            fencing_token: 1,
            at_ms,
            requested_by: String::new(),
        }
    }

    #[test]
    fn entries_survive_reopen_and_in_flight_intents_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        journal
            .append(&entry("a", Phase::Intent, 1))
            .expect("append");
        journal
            .append(&entry("a", Phase::Succeeded, 2))
            .expect("append");
        journal
            .append(&entry("b", Phase::Intent, 3))
            .expect("append");
        drop(journal);
        let journal = Journal::open(dir.path()).expect("reopen");
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
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_appends_continue_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        journal
            .append(&entry("a", Phase::Intent, 1))
            .expect("append");
        drop(journal);
        let path = dir.path().join("journal.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"{\"key\":\"torn").expect("write");
        drop(file);
        let journal = Journal::open(dir.path()).expect("reopen");
        assert_eq!(journal.entries().len(), 1);
        journal
            .append(&entry("c", Phase::Intent, 5))
            .expect("append");
        drop(journal);
        let journal = Journal::open(dir.path()).expect("reopen again");
        let keys: Vec<_> = journal.entries().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["a", "c"]);
    }
}
