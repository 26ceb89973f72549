//! A small HTTP/1.1 client over a tokio `TcpStream`, or TLS over it (rustls): one request per
//! connection, enough for health checks and the EC2 metadata service. Keeps the binary lean (no
//! hyper client stack).

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// Largest response we read; the rest is ignored (a health check needs the head and a prefix).
pub const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    #[error("tls: {0:?} is not a valid server name")]
    ServerName(String),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Sends one request and reads the response, all within `timeout`.
pub async fn request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, HttpError> {
    request_over(host, port, method, path, headers, timeout, None).await
}

/// [`request`], over TLS with `tls` when given (the server verified as `host`).
pub async fn request_over(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(HttpError::Connect)?;
        stream.set_nodelay(true)?;
        match tls {
            None => exchange(stream, host, port, method, path, headers).await,
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|_| HttpError::ServerName(host.to_owned()))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(HttpError::Tls)?;
                exchange(stream, host, port, method, path, headers).await
            }
        }
    })
    .await
    .map_err(|_| HttpError::Timeout(timeout))?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, HttpError> {
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: autoheal-agent/{}\r\nAccept: */*\r\nConnection: close\r\n",
        autoheal_proto::VERSION
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    if method == "PUT" || method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_RESPONSE {
            return Err(HttpError::Malformed("response head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HttpError::Malformed("response head is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            }
        }
    }
    let mut body = buf.split_off(head_end);
    let want = if method == "HEAD" || status == 204 || status == 304 {
        0
    } else {
        content_length.unwrap_or(MAX_RESPONSE).min(MAX_RESPONSE)
    };
    while body.len() < want {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
        if chunked && find(&body, b"\r\n0\r\n\r\n").is_some() {
            break;
        }
    }
    body.truncate(want);
    if chunked {
        body = dechunk(&body);
    }
    Ok(Response { status, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Best-effort chunked decoding of what we read (it may be cut at MAX_RESPONSE).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    while let Some(eol) = find(raw, b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        if size == 0 {
            break;
        }
        raw = &raw[eol + 2..];
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        raw = raw.get(take + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(response: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        });
        port
    }

    #[tokio::test]
    async fn reads_status_and_body() {
        let port =
            serve_once(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown").await;
        let r = request("127.0.0.1", port, "GET", "/", &[], Duration::from_secs(10))
            .await
            .expect("response");
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"down");
    }

    #[tokio::test]
    async fn decodes_chunked_bodies() {
        let port = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let r = request("127.0.0.1", port, "GET", "/", &[], Duration::from_secs(10))
            .await
            .expect("response");
        assert_eq!(r.body, b"abcde");
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let port = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let e = request("127.0.0.1", port, "GET", "/", &[], Duration::from_secs(10))
            .await
            .expect_err("not http");
        assert!(matches!(e, HttpError::Malformed(_)), "{e}");
    }
}

/// https checks against a local TLS server whose certificate a test CA (rcgen) issued.
#[cfg(test)]
mod tls_tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
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
}
