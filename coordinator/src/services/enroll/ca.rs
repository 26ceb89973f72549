//! Issuance: the intermediate CA (certificate and key loaded from files, like the coordinator's
//! TLS key) signs a CSR's public key into a short-lived instance certificate with exactly one
//! URI SAN, `spiffe://<trust-domain>/instance/<id>`. The CSR is checked first: signed by its own
//! key, an ECDSA key, and asking for nothing the coordinator would not put there.

use std::{path::Path, time::SystemTime};

use autoheal_proto::identity::{Identity, TrustDomain};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable CA certificate and key")]
    Parse {
        path: std::path::PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}: holds no certificate")]
    Empty { path: std::path::PathBuf },
}

/// Why a CSR is refused (the `csr` check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("not a PKCS#10 request, or not signed by its own key")]
    Invalid,
    #[error("the key must be ECDSA P-256 or P-384")]
    KeyType,
    #[error("asks for a subject alternative name other than {0}")]
    ExtraSan(String),
    #[error("asks for extensions the coordinator does not issue (key usages, CA, EKUs)")]
    Extensions,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Identity(#[from] autoheal_proto::identity::IdentityError),
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
}

/// A CSR that passed every check: its public key, ready to sign.
#[derive(Debug)]
pub struct CheckedCsr(CertificateSigningRequestParams);

impl CheckedCsr {
    /// SHA-256 (hex) of the requested key's SubjectPublicKeyInfo.
    pub fn key_sha256(&self) -> String {
        use rcgen::PublicKeyData;
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &self.0.public_key.subject_public_key_info(),
        );
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The CA that signs instance certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CA certificate(s) sent after the leaf (empty when the CA is a root itself).
    chain_pem: String,
    /// PEM of every CA the agent should trust (two during a rotation).
    bundle_pem: String,
    trust_domain: TrustDomain,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What the coordinator issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub chain_pem: String,
    pub bundle_pem: String,
    pub not_after: SystemTime,
    pub spiffe_id: String,
}

