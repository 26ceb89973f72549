//! Mutual-TLS configurations for the fleet, from PEM files.
//!
//! One TLS stack (rustls) with one crypto provider (aws-lc-rs, the one the AWS SDK uses too).
//! TLS 1.3 and 1.2 only; the server requires a client certificate that chains to the fleet CA and
//! carries exactly one SPIFFE ID in the fleet's trust domain, so a wrong, expired, foreign or
//! missing certificate is refused during the handshake.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use tokio::sync::watch;

use crate::error::DisplayChain;
use tokio_util::sync::CancellationToken;

use autoheal_proto::identity::{Identity, TrustDomain};

/// The protocol versions we speak: TLS 1.3 preferred, 1.2 for older peers, nothing older.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no certificate found (expected PEM \"CERTIFICATE\" blocks)")]
    NoCertificates { path: PathBuf },
    #[error("{path}: no private key found (expected a PEM PKCS#8, RSA or EC private key)")]
    NoKey { path: PathBuf },
    #[error("{path}: CA file holds no usable certificate; refusing to trust nothing")]
    EmptyRoots { path: PathBuf },
    #[error("{path}: CA certificate rejected")]
    BadRoot {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("certificate and key don't form a usable identity")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{path}: {source}")]
    Identity {
        path: PathBuf,
        #[source]
        source: autoheal_proto::identity::IdentityError,
    },
}

