//! Zero-touch enrollment, the agent's side: keeps a usable instance certificate in the `[tls]`
//! files when `[coordinator] enroll_endpoint` is set.
//!
//! - No certificate (or an unusable one, or one for another instance, or an expired one): read
//!   the IMDSv2 instance identity document and its RSA-2048 PKCS7 signature, make a P-256 key
//!   (written 0600), ask the enrollment listener for a challenge, then enroll — over TLS that
//!   authenticates the coordinator against the fleet CA in `tls.ca`, with no client certificate.
//! - Past its renewal point (50% ± 10% of its lifetime, the jitter fixed per certificate so a
//!   fleet spreads out): renew over mTLS with the current certificate, with a fresh key. A
//!   failed renewal keeps the current certificate and retries while it is valid.
//! - Coordinator down across expiry: healing goes on locally (nothing here blocks it); when the
//!   coordinator is back the agent enrolls again with the same boot's identity document and a
//!   CSR signed by the key of its expired certificate — the one way the coordinator lets an
//!   enrolled instance present a document again (see the README's threat model). A renewal is
//!   impossible then: the mTLS handshake refuses an expired certificate, as it should.
//!
//! New files are written beside the old ones and renamed into place, key first; the trust
//! bundle the coordinator sends replaces `tls.ca`, so a CA rotation reaches every agent.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use autoheal_common::tls::{self, PROTOCOL_VERSIONS, TlsFiles};
use autoheal_proto::{
    identity::Identity,
    v1::{self, enroll_response::Outcome, enroll_service_client::EnrollServiceClient},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::{
    config::{CoordinatorConfig, DEFAULT_IMDS, IdentitySource, parse_host_port},
    http,
};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("IMDSv2 {step}: {source}")]
    Imds {
        step: &'static str,
        #[source]
        source: http::HttpError,
    },
    #[error("IMDSv2 {step} answered HTTP {status}")]
    ImdsStatus { step: &'static str, status: u16 },
    #[error("identity.imds_endpoint: {0}")]
    ImdsEndpoint(String),
    #[error("cannot read the fleet CA for enrollment")]
    Tls(#[from] tls::TlsError),
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Endpoint(#[from] tls::EndpointError),
    #[error("{call} failed: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("the coordinator refused the {call}: {check}: {message}")]
    Refused {
        call: &'static str,
        check: String,
        message: String,
    },
    #[error("no answer in {0:?}")]
    Timeout(Duration),
    #[error("the coordinator's answer is unusable: {0}")]
    Answer(&'static str),
    #[error("cannot make a key or CSR")]
    Key(#[from] rcgen::Error),
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How long the gRPC calls of one enrollment or renewal may take, beyond connecting.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// A certificate on disk, as far as renewal cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When to renew: 40–60% into the lifetime, fixed per certificate.
    pub renew_at: SystemTime,
}

/// The agent's enrollment client.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub endpoint: String,
    pub tls: TlsFiles,
    pub imds_endpoint: String,
    pub imds_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Enrollment {
    /// `None` unless `[coordinator] enroll_endpoint` is set.
    pub fn from_config(config: &CoordinatorConfig, identity: &IdentitySource) -> Option<Self> {
        let endpoint = config.enroll_endpoint.clone()?;
        let (imds_endpoint, imds_timeout) = match identity {
            IdentitySource::Imds { endpoint, timeout } => (endpoint.clone(), *timeout),
            IdentitySource::Static { .. } => (DEFAULT_IMDS.to_owned(), Duration::from_secs(1)),
        };
        Some(Self {
            endpoint,
            tls: config.tls.clone(),
            imds_endpoint,
            imds_timeout,
            connect_timeout: config.connect_timeout,
        })
    }

    /// Makes sure the `[tls]` files hold a usable certificate for `instance_id`, enrolling or
    /// renewing (over mTLS at `agent_endpoint`) as needed. Returns the certificate in force.
    pub async fn ensure(
        &self,
        instance_id: &str,
        agent_endpoint: &str,
    ) -> Result<Held, EnrollError> {
        let now = SystemTime::now();
        let held = self.held(instance_id);
        match held {
            Some(h) if now < h.renew_at => Ok(h),
            Some(h) if now < h.not_after => match self.bounded(self.renew(agent_endpoint)).await {
                Ok(renewed) => {
                    tracing::info!(not_after = ?renewed.not_after, "certificate renewed");
                    Ok(renewed)
                }
                Err(error) => {
                    let left = h.not_after.duration_since(now).unwrap_or_default();
                    let retry = (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    tracing::warn!(error = %autoheal_common::error::DisplayChain(&error), ?left, "renewal failed; keeping the current certificate");
                    Ok(Held {
                        renew_at: now + retry,
                        ..h
                    })
                }
            },
            _ => {
                let enrolled = self.bounded(self.enroll()).await?;
                tracing::info!(not_after = ?enrolled.not_after, "enrolled");
                Ok(enrolled)
            }
        }
    }

    /// Every exchange is bounded, so a coordinator that accepts and then hangs can't stall the
    /// reporter (healing never waits on it either way).
    async fn bounded(
        &self,
        exchange: impl std::future::Future<Output = Result<Held, EnrollError>>,
    ) -> Result<Held, EnrollError> {
        let limit = self.connect_timeout + self.imds_timeout * 3 + EXCHANGE_TIMEOUT;
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| EnrollError::Timeout(limit))?
    }

    /// The certificate on disk, if it parses, matches its key, is for `instance_id` and has not
    /// expired.
    pub fn held(&self, instance_id: &str) -> Option<Held> {
        let material = self.tls.load().ok()?;
        let identity = self.tls.identity(&material).ok()?;
        if identity.instance_id() != Some(instance_id) {
            return None;
        }
        let leaf = material.chain.first()?.clone();
        // Cert and key must belong together (a torn write of the two would not).
        tls::client_config(material).ok()?;
        let held = validity(&leaf)?;
        (SystemTime::now() < held.not_after).then_some(held)
    }

    async fn enroll(&self) -> Result<Held, EnrollError> {
        let (document, signature) = self.identity_document().await?;
        // After an expiry the coordinator wants the expired certificate's key: keep it if any.
        let key = std::fs::read_to_string(&self.tls.key)
            .ok()
            .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok())
            .filter(|k| k.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256);
        let key = match key {
            Some(k) => k,
            None => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        };
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)?
            .der()
            .to_vec();
        let mut client = EnrollServiceClient::new(self.server_auth_channel()?);
        let challenge = client
            .challenge(v1::ChallengeRequest {})
            .await
            .map_err(|status| EnrollError::Call {
                call: "Challenge",
                status: Box::new(status),
            })?
            .into_inner();
        let answer = client
            .enroll(v1::EnrollRequest {
                document,
                rsa2048_signature: signature,
                csr,
                nonce: challenge.nonce,
            })
            .await
            .map_err(|status| EnrollError::Call {
                call: "Enroll",
                status: Box::new(status),
            })?
            .into_inner();
        self.install("enrollment", answer, &key)
    }

    async fn renew(&self, agent_endpoint: &str) -> Result<Held, EnrollError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)?
            .der()
            .to_vec();
        let config = Arc::new(tls::client_config(self.tls.load()?)?);
        let channel = tls::channel(agent_endpoint, config, self.connect_timeout)?;
        let answer = EnrollServiceClient::new(channel)
            .renew(v1::RenewRequest { csr })
            .await
            .map_err(|status| EnrollError::Call {
                call: "Renew",
                status: Box::new(status),
            })?
            .into_inner();
        self.install("renewal", answer, &key)
    }

    fn install(
        &self,
        call: &'static str,
        answer: v1::EnrollResponse,
        key: &rcgen::KeyPair,
    ) -> Result<Held, EnrollError> {
        let issued = match answer.outcome {
            Some(Outcome::Issued(issued)) => issued,
            Some(Outcome::Refused(r)) => {
                return Err(EnrollError::Refused {
                    call,
                    check: r.check,
                    message: r.message,
                });
            }
            None => return Err(EnrollError::Answer("neither issued nor refused")),
        };
        let leaf = CertificateDer::pem_slice_iter(issued.certificate_chain.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or(EnrollError::Answer("no certificate in the chain"))?;
        Identity::from_certificate(&leaf).map_err(|_| EnrollError::Answer("no SPIFFE ID"))?;
        let held = validity(&leaf).ok_or(EnrollError::Answer("certificate dates"))?;
        if CertificateDer::pem_slice_iter(issued.trust_bundle.as_bytes())
            .filter_map(Result::ok)
            .next()
            .is_none()
        {
            return Err(EnrollError::Answer("empty trust bundle"));
        }
        write_atomically(&self.tls.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomically(&self.tls.cert, issued.certificate_chain.as_bytes(), 0o644)?;
        let current_ca = std::fs::read(&self.tls.ca).unwrap_or_default();
        if current_ca != issued.trust_bundle.as_bytes() {
            write_atomically(&self.tls.ca, issued.trust_bundle.as_bytes(), 0o644)?;
        }
        Ok(held)
    }

    /// Server-authenticated TLS to the enrollment listener: the coordinator must chain to the
    /// fleet CA; we have no certificate to show.
    fn server_auth_channel(&self) -> Result<tonic::transport::Channel, EnrollError> {
        let pem = std::fs::read(&self.tls.ca).map_err(|source| tls::TlsError::Read {
            path: self.tls.ca.clone(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(tls::TlsError::EmptyRoots {
                path: self.tls.ca.clone(),
            }
            .into());
        }
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(tls::channel(
            &self.endpoint,
            Arc::new(config),
            self.connect_timeout,
        )?)
    }

    /// The document and its rsa2048 signature, over IMDSv2 (token first).
    async fn identity_document(&self) -> Result<(Vec<u8>, Vec<u8>), EnrollError> {
        let (host, port) =
            parse_host_port(&self.imds_endpoint).map_err(EnrollError::ImdsEndpoint)?;
        let get = |step: &'static str,
                   method: &'static str,
                   path: &'static str,
                   header: (&'static str, String)| {
            let host = host.clone();
            let timeout = self.imds_timeout;
            async move {
                let r = http::request(&host, port, method, path, &[(header.0, &header.1)], timeout)
                    .await
                    .map_err(|source| EnrollError::Imds { step, source })?;
                if r.status != 200 {
                    return Err(EnrollError::ImdsStatus {
                        step,
                        status: r.status,
                    });
                }
                Ok(r.body)
            }
        };
        let token = get(
            "token",
            "PUT",
            "/latest/api/token",
            ("X-aws-ec2-metadata-token-ttl-seconds", "60".to_owned()),
        )
        .await?;
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        let document = get(
            "document",
            "GET",
            "/latest/dynamic/instance-identity/document",
            ("X-aws-ec2-metadata-token", token.clone()),
        )
        .await?;
        let signature = get(
            "rsa2048",
            "GET",
            "/latest/dynamic/instance-identity/rsa2048",
            ("X-aws-ec2-metadata-token", token),
        )
        .await?;
        Ok((document, signature))
    }
}

/// Validity and renewal point of a certificate.
pub fn validity(cert: &CertificateDer<'_>) -> Option<Held> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    };
    let not_before = secs(parsed.validity().not_before)?;
    let not_after = secs(parsed.validity().not_after)?;
    let lifetime = not_after.duration_since(not_before).ok()?;
    Some(Held {
        not_before,
        not_after,
        renew_at: not_before + lifetime.mul_f64(renewal_fraction(cert)),
    })
}

/// 0.4..0.6, fixed by the certificate's bytes: the same certificate always renews at the same
/// point, and a fleet's certificates spread over the window.
pub fn renewal_fraction(cert: &[u8]) -> f64 {
    // FNV-1a: no crypto needed, only spread.
    let hash = cert.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    0.4 + 0.2 * ((hash % 10_000) as f64 / 10_000.0)
}

/// What the reporter compares to notice certificate files replaced on disk by other tooling.
pub fn fingerprint(files: &TlsFiles) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for path in [&files.ca, &files.cert, &files.key] {
        for b in std::fs::read(path).unwrap_or_default() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EnrollError> {
    let err = |source| EnrollError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_between_40_and_60_percent_and_fixed_per_certificate() {
        for i in 0..1000u32 {
            let f = renewal_fraction(&i.to_be_bytes());
            assert!((0.4..0.6).contains(&f), "{f}");
            assert_eq!(f, renewal_fraction(&i.to_be_bytes()));
        }
    }

    #[test]
    fn keys_are_written_0600_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write_atomically(&path, b"one", 0o600).expect("write");
        write_atomically(&path, b"two", 0o600).expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
