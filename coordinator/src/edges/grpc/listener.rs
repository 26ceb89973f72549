//! Accepts TCP connections, completes the TLS handshake (bounded in time and in concurrency, so a
//! reconnect storm can't starve established streams) and hands tonic a stream that carries the
//! peer's SPIFFE identity as connect info.
//!
//! Abuse bounds, in the order a connection meets them:
//! 1. at most [`MAX_PENDING_PER_SOURCE`] connections per source address may be waiting for or
//!    in a handshake; more are closed at once;
//! 2. the first byte of the ClientHello must arrive within [`HELLO_WAIT`] (capped by the
//!    handshake timeout), *before* a handshake permit is taken: idle sockets hold no permit;
//! 3. the wait for a permit is bounded by the handshake timeout;
//! 4. the handshake itself is bounded by the handshake timeout.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
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

/// A server-side TLS connection and what is known of its peer (`I`), handed to tonic as connect
/// info. One type for both listeners: the agent port's (a verified SPIFFE identity) and the
/// enrollment port's (an address only).
#[derive(Debug)]
pub struct TlsConn<I> {
    pub(super) tls: TlsStream<TcpStream>,
    pub(super) info: I,
}

/// A TLS connection whose client certificate has been verified.
pub type PeerStream = TlsConn<PeerInfo>;

impl<I: Clone + Send + Sync + 'static> Connected for TlsConn<I> {
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<I: Unpin> AsyncRead for TlsConn<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl<I: Unpin> AsyncWrite for TlsConn<I> {
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

/// Connections one source address may have waiting for or in a handshake.
pub const MAX_PENDING_PER_SOURCE: usize = 128;
/// How long a new connection may take to send the first byte of its ClientHello.
pub const HELLO_WAIT: Duration = Duration::from_secs(3);

/// Pending connections by source address; an entry lives as long as its [`PendingSlot`].
#[derive(Debug, Default)]
struct Pending(std::sync::Mutex<HashMap<IpAddr, usize>>);

struct PendingSlot(Arc<Pending>, IpAddr);

impl Pending {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PendingSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= MAX_PENDING_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(PendingSlot(self.clone(), ip))
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut map = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
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
        let pending = Arc::new(Pending::default());
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let Some(slot) = pending.take(remote.ip()) else {
                        crate::metrics::global().tls_refused("per-source");
                        tracing::debug!(%remote, "too many pending connections from this address");
                        continue;
                    };
                    let config = self.configs.borrow().clone();
                    let handshakes = self.handshakes.clone();
                    let tx = self.accepted.clone();
                    let timeout = self.handshake_timeout;
                    tokio::spawn(
                        async move {
                            let _slot = slot;
                            // An idle socket takes no permit: first the ClientHello must start.
                            let mut first = [0u8; 1];
                            let hello =
                                tokio::time::timeout(HELLO_WAIT.min(timeout), tcp.peek(&mut first))
                                    .await;
                            if !matches!(hello, Ok(Ok(n)) if n > 0) {
                                crate::metrics::global().tls_refused("idle");
                                tracing::debug!(%remote, "no ClientHello in time");
                                return;
                            }
                            // Waiting for a permit happens off the accept loop, and is bounded:
                            // the storm queues, established streams keep their CPU.
                            let permit =
                                tokio::time::timeout(timeout, handshakes.acquire_owned()).await;
                            let Ok(Ok(_permit)) = permit else {
                                crate::metrics::global().tls_refused("busy");
                                tracing::info!(%remote, "no handshake slot in time");
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
