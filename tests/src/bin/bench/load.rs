//! The load generator: N simulated agents in this process, each with its own certificate (its
//! SPIFFE ID names its instance, as the coordinator requires), its own TLS session and its own
//! Connect stream. They speak the real protocol like `autoheal-agent`'s reporter: Hello, Welcome,
//! heartbeats, events with sequence numbers acknowledged cumulatively, replay of unacknowledged
//! events after a reconnect, reconnect with exponential backoff and full jitter (500 ms .. 30 s).
//!
//! The coordinator answers every heartbeat and every event with exactly one Ack, in order, so
//! each stream keeps a FIFO of send times and an Ack's latency is the front of it.
//!
//! Also here: the echo baseline, a bare tonic server with the coordinator's rustls mTLS config
//! whose `AgentService.Connect` answers the Hello with a Welcome and every message with an Ack,
//! and nothing else.

use std::{
    collections::VecDeque,
    io,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use autoheal_common::tls::{self, TlsFiles};
use autoheal_proto::{
    identity::{Identity, TrustDomain},
    v1::{
        self, AgentMessage, CoordinatorMessage, agent_message,
        agent_service_client::AgentServiceClient,
        agent_service_server::{AgentService, AgentServiceServer},
        coordinator_message,
    },
};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{ClientConfig, client::Resumption};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot, watch},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, transport::server::Connected};

use crate::util::Rng;

/// One simulated agent's identity: its instance id and a client config with its certificate.
pub struct Ident {
    pub id: String,
    pub config: Arc<ClientConfig>,
}

/// Instance ids `i-b000000000000000`, `i-b000000000000001`, ...
pub fn instance_ids(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("i-b{k:015x}")).collect()
}

/// Certificates for `ids`, issued in memory by the PKI's CA (no files: 10k+ of them). Each
/// agent has its own ClientConfig (the certificate differs), sharing the root store and crypto
/// provider; resumption is off, so every reconnect is a full mTLS handshake (the worst case,
/// and a resumed TLS 1.3 session must never carry one agent's identity over to another).
pub fn identities(pki_dir: &Path, td: &TrustDomain, ids: &[String]) -> Result<Vec<Ident>> {
    let ca_pem = std::fs::read_to_string(pki_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("ca-key.pem"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let files = TlsFiles {
        ca: pki_dir.join("ca.pem"),
        cert: pki_dir.join("coordinator.pem"),
        key: pki_dir.join("coordinator-key.pem"),
    };
    let roots = Arc::new(files.load()?.roots);
    let provider = tls::provider();
    let now = time::OffsetDateTime::now_utc();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let identity = Identity::instance(td, id)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "autoheal");
        dn.push(DnType::CommonName, format!("instance {id}"));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(7);
        let cert = params.signed_by(&key, &issuer)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls::PROTOCOL_VERSIONS)?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = Resumption::disabled();
        out.push(Ident {
            id: id.clone(),
            config: Arc::new(config),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Heartbeats only.
    Idle,
    /// The first `flooders` agents keep `window` events in flight each, as fast as acked.
    Flood,
    /// Every agent sends one event with each heartbeat.
    Trickle,
}

/// What the whole load generator saw. Latencies in microseconds.
#[derive(Debug, Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub generation: AtomicU64,
    pub welcomed_in_generation: AtomicU64,
    pub recording: AtomicBool,
    pub heartbeat_us: Mutex<Vec<u32>>,
    pub event_us: Mutex<Vec<u32>>,
    pub events_acked: AtomicU64,
    pub generated: AtomicU64,
    pub confirmed: AtomicU64,
    pub dropped: AtomicU64,
    pub connect_failures: AtomicU64,
    pub sessions_ended: AtomicU64,
}

impl Stats {
    pub fn take_heartbeats(&self) -> Vec<f64> {
        take(&self.heartbeat_us)
    }

    pub fn take_events(&self) -> Vec<f64> {
        take(&self.event_us)
    }
}

/// Takes the recorded latencies, in milliseconds.
fn take(v: &Mutex<Vec<u32>>) -> Vec<f64> {
    std::mem::take(&mut *v.lock().unwrap_or_else(|p| p.into_inner()))
        .into_iter()
        .map(|us| f64::from(us) / 1000.0)
        .collect()
}

fn record(v: &Mutex<Vec<u32>>, d: Duration) {
    let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    v.lock().unwrap_or_else(|p| p.into_inner()).push(us);
}

/// Ask one agent to escalate; answers with the moment the Escalated event was written to the
/// stream.
pub type Escalate = oneshot::Sender<Instant>;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub endpoint: String,
    pub heartbeat: Duration,
    pub flooders: usize,
    pub window: usize,
    /// First connections in flight at once (the ramp); reconnects are not limited.
    pub ramp_parallel: usize,
}

