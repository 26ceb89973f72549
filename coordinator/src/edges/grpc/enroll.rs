//! The enrollment edge: its own TLS listener (the coordinator authenticates itself; the caller
//! has no certificate yet, so none is asked for), a per-source-address rate limit, and the
//! `EnrollService` and `EnrollmentAdmin` gRPC services.
//!
//! `Challenge` and `Enroll` are answered only on the enrollment listener; `Renew` only on the
//! agent port, where the handshake verified the instance's certificate and the role check let
//! only `/instance/<id>` through. The agent port's handshake still refuses any connection
//! without a client certificate: nothing here loosens it.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use autoheal_common::tls::{Material, PROTOCOL_VERSIONS, provider};
use autoheal_proto::identity::Role;
use autoheal_proto::v1::{
    self, enroll_response::Outcome, enroll_service_server::EnrollService,
    enrollment_admin_server::EnrollmentAdmin,
};
use rustls::ServerConfig;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::PeerInfo;
use crate::model::enrollment::{Enrollment, EnrollmentStatus, Refusal};
use crate::services::enroll::{self, Certificate, Enroller};

/// Server-authenticated TLS (no client certificate asked for), ALPN h2.
pub fn server_config(material: Material) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(material.chain, material.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Who called on the enrollment listener: an address, nothing more.
#[derive(Debug, Clone, Copy)]
pub struct EnrollPeer {
    pub remote: SocketAddr,
}

/// An enrollment connection: server-side TLS only, the peer known by its address.
pub type EnrollStream = super::listener::TlsConn<EnrollPeer>;

/// Accepts enrollment connections: handshakes bounded in time and number, and refused at once
/// for a source over its rate.
#[derive(Debug)]
pub struct EnrollListener {
    pub listener: TcpListener,
    /// Replaced when the coordinator's certificate files change (see [`TlsReload`]).
    pub config: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
    pub handshakes: Arc<Semaphore>,
    pub handshake_timeout: Duration,
    pub limiter: Arc<RateLimiter>,
    pub accepted: mpsc::Sender<io::Result<EnrollStream>>,
}

impl EnrollListener {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !self.limiter.allow(remote.ip()) {
                crate::metrics::global().enrollment_denied("rate-limited");
                tracing::debug!(%remote, "enrollment connection over the rate limit");
                continue;
            }
            let config = self.config.borrow().clone();
            let handshakes = self.handshakes.clone();
            let tx = self.accepted.clone();
            let timeout = self.handshake_timeout;
            tokio::spawn(
                async move {
                    let Ok(_permit) = handshakes.acquire_owned().await else {
                        return;
                    };
                    let accept = async {
                        tcp.set_nodelay(true)?;
                        tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                    };
                    match tokio::time::timeout(timeout, accept).await {
                        Ok(Ok(tls)) => {
                            let _ = tx
                                .send(Ok(EnrollStream {
                                    tls,
                                    info: EnrollPeer { remote },
                                }))
                                .await;
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%remote, %error, "enrollment TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%remote, "enrollment TLS handshake timed out"),
                    }
                }
                .instrument(tracing::debug_span!("enroll_handshake")),
            );
        }
    }
}

/// Reloads the enrollment listener's certificate when the `[tls]` files change, like the agent
/// port's reloader does for its mTLS configuration; a broken set is logged and the last good one
/// stays in force.
#[derive(Debug)]
pub struct TlsReload {
    pub files: autoheal_common::tls::TlsFiles,
    pub interval: Duration,
    pub tx: tokio::sync::watch::Sender<Arc<ServerConfig>>,
}

impl TlsReload {
    pub async fn run(self, shutdown: CancellationToken) {
        let seen = |files: &autoheal_common::tls::TlsFiles| {
            [&files.ca, &files.cert, &files.key]
                .iter()
                .map(|p| std::fs::read(p).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let mut last = seen(&self.files);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = seen(&self.files);
            if now == last {
                continue;
            }
            last = now;
            match self
                .files
                .load()
                .map_err(|e| crate::error_chain(&e))
                .and_then(|m| server_config(m).map_err(|e| crate::error_chain(&e)))
            {
                Ok(config) => {
                    self.tx.send_replace(Arc::new(config));
                    tracing::info!("enrollment listener: reloaded the TLS certificate");
                }
                Err(error) => {
                    tracing::warn!(%error, "enrollment listener: certificate files changed but can't be used; keeping the previous ones")
                }
            }
        }
    }
}

/// A token bucket per source address.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, tokio::time::Instant)>>,
}

/// Beyond this many tracked addresses, full buckets are forgotten.
const MAX_TRACKED: usize = 65_536;

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = tokio::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).ok()?,
        nanos: i32::try_from(d.subsec_nanos()).ok()?,
    })
}

