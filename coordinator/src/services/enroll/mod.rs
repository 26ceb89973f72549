//! Zero-touch enrollment: an instance proves who it is with its IMDSv2 identity document and
//! RSA-2048 PKCS7 signature and gets a short-lived certificate; renewals come over mTLS.
//!
//! Every check has a name ([`Check`]); a refusal issues nothing and records nothing, and is
//! told to the agent, to the fleet (`enrollment-denied`) and to the `enrollments_denied`
//! metric. The checks, cheapest first: challenge nonce, document shape, region known,
//! PKCS7 signature against the region's pinned signers, signed content == document, account
//! allowlist, the store's record (denied, terminated, enrolled already → replayed),
//! `pendingTime` age, the CSR, `DescribeInstances` (pending or running, owner), membership of
//! a managed Auto Scaling group. Then the certificate is made and the record written with a
//! conditional write: of two racing enrollments for one instance, one wins.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use autoheal_common::clock::SharedClock;

use crate::model::enrollment::{
    Check, Enrollment, EnrollmentStatus, InstanceState, InstanceStatus, Refusal,
};
use crate::model::events::EventKind;
use crate::model::inventory::Selector;
use crate::ports::aws::ScalingGroups;
use crate::ports::store::Store;
use crate::services::fleet::Fleet;

pub mod batch;
pub mod ca;
pub mod document;
pub mod pkcs7;

pub use batch::DescribeBatcher;
pub use ca::{Authority, Certificate};
use document::Document;

/// What enrollment checks against, validated by the config edge.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pinned RSA-2048 signer certificates (DER) per region.
    pub signers: BTreeMap<String, Vec<Vec<u8>>>,
    /// Accounts whose instances may enroll.
    pub accounts: BTreeSet<String>,
    /// A first enrollment's `pendingTime` may be at most this old.
    pub max_pending_age: Duration,
    /// Lifetime of an issued certificate (at most 24 h).
    pub lifetime: Duration,
    /// How long a challenge nonce stays usable.
    pub nonce_ttl: Duration,
    /// The managed Auto Scaling groups (the `[aws]` selector).
    pub selector: Selector,
}

/// A first enrollment's inputs, as the agent sent them.
#[derive(Debug, Clone)]
pub struct Request {
    pub document: Vec<u8>,
    pub signature: Vec<u8>,
    pub csr: Vec<u8>,
    pub nonce: Vec<u8>,
}

/// Enrollment and renewal. Cheap to clone.
#[derive(Clone)]
pub struct Enroller {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    authority: Authority,
    store: Arc<dyn Store>,
    describe: DescribeBatcher,
    groups: Arc<dyn ScalingGroups>,
    fleet: Fleet,
    clock: SharedClock,
    nonces: Mutex<HashMap<[u8; 32], tokio::time::Instant>>,
    /// The managed groups' instance ids and when they were listed.
    members: tokio::sync::Mutex<Option<(tokio::time::Instant, std::collections::HashSet<String>)>>,
}

/// How long one listing of the managed groups' members answers membership checks.
const MEMBERS_TTL: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("regions", &self.inner.settings.signers.keys())
            .field("accounts", &self.inner.settings.accounts)
            .finish_non_exhaustive()
    }
}

/// Outstanding nonces are capped, so a flood of Challenge calls can't grow memory without bound.
const MAX_NONCES: usize = 100_000;