impl Authority {
    /// `cert` holds the CA certificate first (then, optionally, its own chain up to a root);
    /// `bundle` the roots agents should trust.
    pub fn load(
        cert: &Path,
        key: &Path,
        bundle: &Path,
        trust_domain: TrustDomain,
    ) -> Result<Self, CaError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let bundle_pem = read(bundle)?;
        let parse = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Parse { path, source }
        };
        let key = KeyPair::from_pem(&key_pem).map_err(parse(key))?;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let first = certs.first().ok_or_else(|| CaError::Empty {
            path: cert.to_owned(),
        })?;
        let issuer = Issuer::from_ca_cert_der(first, key).map_err(parse(cert))?;
        // A self-signed CA needs not travel with the leaf: the bundle has it.
        let self_signed = x509_parser::parse_x509_certificate(first)
            .map(|(_, c)| c.subject() == c.issuer())
            .unwrap_or(false);
        let chain_pem = if self_signed && certs.len() == 1 {
            String::new()
        } else {
            cert_pem
        };
        Ok(Self {
            issuer,
            chain_pem,
            bundle_pem,
            trust_domain,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Checks `csr` (PEM or DER) for `instance_id`.
    pub fn check_csr(&self, csr: &[u8], instance_id: &str) -> Result<CheckedCsr, CsrError> {
        let der = if csr.starts_with(b"-----") {
            CertificateSigningRequestDer::from_pem_slice(csr).map_err(|_| CsrError::Invalid)?
        } else {
            CertificateSigningRequestDer::from(csr.to_vec())
        };
        // Parses and verifies the request's signature with the key it carries; refuses any
        // extension beyond SAN, key usage, EKU and basic constraints.
        let parsed = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
            rcgen::Error::UnsupportedExtension => CsrError::Extensions,
            _ => CsrError::Invalid,
        })?;
        let alg = parsed.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ECDSA_P384_SHA384 {
            return Err(CsrError::KeyType);
        }
        let want = self.spiffe_id(instance_id).map_err(|_| CsrError::Invalid)?;
        for san in &parsed.params.subject_alt_names {
            match san {
                SanType::URI(uri) if uri.as_str() == want => {}
                _ => return Err(CsrError::ExtraSan(want)),
            }
        }
        let p = &parsed.params;
        let eku_ok = p
            .extended_key_usages
            .iter()
            .all(|e| *e == ExtendedKeyUsagePurpose::ClientAuth);
        if !p.key_usages.is_empty() || !matches!(p.is_ca, IsCa::NoCa) || !eku_ok {
            return Err(CsrError::Extensions);
        }
        Ok(CheckedCsr(parsed))
    }

    fn spiffe_id(
        &self,
        instance_id: &str,
    ) -> Result<String, autoheal_proto::identity::IdentityError> {
        Identity::instance(&self.trust_domain, instance_id).map(|i| i.to_string())
    }

    /// Signs `csr`'s key for `instance_id`, valid from a little before `now` (clock skew) to
    /// `now + lifetime`.
    pub fn issue(
        &self,
        csr: &CheckedCsr,
        instance_id: &str,
        now: SystemTime,
        lifetime: std::time::Duration,
    ) -> Result<Certificate, IssueError> {
        let spiffe_id = self.spiffe_id(instance_id)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, instance_id);
        params.subject_alt_names = vec![SanType::URI(spiffe_id.clone().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        // Backdated for clock skew, by a tenth of the lifetime at most, so the agent's
        // "half the lifetime" stays near half of what it was given.
        let backdate = (lifetime / 10).min(std::time::Duration::from_secs(60));
        params.not_before = time::OffsetDateTime::from(now - backdate);
        let not_after = now + lifetime;
        params.not_after = time::OffsetDateTime::from(not_after);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let leaf = params.signed_by(&csr.0.public_key, &self.issuer)?;
        let mut chain_pem = leaf.pem();
        chain_pem.push_str(&self.chain_pem);
        Ok(Certificate {
            chain_pem,
            bundle_pem: self.bundle_pem.clone(),
            // Whole seconds, as in the certificate.
            not_after: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(
                    not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                ),
            spiffe_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(dir: &Path) -> Authority {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("ca-key.pem"), key.serialize_pem()).expect("write");
        Authority::load(
            &dir.join("ca.pem"),
            &dir.join("ca-key.pem"),
            &dir.join("ca.pem"),
            TrustDomain::new("autoheal.test").expect("td"),
        )
        .expect("loads")
    }

    fn csr(params: CertificateParams, key: &KeyPair) -> Vec<u8> {
        params.serialize_request(key).expect("csr").der().to_vec()
    }

    #[test]
    fn a_plain_csr_gets_one_uri_san_and_a_bounded_lifetime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = authority(dir.path());
        let key = KeyPair::generate().expect("key");
        let checked = ca
            .check_csr(&csr(CertificateParams::default(), &key), "i-1")
            .expect("ok");
        let now = SystemTime::now();
        let cert = ca
            .issue(&checked, "i-1", now, std::time::Duration::from_secs(3600))
            .expect("issued");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.chain_pem.as_bytes())
            .expect("pem");
        let identity = Identity::from_certificate(&der).expect("spiffe");
        assert_eq!(identity.to_string(), "spiffe://autoheal.test/instance/i-1");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parses");
        let sans = parsed
            .subject_alternative_name()
            .expect("ext")
            .expect("san")
            .value
            .general_names
            .len();
        assert_eq!(sans, 1);
        // The chain is the leaf alone: the CA is a root, in the bundle.
        assert_eq!(cert.chain_pem.matches("BEGIN CERTIFICATE").count(), 1);
    }

    #[test]
    fn csrs_asking_for_more_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = authority(dir.path());
        let key = KeyPair::generate().expect("key");
        let extra = CertificateParams::new(vec!["evil.example.com".to_owned()]).expect("params");
        assert!(matches!(
            ca.check_csr(&csr(extra, &key), "i-1"),
            Err(CsrError::ExtraSan(_))
        ));
        let mut other = CertificateParams::default();
        other.subject_alt_names = vec![SanType::URI(
            "spiffe://autoheal.test/instance/i-2"
                .try_into()
                .expect("uri"),
        )];
        assert!(ca.check_csr(&csr(other, &key), "i-1").is_err());
        let mut same = CertificateParams::default();
        same.subject_alt_names = vec![SanType::URI(
            "spiffe://autoheal.test/instance/i-1"
                .try_into()
                .expect("uri"),
        )];
        assert!(ca.check_csr(&csr(same, &key), "i-1").is_ok());
        let mut ca_req = CertificateParams::default();
        ca_req.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        assert_eq!(
            ca.check_csr(&csr(ca_req, &key), "i-1").err(),
            Some(CsrError::Extensions)
        );
        // A request whose signature is not its key's.
        let mut der = csr(CertificateParams::default(), &key);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(ca.check_csr(&der, "i-1").err(), Some(CsrError::Invalid));
    }
}
