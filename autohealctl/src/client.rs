//! `autohealctl`'s client side: connecting to the fleet API with an operator or viewer
//! certificate, and explaining in one line why a call was refused.

use std::{sync::Arc, time::Duration};

use autoheal_common::tls::{self, TlsFiles};
use autoheal_proto::{MAX_MESSAGE_BYTES, v1::fleet_service_client::FleetServiceClient};
use tonic::transport::Channel;

pub type Client = FleetServiceClient<Channel>;

/// Opens a lazy mTLS channel to the coordinator's fleet API.
pub fn connect(endpoint: &str, files: &TlsFiles) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let material = files.load().with_context(|| {
        format!(
            "cannot load the client certificate {}",
            files.cert.display()
        )
    })?;
    let config = tls::client_config(material).context("cannot build the TLS client")?;
    let channel = tls::channel(endpoint, Arc::new(config), Duration::from_secs(5))?;
    Ok(FleetServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// After a call failed on the connection: redo the TLS handshake by hand to learn why. Under
/// TLS 1.3 the server judges our certificate after the handshake looks done to us, and its alert
/// ("unknown CA", "certificate expired") is lost inside the HTTP/2 connection error.
pub async fn diagnose_tls(endpoint: &str, files: &TlsFiles) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (host, port) = tls::split_endpoint(endpoint).ok()?;
    let config = Arc::new(tls::client_config(files.load().ok()?).ok()?);
    let name = rustls_pki_types::ServerName::try_from(host.clone()).ok()?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .ok()?
    .ok()?;
    let mut stream = match tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return Some(format!("TLS handshake failed: {e}")),
    };
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Err(e)) => Some(e.to_string()),
        Ok(Ok(0)) => Some("the coordinator closed the connection".to_owned()),
        _ => None,
    }
}

/// One line that says what went wrong, in the words an operator searches for.
pub fn explain(status: &tonic::Status, endpoint: &str, tls: Option<&str>) -> String {
    if let Some(why) = tls {
        let lower = why.to_lowercase();
        if lower.contains("alert") || lower.contains("certificate") || lower.contains("closed") {
            return format!(
                "certificate refused by the coordinator at {endpoint}: {why} (is --cert signed by the fleet CA, unexpired, in its trust domain?)"
            );
        }
        if lower.contains("handshake") {
            return format!("TLS with the coordinator at {endpoint} failed: {why}");
        }
    }
    let mut chain = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let lower = chain.to_lowercase();
    match status.code() {
        tonic::Code::PermissionDenied => format!("permission denied: {}", status.message()),
        tonic::Code::Unauthenticated => format!("not authenticated: {}", status.message()),
        tonic::Code::Unavailable if lower.contains("invalid peer certificate") => {
            format!("server certificate not trusted by our CA ({endpoint}){chain}")
        }
        tonic::Code::Unavailable if lower.contains("alert") || lower.contains("certificate") => {
            format!("certificate refused by the coordinator at {endpoint}{chain}")
        }
        tonic::Code::Unavailable => format!("cannot connect to {endpoint}{chain}"),
        code => format!("{code:?}: {}{chain}", status.message()),
    }
}

/// The coordinator's response metadata naming who answered (`leader`, or
/// `follower; leader=<endpoint>`); the coordinator's `edges::grpc::fleet::ANSWERED_BY`.
pub const ANSWERED_BY: &str = "autoheal-answered-by";

/// Says on stderr when a follower answered, so a table of "disconnected" agents is not mistaken
/// for the fleet's state; passes the response on.
pub fn noted<T>(response: tonic::Response<T>) -> tonic::Response<T> {
    if let Some(note) = response
        .metadata()
        .get(ANSWERED_BY)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::tables::answered_by)
    {
        eprintln!("autohealctl: {note}");
    }
    response
}