/// Where a party's CA bundle, certificate chain and private key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The parsed contents of [`TlsFiles`].
pub struct Material {
    pub roots: RootCertStore,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Material")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Paths relative to `base` (the config file's folder) are resolved against it.
    pub fn resolve(&self, base: &Path) -> Self {
        Self {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }

    pub fn load(&self) -> Result<Material, TlsError> {
        let ca = read(&self.ca)?;
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        self.parse(&ca, &cert, &key)
    }

    fn parse(&self, ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Material, TlsError> {
        let roots_der = certificates(&self.ca, ca)?;
        let mut roots = RootCertStore::empty();
        for der in roots_der {
            roots.add(der).map_err(|source| TlsError::BadRoot {
                path: self.ca.clone(),
                source,
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::EmptyRoots {
                path: self.ca.clone(),
            });
        }
        let chain = certificates(&self.cert, cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| match source {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: self.key.clone(),
            },
            source => TlsError::Pem {
                path: self.key.clone(),
                source,
            },
        })?;
        Ok(Material { roots, chain, key })
    }

    /// The SPIFFE identity of our own certificate.
    pub fn identity(&self, material: &Material) -> Result<Identity, TlsError> {
        let leaf = material
            .chain
            .first()
            .ok_or_else(|| TlsError::NoCertificates {
                path: self.cert.clone(),
            })?;
        Identity::from_certificate(leaf).map_err(|source| TlsError::Identity {
            path: self.cert.clone(),
            source,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The one crypto provider of the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server side: client certificates required, chained to the fleet CA, with a SPIFFE ID in
/// `trust_domain`. ALPN h2 (gRPC).
pub fn server_config(
    material: Material,
    trust_domain: &TrustDomain,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let inner =
        WebPkiClientVerifier::builder_with_provider(Arc::new(material.roots), provider.clone())
            .build()?;
    let verifier = Arc::new(SpiffeClientVerifier {
        inner,
        trust_domain: trust_domain.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain, material.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Client side: the server must chain to the fleet CA and match the name we dial; we present
/// our own certificate. ALPN h2 (gRPC).
pub fn client_config(material: Material) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(material.roots)
        .with_client_auth_cert(material.chain, material.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// WebPKI chain verification plus: the leaf must carry exactly one SPIFFE ID, in our trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
}

#[derive(Debug, thiserror::Error)]
#[error("client certificate is for trust domain {found:?}, expected {expected:?}")]
struct ForeignTrustDomain {
    found: String,
    expected: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = Identity::from_certificate(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if identity.trust_domain != self.trust_domain {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(ForeignTrustDomain {
                    found: identity.trust_domain.to_string(),
                    expected: self.trust_domain.to_string(),
                }))),
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Watches a server's certificate files and publishes a new [`ServerConfig`] when they change,
/// so certificates rotate without a restart. A broken or half-written set of files is logged
/// and ignored: the last good configuration stays in force.
#[derive(Debug)]
pub struct ServerReloader {
    files: TlsFiles,
    trust_domain: TrustDomain,
    interval: Duration,
    last_seen: Vec<u8>,
    tx: watch::Sender<Arc<ServerConfig>>,
}

impl ServerReloader {
    /// Loads the files once (an error here is fatal: a server without certificates can't start).
    pub fn new(
        files: TlsFiles,
        trust_domain: TrustDomain,
        interval: Duration,
    ) -> Result<(Self, watch::Receiver<Arc<ServerConfig>>), TlsError> {
        let last_seen = fingerprint(&files);
        let config = Arc::new(server_config(files.load()?, &trust_domain)?);
        let (tx, rx) = watch::channel(config);
        Ok((
            Self {
                files,
                trust_domain,
                interval,
                last_seen,
                tx,
            },
            rx,
        ))
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.check(),
            }
        }
    }

    fn check(&mut self) {
        let seen = fingerprint(&self.files);
        if seen == self.last_seen {
            return;
        }
        // Remember what we tried, so a bad set is reported once, not every tick; the next
        // change (e.g. the key landing after the cert) is tried again.
        self.last_seen = seen;
        match self
            .files
            .load()
            .and_then(|m| server_config(m, &self.trust_domain))
        {
            Ok(config) => {
                self.tx.send_replace(Arc::new(config));
                tracing::info!(cert = %self.files.cert.display(), "reloaded TLS certificate");
            }
            Err(error) => tracing::warn!(
                error = %DisplayChain(&error),
                "certificate files changed but can't be used; keeping the previous ones"
            ),
        }
    }
}

fn fingerprint(files: &TlsFiles) -> Vec<u8> {
    let mut all = Vec::new();
    for path in [&files.ca, &files.cert, &files.key] {
        all.extend(std::fs::read(path).unwrap_or_default());
        all.push(0);
    }
    all
}

/// A gRPC channel to `endpoint` (`host:port` or `https://host:port`) over mutual TLS with
/// `config`. The server's certificate must match `host`. Connects lazily: errors surface on the
/// first call, so callers see one error path.
pub fn channel(
    endpoint: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, EndpointError> {
    let (host, port) = split_endpoint(endpoint)?;
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| EndpointError(endpoint.to_owned(), "host is not a DNS name or IP"))?;
    let uri = format!("http://{}:{port}", bracket(&host));
    let connector = tower::service_fn(move |_uri: http_uri::Uri| {
        let config = config.clone();
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(tonic::transport::Endpoint::from_shared(uri)
        .map_err(|_| EndpointError(endpoint.to_owned(), "not a valid address"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connector))
}

use tonic::codegen::http::uri as http_uri;

#[derive(Debug, thiserror::Error)]
#[error("endpoint {0:?}: {1}; expected host:port or https://host:port")]
pub struct EndpointError(String, &'static str);

/// Splits `host:port`, `https://host:port`, `[::1]:port` into host and port.
pub fn split_endpoint(endpoint: &str) -> Result<(String, u16), EndpointError> {
    let err = |why| EndpointError(endpoint.to_owned(), why);
    let rest = endpoint
        .strip_prefix("https://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    if rest.contains("://") {
        return Err(err("only https:// is spoken"));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(err("missing host"));
    }
    let port = port.parse().map_err(|_| err("port is not a number"))?;
    Ok((host.to_owned(), port))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            split_endpoint("127.0.0.1:7443").expect("ok"),
            ("127.0.0.1".into(), 7443)
        );
        assert_eq!(
            split_endpoint("https://coord.example.com:443/").expect("ok"),
            ("coord.example.com".into(), 443)
        );
        assert_eq!(
            split_endpoint("[::1]:7443").expect("ok"),
            ("::1".into(), 7443)
        );
        for bad in ["localhost", "http://a:1", ":1", "a:b"] {
            assert!(split_endpoint(bad).is_err(), "{bad}");
        }
    }
}