fn answer(outcome: Result<Certificate, Refusal>) -> v1::EnrollResponse {
    v1::EnrollResponse {
        outcome: Some(match outcome {
            Ok(cert) => Outcome::Issued(v1::Issued {
                certificate_chain: cert.chain_pem,
                trust_bundle: cert.bundle_pem,
                not_after: ts(cert.not_after),
                spiffe_id: cert.spiffe_id,
            }),
            Err(refusal) => Outcome::Refused(v1::Refused {
                check: refusal.check.as_str().to_owned(),
                message: refusal.message,
            }),
        }),
    }
}

/// `EnrollService` on both listeners; each method checks which one it was called on.
#[derive(Debug, Clone)]
pub struct EnrollApi {
    pub enroller: Enroller,
    pub limiter: Arc<RateLimiter>,
}

impl EnrollApi {
    fn enrollment_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(peer) = request.extensions().get::<EnrollPeer>() else {
            return Err(Status::permission_denied(
                "Challenge and Enroll are served on the enrollment listener only",
            ));
        };
        if self.limiter.allow(peer.remote.ip()) {
            Ok(())
        } else {
            crate::metrics::global().enrollment_denied("rate-limited");
            Err(Status::resource_exhausted(
                "too many enrollment calls from this address: slow down",
            ))
        }
    }
}

#[tonic::async_trait]
impl EnrollService for EnrollApi {
    async fn challenge(
        &self,
        request: Request<v1::ChallengeRequest>,
    ) -> Result<Response<v1::ChallengeResponse>, Status> {
        self.enrollment_caller(&request)?;
        let (nonce, expires) = self
            .enroller
            .challenge()
            .map_err(|r| Status::resource_exhausted(r.message))?;
        Ok(Response::new(v1::ChallengeResponse {
            nonce: nonce.to_vec(),
            expires_at: ts(expires),
        }))
    }

    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        self.enrollment_caller(&request)?;
        let r = request.into_inner();
        let outcome = self
            .enroller
            .enroll(enroll::Request {
                document: r.document,
                signature: r.rsa2048_signature,
                csr: r.csr,
                nonce: r.nonce,
            })
            .await;
        Ok(Response::new(answer(outcome)))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        // Only the agent port sets PeerInfo, after verifying the client certificate.
        let Some(peer) = request.extensions().get::<PeerInfo>() else {
            return Err(Status::unauthenticated(
                "Renew needs the instance's current certificate: call it on the agent port",
            ));
        };
        let Role::Instance(instance) = &peer.identity.role else {
            return Err(Status::permission_denied(
                "only an instance certificate may renew",
            ));
        };
        let instance = instance.clone();
        let outcome = self
            .enroller
            .renew(&instance, &request.into_inner().csr)
            .await;
        Ok(Response::new(answer(outcome)))
    }
}

/// `EnrollmentAdmin` on the agent port, behind the role check.
#[derive(Debug, Clone)]
pub struct EnrollAdminApi {
    pub enroller: Enroller,
}

fn to_wire(e: Enrollment) -> v1::Enrollment {
    v1::Enrollment {
        instance_id: e.instance_id,
        status: e.status.as_str().to_owned(),
        enrolled_at: ts(e.enrolled_at),
        certificate_expires_at: ts(e.certificate_expires_at),
        pending_time: e.pending_time,
        account_id: e.account_id,
        region: e.region,
        reason: e.reason,
    }
}

fn store_status(e: &crate::ports::store::StoreError) -> Status {
    Status::unavailable(format!("the state store: {}", crate::error_chain(e)))
}

impl EnrollAdminApi {
    async fn set(
        &self,
        request: Request<v1::EnrollmentRequest>,
        status: EnrollmentStatus,
    ) -> Result<Response<v1::Enrollment>, Status> {
        let by = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.identity.to_string())
            .unwrap_or_default();
        let r = request.into_inner();
        let valid = !r.instance_id.is_empty()
            && r.instance_id.len() <= 128
            && r.instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(Status::invalid_argument(
                "instance_id is not a valid instance id",
            ));
        }
        let reason = if r.reason.is_empty() {
            format!("{} by {by}", status.as_str())
        } else {
            format!("{} by {by}: {}", status.as_str(), r.reason)
        };
        let record = self
            .enroller
            .set_status(&r.instance_id, status, &reason)
            .await
            .map_err(|e| store_status(&e))?;
        tracing::info!(instance = %r.instance_id, %reason, "enrollment changed by an operator");
        Ok(Response::new(to_wire(record)))
    }
}

#[tonic::async_trait]
impl EnrollmentAdmin for EnrollAdminApi {
    async fn list_enrollments(
        &self,
        _request: Request<v1::ListEnrollmentsRequest>,
    ) -> Result<Response<v1::ListEnrollmentsResponse>, Status> {
        let list = self.enroller.list().await.map_err(|e| store_status(&e))?;
        Ok(Response::new(v1::ListEnrollmentsResponse {
            enrollments: list.into_iter().map(to_wire).collect(),
        }))
    }