/// A running set of simulated agents; stopped when dropped.
pub struct Load {
    pub stats: Arc<Stats>,
    mode: watch::Sender<Mode>,
    pub escalate: Vec<mpsc::Sender<Escalate>>,
    stop: CancellationToken,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Load {
    pub fn start(idents: &[Ident], config: &LoadConfig) -> Self {
        let stats = Arc::new(Stats::default());
        let (mode, mode_rx) = watch::channel(Mode::Idle);
        let stop = CancellationToken::new();
        let ramp = Arc::new(Semaphore::new(config.ramp_parallel));
        let shared = Arc::new(config.clone());
        let mut escalate = Vec::new();
        let mut seed = Rng::seeded();
        for (i, ident) in idents.iter().enumerate() {
            let (tx, rx) = mpsc::channel(4);
            escalate.push(tx);
            let agent = Agent {
                id: ident.id.clone(),
                config: ident.config.clone(),
                flooder: i < config.flooders,
                epoch: (i as u64 + 1) << 20 | 1,
                next_seq: 1,
                acked: 0,
                unacked: VecDeque::new(),
                state: v1::ServiceState::Healthy,
                generation_seen: 0,
                rng: Rng::new((seed.next_f64() * 1e15) as u64),
            };
            tokio::spawn(agent.run(
                shared.clone(),
                stats.clone(),
                mode_rx.clone(),
                rx,
                ramp.clone(),
                stop.clone(),
            ));
        }
        Self {
            stats,
            mode,
            escalate,
            stop,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    pub fn connected(&self) -> u64 {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Waits until `n` agents hold a welcomed stream; returns how long it took, or `None` after
    /// `limit`.
    pub async fn wait_connected(&self, n: u64, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        while self.connected() < n {
            if t.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(t.elapsed())
    }
}

struct Agent {
    id: String,
    config: Arc<ClientConfig>,
    flooder: bool,
    epoch: u64,
    next_seq: u64,
    acked: u64,
    unacked: VecDeque<v1::Event>,
    state: v1::ServiceState,
    generation_seen: u64,
    rng: Rng,
}

/// Like the agent's `event_buffer` default.
const EVENT_BUFFER: usize = 1024;

enum Sent {
    Heartbeat(Instant),
    Event(Instant),
}

impl Agent {
    fn event(&mut self, stats: &Stats, kind: v1::event::Kind) -> v1::Event {
        let e = v1::Event {
            seq: self.next_seq,
            at: Some(SystemTime::now().into()),
            kind: Some(kind),
        };
        self.next_seq += 1;
        stats.generated.fetch_add(1, Ordering::Relaxed);
        if self.unacked.len() == EVENT_BUFFER {
            self.unacked.pop_front();
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.unacked.push_back(e.clone());
        e
    }

    /// A service flapping between healthy and unhealthy: an ordinary state-change event.
    fn state_change(&mut self, stats: &Stats) -> v1::Event {
        let to = if self.state == v1::ServiceState::Healthy {
            v1::ServiceState::Unhealthy
        } else {
            v1::ServiceState::Healthy
        };
        let from = std::mem::replace(&mut self.state, to);
        self.event(
            stats,
            v1::event::Kind::ServiceStateChanged(v1::ServiceStateChanged {
                service: "web".into(),
                from: from.into(),
                to: to.into(),
                reason: "bench".into(),
            }),
        )
    }

    fn hello(&self) -> AgentMessage {
        AgentMessage {
            kind: Some(agent_message::Kind::Hello(v1::Hello {
                instance_id: self.id.clone(),
                availability_zone: "bench-1a".into(),
                agent_version: "bench".into(),
                epoch: self.epoch,
                last_seq: self.next_seq - 1,
                services: vec![v1::ServiceSpec {
                    name: "web".into(),
                    unit: "web.service".into(),
                    depends_on: vec![],
                    checks: vec![],
                }],
                healing_paused: false,
            })),
        }
    }

    fn heartbeat(&self) -> AgentMessage {
        AgentMessage {
            kind: Some(agent_message::Kind::Heartbeat(v1::Heartbeat {
                last_seq: self.next_seq - 1,
                dropped_events: 0,
                services: vec![v1::ServiceStatus {
                    name: "web".into(),
                    state: self.state.into(),
                }],
            })),
        }
    }

    async fn run(
        mut self,
        config: Arc<LoadConfig>,
        stats: Arc<Stats>,
        mut mode: watch::Receiver<Mode>,
        mut escalations: mpsc::Receiver<Escalate>,
        ramp: Arc<Semaphore>,
        stop: CancellationToken,
    ) {
        let phase = config.heartbeat.mul_f64(self.rng.next_f64());
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + phase, config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let mut first = true;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let permit = if first {
                ramp.clone().acquire_owned().await.ok()
            } else {
                None
            };
            let welcomed = self
                .session(
                    &config,
                    &stats,
                    &mut mode,
                    &mut escalations,
                    &mut tick,
                    permit,
                    &stop,
                )
                .await;
            if welcomed {
                first = false;
                failures = 0;
                stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
            // The agent's reporter: full jitter, uniform in [0, min(30s, 500ms * 2^failures)).
            let ceiling = Duration::from_millis(500)
                .saturating_mul(1u32 << failures.min(20))
                .min(Duration::from_secs(30));
            failures = failures.saturating_add(1);
            let delay = ceiling.mul_f64(self.rng.next_f64());
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream. Returns whether it was welcomed.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &mut self,
        config: &LoadConfig,
        stats: &Stats,
        mode: &mut watch::Receiver<Mode>,
        escalations: &mut mpsc::Receiver<Escalate>,
        tick: &mut tokio::time::Interval,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        stop: &CancellationToken,
    ) -> bool {
        let Ok(channel) = tls::channel(
            &config.endpoint,
            self.config.clone(),
            Duration::from_secs(10),
        ) else {
            return false;
        };
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(config.window.max(8) + 8);
        let _ = tx.try_send(self.hello());
        let Ok(response) = client.connect(ReceiverStream::new(rx)).await else {
            return false;
        };
        let mut inbound = response.into_inner();
        let welcome = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Welcome(w)),
            }))) => w,
            _ => return false,
        };
        drop(permit);
        stats.connected.fetch_add(1, Ordering::Relaxed);
        let generation = stats.generation.load(Ordering::Relaxed);
        if self.generation_seen < generation {
            self.generation_seen = generation;
            stats.welcomed_in_generation.fetch_add(1, Ordering::Relaxed);
        }
        self.ack(stats, welcome.acked_seq);
        let mut sent: VecDeque<Sent> = VecDeque::new();
        // Replay what no coordinator has acknowledged.
        let replay: Vec<v1::Event> = self.unacked.iter().cloned().collect();
        let mut ok = true;
        for e in replay {
            ok &= send(&tx, &mut sent, Sent::Event(Instant::now()), event_msg(e)).await;
        }
        if ok && *mode.borrow() == Mode::Flood && self.flooder {
            ok = self.flood(stats, &tx, &mut sent, config.window).await;
        }
        while ok {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                msg = inbound.message() => {
                    let Ok(Some(msg)) = msg else { break };
                    if let Some(coordinator_message::Kind::Ack(a)) = msg.kind {
                        self.ack(stats, a.seq);
                        let recording = stats.recording.load(Ordering::Relaxed);
                        match sent.pop_front() {
                            Some(Sent::Heartbeat(at)) if recording => record(&stats.heartbeat_us, at.elapsed()),
                            Some(Sent::Event(at)) => {
                                stats.events_acked.fetch_add(1, Ordering::Relaxed);
                                if recording {
                                    record(&stats.event_us, at.elapsed());
                                }
                                if self.flooder && *mode.borrow() == Mode::Flood {
                                    ok = self.flood(stats, &tx, &mut sent, 1).await;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ = tick.tick() => {
                    if *mode.borrow() == Mode::Trickle {
                        let e = self.state_change(stats);
                        ok &= send(&tx, &mut sent, Sent::Event(Instant::now()), event_msg(e)).await;
                    }
                    let hb = self.heartbeat();
                    ok &= send(&tx, &mut sent, Sent::Heartbeat(Instant::now()), hb).await;
                }
                changed = mode.changed() => {
                    if changed.is_err() { break }
                    if *mode.borrow_and_update() == Mode::Flood && self.flooder {
                        ok = self.flood(stats, &tx, &mut sent, config.window).await;
                    }
                }
                Some(reply) = escalations.recv() => {
                    let from = std::mem::replace(&mut self.state, v1::ServiceState::Escalated);
                    let e = self.event(stats, v1::event::Kind::ServiceStateChanged(v1::ServiceStateChanged {
                        service: "web".into(),
                        from: from.into(),
                        to: v1::ServiceState::Escalated.into(),
                        reason: "bench: restarts exhausted".into(),
                    }));
                    ok &= send(&tx, &mut sent, Sent::Event(Instant::now()), event_msg(e)).await;
                    let e = self.event(stats, v1::event::Kind::Escalated(v1::Escalated {
                        service: "web".into(),
                        reason: "bench: restarts exhausted".into(),
                        last_results: vec![],
                        attempts: vec![],
                    }));
                    ok &= send(&tx, &mut sent, Sent::Event(Instant::now()), event_msg(e)).await;
                    let _ = reply.send(Instant::now());
                }
            }
        }
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        true
    }

    async fn flood(
        &mut self,
        stats: &Stats,
        tx: &mpsc::Sender<AgentMessage>,
        sent: &mut VecDeque<Sent>,
        n: usize,
    ) -> bool {
        for _ in 0..n {
            let e = self.state_change(stats);
            if !send(tx, sent, Sent::Event(Instant::now()), event_msg(e)).await {
                return false;
            }
        }
        true
    }

    fn ack(&mut self, stats: &Stats, seq: u64) {
        if seq > self.acked {
            let newly = self.unacked.iter().take_while(|e| e.seq <= seq).count();
            stats.confirmed.fetch_add(newly as u64, Ordering::Relaxed);
            self.unacked.drain(..newly);
            self.acked = seq;
        }
    }
}

fn event_msg(e: v1::Event) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Event(e)),
    }
}

async fn send(
    tx: &mpsc::Sender<AgentMessage>,
    sent: &mut VecDeque<Sent>,
    what: Sent,
    msg: AgentMessage,
) -> bool {
    sent.push_back(what);
    tx.send(msg).await.is_ok()
}

// ---- the echo baseline ----

#[derive(Debug, Clone, Copy)]
struct Echo;

#[tonic::async_trait]
impl AgentService for Echo {
    type ConnectStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut acked = 0u64;
            while let Ok(Some(msg)) = inbound.message().await {
                let reply = match msg.kind {
                    Some(agent_message::Kind::Hello(_)) => {
                        coordinator_message::Kind::Welcome(v1::Welcome {
                            acked_seq: 0,
                            coordinator_id: "echo".into(),
                            heartbeat_interval: None,
                        })
                    }
                    Some(agent_message::Kind::Event(e)) => {
                        acked = acked.max(e.seq);
                        coordinator_message::Kind::Ack(v1::Ack { seq: acked })
                    }
                    _ => coordinator_message::Kind::Ack(v1::Ack { seq: acked }),
                };
                let reply = CoordinatorMessage { kind: Some(reply) };
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct EchoConn(TlsStream<TcpStream>);

impl Connected for EchoConn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for EchoConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for EchoConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// `bench echo-server --pki DIR`: serves the echo baseline with the coordinator's certificate
/// and the same server TLS config (client certificates required, SPIFFE trust domain checked).
pub async fn echo_server(pki_dir: &Path) -> Result<()> {
    let td = TrustDomain::new(
        std::fs::read_to_string(pki_dir.join("trust-domain"))
            .context("trust-domain file")?
            .trim(),
    )?;
    let files = TlsFiles {
        ca: pki_dir.join("ca.pem"),
        cert: pki_dir.join("coordinator.pem"),
        key: pki_dir.join("coordinator-key.pem"),
    };
    let config = Arc::new(tls::server_config(files.load()?, &td)?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("echo listening on {}", listener.local_addr()?);
    let (tx, rx) = mpsc::channel::<io::Result<EchoConn>>(256);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, tx) = (config.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                if let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                    let _ = tx.send(Ok(EchoConn(tls))).await;
                }
            });
        }
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AgentServiceServer::new(Echo))
        .serve_with_incoming(ReceiverStream::new(rx))
        .await?;
    Ok(())
}
