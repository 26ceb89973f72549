//! SPIFFE-style identities: `spiffe://<trust-domain>/<role>/<name>`, carried as the single URI SAN
//! of every certificate in the fleet.
//!
//! The role is bound by the path: `/instance/<id>` is an agent that may speak only for that
//! instance, `/operator/<name>` may steer the fleet, `/viewer/<name>` may only read.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

const SCHEME: &str = "spiffe://";
const MAX_SEGMENT: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    NotSpiffe(String),
    #[error("trust domain {0:?} is invalid: use 1-255 lowercase letters, digits, '.', '-' or '_'")]
    TrustDomain(String),
    #[error(
        "SPIFFE ID {0:?} has an unknown path: expected /instance/<id>, /operator/<name> or /viewer/<name>"
    )]
    Path(String),
    #[error("{kind} {value:?} is invalid: use 1-{MAX_SEGMENT} letters, digits, '.', '-' or '_'")]
    Segment { kind: &'static str, value: String },
    #[error("certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeSan,
    #[error("certificate has {0} URI SANs; exactly one (spiffe://…) is allowed")]
    ManySpiffeSans(usize),
}

/// A validated trust domain, e.g. `autoheal.local` or `prod.example.com`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(domain: &str) -> Result<Self, IdentityError> {
        let ok = !domain.is_empty()
            && domain.len() <= 255
            && domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if ok {
            Ok(Self(domain.to_owned()))
        } else {
            Err(IdentityError::TrustDomain(echo(domain)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a certificate holder may do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agent, speaking only for this instance id.
    Instance(String),
    /// May call everything in `FleetService`.
    Operator(String),
    /// May call the read-only part of `FleetService`.
    Viewer(String),
}

impl Role {
    fn path(&self) -> (&'static str, &str) {
        match self {
            Role::Instance(id) => ("instance", id),
            Role::Operator(name) => ("operator", name),
            Role::Viewer(name) => ("viewer", name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: TrustDomain,
    pub role: Role,
}

impl Identity {
    pub fn new(trust_domain: TrustDomain, role: Role) -> Result<Self, IdentityError> {
        let (kind, name) = role.path();
        validate_segment(kind, name)?;
        Ok(Self { trust_domain, role })
    }

    pub fn instance(trust_domain: &TrustDomain, id: &str) -> Result<Self, IdentityError> {
        Self::new(trust_domain.clone(), Role::Instance(id.to_owned()))
    }

    pub fn operator(trust_domain: &TrustDomain, name: &str) -> Result<Self, IdentityError> {
        Self::new(trust_domain.clone(), Role::Operator(name.to_owned()))
    }

    pub fn viewer(trust_domain: &TrustDomain, name: &str) -> Result<Self, IdentityError> {
        Self::new(trust_domain.clone(), Role::Viewer(name.to_owned()))
    }

    /// Parses `spiffe://<trust-domain>/<role>/<name>`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::NotSpiffe(echo(uri)))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Path(echo(uri)))?;
        let trust_domain = TrustDomain::new(domain)?;
        let role = match path.split_once('/') {
            Some(("instance", id)) => Role::Instance(id.to_owned()),
            Some(("operator", name)) => Role::Operator(name.to_owned()),
            Some(("viewer", name)) => Role::Viewer(name.to_owned()),
            _ => return Err(IdentityError::Path(echo(uri))),
        };
        Self::new(trust_domain, role)
    }

    /// The identity in the URI SAN of a DER certificate. Exactly one URI SAN is allowed, of any
    /// scheme in any case: a second one (`SPIFFE://…`, `https://…`) is refused, not ignored, so
    /// no certificate can carry an identity a less careful verifier would read differently.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoSpiffeSan),
            [uri] => Self::parse(uri),
            many => Err(IdentityError::ManySpiffeSans(many.len())),
        }
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }

    pub fn instance_id(&self) -> Option<&str> {
        match &self.role {
            Role::Instance(id) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = self.role.path();
        write!(f, "{SCHEME}{}/{kind}/{name}", self.trust_domain)
    }
}

/// Instance ids and names become path segments of a SPIFFE ID and file names of certificates:
/// keep them to a safe alphabet.
/// At most 64 characters of input from outside, for error messages (a client's 900 KiB id must
/// not come back as a 900 KiB error).
fn echo(input: &str) -> String {
    match input.char_indices().nth(64) {
        None => input.to_owned(),
        Some((end, _)) => format!("{}…", &input[..end]),
    }
}

pub fn validate_segment(kind: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_SEGMENT
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment {
            kind,
            value: echo(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_uris(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).expect("ia5")))
            .collect();
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn errors_echo_only_a_short_prefix_of_the_input() {
        let huge = "x".repeat(900 * 1024) + "/";
        let e = validate_segment("instance id", &huge).expect_err("invalid");
        assert!(e.to_string().len() < 200, "{} bytes", e.to_string().len());
        let e = Identity::parse(&format!("spiffe://{huge}")).expect_err("invalid");
        assert!(e.to_string().len() < 200);
    }

    #[test]
    fn exactly_one_uri_san_whatever_the_scheme_or_its_case() {
        let one = cert_with_uris(&["spiffe://autoheal.local/instance/i-1"]);
        assert_eq!(
            Identity::from_certificate(&one).expect("one").instance_id(),
            Some("i-1")
        );
        for extra in [
            "SPIFFE://autoheal.local/operator/mallory",
            "https://example.com/x",
        ] {
            let two = cert_with_uris(&["spiffe://autoheal.local/instance/i-1", extra]);
            assert_eq!(
                Identity::from_certificate(&two),
                Err(IdentityError::ManySpiffeSans(2)),
                "{extra}"
            );
        }
        let upper = cert_with_uris(&["SPIFFE://autoheal.local/instance/i-1"]);
        assert!(Identity::from_certificate(&upper).is_err());
    }

    #[test]
    fn parses_and_prints_every_role() {
        for uri in [
            "spiffe://autoheal.local/instance/i-0123456789abcdef0",
            "spiffe://autoheal.local/operator/alice",
            "spiffe://prod.example.com/viewer/grafana",
        ] {
            let id = Identity::parse(uri).expect(uri);
            assert_eq!(id.to_string(), uri);
        }
        let id = Identity::parse("spiffe://td/instance/i-1").expect("valid");
        assert_eq!(id.instance_id(), Some("i-1"));
    }

    #[test]
    fn rejects_malformed_ids() {
        for uri in [
            "https://autoheal.local/instance/i-1",
            "spiffe://autoheal.local",
            "spiffe://autoheal.local/admin/root",
            "spiffe://Autoheal.Local/instance/i-1",
            "spiffe://autoheal.local/instance/",
            "spiffe://autoheal.local/instance/i-1/extra",
            "spiffe://autoheal.local/instance/..",
            "spiffe:///instance/i-1",
        ] {
            assert!(Identity::parse(uri).is_err(), "{uri} must be rejected");
        }
    }
}