    async fn reset_enrollment(
        &self,
        request: Request<v1::EnrollmentRequest>,
    ) -> Result<Response<v1::Enrollment>, Status> {
        self.set(request, EnrollmentStatus::Reset).await
    }

    async fn deny_enrollment(
        &self,
        request: Request<v1::EnrollmentRequest>,
    ) -> Result<Response<v1::Enrollment>, Status> {
        self.set(request, EnrollmentStatus::Denied).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollStartError {
    #[error("the enrollment CA")]
    Ca(#[from] enroll::ca::CaError),
    #[error("the pinned AWS signer certificates")]
    Signers(#[from] crate::edges::config::enroll::SignerError),
    #[error("the coordinator's TLS certificate for the enrollment listener")]
    Tls(#[from] autoheal_common::tls::TlsError),
    #[error("the enrollment listener's TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The enrollment services, for the agent port's router (Renew, admin).
#[derive(Debug, Clone)]
pub struct Wiring {
    pub api: EnrollApi,
    pub admin: EnrollAdminApi,
    pub addr: SocketAddr,
}

/// Starts enrollment when `[enroll]` (and `[aws]`, which validation requires with it) is
/// configured: the DescribeInstances batcher, the enrollment listener and its gRPC server
/// (EnrollService alone), all on `tasks`.
pub async fn start(
    config: &crate::edges::config::Config,
    store: Arc<dyn crate::ports::store::Store>,
    fleet: crate::services::fleet::Fleet,
    clients: Option<Arc<crate::adapters::aws::sdk::Clients>>,
    tasks: &mut autoheal_common::tasks::Tasks,
) -> Result<Option<Wiring>, EnrollStartError> {
    let (Some(settings), Some(aws), Some(clients)) = (&config.enroll, &config.aws, clients) else {
        return Ok(None);
    };
    let authority = enroll::Authority::load(
        &settings.ca_cert,
        &settings.ca_key,
        &settings.trust_bundle,
        config.trust_domain.clone(),
    )?;
    let signers = settings.load_signers()?;
    let (describe, batch) =
        enroll::DescribeBatcher::new(clients.clone(), Duration::from_millis(100));
    tasks.spawn(
        "enroll_describe",
        batch
            .run(tasks.token())
            .instrument(tracing::info_span!("enroll_describe")),
    );
    let regions: Vec<String> = signers.keys().cloned().collect();
    let enroller = Enroller::new(
        enroll::Settings {
            signers,
            accounts: settings.accounts.clone(),
            max_pending_age: settings.max_pending_age,
            lifetime: settings.lifetime,
            nonce_ttl: settings.nonce_ttl,
            selector: aws.selector.clone(),
        },
        authority,
        store,
        describe,
        clients,
        fleet,
        autoheal_common::clock::system(),
    );
    let limiter = Arc::new(RateLimiter::new(
        settings.requests_per_minute.get(),
        settings.burst.get(),
    ));
    let api = EnrollApi {
        enroller: enroller.clone(),
        limiter: limiter.clone(),
    };
    let (tls_tx, tls) = tokio::sync::watch::channel(Arc::new(server_config(config.tls.load()?)?));
    tasks.spawn(
        "enroll_tls_reload",
        TlsReload {
            files: config.tls.clone(),
            interval: config.tls_reload_interval,
            tx: tls_tx,
        }
        .run(tasks.token()),
    );
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| EnrollStartError::Bind {
                addr: settings.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EnrollStartError::Bind {
            addr: settings.listen,
            source,
        })?;
    let (accepted_tx, accepted_rx) = mpsc::channel(config.max_concurrent_handshakes.get());
    let enroll_listener = EnrollListener {
        listener,
        config: tls,
        handshakes: Arc::new(Semaphore::new(config.max_concurrent_handshakes.get())),
        handshake_timeout: config.handshake_timeout,
        limiter,
        accepted: accepted_tx,
    };
    tasks.spawn(
        "enroll_listener",
        enroll_listener
            .run(tasks.token())
            .instrument(tracing::info_span!("enroll_listener", %addr)),
    );
    let router = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(
            v1::enroll_service_server::EnrollServiceServer::new(api.clone())
                .max_decoding_message_size(64 * 1024),
        );
    let stop = tasks.token();
    tasks.spawn(
        "enroll_grpc",
        async move {
            let served = router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(accepted_rx),
                    async move { stop.cancelled().await },
                )
                .await;
            if let Err(error) = served {
                tracing::warn!(error = %crate::error_chain(&error), "enrollment server ended with an error");
            }
        }
        .instrument(tracing::info_span!("enroll_grpc")),
    );
    tracing::info!(%addr, ?regions, lifetime = ?settings.lifetime, "enrollment serving (server-authenticated TLS, no client certificate)");
    Ok(Some(Wiring {
        admin: EnrollAdminApi {
            enroller: enroller.clone(),
        },
        api,
        addr,
    }))
}

#[cfg(test)]
mod tests;