impl Enroller {
    pub fn new(
        settings: Settings,
        authority: Authority,
        store: Arc<dyn Store>,
        describe: DescribeBatcher,
        groups: Arc<dyn ScalingGroups>,
        fleet: Fleet,
        clock: SharedClock,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                authority,
                store,
                describe,
                groups,
                fleet,
                clock,
                nonces: Mutex::new(HashMap::new()),
                members: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// A fresh single-use nonce and when it stops being accepted.
    pub fn challenge(&self) -> Result<([u8; 32], SystemTime), Refusal> {
        let nonce = rand::random::<[u8; 32]>();
        let now = self.inner.clock.now();
        let mut nonces = self.inner.nonces.lock().unwrap_or_else(|p| p.into_inner());
        nonces.retain(|_, expires| *expires > now);
        if nonces.len() >= MAX_NONCES {
            return Err(Refusal::new(
                Check::Unavailable,
                "too many outstanding challenges: retry later",
            ));
        }
        nonces.insert(nonce, now + self.inner.settings.nonce_ttl);
        Ok((
            nonce,
            self.inner.clock.wall() + self.inner.settings.nonce_ttl,
        ))
    }

    fn take_nonce(&self, nonce: &[u8]) -> Result<(), Refusal> {
        let now = self.inner.clock.now();
        let key: [u8; 32] = nonce.try_into().map_err(|_| {
            Refusal::new(
                Check::Nonce,
                "the nonce must be the 32 bytes of a Challenge",
            )
        })?;
        let mut nonces = self.inner.nonces.lock().unwrap_or_else(|p| p.into_inner());
        match nonces.remove(&key) {
            Some(expires) if expires > now => Ok(()),
            Some(_) => Err(Refusal::new(
                Check::Nonce,
                "the challenge expired: ask for a new one",
            )),
            None => Err(Refusal::new(
                Check::Nonce,
                "unknown or already used challenge: ask for a new one",
            )),
        }
    }

    /// A first enrollment. On refusal nothing is issued or recorded; the refusal is counted and
    /// told to the fleet.
    pub async fn enroll(&self, request: Request) -> Result<Certificate, Refusal> {
        let mut instance = String::new();
        let outcome = self.try_enroll(request, &mut instance).await;
        match &outcome {
            Ok(cert) => {
                crate::metrics::global().certificate_issued("enroll");
                self.inner.fleet.record_event(
                    &instance,
                    EventKind::Enrolled,
                    format!(
                        "enrolled; certificate {} until {}",
                        cert.spiffe_id,
                        rfc3339(cert.not_after)
                    ),
                );
                tracing::info!(%instance, "instance enrolled");
            }
            Err(refusal) => self.refused(&instance, refusal),
        }
        outcome
    }

    fn refused(&self, instance: &str, refusal: &Refusal) {
        crate::metrics::global().enrollment_denied(refusal.check.as_str());
        tracing::warn!(%instance, check = %refusal.check, reason = %refusal.message, "enrollment refused");
        self.inner.fleet.record_event(
            instance,
            EventKind::EnrollmentDenied,
            format!("{}: {}", refusal.check, refusal.message),
        );
    }

    async fn try_enroll(
        &self,
        request: Request,
        instance: &mut String,
    ) -> Result<Certificate, Refusal> {
        let settings = &self.inner.settings;
        self.take_nonce(&request.nonce)?;
        let signed = pkcs7::decode(&request.signature)
            .and_then(|der| pkcs7::SignedData::parse(&der))
            .map_err(|e| Refusal::new(Check::Signature, e.to_string()))?;
        // The document is read before it is verified only to pick the region's signer: a
        // document that does not verify with that signer goes no further.
        let doc = Document::parse(&request.document)
            .map_err(|e| Refusal::new(Check::Document, e.to_string()))?;
        *instance = doc.instance_id.clone();
        let signers = settings.signers.get(&doc.region).ok_or_else(|| {
            Refusal::new(
                Check::UnknownRegion,
                format!("no trusted signer certificate for region {:?}", doc.region),
            )
        })?;
        let content = signed.content.as_deref().unwrap_or(&request.document);
        signed
            .verify(content, signers)
            .map_err(|e| Refusal::new(Check::Signature, e.to_string()))?;
        if content != request.document.as_slice() {
            return Err(Refusal::new(
                Check::ContentMismatch,
                "the signed content is not the document sent",
            ));
        }
        if !settings.accounts.contains(&doc.account_id) {
            return Err(Refusal::new(
                Check::Account,
                format!("account {} is not allowed to enroll", doc.account_id),
            ));
        }
        let existing = self.record(&doc.instance_id).await?;
        let mut rejoin: Option<String> = None;
        let expected = match &existing {
            None => None,
            Some(e) => match e.status {
                EnrollmentStatus::Reset => Some(e.version),
                EnrollmentStatus::Denied => {
                    return Err(Refusal::new(
                        Check::Denied,
                        "an operator denied this instance",
                    ));
                }
                EnrollmentStatus::Terminated => {
                    return Err(Refusal::new(
                        Check::Terminated,
                        "this instance id was terminated: refused for good",
                    ));
                }
                EnrollmentStatus::Enrolled => {
                    // The one way back in with an identity document: this same boot (same
                    // pendingTime), its certificate expired, and a CSR signed by the key that
                    // certificate was for. See the README's threat model.
                    let expired = e.certificate_expires_at <= self.inner.clock.wall();
                    if !(expired && e.pending_time == doc.pending_time_text) {
                        let again = if e.pending_time == doc.pending_time_text {
                            "this identity document enrolled already"
                        } else {
                            "this instance enrolled already with another pendingTime"
                        };
                        return Err(Refusal::new(
                            Check::Replayed,
                            format!("{again}: renew over mTLS, or ask an operator to reset it"),
                        ));
                    }
                    rejoin = Some(e.key_sha256.clone());
                    Some(e.version)
                }
            },
        };
        // An operator's reset vouches for the instance, and a rejoin is the same boot: no age
        // limit then.
        if expected.is_none() {
            let age = self
                .inner
                .clock
                .wall()
                .duration_since(doc.pending_time)
                .unwrap_or_default();
            if age > settings.max_pending_age {
                return Err(Refusal::new(
                    Check::TooOld,
                    format!(
                        "pendingTime {} is {}s old, more than {}s",
                        doc.pending_time_text,
                        age.as_secs(),
                        settings.max_pending_age.as_secs()
                    ),
                ));
            }
        }
        let csr = self
            .inner
            .authority
            .check_csr(&request.csr, &doc.instance_id)
            .map_err(|e| Refusal::new(Check::Csr, e.to_string()))?;
        if let Some(key) = &rejoin
            && *key != csr.key_sha256()
        {
            return Err(Refusal::new(
                Check::Replayed,
                "enrolled already; after expiry only the holder of the last certificate's key may enroll again",
            ));
        }
        let status = self.instance_status(&doc.instance_id).await?;
        if status
            .owner_id
            .as_deref()
            .is_some_and(|o| o != doc.account_id)
        {
            return Err(Refusal::new(
                Check::Account,
                "DescribeInstances names another owner than the document",
            ));
        }
        self.check_state(&status)?;
        self.check_group(&doc.instance_id).await?;
        let now = self.inner.clock.wall();
        let cert = self
            .inner
            .authority
            .issue(&csr, &doc.instance_id, now, settings.lifetime)
            .map_err(|e| Refusal::new(Check::Unavailable, format!("cannot issue: {e}")))?;
        let record = Enrollment {
            instance_id: doc.instance_id.clone(),
            status: EnrollmentStatus::Enrolled,
            pending_time: doc.pending_time_text.clone(),
            account_id: doc.account_id.clone(),
            region: doc.region.clone(),
            enrolled_at: now,
            certificate_expires_at: cert.not_after,
            reason: String::new(),
            key_sha256: csr.key_sha256(),
            version: expected.map_or(1, |v| v + 1),
        };
        match self.inner.store.put_enrollment(&record, expected).await {
            Ok(true) => Ok(cert),
            Ok(false) => Err(Refusal::new(
                Check::Replayed,
                "another enrollment of this instance won the race",
            )),
            Err(e) => Err(unavailable("the store", &e)),
        }
    }

    /// A renewal over mTLS: the caller's verified certificate names `instance_id`.
    pub async fn renew(&self, instance_id: &str, csr: &[u8]) -> Result<Certificate, Refusal> {
        let outcome = self.try_renew(instance_id, csr).await;
        match &outcome {
            Ok(_) => crate::metrics::global().certificate_issued("renew"),
            Err(refusal) => self.refused(instance_id, refusal),
        }
        outcome
    }

    async fn try_renew(&self, instance_id: &str, csr: &[u8]) -> Result<Certificate, Refusal> {
        let Some(record) = self.record(instance_id).await? else {
            return Err(Refusal::new(
                Check::NotEnrolled,
                "no enrollment on record: enroll with an identity document",
            ));
        };
        match record.status {
            EnrollmentStatus::Enrolled => {}
            EnrollmentStatus::Denied => {
                return Err(Refusal::new(
                    Check::Denied,
                    "an operator denied this instance",
                ));
            }
            EnrollmentStatus::Terminated => {
                return Err(Refusal::new(
                    Check::Terminated,
                    "this instance id was terminated",
                ));
            }
            EnrollmentStatus::Reset => {
                return Err(Refusal::new(
                    Check::NotEnrolled,
                    "an operator reset this enrollment: enroll again with an identity document",
                ));
            }
        }
        let csr = self
            .inner
            .authority
            .check_csr(csr, instance_id)
            .map_err(|e| Refusal::new(Check::Csr, e.to_string()))?;
        let status = self.instance_status(instance_id).await?;
        if status.state.is_gone() {
            let gone = Enrollment {
                status: EnrollmentStatus::Terminated,
                reason: format!("DescribeInstances: {}", status.state.as_str()),
                version: record.version + 1,
                ..record.clone()
            };
            if let Err(e) = self
                .inner
                .store
                .put_enrollment(&gone, Some(record.version))
                .await
            {
                tracing::warn!(error = %crate::error_chain(&e), instance = %instance_id, "cannot record a terminated instance");
            }
        }
        self.check_state(&status)?;
        let now = self.inner.clock.wall();
        let cert = self
            .inner
            .authority
            .issue(&csr, instance_id, now, self.inner.settings.lifetime)
            .map_err(|e| Refusal::new(Check::Unavailable, format!("cannot issue: {e}")))?;
        let renewed = Enrollment {
            certificate_expires_at: cert.not_after,
            key_sha256: csr.key_sha256(),
            version: record.version + 1,
            ..record.clone()
        };
        match self
            .inner
            .store
            .put_enrollment(&renewed, Some(record.version))
            .await
        {
            Ok(true) => Ok(cert),
            Ok(false) => Err(Refusal::new(
                Check::Unavailable,
                "the enrollment changed meanwhile: retry",
            )),
            Err(e) => Err(unavailable("the store", &e)),
        }
    }

    async fn record(&self, instance_id: &str) -> Result<Option<Enrollment>, Refusal> {
        self.inner
            .store
            .enrollment(instance_id)
            .await
            .map_err(|e| unavailable("the store", &e))
    }

    async fn instance_status(&self, instance_id: &str) -> Result<InstanceStatus, Refusal> {
        match self.inner.describe.describe(instance_id).await {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err(Refusal::new(
                Check::InstanceState,
                "DescribeInstances does not know this instance",
            )),
            Err(e) => Err(unavailable("DescribeInstances", &e)),
        }
    }

    fn check_state(&self, status: &InstanceStatus) -> Result<(), Refusal> {
        match status.state {
            InstanceState::Pending | InstanceState::Running => Ok(()),
            state if state.is_gone() => Err(Refusal::new(
                Check::Terminated,
                format!(
                    "DescribeInstances says {}: refused for good",
                    state.as_str()
                ),
            )),
            state => Err(Refusal::new(
                Check::InstanceState,
                format!(
                    "DescribeInstances says {}, not pending or running",
                    state.as_str()
                ),
            )),
        }
    }

    /// Membership from one `DescribeAutoScalingGroups` shared by every enrollment within
    /// [`MEMBERS_TTL`]: a thousand instances enrolling together cost one listing, not a thousand.
    /// A group lists an instance from its launch on, long before its agent can enroll.
    async fn check_group(&self, instance_id: &str) -> Result<(), Refusal> {
        let mut members = self.inner.members.lock().await;
        let now = self.inner.clock.now();
        let fresh = members
            .as_ref()
            .is_some_and(|(at, _)| now < *at + MEMBERS_TTL);
        if !fresh {
            let groups = self
                .inner
                .groups
                .groups(&self.inner.settings.selector)
                .await
                .map_err(|e| unavailable("DescribeAutoScalingGroups", &e))?;
            let ids = groups
                .iter()
                .flat_map(|g| g.instances.iter().map(|m| m.instance_id.clone()))
                .collect();
            *members = Some((self.inner.clock.now(), ids));
        }
        let member = members
            .as_ref()
            .is_some_and(|(_, ids)| ids.contains(instance_id));
        drop(members);
        if member {
            Ok(())
        } else {
            Err(Refusal::new(
                Check::NotInManagedGroup,
                "the instance is in no Auto Scaling group this coordinator manages",
            ))
        }
    }

    /// Every enrollment record.
    pub async fn list(&self) -> Result<Vec<Enrollment>, crate::ports::store::StoreError> {
        self.inner.store.enrollments().await
    }

    /// Sets an instance's record to `status` (reset or denied) by an operator.
    pub async fn set_status(
        &self,
        instance_id: &str,
        status: EnrollmentStatus,
        reason: &str,
    ) -> Result<Enrollment, crate::ports::store::StoreError> {
        loop {
            let current = self.inner.store.enrollment(instance_id).await?;
            let now = self.inner.clock.wall();
            let next = match &current {
                Some(e) => Enrollment {
                    status,
                    reason: reason.to_owned(),
                    version: e.version + 1,
                    ..e.clone()
                },
                None => Enrollment {
                    instance_id: instance_id.to_owned(),
                    status,
                    pending_time: String::new(),
                    account_id: String::new(),
                    region: String::new(),
                    enrolled_at: now,
                    certificate_expires_at: SystemTime::UNIX_EPOCH,
                    reason: reason.to_owned(),
                    key_sha256: String::new(),
                    version: 1,
                },
            };
            if self
                .inner
                .store
                .put_enrollment(&next, current.as_ref().map(|e| e.version))
                .await?
            {
                return Ok(next);
            }
        }
    }
}

fn unavailable(what: &str, error: &(dyn std::error::Error + 'static)) -> Refusal {
    Refusal::new(
        Check::Unavailable,
        format!(
            "{what} failed: {}; try again later",
            crate::error_chain(error)
        ),
    )
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
