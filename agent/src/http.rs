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
