//! The `[enroll]` section: zero-touch enrollment's own listener, the issuing CA, the pinned AWS
//! signer certificates per region, the account allowlist and the limits.
//!
//! ```toml
//! [enroll]
//! listen = "0.0.0.0:7444"           # server-authenticated TLS only; the agent port keeps mTLS
//! ca_cert = "enroll-ca.pem"          # the intermediate CA that signs instance certificates
//! ca_key = "enroll-ca-key.pem"
//! trust_bundle = "ca.pem"            # what agents are told to trust (default: tls.ca)
//! accounts = ["123456789012"]
//! signers_dir = "/usr/share/autoheal/aws-rsa2048"   # <region>.pem files
//! signers = { "eu-west-1" = "eu-west-1.pem" }      # and/or one file per region
//! lifetime = "1h"                    # at most 24h
//! max_pending_age = "15m"
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use autoheal_common::config::ConfigErrors;
use autoheal_proto::identity::TrustDomain;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
pub(super) struct RawEnroll {
    listen: Option<String>,
    ca_cert: Option<String>,
    ca_key: Option<String>,
    trust_bundle: Option<String>,
    #[serde(default)]
    accounts: Vec<String>,
    signers_dir: Option<String>,
    #[serde(default)]
    signers: BTreeMap<String, String>,
    lifetime: Option<String>,
    max_pending_age: Option<String>,
    nonce_ttl: Option<String>,
    requests_per_minute: Option<u32>,
    burst: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct EnrollConfig {
    pub listen: SocketAddr,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub trust_bundle: PathBuf,
    pub accounts: BTreeSet<String>,
    /// Folders of `<region>.pem` files.
    pub signers_dir: Option<PathBuf>,
    /// Region → PEM file, on top of (and overriding) `signers_dir`.
    pub signers: BTreeMap<String, PathBuf>,
    pub lifetime: Duration,
    pub max_pending_age: Duration,
    pub nonce_ttl: Duration,
    /// Per source address: sustained rate and burst of Challenge + Enroll calls.
    pub requests_per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    Empty { path: PathBuf },
}

impl EnrollConfig {
    /// The pinned signer certificates (DER) per region, from `signers_dir` and `signers`.
    pub fn load_signers(&self) -> Result<BTreeMap<String, Vec<Vec<u8>>>, SignerError> {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        if let Some(dir) = &self.signers_dir {
            let entries = std::fs::read_dir(dir).map_err(|source| SignerError::Read {
                path: dir.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "pem")
                    && let Some(region) = path.file_stem().and_then(|s| s.to_str())
                {
                    files.insert(region.to_owned(), path.clone());
                }
            }
        }
        files.extend(self.signers.clone());
        let mut out = BTreeMap::new();
        for (region, path) in files {
            let pem = std::fs::read(&path).map_err(|source| SignerError::Read {
                path: path.clone(),
                source,
            })?;
            let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .map(|c| c.to_vec())
                .collect();
            if certs.is_empty() {
                return Err(SignerError::Empty { path });
            }
            out.insert(region, certs);
        }
        Ok(out)
    }
}

impl EnrollConfig {
    /// Problems that need the filesystem: the CA and the signer certificates.
    pub fn check_files(&self, trust_domain: &TrustDomain, errors: &mut ConfigErrors) {
        let chain = |e: &(dyn std::error::Error + 'static)| {
            autoheal_common::error::DisplayChain(e).to_string()
        };
        if let Err(e) = crate::services::enroll::Authority::load(
            &self.ca_cert,
            &self.ca_key,
            &self.trust_bundle,
            trust_domain.clone(),
        ) {
            errors.push("enroll.ca_cert", chain(&e));
        }
        match self.load_signers() {
            Err(e) => errors.push("enroll.signers", chain(&e)),
            Ok(signers) if signers.is_empty() => errors.push(
                "enroll.signers",
                "no <region>.pem found: every enrollment would be refused (unknown-region)",
            ),
            Ok(_) => {}
        }
    }
}

pub(super) fn enroll_config(
    raw: RawEnroll,
    base: &Path,
    default_bundle: &Path,
    agent_listen: SocketAddr,
    has_aws: bool,
    errors: &mut ConfigErrors,
) -> EnrollConfig {
    if !has_aws {
        errors.push(
            "enroll",
            "needs an [aws] section: enrollment asks DescribeInstances and the managed Auto Scaling groups",
        );
    }
    let listen_raw = raw.listen.as_deref().unwrap_or("0.0.0.0:7444");
    let listen = listen_raw.parse().unwrap_or_else(|_| {
        errors.push(
            "enroll.listen",
            format!("{listen_raw:?} is not an address: use e.g. \"0.0.0.0:7444\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    if listen == agent_listen && listen.port() != 0 {
        errors.push(
            "enroll.listen",
            "must differ from listen: the agent port requires client certificates, enrollment has none",
        );
    }
    let mut path = |name: &str, value: Option<&String>| match value {
        Some(v) => base.join(v),
        None => {
            errors.push(
                format!("enroll.{name}"),
                "required: the PEM file of the CA that signs instance certificates",
            );
            PathBuf::new()
        }
    };
    let ca_cert = path("ca_cert", raw.ca_cert.as_ref());
    let ca_key = path("ca_key", raw.ca_key.as_ref());
    let trust_bundle = raw
        .trust_bundle
        .map_or_else(|| default_bundle.to_owned(), |b| base.join(b));
    if raw.accounts.is_empty() {
        errors.push(
            "enroll.accounts",
            "list the AWS account ids whose instances may enroll (none would refuse every one)",
        );
    }
    for (i, account) in raw.accounts.iter().enumerate() {
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(
                format!("enroll.accounts[{i}]"),
                format!(
                    "{:?} is not an AWS account id (12 digits)",
                    autoheal_common::config::prefix(account)
                ),
            );
        }
    }
    if raw.signers_dir.is_none() && raw.signers.is_empty() {
        errors.push(
            "enroll.signers",
            "set signers_dir (the shipped AWS region certificates) or signers = { region = \"file.pem\" }",
        );
    }
    let lifetime = errors.duration(
        "enroll.lifetime",
        raw.lifetime.as_deref(),
        Duration::from_secs(3600),
    );
    if lifetime > MAX_LIFETIME || lifetime < Duration::from_secs(10) {
        errors.push("enroll.lifetime", "must be between 10s and 24h");
    }
    let max_pending_age = errors.duration(
        "enroll.max_pending_age",
        raw.max_pending_age.as_deref(),
        Duration::from_secs(15 * 60),
    );
    let nonce_ttl = errors.duration(
        "enroll.nonce_ttl",
        raw.nonce_ttl.as_deref(),
        Duration::from_secs(60),
    );
    if nonce_ttl.is_zero() {
        errors.push("enroll.nonce_ttl", "must be greater than zero");
    }
    let mut nonzero = |name: &str, value: Option<u32>, default: u32| {
        NonZeroU32::new(value.unwrap_or(default)).unwrap_or_else(|| {
            errors.push(format!("enroll.{name}"), "must be at least 1");
            NonZeroU32::MIN
        })
    };
    let requests_per_minute = nonzero("requests_per_minute", raw.requests_per_minute, 60);
    let burst = nonzero("burst", raw.burst, 10);
    EnrollConfig {
        listen,
        ca_cert,
        ca_key,
        trust_bundle,
        accounts: raw.accounts.into_iter().collect(),
        signers_dir: raw.signers_dir.map(|d| base.join(d)),
        signers: raw
            .signers
            .into_iter()
            .map(|(region, file)| (region, base.join(file)))
            .collect(),
        lifetime,
        max_pending_age,
        nonce_ttl,
        requests_per_minute,
        burst,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::edges::config::Config;

    const BASE: &str = r#"
        listen = "127.0.0.1:7443"
        [tls]
        ca = "pki/ca.pem"
        cert = "pki/coordinator.pem"
        key = "pki/coordinator-key.pem"
        [aws]
        asg_names = ["web"]
    "#;

    #[test]
    fn defaults_are_an_hour_and_their_own_port() {
        let text = format!(
            "{BASE}\n[enroll]\nca_cert = \"ca.pem\"\nca_key = \"ca-key.pem\"\naccounts = [\"123456789012\"]\nsigners_dir = \"aws\"\n"
        );
        let c = Config::from_toml(&text, Path::new("/etc/autoheal")).expect("valid");
        let e = c.enroll.expect("enroll");
        assert_eq!(e.lifetime, std::time::Duration::from_secs(3600));
        assert_eq!(e.listen.port(), 7444);
        assert_eq!(e.trust_bundle, Path::new("/etc/autoheal/pki/ca.pem"));
        assert_eq!(
            e.signers_dir.as_deref(),
            Some(Path::new("/etc/autoheal/aws"))
        );
    }

    #[test]
    fn every_problem_is_named() {
        let text = "listen = \"127.0.0.1:7443\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[enroll]\nlisten = \"127.0.0.1:7443\"\naccounts = [\"12\"]\nlifetime = \"48h\"\n";
        let errors = Config::from_toml(text, Path::new(".")).expect_err("invalid");
        let paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
        for path in [
            "enroll",
            "enroll.listen",
            "enroll.ca_cert",
            "enroll.ca_key",
            "enroll.accounts[0]",
            "enroll.signers",
            "enroll.lifetime",
        ] {
            assert!(paths.contains(&path), "{path} in {errors}");
        }
    }
}
