//! Accepts TCP connections, completes the TLS handshake (bounded in time and in concurrency, so a
//! reconnect storm can't starve established streams) and hands tonic a stream that carries the
//! peer's SPIFFE identity as connect info.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use autoheal_proto::identity::Identity;
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::Instrument;

/// Who is on the other end of a connection. Inserted by tonic into every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub identity: Identity,
    pub remote: SocketAddr,
}

/// A TLS connection whose client certificate has been verified.
#[derive(Debug)]
pub struct PeerStream {
    tls: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

#[derive(Debug)]
pub struct TlsListener {
    pub listener: TcpListener,
    pub configs: watch::Receiver<Arc<ServerConfig>>,
    pub handshakes: Arc<Semaphore>,
    pub handshake_timeout: Duration,
    pub accepted: mpsc::Sender<io::Result<PeerStream>>,
}

impl TlsListener {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let config = self.configs.borrow().clone();
                    let handshakes = self.handshakes.clone();
                    let tx = self.accepted.clone();
                    let timeout = self.handshake_timeout;
                    tokio::spawn(
                        async move {
                            // Waiting for a permit happens off the accept loop: the storm queues,
                            // established streams keep their CPU.
                            let Ok(_permit) = handshakes.acquire_owned().await else {
                                return;
                            };
                            match tokio::time::timeout(timeout, handshake(tcp, remote, config))
                                .await
                            {
                                Ok(Ok(stream)) => {
                                    let _ = tx.send(Ok(stream)).await;
                                }
                                Ok(Err(error)) => {
                                    crate::metrics::global().tls_refused("refused");
                                    tracing::info!(%remote, %error, "TLS handshake refused");
                                }
                                Err(_) => {
                                    crate::metrics::global().tls_refused("timeout");
                                    tracing::info!(%remote, "TLS handshake timed out");
                                }
                            }
                        }
                        .instrument(tracing::debug_span!("handshake")),
                    );
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    config: Arc<ServerConfig>,
) -> io::Result<PeerStream> {
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate"))?;
    // The verifier already checked the SPIFFE ID; parsing again here only extracts it.
    let identity = Identity::from_certificate(leaf)
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    tracing::debug!(%remote, peer = %identity, "TLS handshake complete");
    Ok(PeerStream {
        tls,
        info: PeerInfo { identity, remote },
    })
}
