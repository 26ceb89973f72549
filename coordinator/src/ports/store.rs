//! What the coordinator must not forget: the action journal, the global pause and per-instance
//! skips, remediation state per instance, fleet events (with a time to live) and the leader lease.
//! Heartbeats stay in memory; only state changes and journal entries come here.
//!
//! Two backends behind one [`Store`] trait:
//!
//! - [`EmbeddedStore`]: one append-only file in the state directory, the default. Every record
//!   is framed with its length and a CRC-32 and fsync'd before the write returns, so a `kill -9`
//!   mid-write leaves a file that reopens with every acknowledged write; the torn tail is dropped.
//!   One process per state directory: its lease is always won at once.
//! - [`DynamoStore`]: one DynamoDB table (single-table design, described in `dynamo.rs` and the
//!   README), shared by every coordinator replica. Production.
//!
//! # Leadership and fencing
//!
//! [`Lease`] is a task that takes and renews the leader lease through the store and publishes
//! [`LeaderState`] over a `watch` channel. Each takeover increases the lease's fencing token.
//! The leader stamps its token on every journal [`Entry`] (`Entry::fencing_token`) and
//! remediation write; the store refuses a write whose token is no longer the lease's with
//! [`StoreError::Fenced`]. Since the coordinator writes the journal intent *before* each AWS
//! call and does not call when the write fails, a leader that lost its lease (a paused process
//! that wakes up after another took over) cannot act.
//!
//! Wiring, in short:
//!
//! ```no_run
//! # async fn wire(
//! #     store: std::sync::Arc<dyn autoheal_coordinator::ports::store::Store>,
//! #     entry: autoheal_coordinator::model::journal::Entry,
//! # ) {
//! use std::time::Duration;
//! use autoheal_coordinator::services::lease::{Lease, LeaseSettings, LeaderState};
//! use autoheal_common::clock::system;
//! let settings = LeaseSettings {
//!     owner: "coordinator-a".into(),
//!     endpoint: "https://10.0.1.7:7443".into(),
//!     ttl: Duration::from_secs(15),
//!     renew_interval: Duration::from_secs(4),
//! };
//! let (lease, handle) = Lease::new(store.clone(), settings, system()).expect("valid settings");
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(lease.run(shutdown.clone()));
//! // Before acting: read the token, stamp it on the journal intent, append it, and call AWS only
//! // if the append succeeded. On `StoreError::Fenced`, tell the lease, which steps down at once.
//! if let LeaderState::Leader { token } = handle.current() {
//!     let intent = autoheal_coordinator::model::journal::Entry { fencing_token: token, ..entry };
//!     match store.append_journal(&intent).await {
//!         Ok(()) => { /* the AWS call */ }
//!         Err(e) if e.is_fenced() => handle.report_fenced(token).await,
//!         Err(_) => { /* no record, no action: retry next pass */ }
//!     }
//! }
//! # }
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::model::enrollment::Enrollment;
use crate::model::events::FleetEvent;
use crate::model::events::PauseState;
use crate::model::journal::Entry;
use crate::ports::aws::AwsError;

/// Which journal entries to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalQuery {
    /// Every entry, oldest first.
    All,
    /// Every entry about one instance, oldest first.
    Instance(String),
    /// The newest `limit` entries, newest first.
    Recent(usize),
}

/// An operator's "leave this instance alone".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub instance_id: String,
    pub reason: String,
    pub by: String,
    pub since: SystemTime,
}

/// What a coordinator asks for when it claims the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    /// Unique per coordinator replica (the same owner may reclaim its own lease at once after a
    /// restart, with a new token).
    pub owner: String,
    /// Where agents reach this coordinator: followers redirect to it.
    pub endpoint: String,
    pub ttl: Duration,
}

/// The lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub owner: String,
    pub endpoint: String,
    /// Increased on every takeover; never reused.
    pub fencing_token: u64,
    /// Wall-clock expiry, written by the holder from its own clock.
    pub expires_at: SystemTime,
}

