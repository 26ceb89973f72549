//! Test support: a throwaway PKI, a fake coordinator that speaks the real protocol over mTLS,
//! agent startup from TOML, and poll-until helpers with generous deadlines.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use autoheal_agent::{Agent, Config, state::Emitted};
use autoheal_common::tls::{TlsFiles, server_config};
use autoheal_proto::{
    identity::TrustDomain,
    v1::{
        self, agent_message, agent_service_server::AgentService,
        agent_service_server::AgentServiceServer, coordinator_message,
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{broadcast, mpsc},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `f` until it returns Some, or panics with `what` after `DEADLINE`.
pub async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Collects events from the agent's local tap.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Emitted>,
    pub seen: Vec<v1::event::Kind>,
}

impl Events {
    pub fn new(agent: &Agent) -> Self {
        Self {
            rx: agent.events.subscribe(),
            seen: Vec::new(),
        }
    }

    pub fn drain(&mut self) -> &[v1::event::Kind] {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e.kind);
        }
        &self.seen
    }

    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&v1::event::Kind) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut checked = 0;
        loop {
            self.drain();
            for e in &self.seen[checked..] {
                if let Some(v) = f(e) {
                    return v;
                }
            }
            checked = self.seen.len();
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; saw {:#?}",
                self.seen
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn restarts(&mut self, service: &str) -> Vec<v1::RestartAttempted> {
        self.drain()
            .iter()
            .filter_map(|e| match e {
                v1::event::Kind::RestartAttempted(r) if r.service == service => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn start_agent(dir: &Path, toml: &str) -> (Agent, CancellationToken) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).expect("write config");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let shutdown = CancellationToken::new();
    let agent = Agent::start(config, autoheal_agent::clock::system(), shutdown.clone())
        .expect("agent starts");
    (agent, shutdown)
}

/// Writes a CA, a server certificate for localhost/127.0.0.1 and an instance certificate for
/// `instance` into `dir`; returns the server's and the agent's file sets.
pub fn pki(dir: &Path, instance: &str) -> (TlsFiles, TlsFiles) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);

    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    let ca = write("ca.pem", ca_cert.pem());

    let leaf = |sans: Vec<SanType>, name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let cert_path = write(&format!("{name}.pem"), cert.pem());
        let key_path = write(&format!("{name}-key.pem"), key.serialize_pem());
        (cert_path, key_path)
    };
    let (scert, skey) = leaf(
        vec![
            SanType::DnsName("localhost".try_into().expect("dns")),
            SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            SanType::URI(
                "spiffe://autoheal.test/operator/coordinator"
                    .try_into()
                    .expect("uri"),
            ),
        ],
        "server",
    );
    let (acert, akey) = leaf(
        vec![SanType::URI(
            format!("spiffe://autoheal.test/instance/{instance}")
                .as_str()
                .try_into()
                .expect("uri"),
        )],
        "agent",
    );
    (
        TlsFiles {
            ca: ca.clone(),
            cert: scert,
            key: skey,
        },
        TlsFiles {
            ca,
            cert: acert,
            key: akey,
        },
    )
}

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
    pub async fn start(
        addr: SocketAddr,
        files: &TlsFiles,
        recorded: Arc<Mutex<Recorded>>,
        behaviour: Behaviour,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind coordinator");
        let addr = listener.local_addr().expect("addr");
        let config = server_config(
            files.load().expect("server pki"),
            &TrustDomain::new("autoheal.test").expect("td"),
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

pub fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

pub fn tls_section(files: &TlsFiles) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

pub fn socket_section(dir: &Path) -> String {
    format!(
        "[status]\nsocket = \"{}\"\n",
        dir.join("agent.sock").display()
    )
}

pub fn pid_of(agent: &Agent, service: &str) -> Option<u32> {
    agent.snapshot(service).and_then(|s| s.pid)
}

pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal");
}

pub fn python_server(port: u16) -> String {
    format!("[\"python3\", \"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]")
}

pub fn dir_of(p: &Path) -> PathBuf {
    p.to_owned()
}
