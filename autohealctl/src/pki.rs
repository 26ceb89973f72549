//! Development PKI for `autohealctl certs`: a fleet CA, a coordinator server certificate, and
//! SPIFFE-named client certificates for instances, operators and viewers. Keys are written 0600.
//!
//! File layout in DIR: `ca.pem`, `ca-key.pem`, `trust-domain`, `coordinator.pem`,
//! `coordinator-key.pem`, and `<role>-<name>.pem` / `<role>-<name>-key.pem` per client.

use std::{
    fs::OpenOptions,
    io::Write,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use autoheal_proto::identity::{Identity, IdentityError, Role, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub const DEFAULT_OPERATOR: &str = "admin";
pub const DEFAULT_VIEWER: &str = "readonly";
pub const DEFAULT_INSTANCE: &str = "i-0000000000000001";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "{0} already holds a CA; pass --force to replace it (every issued certificate stops working)"
    )]
    Exists(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{dir} has no CA: run `autohealctl certs init {dir}` first")]
    NoCa { dir: PathBuf },
    #[error("--san {0:?}: not a DNS name or IP address")]
    San(String),
}

/// When a certificate is valid. Defaults: from an hour ago (clock skew) for a year.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Default for Validity {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }
}

/// Paths of one issued certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a new CA, the coordinator's server certificate (localhost, 127.0.0.1, ::1 and
/// `extra_sans`), an operator, a viewer, and one certificate per instance id in `instances`.
pub fn init(
    dir: &Path,
    trust_domain: &TrustDomain,
    extra_sans: &[String],
    instances: &[String],
    force: bool,
) -> Result<Vec<Issued>, PkiError> {
    if dir.join("ca.pem").exists() && !force {
        return Err(PkiError::Exists(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("autoheal development CA ({trust_domain})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let ca_cert = params.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write(
        &dir.join("ca-key.pem"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write(
        &dir.join("trust-domain"),
        format!("{trust_domain}\n").as_bytes(),
        0o644,
    )?;
    let issuer = Issuer::new(params, ca_key);

    let mut issued = vec![server(dir, &issuer, trust_domain, extra_sans)?];
    issued.push(client(
        dir,
        &issuer,
        &Identity::operator(trust_domain, DEFAULT_OPERATOR)?,
        Validity::default(),
    )?);
    issued.push(client(
        dir,
        &issuer,
        &Identity::viewer(trust_domain, DEFAULT_VIEWER)?,
        Validity::default(),
    )?);
    for id in instances {
        issued.push(client(
            dir,
            &issuer,
            &Identity::instance(trust_domain, id)?,
            Validity::default(),
        )?);
    }
    Ok(issued)
}

/// The trust domain recorded by `init` in DIR.
pub fn trust_domain(dir: &Path) -> Result<TrustDomain, PkiError> {
    let path = dir.join("trust-domain");
    let text = std::fs::read_to_string(&path).map_err(|_| PkiError::NoCa {
        dir: dir.to_owned(),
    })?;
    Ok(TrustDomain::new(text.trim())?)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|_| PkiError::NoCa {
            dir: dir.to_owned(),
        })
    };
    let key = KeyPair::from_pem(&read("ca-key.pem")?)?;
    Ok(Issuer::from_ca_cert_pem(&read("ca.pem")?, key)?)
}

/// Issues one more client certificate (instance, operator or viewer) from DIR's CA.
pub fn issue(dir: &Path, role: Role, validity: Validity) -> Result<Issued, PkiError> {
    let td = trust_domain(dir)?;
    let issuer = load_issuer(dir)?;
    client(dir, &issuer, &Identity::new(td, role)?, validity)
}

/// Issues a new coordinator server certificate from DIR's CA (e.g. to rotate it, or to add SANs).
pub fn issue_server(dir: &Path, extra_sans: &[String]) -> Result<Issued, PkiError> {
    let td = trust_domain(dir)?;
    let issuer = load_issuer(dir)?;
    server(dir, &issuer, &td, extra_sans)
}

fn server(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    trust_domain: &TrustDomain,
    extra_sans: &[String],
) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("autoheal coordinator ({trust_domain})"));
    let mut sans = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress("::1".parse().map_err(|_| PkiError::San("::1".into()))?),
    ];
    for san in extra_sans {
        sans.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.as_str()
                    .try_into()
                    .map_err(|_| PkiError::San(san.clone()))?,
            ),
        });
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let validity = Validity::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, issuer)?;
    save(dir, "coordinator", &cert.pem(), &key)
}

fn client(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    identity: &Identity,
    validity: Validity,
) -> Result<Issued, PkiError> {
    let (kind, name) = match &identity.role {
        Role::Instance(id) => ("instance", id),
        Role::Operator(n) => ("operator", n),
        Role::Viewer(n) => ("viewer", n),
    };
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("{kind} {name}"));
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, issuer)?;
    save(dir, &format!("{kind}-{name}"), &cert.pem(), &key)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "autoheal");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn save(dir: &Path, stem: &str, cert_pem: &str, key: &KeyPair) -> Result<Issued, PkiError> {
    let cert = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    // Key first: a cert without its key is useless, a key without its cert is harmless.
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write(&cert, cert_pem.as_bytes(), 0o644)?;
    Ok(Issued {
        cert,
        key: key_path,
    })
}

/// Writes through a temporary file created with `mode`, then renames: readers (the reloading
/// coordinator) never see a half-written file, and a key is never world-readable, not even briefly.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use autoheal_common::tls::TlsFiles;

    use super::*;

    #[test]
    fn init_writes_a_usable_pki_with_private_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("test.local").expect("td");
        let issued = init(
            dir.path(),
            &td,
            &["coord.example.com".into()],
            &["i-abc".into()],
            false,
        )
        .expect("init");
        assert_eq!(issued.len(), 4);
        for i in &issued {
            let mode = std::fs::metadata(&i.key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", i.key.display());
        }
        let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
            .expect("ca key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("instance-i-abc.pem"),
            key: dir.path().join("instance-i-abc-key.pem"),
        };
        let material = files.load().expect("loads");
        let id = files.identity(&material).expect("spiffe id");
        assert_eq!(id.to_string(), "spiffe://test.local/instance/i-abc");

        assert!(matches!(
            init(dir.path(), &td, &[], &[], false),
            Err(PkiError::Exists(_))
        ));

        let more = issue(
            dir.path(),
            Role::Viewer("grafana".into()),
            Validity::default(),
        )
        .expect("issue");
        assert!(more.cert.ends_with("viewer-grafana.pem"));
        let files = TlsFiles {
            cert: more.cert,
            key: more.key,
            ..files
        };
        let material = files.load().expect("loads");
        assert_eq!(
            files.identity(&material).expect("id").role,
            Role::Viewer("grafana".into())
        );
    }
}