/// The answer to a lease claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The claimant holds the lease now, with a fencing token higher than any before.
    Won(LeaseRecord),
    /// Another coordinator holds an unexpired lease (`None`: it vanished between the two reads).
    Held(Option<LeaseRecord>),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write carried a fencing token that no longer holds the lease: another coordinator
    /// leads (or this one's lease expired). The caller must step down and not act.
    #[error(
        "fencing token {token} no longer holds the lease{}: another coordinator may lead, not acting",
        current.map(|c| format!(" (current token {c})")).unwrap_or_default()
    )]
    Fenced { token: u64, current: Option<u64> },
    #[error("cannot open the state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the state store {path}: not acting without a record")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state store {path} is corrupt at byte {offset}: {reason} (not a torn last write; refusing to drop acknowledged records)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("cannot use the state table {table}")]
    Dynamo {
        table: String,
        #[source]
        source: AwsError,
    },
    #[error("state table {table}: item {pk}/{sk} is malformed: {reason}")]
    Malformed {
        table: String,
        pk: String,
        sk: String,
        reason: String,
    },
    #[error("the state store's worker stopped")]
    Worker(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// Whether this is a lost lease rather than trouble reaching or writing the store.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

/// Durable coordinator state. Every write is durable when it returns `Ok`; a write that fails
/// may or may not have landed, and the caller must not act on it.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Appends a journal entry, fenced by `entry.fencing_token`: fails with
    /// [`StoreError::Fenced`] (writing nothing) unless that token still holds the lease.
    async fn append_journal(&self, entry: &Entry) -> Result<(), StoreError>;
    async fn journal(&self, query: JournalQuery) -> Result<Vec<Entry>, StoreError>;

    async fn pause(&self) -> Result<PauseState, StoreError>;
    /// Operator writes are not fenced: pausing must work during a failover.
    async fn set_pause(&self, pause: &PauseState) -> Result<(), StoreError>;

    async fn set_skip(&self, skip: &Skip) -> Result<(), StoreError>;
    /// Removing a skip that isn't there is not an error.
    async fn unset_skip(&self, instance_id: &str) -> Result<(), StoreError>;
    async fn skips(&self) -> Result<Vec<Skip>, StoreError>;

    /// Keeps `event` for `ttl` (DynamoDB expires it; the embedded store drops it on reopen).
    async fn append_event(&self, event: &FleetEvent, ttl: Duration) -> Result<(), StoreError>;
    /// Unexpired events, newest first, at most `limit`.
    async fn recent_events(&self, limit: usize) -> Result<Vec<FleetEvent>, StoreError>;

    /// Sets (`Some`) or clears (`None`) an instance's remediation state, fenced like the journal.
    async fn set_remediation(
        &self,
        instance_id: &str,
        state: Option<&serde_json::Value>,
        fencing_token: u64,
    ) -> Result<(), StoreError>;
    async fn remediation(&self, instance_id: &str)
    -> Result<Option<serde_json::Value>, StoreError>;
    async fn remediations(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError>;

    /// The lease as stored, expired or not.
    async fn lease(&self) -> Result<Option<LeaseRecord>, StoreError>;
    /// Takes the lease if it is free, expired at `now`, or already `claim.owner`'s; every win
    /// increases the fencing token.
    async fn claim_lease(&self, claim: &LeaseClaim, now: SystemTime) -> Result<Claim, StoreError>;
    /// Extends `held` to `now + ttl` if its owner and token still hold the lease; otherwise
    /// [`StoreError::Fenced`].
    async fn renew_lease(
        &self,
        held: &LeaseRecord,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<LeaseRecord, StoreError>;
    /// Expires `held` now, so another coordinator takes over without waiting for the TTL. Does
    /// nothing if `held` no longer holds the lease.
    async fn release_lease(&self, held: &LeaseRecord) -> Result<(), StoreError>;

    /// One instance's enrollment record (trust on first use), if any.
    async fn enrollment(&self, instance_id: &str) -> Result<Option<Enrollment>, StoreError>;
    /// Writes `record` only if the stored record's version is `expected` (`None`: there is no
    /// record yet); otherwise writes nothing and returns `Ok(false)`. A conditional write, so two
    /// coordinators (or two requests) can't both enroll one instance. When the store already
    /// holds exactly `record` (a retried write whose first answer was lost), that is `Ok(true)`.
    async fn put_enrollment(
        &self,
        record: &Enrollment,
        expected: Option<u64>,
    ) -> Result<bool, StoreError>;
    /// Every enrollment record, by instance id.
    async fn enrollments(&self) -> Result<Vec<Enrollment>, StoreError>;
}

pub use autoheal_common::clock::{Clock, SharedClock, SystemClock, system as system_clock};
use autoheal_common::clock::{from_unix_ms, unix_ms};

/// `FleetEvent` as stored (the fleet's type stays free of serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub(crate) cursor: u64,
    pub(crate) at_ms: u64,
    instance_id: String,
    asg: String,
    kind: String,
    message: String,
}

impl From<&FleetEvent> for StoredEvent {
    fn from(e: &FleetEvent) -> Self {
        Self {
            cursor: e.cursor,
            at_ms: unix_ms(e.at),
            instance_id: e.instance_id.clone(),
            asg: e.asg.clone(),
            kind: e.kind.as_str().to_owned(),
            message: e.message.clone(),
        }
    }
}

impl StoredEvent {
    /// The event, if this version knows its kind. A kind written by a newer coordinator is left
    /// out of listings (with a warning) rather than failing the whole read.
    pub(crate) fn into_event(self) -> Option<FleetEvent> {
        let Ok(kind) = self.kind.parse() else {
            tracing::warn!(
                cursor = self.cursor,
                kind = %autoheal_common::config::prefix(&self.kind),
                "stored fleet event of a kind this version does not know: not listed"
            );
            return None;
        };
        Some(FleetEvent {
            cursor: self.cursor,
            at: from_unix_ms(self.at_ms),
            instance_id: self.instance_id,
            asg: self.asg,
            kind,
            message: self.message,
        })
    }
}
