//! A fake coordinator for the agent's reporter: the real `AgentService` protocol over real mTLS
//! (the PKI's coordinator certificate), recording what arrives and acking it like a durable
//! store, with scripted behaviour (redirect, a directive after Welcome, going away).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use autoheal_common::tls::server_config;
use autoheal_proto::v1::{
    self, agent_message, agent_service_server::AgentService,
    agent_service_server::AgentServiceServer, coordinator_message,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::Pki;

/// What the fake coordinator saw.
#[derive(Debug, Default)]
pub struct Recorded {
    pub hellos: Vec<v1::Hello>,
    /// Events accepted (first delivery), in arrival order, per epoch.
    pub accepted: Vec<v1::Event>,
    /// Highest contiguous seq per epoch.
    pub acked: BTreeMap<u64, u64>,
    pub duplicates: u64,
    /// Seqs that arrived after a gap (an event was skipped).
    pub gaps: Vec<(u64, u64)>,
    pub heartbeats: Vec<v1::Heartbeat>,
}

#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    pub redirect_to: Option<String>,
    pub directive: Option<v1::Directive>,
    pub coordinator_id: String,
}

#[derive(Debug, Clone)]
struct Fake {
    recorded: Arc<Mutex<Recorded>>,
    behaviour: Behaviour,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl AgentService for Fake {
    type ConnectStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::CoordinatorMessage, tonic::Status>> + Send>,
    >;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<v1::AgentMessage>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4096);
        let me = self.clone();
        tokio::spawn(async move {
            let send = |kind| v1::CoordinatorMessage { kind: Some(kind) };
            let Ok(Some(v1::AgentMessage {
                kind: Some(agent_message::Kind::Hello(hello)),
            })) = inbound.message().await
            else {
                let _ = tx
                    .send(Err(tonic::Status::invalid_argument("expected Hello first")))
                    .await;
                return;
            };
            let epoch = hello.epoch;
            me.recorded.lock().expect("lock").hellos.push(hello);
            if let Some(to) = &me.behaviour.redirect_to {
                let _ = tx
                    .send(Ok(send(coordinator_message::Kind::Redirect(
                        v1::Redirect {
                            endpoint: to.clone(),
                            reason: "not the leader".into(),
                        },
                    ))))
                    .await;
                return;
            }
            let acked = me
                .recorded
                .lock()
                .expect("lock")
                .acked
                .get(&epoch)
                .copied()
                .unwrap_or(0);
            let _ = tx
                .send(Ok(send(coordinator_message::Kind::Welcome(v1::Welcome {
                    acked_seq: acked,
                    coordinator_id: me.behaviour.coordinator_id.clone(),
                    heartbeat_interval: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                }))))
                .await;
            if let Some(d) = &me.behaviour.directive {
                let _ = tx
                    .send(Ok(send(coordinator_message::Kind::Directive(d.clone()))))
                    .await;
            }
            loop {
                let msg = tokio::select! {
                    () = me.stop.cancelled() => {
                        let _ = tx.send(Err(tonic::Status::unavailable("coordinator going away"))).await;
                        return;
                    }
                    m = inbound.message() => m,
                };
                let Ok(Some(msg)) = msg else { return };
                let ack = {
                    let mut r = me.recorded.lock().expect("lock");
                    match msg.kind {
                        Some(agent_message::Kind::Event(e)) => {
                            let max = r.acked.get(&epoch).copied().unwrap_or(0);
                            if e.seq <= max {
                                r.duplicates += 1;
                            } else {
                                if e.seq != max + 1 {
                                    r.gaps.push((max, e.seq));
                                }
                                r.acked.insert(epoch, e.seq);
                                r.accepted.push(e);
                            }
                        }
                        Some(agent_message::Kind::Heartbeat(h)) => r.heartbeats.push(h),
                        _ => {}
                    }
                    r.acked.get(&epoch).copied().unwrap_or(0)
                };
                let _ = tx
                    .send(Ok(send(coordinator_message::Kind::Ack(v1::Ack {
                        seq: ack,
                    }))))
                    .await;
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A TLS connection for tonic's `serve_with_incoming`.
struct Conn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A fake coordinator on `addr`: shares `recorded` across restarts (like a durable store).
#[derive(Debug)]
pub struct FakeCoordinator {
    pub addr: SocketAddr,
    pub recorded: Arc<Mutex<Recorded>>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl FakeCoordinator {
    /// Serves on `addr` (port 0 for any) with `pki`'s coordinator certificate.
    pub async fn start(
        addr: SocketAddr,
        pki: &Pki,
        recorded: Arc<Mutex<Recorded>>,
        behaviour: Behaviour,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind coordinator");
        let addr = listener.local_addr().expect("addr");
        let config = server_config(
            pki.coordinator().load().expect("server pki"),
            &pki.trust_domain,
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let stop = CancellationToken::new();
        let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<Conn>>(16);
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    () = accept_stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let acceptor = acceptor.clone();
                let conn_tx = conn_tx.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = conn_tx.send(Ok(Conn(tls))).await;
                    }
                });
            }
        });
        let fake = Fake {
            recorded: recorded.clone(),
            behaviour,
            stop: stop.clone(),
        };
        let server_stop = stop.clone();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(fake))
                .serve_with_incoming_shutdown(
                    ReceiverStream::new(conn_rx),
                    server_stop.cancelled_owned(),
                )
                .await;
        });
        Self {
            addr,
            recorded,
            stop,
            server,
        }
    }

    /// Goes away: stops accepting and ends every open stream with UNAVAILABLE.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}
