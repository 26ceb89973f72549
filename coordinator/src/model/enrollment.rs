//! Enrollment as plain data: what the store remembers per instance (trust on first use), the
//! instance states `DescribeInstances` reports, and the named checks an enrollment can fail.

use std::{fmt, time::SystemTime};

use serde::{Deserialize, Serialize};

/// Where an instance's enrollment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrollmentStatus {
    /// Enrolled once with the recorded `pending_time`; from now on only renewals over mTLS.
    Enrolled,
    /// An operator reset it: the next valid identity document may enroll again.
    Reset,
    /// An operator refused this id for good.
    Denied,
    /// AWS said the instance is terminated: its id is refused for good.
    Terminated,
}

impl EnrollmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentStatus::Enrolled => "enrolled",
            EnrollmentStatus::Reset => "reset",
            EnrollmentStatus::Denied => "denied",
            EnrollmentStatus::Terminated => "terminated",
        }
    }
}

/// One instance's enrollment record. `version` grows by one on every write; writes are
/// conditional on the version read (see `Store::put_enrollment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub instance_id: String,
    pub status: EnrollmentStatus,
    /// The document's `pendingTime`, verbatim: one enrollment per (instance id, pendingTime).
    pub pending_time: String,
    pub account_id: String,
    pub region: String,
    pub enrolled_at: SystemTime,
    /// The newest certificate issued (by enrollment or renewal).
    pub certificate_expires_at: SystemTime,
    pub reason: String,
    /// SHA-256 (hex) of the SubjectPublicKeyInfo of the newest certificate's key: after that
    /// certificate expired (the coordinator was unreachable across it), the same instance
    /// boot may enroll again only by proving it still holds this key.
    #[serde(default)]
    pub key_sha256: String,
    pub version: u64,
}

/// An EC2 instance state, typed where it enters (the SDK adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
    Unknown,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Unknown => "unknown",
        }
    }

    /// Gone for good: its id must never enroll again.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

/// What `DescribeInstances` says about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub instance_id: String,
    pub state: InstanceState,
    /// The account that owns the reservation.
    pub owner_id: Option<String>,
}

/// Every check an enrollment can fail, named on the wire (`Refused.check`), in the
/// `enrollment-denied` fleet event and in the `enrollments_denied` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    /// The PKCS7 signature does not verify with the pinned certificate of the region.
    Signature,
    /// The signed content is not the document sent.
    ContentMismatch,
    /// No trusted signer is configured for the document's region.
    UnknownRegion,
    /// The account is not in the allowlist (or DescribeInstances names another owner).
    Account,
    /// DescribeInstances does not say pending or running.
    InstanceState,
    /// The instance is in no Auto Scaling group the coordinator manages.
    NotInManagedGroup,
    /// `pendingTime` is older than the configured maximum age for a first enrollment.
    TooOld,
    /// The instance enrolled already (or with another pendingTime): renewals only, over mTLS.
    Replayed,
    /// The instance id is terminated: refused for good.
    Terminated,
    /// An operator denied this instance id.
    Denied,
    /// The CSR is malformed, not signed by its own key, or asks for more than we would issue.
    Csr,
    /// The challenge nonce is unknown, used or expired.
    Nonce,
    /// The document is not a well-formed identity document.
    Document,
    /// A renewal for an instance with no current enrollment (never enrolled, or reset).
    NotEnrolled,
    /// A dependency (AWS, the store) failed: try again later. Not the instance's fault.
    Unavailable,
}

impl Check {
    pub const ALL: &'static [Check] = &[
        Check::Signature,
        Check::ContentMismatch,
        Check::UnknownRegion,
        Check::Account,
        Check::InstanceState,
        Check::NotInManagedGroup,
        Check::TooOld,
        Check::Replayed,
        Check::Terminated,
        Check::Denied,
        Check::Csr,
        Check::Nonce,
        Check::Document,
        Check::NotEnrolled,
        Check::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Signature => "signature",
            Check::ContentMismatch => "content-mismatch",
            Check::UnknownRegion => "unknown-region",
            Check::Account => "account",
            Check::InstanceState => "instance-state",
            Check::NotInManagedGroup => "not-in-managed-group",
            Check::TooOld => "too-old",
            Check::Replayed => "replayed",
            Check::Terminated => "terminated",
            Check::Denied => "denied",
            Check::Csr => "csr",
            Check::Nonce => "nonce",
            Check::Document => "document",
            Check::NotEnrolled => "not-enrolled",
            Check::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused enrollment: the check and a sentence for the agent's log and the fleet event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {message}")]
pub struct Refusal {
    pub check: Check,
    pub message: String,
}

impl Refusal {
    pub fn new(check: Check, message: impl Into<String>) -> Self {
        Self {
            check,
            message: message.into(),
        }
    }
}
