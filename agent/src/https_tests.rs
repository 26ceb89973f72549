//! https checks end to end, through the probe and the HTTP client together: against a local
//! TLS server whose certificate a test CA (rcgen) issued. A module of its own so neither the
//! client (`http`) nor the probe depends on the other for its tests.

use std::{sync::Arc, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    config::{HttpProbe, Probe},
    probe::{self, Outcome},
};

struct TestCa {
    pem: String,
    server: rustls::ServerConfig,
}

fn test_ca() -> TestCa {
    let ca_key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("server cert");
    let server = rustls::ServerConfig::builder_with_provider(autoheal_common::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("server config");
    TestCa {
        pem: ca.pem(),
        server,
    }
}

/// Serves `HTTP/1.1 200` with body "tls ok" over TLS on a loopback port.
async fn serve(config: rustls::ServerConfig) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ntls ok")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn https_check(dir: &std::path::Path, port: u16, ca: Option<&str>) -> Probe {
    let ca_line = ca.map(|c| format!("ca = \"{c}\"\n")).unwrap_or_default();
    let toml = format!(
        "[status]\nsocket = \"{}/s.sock\"\n[services.web]\n[[services.web.checks]]\nkind = \"http\"\nurl = \"https://localhost:{port}/health\"\nbody_contains = \"ok\"\n{ca_line}",
        dir.display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).expect("write");
    let config = crate::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    config.services[0].checks[0].probe.clone()
}

#[tokio::test]
async fn an_https_check_verifies_the_server_with_the_configured_ca() {
    let ca = test_ca();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).expect("write ca");
    let port = serve(ca.server).await;
    let probe = https_check(dir.path(), port, Some("ca.pem"));
    assert!(matches!(
        &probe,
        Probe::Http(HttpProbe { tls: Some(_), .. })
    ));
    let outcome = probe::run(&probe, Duration::from_secs(10)).await;
    assert_eq!(outcome, Outcome::ok("HTTP 200"));
}

#[tokio::test]
async fn an_https_check_refuses_a_server_its_roots_do_not_vouch_for() {
    let ca = test_ca();
    let other = test_ca();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("other.pem"), &other.pem).expect("write ca");
    let port = serve(ca.server).await;
    // Another CA, then the system's roots: neither issued the test server's certificate.
    for ca_file in [Some("other.pem"), None] {
        let probe = https_check(dir.path(), port, ca_file);
        let outcome = probe::run(&probe, Duration::from_secs(10)).await;
        assert!(!outcome.ok, "{ca_file:?}: {outcome:?}");
        assert!(outcome.detail.starts_with("tls: "), "{}", outcome.detail);
    }
}

#[test]
fn a_missing_ca_file_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[status]\nsocket = \"{}/s.sock\"\n[services.web]\n[[services.web.checks]]\nkind = \"http\"\nurl = \"https://localhost/\"\nca = \"missing.pem\"\n[[services.web.checks]]\nkind = \"http\"\nurl = \"http://localhost/\"\nca = \"x.pem\"\n",
        dir.path().display()
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, toml).expect("write");
    let err = crate::Config::load(&path).expect_err("refused").to_string();
    assert!(err.contains("services.web.checks[0].ca"), "{err}");
    assert!(err.contains("services.web.checks[1].ca"), "{err}");
}
